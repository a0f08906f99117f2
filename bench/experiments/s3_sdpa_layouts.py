"""Session-3 experiment 2: cuDNN SDPA by q/k/v layout; truly pipelined loss read."""
import json, os, statistics, sys, time, traceback
sys.path.insert(0, "bench"); sys.path.insert(0, "bench/experiments"); sys.path.insert(0, ".")
import torch
import torch.nn.functional as F
import bench_train as bt
from pipeline.gpt import train as tr
from pipeline.gpt.data import DataLoader
OUT = os.environ.get("OUT", "/tmp/exp_out")
res = {}
def save():
    json.dump(res, open(os.path.join(OUT, "exp2.json"), "w"), indent=1, default=str)

def sdpa_layouts(B=32, T=1024, C=768, H=12):
    D = C // H
    out = {}
    def views(layout):
        if layout == "packed":  # (B, T, 3C): today's c_attn output
            base = torch.randn(B, T, 3 * C, device="cuda").bfloat16()
            return [t.view(B, T, H, D).transpose(1, 2) for t in base.split(C, 2)]
        if layout == "blocks":  # (3, B, T, C): one buffer, q/k/v each dense
            base = torch.randn(3, B, T, C, device="cuda").bfloat16()
            return [base[i].view(B, T, H, D).transpose(1, 2) for i in range(3)]
        if layout == "separate":  # three (B, T, C) buffers
            return [torch.randn(B, T, C, device="cuda").bfloat16().view(B, T, H, D).transpose(1, 2) for _ in range(3)]
        return [torch.randn(B, H, T, D, device="cuda").bfloat16() for _ in range(3)]  # bhtd
    for layout in ("packed", "blocks", "separate", "bhtd"):
        q, k, v = (t.detach().requires_grad_() for t in views(layout))
        do = torch.randn(B, T, H, D, device="cuda").bfloat16().transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)

        def fwd():
            F.scaled_dot_product_attention(q.detach(), k.detach(), v.detach(), is_causal=True)

        def bwd():
            return torch.autograd.grad(o, (q, k, v), do, retain_graph=True)
        try:
            dq = bwd()[0]
            out[layout] = dict(fwd=bt.cuda_ms(fwd, 20), bwd=bt.cuda_ms(bwd, 20), o_strides=list(o.stride()),
                               dq_strides=list(dq.stride()))
        except Exception as e:  # noqa: BLE001
            out[layout] = dict(error=repr(e)[:400])
        print(layout, out[layout], flush=True)
    res["sdpa_layouts"] = out
    save()

def pipelined(glob_):
    args, run, raw, opt, model = bt.setup(glob_, "flash", 1, 0, 32, 1024)
    step_fn = bt.make_step("flash+compile+lt+graphs", args, run, raw, opt, model, 1)
    batches = tr.batch_source(DataLoader(glob_, 32, 1024), run)
    def sync_loop(n):
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            loss, norm = step_fn(batches, 6e-4)
            batches.prefetch()
            torch.stack([loss, norm.float()]).cpu().tolist()
            ts.append(time.perf_counter() - t0)
        return ts
    host = [torch.empty(2, pin_memory=True) for _ in range(2)]
    def behind_loop(n):
        ts, pending = [], None
        t0 = time.perf_counter()
        for i in range(n):
            loss, norm = step_fn(batches, 6e-4)
            buf = host[i % 2]
            buf.copy_(torch.stack([loss, norm.float()]), non_blocking=True)
            ev = torch.cuda.Event()
            ev.record()
            batches.prefetch()
            if pending is not None:
                pending[1].synchronize()
                pending[0].tolist()
                t1 = time.perf_counter()
                ts.append(t1 - t0)
                t0 = t1
            pending = (buf, ev)
        pending[1].synchronize()
        return ts
    sync_loop(8)
    out = {}
    for rep in range(3):
        a = sync_loop(30)
        b = behind_loop(30)
        out["sync_%d" % rep] = 1000 * statistics.median(a[3:])
        out["behind_%d" % rep] = 1000 * statistics.median(b[3:])
    print(out, flush=True)
    res["pipelined"] = out
    save()

glob_ = bt.make_shards("/tmp/bench_train_data")
for name, fn in (("sdpa", sdpa_layouts), ("pipelined", lambda: pipelined(glob_))):
    if len(sys.argv) > 1 and name not in sys.argv[1]:
        continue
    try:
        fn()
    except Exception:  # noqa: BLE001
        res[name + "_error"] = traceback.format_exc()[-2000:]
        print(res[name + "_error"])
    save()

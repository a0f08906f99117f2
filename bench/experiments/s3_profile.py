"""Session-3 experiments on the default training step (H100): sync vs one-step-late loss read and
kernel traces (`loops`), an ungraphed trace for kernel attribution, the classifier in L2-sized row
chunks, the clip inside fused AdamW, more cuBLASLt candidates for the GELU epilogues, and q/k/v
layout costs. `python bench/experiments/s3_profile.py [loops,ungraphed,classifier,...]`; JSON and
gzipped Chrome traces land in $OUT. Results: docs/benchmarks/train.md ("session 3")."""
import gzip
import json
import os
import shutil
import statistics
import sys
import time
import traceback

sys.path.insert(0, "bench")
sys.path.insert(0, ".")
import torch  # noqa: E402

import bench_train as bt  # noqa: E402
from pipeline.gpt import cublaslt  # noqa: E402
from pipeline.gpt import train as tr  # noqa: E402
from pipeline.gpt.data import DataLoader  # noqa: E402

OUT = os.environ.get("OUT", "/tmp/exp_out")
os.makedirs(OUT, exist_ok=True)
res = {}


def save():
    with open(os.path.join(OUT, "exp.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)


def graph_ms(fn, reps=20):
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    del g
    return round(statistics.median(ts), 4)


def dump_trace(p, name):
    path = os.path.join(OUT, name)
    p.export_chrome_trace(path)
    with open(path, "rb") as f, gzip.open(path + ".gz", "wb") as g:
        shutil.copyfileobj(f, g)
    os.remove(path)


def loss_problem(n=32768, V=50304, vocab=50257):
    """The classifier loss kernel's input at B=32, T=1024 (random bf16 logits, std 4, and targets)
    and its reference result: (logits, targets, reference gradient, reference losses)."""
    from pipeline.gpt import model as gm
    gen = torch.Generator(device="cuda").manual_seed(0)
    src = (4 * torch.randn(n, V, device="cuda", generator=gen)).bfloat16()
    targets = torch.randint(0, vocab, (n,), device="cuda", generator=gen)
    ref = src.clone()
    ref_losses = gm._cross_entropy_grad_reference(ref, targets, vocab)
    return src, targets, ref, ref_losses


def default_step_ms(glob_, configure=None, trace=None, after=None):
    """Median step ms (two rounds of 30 steps) of the trainer's default B=32 step, timed as the
    trainer times it; `configure(raw)` adjusts the model before compilation; `trace`: also write
    a CUDA kernel trace of 4 steps under that name; `after(loop)`: called with the step loop
    (`loop(n)` runs n steps, returns their times in s) before the model is released."""
    from torch.profiler import ProfilerActivity, profile
    args, run, raw, opt, model = bt.setup(glob_, "flash", 1, 0, 32, 1024)
    if configure is not None:
        configure(raw)
    step_fn = bt.make_step("flash+compile+lt+graphs", args, run, raw, opt, model, 1)
    batches = tr.batch_source(DataLoader(glob_, 32, 1024), run)
    rb = tr.StepReadback(run)

    def loop(n):
        ts = []
        for s in range(n):
            rb.begin()
            loss, norm = step_fn(batches, 6e-4)
            d = rb.push(s, 6e-4, loss, norm)
            batches.prefetch()
            if d:
                ts.append(d[4])
        rb.drain()
        return ts
    loop(8)
    out = [round(1000 * statistics.median(loop(30)[3:]), 3) for _ in range(2)]
    if trace:
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as p:
            loop(4)
            torch.cuda.synchronize()
        dump_trace(p, trace)
    if after is not None:
        after(loop)
    del args, run, raw, opt, model
    bt.release()
    return out


def loops(glob_):
    """Trainer loop (sync each step) vs one-step-behind loss read, same process; traces."""
    from torch.profiler import ProfilerActivity, profile
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
        # The read-back copy must go to pinned memory behind its own step, waited for through an
        # event: a plain .cpu() after queueing the next step waits for that step too.
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
        out["sync_med_ms_%d" % rep] = 1000 * statistics.median(a[3:])
        out["behind_med_ms_%d" % rep] = 1000 * statistics.median(b[3:])
    res["loops"] = out
    save()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        sync_loop(4)
        torch.cuda.synchronize()
    dump_trace(p, "trace_sync.json")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        behind_loop(5)
        torch.cuda.synchronize()
    dump_trace(p, "trace_behind.json")
    del args, run, raw, opt, model
    bt.release()


def ungraphed_trace(glob_):
    from torch.profiler import ProfilerActivity, profile
    args, run, raw, opt, model = bt.setup(glob_, "flash", 1, 0, 32, 1024)
    step_fn = bt.make_step("flash+compile+lt", args, run, raw, opt, model, 1)
    batches = tr.batch_source(DataLoader(glob_, 32, 1024), run)
    for _ in range(5):
        step_fn(batches, 6e-4)[0].item()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        for _ in range(2):
            step_fn(batches, 6e-4)[0].item()
    dump_trace(p, "trace_ungraphed.json")
    del args, run, raw, opt, model
    bt.release()


def classifier_chunks(n=32768, C=768, V=50304):
    x = torch.randn(n, C, device="cuda").bfloat16()
    w = (0.02 * torch.randn(V, C, device="cuda")).bfloat16()
    t = torch.randint(0, 50257, (n,), device="cuda")
    logits = torch.empty(n, V, device="cuda", dtype=torch.bfloat16)
    ce = torch.ops.gpt.cross_entropy_grad_
    out = {}
    for rows in (n, 4096, 2048, 1024, 512, 384, 256, 128):
        def both(rows=rows):
            for i in range(0, n, rows):
                torch.mm(x[i:i + rows], w.t(), out=logits[i:i + rows])
                ce(logits[i:i + rows], t[i:i + rows], 50257)

        def mm_only(rows=rows):
            for i in range(0, n, rows):
                torch.mm(x[i:i + rows], w.t(), out=logits[i:i + rows])

        def ce_only(rows=rows):
            for i in range(0, n, rows):
                ce(logits[i:i + rows], t[i:i + rows], 50257)
        out[rows] = dict(both=graph_ms(both), mm=graph_ms(mm_only), ce=graph_ms(ce_only))
        print("classifier rows", rows, out[rows], flush=True)
    res["classifier_chunks"] = out
    save()

    bt.release()


def optimizer_variants(glob_):
    args, run, raw, opt, model = bt.setup(glob_, "flash", 0, 0, 4, 64)
    params = [p for p in raw.parameters()]
    torch.manual_seed(0)
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    for g in opt.param_groups:
        g["capturable"] = True
        g["lr"] = torch.tensor(6e-4, device="cuda")
    opt.step()  # state
    state0 = {k: v.clone() for k, v in raw.state_dict().items()}
    grads0 = [p.grad.clone() for p in params]

    def restore():
        with torch.no_grad():
            raw.load_state_dict(state0)
            for p, g in zip(params, grads0):
                p.grad.copy_(g)

    def clip_step():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    def scale_step():
        norms = torch._foreach_norm([p.grad for p in params])
        total = torch.linalg.vector_norm(torch.stack(norms))
        opt.grad_scale = torch.clamp((total + 1e-6) / 1.0, min=1.0)
        opt.step()
        opt.grad_scale = None

    def norm_only():
        torch.nn.utils.get_total_norm([p.grad for p in params])

    def adam_only():
        opt.step()
    out = {}
    for label, fn in (("clip_step", clip_step), ("scale_step", scale_step), ("norm_only", norm_only),
                      ("adam_only", adam_only)):
        try:
            out[label + "_ms"] = graph_ms(fn)
        except Exception as e:  # noqa: BLE001
            out[label + "_error"] = repr(e)[:300]
    # equality of one update both ways
    restore()
    clip_step()
    a = {k: v.clone() for k, v in raw.state_dict().items()}
    restore()
    scale_step()
    b = raw.state_dict()
    out["max_abs_diff"] = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    res["optimizer"] = out
    save()
    bt.release()


def epilogue_candidates(M=32768, C=768):
    cublaslt._CANDIDATES = 64
    cublaslt._lt.cache_clear()
    torch.manual_seed(0)
    fc, proj = torch.nn.Linear(C, 4 * C).cuda(), torch.nn.Linear(4 * C, C).cuda()
    attn, aproj = torch.nn.Linear(C, 3 * C).cuda(), torch.nn.Linear(C, C).cuda()
    x = torch.randn(M, C, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = cublaslt.fused_mlp(x, fc, proj)
        z = cublaslt.tuned_linear(x, attn)
        u = cublaslt.tuned_linear(x, aproj)
    (y.float().sum() + z.float().sum() + u.float().sum()).backward()
    torch.cuda.synchronize()
    out = {}
    for key, t in cublaslt._lt().tuning.items():
        times = sorted(t["candidates_ms"])
        out["epi%d %s %s %s ta%d tb%d" % (key[3], key[4], key[5], key[6], key[1], key[2])] = dict(
            n=len(times), best5=[round(v, 4) for v in times[:5]],
            first=round(t["candidates_ms"][0], 4), torch=t["torch_ms"], chosen=t["chosen"])
    res["epilogue_candidates"] = out
    save()
    cublaslt._CANDIDATES = 16
    cublaslt._lt.cache_clear()
    del fc, proj, x, y
    bt.release()


def qkv_layouts(B=32, T=1024, C=768, H=12):
    """Costs of the alternatives to SDPA-gradient packing."""
    import torch.nn.functional as F
    D = C // H
    M = B * T
    out = {}
    x = torch.randn(M, C, device="cuda").bfloat16()
    w = (0.02 * torch.randn(3 * C, C, device="cuda")).bfloat16()
    b = torch.zeros(3 * C, device="cuda").bfloat16()
    dqkv = torch.randn(M, 3 * C, device="cuda").bfloat16()
    parts = [torch.randn(M, C, device="cuda").bfloat16() for _ in range(3)]
    dx = torch.empty(M, C, device="cuda").bfloat16()
    dw = torch.empty(3 * C, C, device="cuda").bfloat16()
    qkv3 = torch.empty(3, M, C, device="cuda").bfloat16()
    out["fwd_one_gemm"] = graph_ms(lambda: torch.addmm(b, x, w.t()))
    w3 = w.view(3, C, C)
    out["fwd_bmm_3"] = graph_ms(lambda: torch.bmm(x.unsqueeze(0).expand(3, M, C), w3.transpose(1, 2), out=qkv3))
    out["dx_one_gemm_k2304"] = graph_ms(lambda: torch.mm(dqkv, w, out=dx))

    def dx3():
        torch.mm(parts[0], w[:C], out=dx)
        dx.addmm_(parts[1], w[C:2 * C])
        dx.addmm_(parts[2], w[2 * C:])
    out["dx_three_gemm_accum"] = graph_ms(dx3)
    out["dw_one_gemm"] = graph_ms(lambda: torch.mm(dqkv.t(), x, out=dw))

    def dw3():
        for j in range(3):
            torch.mm(parts[j].t(), x, out=dw[j * C:(j + 1) * C])
    out["dw_three_gemm"] = graph_ms(dw3)
    g = [torch.randn(B, H, T, D, device="cuda").bfloat16() for _ in range(3)]
    out["cat_transpose"] = graph_ms(lambda: torch.cat([t.transpose(1, 2).reshape(B, T, C) for t in g], -1))
    out["bias_sum_3"] = graph_ms(lambda: [p.sum(0, dtype=torch.float32) for p in parts])
    # SDPA forward/backward: packed vs dense q/k/v
    for label in ("packed", "dense"):
        if label == "packed":
            base = torch.randn(B, T, 3 * C, device="cuda").bfloat16()
            q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in base.split(C, 2))
        else:
            base = torch.randn(3, B, T, C, device="cuda").bfloat16()
            q, k, v = (base[i].view(B, T, H, D).transpose(1, 2) for i in range(3))
        q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
        do = torch.randn(B, H, T, D, device="cuda").bfloat16()

        def fb():
            q.grad = k.grad = v.grad = None
            F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(do)
        out["sdpa_%s_fwd" % label] = graph_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
        fb()
        out["sdpa_%s_dq_strides" % label] = list(q.grad.stride())
        try:
            import bench_train
            out["sdpa_%s_fwd_bwd_eager" % label] = bench_train.cuda_ms(fb)
        except Exception as e:  # noqa: BLE001
            out["sdpa_%s_err" % label] = repr(e)[:200]
    res["qkv_layouts"] = out
    save()
    bt.release()


def main():
    glob_ = bt.make_shards("/tmp/bench_train_data")
    res["device"] = torch.cuda.get_device_name()
    res["torch"] = torch.__version__
    which = sys.argv[1].split(",") if len(sys.argv) > 1 else ["loops", "ungraphed", "classifier", "optimizer", "epilogue", "qkv"]
    for name, fn in (("loops", lambda: loops(glob_)), ("ungraphed", lambda: ungraphed_trace(glob_)),
                     ("classifier", classifier_chunks), ("optimizer", lambda: optimizer_variants(glob_)),
                     ("epilogue", epilogue_candidates), ("qkv", qkv_layouts)):
        if name not in which:
            continue
        t0 = time.time()
        try:
            fn()
        except Exception:  # noqa: BLE001
            res[name + "_error"] = traceback.format_exc()[-2000:]
        res[name + "_s"] = round(time.time() - t0, 1)
        print(name, "done in", res[name + "_s"], "s", flush=True)
        save()


if __name__ == "__main__":
    main()

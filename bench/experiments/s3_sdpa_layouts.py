"""Session-3 experiment: cuDNN attention forward and backward time by q/k/v layout (packed,
(3, B, T, C) blocks, separate tensors, BHTD)."""
import json, os, sys
sys.path.insert(0, "bench"); sys.path.insert(0, "bench/experiments"); sys.path.insert(0, ".")
import torch
import torch.nn.functional as F
import bench_train as bt
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

sdpa_layouts()

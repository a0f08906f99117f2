"""Session-5 experiment: cuDNN's attention through the cuDNN frontend's Python graph API
(`nvidia-cudnn-frontend`, carried as a wheel), writing dQ, dK and dV straight into one packed
(B, T, 3C) gradient so that the q/k/v packing copy (1.17 ms per default step in session 4's
profile) disappears.

PyTorch's SDPA (cuDNN backend) allocates dq, dk, dv itself, each (B, T, H, hd)-dense; autograd
then copies them into c_attn's (B, T, 3C) output gradient. The frontend takes any strides for
its outputs, so the three gradients can be strided views of one packed buffer, as its own
tests do (`test/python` of NVIDIA/cudnn-frontend).

Compares, at B=32, T=1024, 12 heads of 64 (GPT-2 124M), forward + backward from packed qkv:
(a) F.scaled_dot_product_attention with autograd (today's path, packing included), (b) the
frontend graphs (forward writes O in (B, T, C), backward writes into packed dqkv), both timed
eagerly with events, and (b) also inside a CUDA graph. Errors of (b) against (a).
JSON: cudnn_attention.json in $OUT."""
import ctypes
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, "bench/experiments")
sys.path.insert(0, "bench")
sys.path.insert(0, ".")

OUT = os.environ.get("OUT", "/tmp/exp_out")


def load_frontend():
    """Import cudnn (the frontend) against the libcudnn PyTorch already loaded."""
    q = torch.randn(1, 1, 128, 64, device="cuda", dtype=torch.bfloat16)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.CUDNN_ATTENTION):
        F.scaled_dot_product_attention(q, q, q, is_causal=True)
    torch.backends.cudnn.version()
    maps = open("/proc/self/maps").read().split("\n")
    loaded = sorted({ln.split()[-1] for ln in maps if "libcudnn.so" in ln and ln.split()[-1].startswith("/")})
    print("libcudnn loaded by torch:", loaded, flush=True)
    original = ctypes.CDLL

    def cdll(name, *a, **k):  # the frontend's fallback dlopen("libcudnn.so") -> torch's copy
        if name == "libcudnn.so" and loaded:
            name = loaded[0]
        return original(name, *a, **k)
    ctypes.CDLL = cdll
    try:
        import cudnn
    finally:
        ctypes.CDLL = original
    return cudnn


class FrontendAttention:
    def __init__(self, cudnn, B, T, H, hd):
        self.cudnn, self.shape = cudnn, (B, T, H, hd)
        self.handle = cudnn.create_handle()
        C = H * hd
        dt = cudnn.data_type
        qkv = torch.empty(B, T, 3 * C, device="cuda", dtype=torch.bfloat16)
        y = torch.empty(B, T, C, device="cuda", dtype=torch.bfloat16)
        stats = torch.empty(B, H, T, 1, device="cuda", dtype=torch.float32)
        q, k, v = self.split(qkv)
        o = self.heads(y)

        g = cudnn.pygraph(io_data_type=dt.BFLOAT16, intermediate_data_type=dt.FLOAT,
                          compute_data_type=dt.FLOAT, handle=self.handle)
        tq, tk, tv = g.tensor_like(q), g.tensor_like(k), g.tensor_like(v)
        to, tstats = g.sdpa(name="sdpa", q=tq, k=tk, v=tv, is_inference=False, attn_scale=1.0 / math.sqrt(hd),
                            use_causal_mask=True)
        to.set_output(True).set_dim(list(o.shape)).set_stride(list(o.stride()))
        tstats.set_output(True).set_data_type(dt.FLOAT)
        self.fwd = self.build(g)
        self.fwd_t = (tq, tk, tv, to, tstats)

        b = cudnn.pygraph(io_data_type=dt.BFLOAT16, intermediate_data_type=dt.FLOAT,
                          compute_data_type=dt.FLOAT, handle=self.handle)
        bq, bk, bv, bo, bdo = (b.tensor_like(t) for t in (q, k, v, o, o))
        bstats = b.tensor_like(stats)
        dq, dk, dv = b.sdpa_backward(name="sdpa_backward", q=bq, k=bk, v=bv, o=bo, dO=bdo, stats=bstats,
                                     attn_scale=1.0 / math.sqrt(hd), use_causal_mask=True)
        for t, like in zip((dq, dk, dv), (q, k, v)):
            t.set_output(True).set_dim(list(like.shape)).set_stride(list(like.stride()))
        self.bwd = self.build(b)
        self.bwd_t = (bq, bk, bv, bo, bdo, bstats, dq, dk, dv)
        self.workspace = torch.empty(max(self.fwd.get_workspace_size(), self.bwd.get_workspace_size()),
                                     device="cuda", dtype=torch.uint8)

    def build(self, g):
        c = self.cudnn
        g.validate()
        g.build_operation_graph()
        g.create_execution_plans([c.heur_mode.A, c.heur_mode.FALLBACK])
        g.check_support()
        g.build_plans()
        return g

    def split(self, qkv):
        B, T, H, hd = self.shape
        return [t.view(B, T, H, hd).transpose(1, 2) for t in qkv.split(H * hd, dim=2)]

    def heads(self, y):
        B, T, H, hd = self.shape
        return y.view(B, T, H, hd).transpose(1, 2)

    def forward(self, qkv, y, stats):
        self.cudnn.set_stream(handle=self.handle, stream=torch.cuda.current_stream().cuda_stream)
        tq, tk, tv, to, tstats = self.fwd_t
        q, k, v = self.split(qkv)
        self.fwd.execute({tq: q, tk: k, tv: v, to: self.heads(y), tstats: stats}, self.workspace, handle=self.handle)

    def backward(self, qkv, y, dy, stats, dqkv):
        self.cudnn.set_stream(handle=self.handle, stream=torch.cuda.current_stream().cuda_stream)
        bq, bk, bv, bo, bdo, bstats, dq, dk, dv = self.bwd_t
        q, k, v = self.split(qkv)
        gq, gk, gv = self.split(dqkv)
        self.bwd.execute({bq: q, bk: k, bv: v, bo: self.heads(y), bdo: self.heads(dy), bstats: stats,
                          dq: gq, dk: gk, dv: gv}, self.workspace, handle=self.handle)


def main(B=32, T=1024, H=12, hd=64):
    from bench_train import cuda_ms
    from s3_profile import graph_ms

    def event_ms(fn):  # eager, events around each call (host overhead included)
        return round(cuda_ms(fn, reps=30), 4)
    os.makedirs(OUT, exist_ok=True)
    C = H * hd
    res = {"torch": torch.__version__, "cudnn_backend": torch.backends.cudnn.version()}
    gen = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(B, T, 3 * C, device="cuda", generator=gen).bfloat16().requires_grad_(True)
    dy = torch.randn(B, T, C, device="cuda", generator=gen).bfloat16()

    def torch_fwd():
        q, k, v = (t.view(B, T, H, hd).transpose(1, 2) for t in qkv.split(C, dim=2))
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(B, T, C)

    def torch_fwd_bwd():
        qkv.grad = None
        torch_fwd().backward(dy)
    res["torch_fwd_ms"] = event_ms(lambda: torch_fwd())
    res["torch_fwd_bwd_ms"] = event_ms(torch_fwd_bwd)
    try:
        res["torch_fwd_bwd_graph_ms"] = graph_ms(torch_fwd_bwd)
    except Exception as e:  # noqa: BLE001
        res["torch_graph_error"] = repr(e)[-400:]
    qkv.grad = None
    y_ref = torch_fwd()
    y_ref.backward(dy)
    g_ref = qkv.grad.clone()
    print(res, flush=True)

    cudnn = load_frontend()
    res["frontend"] = getattr(cudnn, "__version__", "?")
    res["frontend_backend_version"] = cudnn.backend_version()
    att = FrontendAttention(cudnn, B, T, H, hd)
    res["workspace_bytes"] = att.workspace.numel()
    x = qkv.detach()
    y = torch.empty(B, T, C, device="cuda", dtype=torch.bfloat16)
    stats = torch.empty(B, H, T, 1, device="cuda", dtype=torch.float32)
    dqkv = torch.empty_like(x)
    att.forward(x, y, stats)
    att.backward(x, y, dy, stats, dqkv)
    torch.cuda.synchronize()

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()
    res["errors"] = dict(y=rel(y, y_ref), dqkv=rel(dqkv, g_ref),
                         dq=rel(dqkv[..., :C], g_ref[..., :C]), dk=rel(dqkv[..., C:2 * C], g_ref[..., C:2 * C]),
                         dv=rel(dqkv[..., 2 * C:], g_ref[..., 2 * C:]))
    res["frontend_fwd_ms"] = event_ms(lambda: att.forward(x, y, stats))
    res["frontend_bwd_ms"] = event_ms(lambda: att.backward(x, y, dy, stats, dqkv))
    res["frontend_fwd_bwd_ms"] = event_ms(lambda: (att.forward(x, y, stats), att.backward(x, y, dy, stats, dqkv)))
    try:
        res["frontend_fwd_bwd_graph_ms"] = graph_ms(
            lambda: (att.forward(x, y, stats), att.backward(x, y, dy, stats, dqkv)))
        dqkv2 = torch.zeros_like(dqkv)
        graph_ms(lambda: att.backward(x, y, dy, stats, dqkv2), reps=1)
        res["graph_replay_equal"] = bool(torch.equal(dqkv2, dqkv))
    except Exception as e:  # noqa: BLE001
        res["graph_error"] = repr(e)[-600:]
    print(res, flush=True)
    with open(os.path.join(OUT, "cudnn_attention.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()

"""Causal attention for bf16 training through the cuDNN frontend (`pip install nvidia-cudnn-frontend`),
reading q, k, v from c_attn's packed (B, T, 3C) output and writing their gradients back into one
packed (B, T, 3C) tensor.

PyTorch's `scaled_dot_product_attention` already runs cuDNN's attention kernels on Hopper, but its
backward allocates dq, dk and dv as separate dense tensors, and autograd then copies them into the
packed gradient that c_attn's backward matmuls read: 1.17 ms per GPT-2 124M step at B=32, T=1024
(12 copies of 151 MB), about 2% of the step. cuDNN's graph API takes any strides for its outputs,
so here dq, dk and dv are strided views of the packed gradient and the copy never happens
(llm.c's cuDNN build does the same). Per layer, forward + backward inside a CUDA graph: 0.726 ms
against 0.824 ms for SDPA with autograd (H100); the whole default step: 0.9-1.1 ms faster.
The first call of a shape times every execution plan cuDNN offers and keeps the fastest (with
`tune_plans=False`, `pipeline train --cudnn-tune 0`: its heuristic's first choice).

The frontend is an optional package. It loads the same libcudnn that PyTorch loaded (its own
search misses the CUDA 13 wheels' layout). `available()` builds the graphs for the training shape
and checks them once against PyTorch's SDPA; the trainer keeps SDPA when the package is missing,
or the check fails. The two ops are `torch.library` custom ops with
reference math off CUDA (what the CPU tests run), so torch.compile and CUDA graphs treat them as
opaque kernels: each call sets the frontend handle's stream to PyTorch's current stream and takes
its workspace from PyTorch's allocator, which a graph capture redirects to the graph's pool.
As with PyTorch's cuDNN attention, dq is accumulated with atomics: not bitwise reproducible.
"""
from __future__ import annotations

import ctypes
import functools
import math
import threading
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

_lock = threading.Lock()
_reasons: Dict[int, str] = {}


def _torch_libcudnn() -> Optional[str]:
    """Path of the libcudnn PyTorch has loaded (after making it run one cuDNN attention)."""
    q = torch.zeros(1, 1, 64, 64, device="cuda", dtype=torch.bfloat16)
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            F.scaled_dot_product_attention(q, q, q, is_causal=True)
    except RuntimeError:  # cuDNN attention off in this build: it may still be loaded
        pass
    torch.backends.cudnn.version()
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({ln.split()[-1] for ln in maps if "libcudnn.so" in ln and ln.split()[-1].startswith("/")})
    except OSError:
        return None
    return paths[0] if paths else None


@functools.lru_cache(maxsize=None)
def _frontend():
    """The `cudnn` frontend module bound to PyTorch's libcudnn, or the reason it can't be had (str)."""
    if not torch.cuda.is_available():
        return "no CUDA"
    libcudnn = _torch_libcudnn()
    original = ctypes.CDLL

    def cdll(name, *args, **kwargs):  # the frontend's fallback dlopen("libcudnn.so") -> torch's copy
        if name == "libcudnn.so" and libcudnn:
            name = libcudnn
        return original(name, *args, **kwargs)
    ctypes.CDLL = cdll
    try:
        import cudnn
    except ImportError:
        return "the cuDNN frontend is not installed (pip install nvidia-cudnn-frontend)"
    except OSError as e:
        return "the cuDNN frontend could not load libcudnn: %s" % e
    finally:
        ctypes.CDLL = original
    return cudnn


class _Graphs:
    """cuDNN's forward and backward attention graphs for one (B, T, heads, head_dim) on one GPU."""

    def __init__(self, cudnn, handle, B: int, T: int, H: int, hd: int, device: torch.device,
                 tune_plans: bool = True):
        self.cudnn, self.handle, self.shape = cudnn, handle, (B, T, H, hd)
        dt = cudnn.data_type
        scale = 1.0 / math.sqrt(hd)
        # Example tensors: only their shapes and strides shape the graphs.
        qkv = torch.empty(B, T, 3 * H * hd, device=device, dtype=torch.bfloat16)
        y = torch.empty(B, T, H * hd, device=device, dtype=torch.bfloat16)
        stats = torch.empty(B, H, T, 1, device=device, dtype=torch.float32)
        q, k, v = self.split(qkv)
        o = self.heads(y)

        fwd = cudnn.pygraph(io_data_type=dt.BFLOAT16, intermediate_data_type=dt.FLOAT,
                            compute_data_type=dt.FLOAT, handle=handle)
        tq, tk, tv = fwd.tensor_like(q), fwd.tensor_like(k), fwd.tensor_like(v)
        to, tstats = fwd.sdpa(name="attention", q=tq, k=tk, v=tv, is_inference=False,
                              attn_scale=scale, use_causal_mask=True)
        to.set_output(True).set_dim(list(o.shape)).set_stride(list(o.stride()))
        tstats.set_output(True).set_data_type(dt.FLOAT)
        # Tuning builds every candidate plan and runs the fastest by index; without it only cuDNN's
        # first choice is built, which `execute` runs. (With every plan built, plain `execute` ran
        # slower plans: 62.4 ms per default step against 55.6 tuned, H100.)
        tune = tune_plans and not torch.cuda.is_current_stream_capturing()
        self.forward_graph, self.forward_tensors = self._build(fwd, tune), (tq, tk, tv, to, tstats)

        bwd = cudnn.pygraph(io_data_type=dt.BFLOAT16, intermediate_data_type=dt.FLOAT,
                            compute_data_type=dt.FLOAT, handle=handle)
        bq, bk, bv, bo, bdo = (bwd.tensor_like(t) for t in (q, k, v, o, o))
        bstats = bwd.tensor_like(stats)
        dq, dk, dv = bwd.sdpa_backward(name="attention_backward", q=bq, k=bk, v=bv, o=bo, dO=bdo,
                                       stats=bstats, attn_scale=scale, use_causal_mask=True)
        for grad, like in zip((dq, dk, dv), (q, k, v)):  # strided views of the packed gradient
            grad.set_output(True).set_dim(list(like.shape)).set_stride(list(like.stride()))
        self.backward_graph = self._build(bwd, tune)
        self.backward_tensors = (bq, bk, bv, bo, bdo, bstats, dq, dk, dv)
        # (plan index or None for cuDNN's heuristic choice, workspace bytes) per direction
        self.forward_plan = (None, self.forward_graph.get_workspace_size())
        self.backward_plan = (None, self.backward_graph.get_workspace_size())
        self.tuning: Dict[str, dict] = {}
        if tune:
            self._tune(device)

    def _build(self, graph, all_plans: bool):
        graph.validate()
        graph.build_operation_graph()
        graph.create_execution_plans([self.cudnn.heur_mode.A, self.cudnn.heur_mode.FALLBACK])
        graph.check_support()
        graph.build_plans(self.cudnn.build_plan_policy.ALL if all_plans else
                          self.cudnn.build_plan_policy.HEURISTICS_CHOICE)
        return graph

    def _tune(self, device: torch.device) -> None:
        """Time every built plan of both graphs on random data of this shape and keep the fastest:
        as with matmuls, cuDNN's heuristic does not always rank its own engines right."""
        B, T, H, hd = self.shape
        gen = torch.Generator(device=device).manual_seed(0)
        qkv = torch.randn(B, T, 3 * H * hd, device=device, generator=gen).bfloat16()
        dy = torch.randn(B, T, H * hd, device=device, generator=gen).bfloat16()
        y = torch.empty(B, T, H * hd, device=device, dtype=torch.bfloat16)
        stats = torch.empty(B, H, T, 1, device=device, dtype=torch.float32)
        dqkv = torch.empty_like(qkv)
        self.forward_plan = self._fastest("forward", self.forward_graph, self._forward_buffers(qkv, y, stats))
        self.forward(qkv, y, stats)  # the backward plans then time on real outputs and statistics
        self.backward_plan = self._fastest("backward", self.backward_graph,
                                           self._backward_buffers(qkv, y, dy, stats, dqkv))

    def _fastest(self, name, graph, buffers):
        count = graph.get_execution_plan_count()
        stream = torch.cuda.current_stream()
        self.cudnn.set_stream(handle=self.handle, stream=stream.cuda_stream)
        times, names = [], []
        for index in range(count):
            names.append(graph.get_plan_name_at_index(index))
            try:
                workspace = torch.empty(max(graph.get_workspace_size_plan_at_index(index), 1),
                                        device=stream.device, dtype=torch.uint8)
                graph.execute_plan_at_index(buffers, workspace, index, handle=self.handle)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record(stream)
                for _ in range(3):
                    graph.execute_plan_at_index(buffers, workspace, index, handle=self.handle)
                end.record(stream)
                end.synchronize()
                times.append(start.elapsed_time(end) / 3)
            except Exception:  # noqa: BLE001  (a plan that did not build, or cannot run here)
                torch.cuda.synchronize()
                times.append(float("inf"))
        best = min(range(count), key=times.__getitem__, default=0)
        self.tuning[name] = dict(plans=names, ms=times, chosen=best)
        if not times or times[best] == float("inf"):
            raise RuntimeError("no cuDNN %s attention plan ran at %s" % (name, self.shape))
        return best, graph.get_workspace_size_plan_at_index(best)

    def split(self, packed: torch.Tensor):
        """(B, T, 3C) -> q, k, v as (B, heads, T, head_dim) views."""
        B, T, H, hd = self.shape
        return [t.view(B, T, H, hd).transpose(1, 2) for t in packed.split(H * hd, dim=2)]

    def heads(self, y: torch.Tensor) -> torch.Tensor:
        B, T, H, hd = self.shape
        return y.view(B, T, H, hd).transpose(1, 2)

    def _run(self, graph, buffers, plan, like: torch.Tensor) -> None:
        index, workspace_bytes = plan
        stream = torch.cuda.current_stream(like.device).cuda_stream
        self.cudnn.set_stream(handle=self.handle, stream=stream)
        workspace = torch.empty(max(workspace_bytes, 1), device=like.device, dtype=torch.uint8)
        if index is None:
            graph.execute(buffers, workspace, handle=self.handle)
        else:
            graph.execute_plan_at_index(buffers, workspace, index, handle=self.handle)

    def _forward_buffers(self, qkv, y, stats) -> dict:
        tq, tk, tv, to, tstats = self.forward_tensors
        q, k, v = self.split(qkv)
        return {tq: q, tk: k, tv: v, to: self.heads(y), tstats: stats}

    def _backward_buffers(self, qkv, y, dy, stats, dqkv) -> dict:
        bq, bk, bv, bo, bdo, bstats, dq, dk, dv = self.backward_tensors
        q, k, v = self.split(qkv)
        gq, gk, gv = self.split(dqkv)
        return {bq: q, bk: k, bv: v, bo: self.heads(y), bdo: self.heads(dy), bstats: stats,
                dq: gq, dk: gk, dv: gv}

    def forward(self, qkv, y, stats) -> None:
        self._run(self.forward_graph, self._forward_buffers(qkv, y, stats), self.forward_plan, qkv)

    def backward(self, qkv, y, dy, stats, dqkv) -> None:
        self._run(self.backward_graph, self._backward_buffers(qkv, y, dy, stats, dqkv), self.backward_plan, qkv)


_handles: Dict[int, object] = {}
_graphs: Dict[Tuple[int, int, int, int, int], _Graphs] = {}


def _graphs_for(qkv: torch.Tensor, n_head: int, tune_plans: bool = True) -> _Graphs:
    cudnn = _frontend()
    if isinstance(cudnn, str):
        raise RuntimeError(cudnn)
    B, T, C3 = qkv.shape
    hd = C3 // 3 // n_head
    index = qkv.device.index
    key = (index, B, T, n_head, hd)
    with _lock:
        if key not in _graphs:
            with torch.cuda.device(index):
                if index not in _handles:
                    _handles[index] = cudnn.create_handle()
                _graphs[key] = _Graphs(cudnn, _handles[index], B, T, n_head, hd, qkv.device, tune_plans)
        return _graphs[key]


# ----- reference math (CPU, and the definition the GPU path is checked against) -----

def _heads(packed: torch.Tensor, n_head: int):
    B, T, C3 = packed.shape
    hd = C3 // 3 // n_head
    return [t.view(B, T, n_head, hd).transpose(1, 2).float() for t in packed.split(C3 // 3, dim=2)]


def _scores(q, k):
    T = q.size(2)
    s = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return s.masked_fill(~causal, float("-inf"))


def _forward_reference(qkv: torch.Tensor, n_head: int):
    q, k, v = _heads(qkv, n_head)
    s = _scores(q, k)
    stats = torch.logsumexp(s, dim=-1, keepdim=True)  # (B, H, T, 1): what backward recomputes P from
    y = torch.exp(s - stats) @ v
    B, T, C3 = qkv.shape
    return y.transpose(1, 2).reshape(B, T, C3 // 3).to(qkv.dtype), stats


def _backward_reference(qkv, y, stats, dy, n_head: int):
    q, k, v = _heads(qkv, n_head)
    B, T, C3 = qkv.shape
    hd = C3 // 3 // n_head
    o = y.view(B, T, n_head, hd).transpose(1, 2).float()
    do = dy.view(B, T, n_head, hd).transpose(1, 2).float()
    p = torch.exp(_scores(q, k) - stats)
    dv = p.transpose(-2, -1) @ do
    ds = p * (do @ v.transpose(-2, -1) - (do * o).sum(-1, keepdim=True)) / math.sqrt(hd)
    dq, dk = ds @ k, ds.transpose(-2, -1) @ q
    return torch.cat([g.transpose(1, 2).reshape(B, T, C3 // 3) for g in (dq, dk, dv)], 2).to(qkv.dtype)


attention_forward = torch.library.custom_op(
    "gpt::cudnn_attention_forward", _forward_reference, mutates_args=(),
    schema="(Tensor qkv, int n_head) -> (Tensor, Tensor)")


@attention_forward.register_fake
def _(qkv, n_head):
    B, T, C3 = qkv.shape
    return qkv.new_empty((B, T, C3 // 3)), qkv.new_empty((B, n_head, T, 1), dtype=torch.float32)


@attention_forward.register_kernel("cuda")
def _(qkv, n_head):
    qkv = qkv.contiguous()
    B, T, C3 = qkv.shape
    y = qkv.new_empty((B, T, C3 // 3))
    stats = torch.empty((B, n_head, T, 1), device=qkv.device, dtype=torch.float32)
    _graphs_for(qkv, n_head).forward(qkv, y, stats)
    return y, stats


attention_backward = torch.library.custom_op(
    "gpt::cudnn_attention_backward", _backward_reference, mutates_args=(),
    schema="(Tensor qkv, Tensor y, Tensor stats, Tensor dy, int n_head) -> Tensor")


@attention_backward.register_fake
def _(qkv, y, stats, dy, n_head):
    return qkv.new_empty(qkv.shape)


@attention_backward.register_kernel("cuda")
def _(qkv, y, stats, dy, n_head):
    qkv, y, dy = qkv.contiguous(), y.contiguous(), dy.contiguous()
    dqkv = torch.empty_like(qkv)
    _graphs_for(qkv, n_head).backward(qkv, y, dy, stats, dqkv)
    return dqkv


def _setup(ctx, inputs, output):
    qkv, n_head = inputs
    y, stats = output
    ctx.n_head = n_head
    ctx.save_for_backward(qkv, y, stats)


def _backward(ctx, dy, dstats):
    qkv, y, stats = ctx.saved_tensors
    return attention_backward(qkv, y, stats, dy, ctx.n_head), None


attention_forward.register_autograd(_backward, setup_context=_setup)


def attention(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    """Causal self-attention from packed (B, T, 3C) q|k|v to (B, T, C), heads concatenated."""
    return attention_forward(qkv, n_head)[0]


# ----- availability -----

def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _self_check(device: torch.device, B: int, T: int, H: int, hd: int) -> Optional[str]:
    """None if the frontend's output and packed gradient match PyTorch's SDPA at this shape."""
    C = H * hd
    gen = torch.Generator(device=device).manual_seed(0)
    qkv = torch.randn(B, T, 3 * C, device=device, generator=gen).bfloat16().requires_grad_(True)
    dy = torch.randn(B, T, C, device=device, generator=gen).bfloat16()
    q, k, v = (t.view(B, T, H, hd).transpose(1, 2) for t in qkv.split(C, dim=2))
    y_ref = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
    (g_ref,) = torch.autograd.grad(y_ref, qkv, dy)
    x = qkv.detach().requires_grad_(True)
    y = attention(x, H)
    (g,) = torch.autograd.grad(y, x, dy)
    errors = (_rel(y, y_ref), _rel(g, g_ref))
    if not all(e < 2e-2 for e in errors):  # both bf16; they differ by a few roundings at most
        return "self-check against SDPA failed (relative errors: output %.2e, gradient %.2e)" % errors
    return None


def available(device: torch.device, batch: int, seq_len: int, n_head: int, head_dim: int,
              tune_plans: bool = True) -> bool:
    """True if the frontend's attention builds for this training shape and its output and packed
    gradient match PyTorch's SDPA there. Cached per device and shape. `tune_plans`: time every
    execution plan for the shape and keep the fastest (else cuDNN's heuristic first choice)."""
    key = (device.index or 0, batch, seq_len, n_head, head_dim)
    if key in _checked:
        return _checked[key]
    ok = False
    cudnn = _frontend() if device.type == "cuda" else "%s is not a CUDA device" % device
    if isinstance(cudnn, str):
        _reasons[key[0]] = cudnn
    else:
        try:
            # at the training shape itself: builds (and times) the graphs and plans the steps will
            # use now rather than mid-capture, and checks exactly those
            like = torch.empty(batch, seq_len, 3 * n_head * head_dim, device=device, dtype=torch.bfloat16)
            _graphs_for(like, n_head, tune_plans)
            reason = _self_check(device, batch, seq_len, n_head, head_dim)
            ok = reason is None
            if reason:
                _reasons[key[0]] = reason
        except Exception as e:  # noqa: BLE001  (cudnnGraphNotSupportedError, CUDA errors, ...)
            _reasons[key[0]] = "cuDNN frontend attention unavailable: %s" % (str(e).splitlines() or [repr(e)])[0]
    _checked[key] = ok
    return ok


_checked: Dict[Tuple[int, int, int, int, int], bool] = {}


def unavailable_reason(device_index: int = 0) -> str:
    return _reasons.get(device_index, "")

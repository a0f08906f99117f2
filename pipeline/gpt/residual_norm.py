"""The residual add and the layernorm after it as one op, as llm.c's bf16 trainer does it.

Every block adds two branch outputs to the residual stream, and each sum feeds a layernorm:
`x1 = x0 + attn(...) + b_attn_proj; h = ln_2(x1)` and `x2 = x1 + mlp(...) + b_mlp_proj;
h = ln_1(x2)` of the next block (ln_f after the last). `residual_norm` computes both in one pass
over the rows: the new residual stream (bf16, what the next add reads), the normalised output
(bf16, optionally in cuBLASLt's ones-column layout, `cublaslt.with_ones`) and each row's mean and
1/std for the backward.

Why not leave this to torch.compile: inductor fuses the add into its layernorm kernel too, but its
backward finishes every weight and bias gradient with two ATen column sums over 2048 x 768
partial sums (a memset and a 10 us reduction each, 50 per step for d12), and the projections'
bias gradients are two more passes over the residual gradient. Here the backward kernel reads
each row once and accumulates, per program, all four column sums it owns: the layernorm's weight
and bias gradients, and the gradient of the residual add's bias, i.e. the branch projection's
bias (the projection matmul runs without one: its bias is added here). A second small kernel adds
the per-program partials (fixed order: the result is deterministic). Parameter gradients come
out in the parameters' dtype (float32), so no cast kernels follow.

Off CUDA (and without Triton) both ops run the reference math below; the CPU tests check it
against the plain model, and the GPU tests check the kernels against it.
"""
from __future__ import annotations

import functools
import importlib.util
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 math for bf16/fp16/fp32 tensors, float64 for float64 (gradcheck)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _ones_pad(rows: int, pad: int, like: torch.Tensor) -> torch.Tensor:
    block = like.new_zeros((rows, pad))
    block[:, 0] = 1
    return block


def _forward_reference(x, y, bias, weight, ln_bias, width, eps):
    acc = _acc_dtype(x)
    C = x.size(1)
    x_new = (x.to(acc) + y.to(acc) + bias.to(acc)).to(x.dtype)
    xf = x_new.to(acc)
    mean = xf.mean(1)
    rstd = torch.rsqrt(xf.var(1, unbiased=False) + eps)
    h = F.layer_norm(xf, (C,), weight.to(acc), ln_bias.to(acc), eps).to(x.dtype)
    if width > C:
        h = torch.cat([h, _ones_pad(h.size(0), width - C, h)], 1)
    return x_new, h, mean, rstd


residual_norm_forward = torch.library.custom_op(
    "gpt::residual_norm_forward", _forward_reference, mutates_args=(),
    schema="(Tensor x, Tensor y, Tensor bias, Tensor weight, Tensor ln_bias, int width, float eps)"
           " -> (Tensor, Tensor, Tensor, Tensor)")


@residual_norm_forward.register_fake
def _(x, y, bias, weight, ln_bias, width, eps):
    acc = _acc_dtype(x)
    M = x.size(0)
    return (x.new_empty(x.shape), x.new_empty((M, width)), x.new_empty((M,), dtype=acc),
            x.new_empty((M,), dtype=acc))


def _backward_reference(g_x, g_h, x_new, mean, rstd, weight):
    acc = _acc_dtype(x_new)
    C = x_new.size(1)
    gh = g_h[:, :C].to(acc)
    xhat = (x_new.to(acc) - mean[:, None]) * rstd[:, None]
    wdy = gh * weight.to(acc)
    c1 = (xhat * wdy).mean(1, keepdim=True)
    c2 = wdy.mean(1, keepdim=True)
    g = (wdy - xhat * c1 - c2) * rstd[:, None]
    if g_x is not None:
        g = g + g_x.to(acc)
    return (g.to(x_new.dtype), g.sum(0).to(weight.dtype), (gh * xhat).sum(0).to(weight.dtype),
            gh.sum(0).to(weight.dtype))


# (gradient of the residual stream [= of x and of y], of the add's bias, of the layernorm's
# weight, of its bias). g_x: the gradient arriving at the new residual stream (None where nothing
# downstream reads it: the last block's, which only feeds ln_f).
residual_norm_backward = torch.library.custom_op(
    "gpt::residual_norm_backward", _backward_reference, mutates_args=(),
    schema="(Tensor? g_x, Tensor g_h, Tensor x_new, Tensor mean, Tensor rstd, Tensor weight)"
           " -> (Tensor, Tensor, Tensor, Tensor)")


@residual_norm_backward.register_fake
def _(g_x, g_h, x_new, mean, rstd, weight):
    C = x_new.size(1)
    return (x_new.new_empty(x_new.shape), weight.new_empty((C,)), weight.new_empty((C,)),
            weight.new_empty((C,)))


def _setup(ctx, inputs, output):
    x, y, bias, weight, ln_bias, width, eps = inputs
    x_new, h, mean, rstd = output
    ctx.save_for_backward(x_new, mean, rstd, weight)
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not a zero tensor


def _backward(ctx, g_x, g_h, g_mean, g_rstd):
    x_new, mean, rstd, weight = ctx.saved_tensors
    if g_h is None:  # nothing read the normalised output: only the residual add is differentiated
        g = g_x if g_x is not None else torch.zeros_like(x_new)
        return g, g, g.sum(0, dtype=weight.dtype), None, None, None, None
    g, d_bias, d_weight, d_ln_bias = residual_norm_backward(g_x, g_h, x_new, mean, rstd, weight)
    return g, g, d_bias, d_weight, d_ln_bias, None, None


residual_norm_forward.register_autograd(_backward, setup_context=_setup)


def residual_norm(x: torch.Tensor, y: torch.Tensor, bias: torch.Tensor, ln: torch.nn.LayerNorm,
                  width: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x + y + bias, ln(x + y + bias)): x the residual stream, y a branch output (..., C), bias
    the branch projection's bias. Returns the new residual stream (x's dtype) and the layernorm
    output in x's dtype, `width` columns wide (> C: cuBLASLt's ones-column layout)."""
    shape = x.shape
    C = shape[-1]
    x_new, h, _, _ = residual_norm_forward(x.reshape(-1, C), y.reshape(-1, C).to(x.dtype), bias,
                                           ln.weight, ln.bias, width or C, ln.eps)
    return x_new.view(shape), h.view(*shape[:-1], h.size(-1))


def kernel_matches(device: torch.device) -> bool:
    """Whether the forward kernel runs on `device` and matches PyTorch's add + layernorm (float32
    operands; C = 96, not a power of two, exercises the masked tail)."""
    if device.type != "cuda" or not _triton_ok():
        return False
    try:
        import torch.nn.functional as F
        g = torch.Generator(device="cpu").manual_seed(0)
        C = 96
        x, y, w, b, lw, lb = (torch.randn(shape, generator=g).to(device)
                              for shape in ((5, C), (5, C), (C, C), (C,), (C,), (C,)))
        want_x = x + F.linear(y, w, b)
        want_h = F.layer_norm(want_x, (C,), lw, lb, 1e-5)
        got_x, got_h, _, _ = residual_norm_forward(x, F.linear(y, w), b, lw, lb, C, 1e-5)
        return bool(torch.allclose(got_x, want_x, rtol=1e-5, atol=1e-5)
                    and torch.allclose(got_h, want_h, rtol=1e-4, atol=1e-4))
    except Exception:  # any compile/launch failure: the caller uses PyTorch's ops
        return False


# ----------------------------------------------------------------------------- CUDA kernels

# Launch shapes (rows per program step, warps, programs per SM for the backward). Forward: the
# fastest of a sweep of launch shapes on an H100. Backward: the fastest of a CUDA-graph-timed sweep
# (91 us per call at B=32, T=1024 against 105 us at ROWS=4).
FORWARD_LAUNCH = dict(ROWS=2, num_warps=4)
BACKWARD_LAUNCH = dict(ROWS=8, num_warps=4, per_sm=2)
SUM_LAUNCH = dict(BLOCK_P=64, BLOCK_N=64, num_warps=4)  # many small programs: a few KB of partials each


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _triton_ok(*tensors: torch.Tensor) -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    return all(t.dtype in (torch.bfloat16, torch.float16, torch.float32) for t in tensors)


@functools.lru_cache(maxsize=None)
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def forward_kernel(x_ptr, y_ptr, bias_ptr, w_ptr, b_ptr, xnew_ptr, h_ptr, mean_ptr, rstd_ptr,
                       M, C, h_stride, eps, PAD: tl.constexpr, PAD_BLOCK: tl.constexpr,
                       BLOCK_C: tl.constexpr, ROWS: tl.constexpr):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK_C)
        row_ok = rows < M
        mask = row_ok[:, None] & (cols < C)[None, :]
        offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
        s = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) \
            + tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32) \
            + tl.load(bias_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)[None, :]
        x_new = s.to(xnew_ptr.dtype.element_ty)
        tl.store(xnew_ptr + offs, x_new, mask=mask)
        xf = x_new.to(tl.float32)  # normalise what the residual stream holds (rounded)
        mean = tl.sum(xf, axis=1) / C
        d = tl.where(mask, xf - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / C + eps)
        w = tl.load(w_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=cols < C, other=0.0).to(tl.float32)
        h = d * rstd[:, None] * w[None, :] + b[None, :]
        h_rows = h_ptr + rows.to(tl.int64)[:, None] * h_stride
        tl.store(h_rows + cols[None, :], h.to(h_ptr.dtype.element_ty), mask=mask)
        if PAD > 0:  # cuBLASLt's ones column, then zeros
            pcols = tl.arange(0, PAD_BLOCK)
            ones = tl.where(pcols == 0, 1.0, 0.0)
            pmask = row_ok[:, None] & (pcols < PAD)[None, :]
            tl.store(h_rows + C + pcols[None, :],
                     (tl.zeros([ROWS, PAD_BLOCK], tl.float32) + ones[None, :]).to(h_ptr.dtype.element_ty),
                     mask=pmask)
        tl.store(mean_ptr + rows, mean, mask=row_ok)
        tl.store(rstd_ptr + rows, rstd, mask=row_ok)

    @triton.jit
    def backward_kernel(gx_ptr, gh_ptr, xnew_ptr, mean_ptr, rstd_ptr, w_ptr, g_ptr, partial_ptr,
                        M, C, gh_stride, steps, HAS_GX: tl.constexpr, BLOCK_C: tl.constexpr,
                        ROWS: tl.constexpr):
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK_C)
        col_ok = cols < C
        w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        acc_bias = tl.zeros([BLOCK_C], tl.float32)
        acc_w = tl.zeros([BLOCK_C], tl.float32)
        acc_b = tl.zeros([BLOCK_C], tl.float32)
        for step in range(0, steps):  # program p takes rows p*ROWS.., then (p + programs)*ROWS..
            rows = (step * tl.num_programs(0) + pid) * ROWS + tl.arange(0, ROWS)
            row_ok = rows < M
            mask = row_ok[:, None] & col_ok[None, :]
            rows64 = rows.to(tl.int64)[:, None]
            offs = rows64 * C + cols[None, :]
            gh = tl.load(gh_ptr + rows64 * gh_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            xf = tl.load(xnew_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
            rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
            xhat = tl.where(mask, (xf - mean[:, None]) * rstd[:, None], 0.0)
            wdy = gh * w[None, :]
            c1 = tl.sum(xhat * wdy, axis=1) / C
            c2 = tl.sum(wdy, axis=1) / C
            g = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
            if HAS_GX:
                g += tl.load(gx_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            g = tl.where(mask, g, 0.0)
            tl.store(g_ptr + offs, g.to(g_ptr.dtype.element_ty), mask=mask)
            acc_bias += tl.sum(g, axis=0)
            acc_w += tl.sum(gh * xhat, axis=0)
            acc_b += tl.sum(gh, axis=0)
        base = partial_ptr + pid * 3 * C
        tl.store(base + cols, acc_bias, mask=col_ok)
        tl.store(base + C + cols, acc_w, mask=col_ok)
        tl.store(base + 2 * C + cols, acc_b, mask=col_ok)

    @triton.jit
    def sum_partials_kernel(partial_ptr, bias_ptr, w_ptr, b_ptr, P, C, BLOCK_P: tl.constexpr,
                            BLOCK_N: tl.constexpr):
        # program (which, j): columns j*BLOCK_N... of partial sum `which` (0 bias, 1 weight, 2 ln bias)
        which = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros([BLOCK_N], tl.float32)
        for p0 in range(0, P, BLOCK_P):
            ps = p0 + tl.arange(0, BLOCK_P)
            m = (ps < P)[:, None] & (cols < C)[None, :]
            acc += tl.sum(tl.load(partial_ptr + ps[:, None] * 3 * C + which * C + cols[None, :],
                                  mask=m, other=0.0), axis=0)
        if which == 0:
            tl.store(bias_ptr + cols, acc.to(bias_ptr.dtype.element_ty), mask=cols < C)
        elif which == 1:
            tl.store(w_ptr + cols, acc.to(w_ptr.dtype.element_ty), mask=cols < C)
        else:
            tl.store(b_ptr + cols, acc.to(b_ptr.dtype.element_ty), mask=cols < C)

    return forward_kernel, backward_kernel, sum_partials_kernel


def _forward_triton(x, y, bias, weight, ln_bias, width, eps):
    import triton
    x, y = x.contiguous(), y.contiguous()
    M, C = x.shape
    x_new = torch.empty_like(x)
    h = x.new_empty((M, width))
    mean = x.new_empty((M,), dtype=torch.float32)
    rstd = x.new_empty((M,), dtype=torch.float32)
    launch = dict(FORWARD_LAUNCH)
    rows = launch.pop("ROWS")
    if M < 2 * rows * _sm_count(x.device.index):  # decoding (a row per sequence): one row a program
        rows = 1
    pad = width - C
    _kernels()[0][(triton.cdiv(M, rows),)](
        x, y, bias, weight, ln_bias, x_new, h, mean, rstd, M, C, width, eps,
        PAD=pad, PAD_BLOCK=max(triton.next_power_of_2(max(pad, 1)), 16),
        BLOCK_C=triton.next_power_of_2(C), ROWS=rows, **launch)
    return x_new, h, mean, rstd


def _backward_triton(g_x, g_h, x_new, mean, rstd, weight, programs=None):
    import triton
    _, backward_kernel, sum_partials_kernel = _kernels()
    x_new = x_new.contiguous()
    M, C = x_new.shape
    launch = dict(BACKWARD_LAUNCH)
    rows, per_sm = launch.pop("ROWS"), launch.pop("per_sm")
    if programs is None:
        programs = min(triton.cdiv(M, rows), per_sm * _sm_count(x_new.device.index))
    g = torch.empty_like(x_new)
    partial = x_new.new_empty((programs, 3 * C), dtype=torch.float32)
    gx = g_x.contiguous() if g_x is not None else x_new  # unread when HAS_GX is off
    backward_kernel[(programs,)](gx, g_h, x_new, mean, rstd, weight, g, partial, M, C, g_h.stride(0),
                                 triton.cdiv(M, programs * rows),
                                 HAS_GX=g_x is not None, BLOCK_C=triton.next_power_of_2(C),
                                 ROWS=rows, **launch)
    d_bias, d_weight, d_ln_bias = (weight.new_empty((C,)) for _ in range(3))
    sum_partials_kernel[(3, triton.cdiv(C, SUM_LAUNCH["BLOCK_N"]))](
        partial, d_bias, d_weight, d_ln_bias, programs, C, **SUM_LAUNCH)
    return g, d_bias, d_weight, d_ln_bias


@residual_norm_forward.register_kernel("cuda")
def _(x, y, bias, weight, ln_bias, width, eps):
    if not _triton_ok(x, y, bias, weight, ln_bias):
        return _forward_reference(x, y, bias, weight, ln_bias, width, eps)
    return _forward_triton(x, y, bias, weight, ln_bias, width, eps)


@residual_norm_backward.register_kernel("cuda")
def _(g_x, g_h, x_new, mean, rstd, weight):
    tensors = (g_h, x_new, weight) + (() if g_x is None else (g_x,))
    if not _triton_ok(*tensors) or g_h.stride(1) != 1:
        return _backward_reference(g_x, g_h, x_new, mean, rstd, weight)
    return _backward_triton(g_x, g_h, x_new, mean, rstd, weight)

"""The fused classifier loss of the fast path: `linear_cross_entropy`, the same value and gradients
as `GPT.loss(lm_head(x), targets)` (pipeline/gpt/model.py) without ever keeping the logits.

Which kernel computes the softmax gradient is the plan's `loss_kernel` (pipeline/gpt/fast/plan.py):
"cuda" (Hopper's one-read kernel, pipeline/gpt/loss_kernel.py, Triton where a shape does not suit
it), "triton" (two passes over each row), or "torch" (the reference math below, still in one op).
"""
from __future__ import annotations

import functools

import torch

LOSS_KERNELS = ("cuda", "triton", "torch")

# The classifier is the step's largest memory-bound piece: (B*T) x 50304 logits. Autograd's cross
# entropy reads them in the forward and again in the backward, where it writes the gradient. Like
# llm.c's fused classifier, `linear_cross_entropy` computes the loss and the softmax gradient in
# one kernel during the forward pass, writing the gradient over the logits (no second buffer): one
# read for the row's log-sum-exp, one read (mostly from L2) and one write for the gradient. The
# backward is then only the classifier's two matmuls.

def _cross_entropy_grad_reference(logits, targets, vocab_size):
    """Per-row loss (float32); overwrites logits with d(loss_row)/d(logits) = softmax - onehot.

    Columns >= vocab_size (llm.c's padding) get probability 0 and gradient 0. Reference version,
    used off CUDA; on CUDA the Triton kernel below does the same.
    """
    lf = logits.float()
    cols = torch.arange(lf.size(-1), device=lf.device)
    lf = lf.masked_fill(cols >= vocab_size, float("-inf"))
    lse = torch.logsumexp(lf, dim=-1)
    losses = lse - lf.gather(1, targets.view(-1, 1)).squeeze(1)
    logits.copy_(torch.exp(lf - lse[:, None]) - (cols == targets.view(-1, 1)).float())
    return losses


# An opaque op for torch.compile: inductor schedules the kernel as one unit, and since the logits
# are an intermediate nobody else reads, it lets the op overwrite them in place.
def _cross_entropy_grad_off_cuda(logits, targets, vocab_size, kernel):
    return _cross_entropy_grad_reference(logits, targets, vocab_size)


cross_entropy_grad_ = torch.library.custom_op(
    "gpt::cross_entropy_grad_", _cross_entropy_grad_off_cuda, mutates_args=("logits",),
    schema="(Tensor(a!) logits, Tensor targets, int vocab_size, str kernel) -> Tensor")


@cross_entropy_grad_.register_fake
def _(logits, targets, vocab_size, kernel):
    return logits.new_empty(logits.shape[:1], dtype=torch.float32)


# BLOCK columns per loop iteration; per_sm > 0: that many programs per SM, each looping over rows
# (fewer rows in flight, so the second read of a row hits L2); 0: one program per row.
CE_LAUNCH = dict(BLOCK=4096, num_warps=16, per_sm=0)  # fastest of bench_train.py --fused-check, H100


@cross_entropy_grad_.register_kernel("cuda")
def _(logits, targets, vocab_size, kernel):
    from pipeline.gpt import loss_kernel
    assert logits.is_contiguous() and logits.dim() == 2
    n, width = logits.shape
    losses = torch.empty(n, dtype=torch.float32, device=logits.device)
    targets = targets.contiguous()
    # "cuda": Hopper's one-read kernel (pipeline/gpt/loss_kernel.py), Triton's two-pass for a
    # shape it does not take; "torch": the reference math, still on the GPU
    if kernel == "cuda" and loss_kernel.launch(logits, targets, losses, vocab_size):
        return losses
    if kernel == "torch":
        return _cross_entropy_grad_reference(logits, targets, vocab_size)
    ce_kernel = _triton_ce_kernel()
    launch = dict(CE_LAUNCH)
    per_sm = launch.pop("per_sm")
    programs = n if per_sm <= 0 else min(n, per_sm * _sm_count(logits.device.index))
    ce_kernel[(programs,)](logits, targets, losses, n, width, vocab_size, **launch)
    return losses


@functools.lru_cache(maxsize=None)
def _sm_count(index):
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.lru_cache(maxsize=None)
def _triton_ce_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def ce_kernel(logits_ptr, targets_ptr, losses_ptr, n_rows, width, vocab, BLOCK: tl.constexpr):
        for row in range(tl.program_id(0), n_rows, tl.num_programs(0)):
            ptr = logits_ptr + row.to(tl.int64) * width
            # Pass 1: running max and rescaled sum of exp per lane (online softmax), so the row is
            # read once for its log-sum-exp. The finite start keeps lanes that see no data at 0.
            m = tl.full([BLOCK], -1e30, tl.float32)
            s = tl.zeros([BLOCK], tl.float32)
            for start in range(0, vocab, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                x = tl.load(ptr + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
                m_new = tl.maximum(m, x)
                s = s * tl.exp(m - m_new) + tl.exp(x - m_new)
                m = m_new
            row_max = tl.max(m, axis=0)
            lse = row_max + tl.log(tl.sum(s * tl.exp(m - row_max), axis=0))
            target = tl.load(targets_ptr + row)
            tl.store(losses_ptr + row, lse - tl.load(ptr + target).to(tl.float32))
            # Pass 2: softmax - onehot over the full padded width (padding gets exactly 0),
            # written over the logits block it was computed from.
            for start in range(0, width, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                x = tl.load(ptr + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
                g = tl.exp(x - lse) - (cols == target).to(tl.float32)
                tl.store(ptr + cols, g.to(logits_ptr.dtype.element_ty), mask=cols < width)

    return ce_kernel


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, targets, vocab_size, tuned, kernel):
        # The dtype autocast would give the classifier matmul (bf16 in training), explicitly:
        # backward runs outside autocast.
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) \
            else x.dtype
        xl = x.reshape(-1, x.size(-1)).to(dtype)
        wl = weight.to(dtype)
        if tuned:
            from pipeline.gpt.cublaslt import mm
        ctx.tuned = tuned
        # the logits, until the loss kernel overwrites them
        grad = mm(xl, wl, False, True) if tuned else torch.mm(xl, wl.t())
        losses = cross_entropy_grad_(grad, targets.reshape(-1), vocab_size, kernel)
        ctx.save_for_backward(xl, wl, grad)
        ctx.x_shape, ctx.x_dtype, ctx.w_dtype = x.shape, x.dtype, weight.dtype
        return losses.mean()

    @staticmethod
    def backward(ctx, grad_loss):
        xl, wl, grad = ctx.saved_tensors
        scale = grad_loss / grad.size(0)  # d(mean)/d(row loss), applied to the small outputs
        if ctx.tuned:
            from pipeline.gpt.cublaslt import mm
            dx, dw = mm(grad, wl, False, False), mm(grad, xl, True, False)
        else:
            dx, dw = torch.mm(grad, wl), torch.mm(grad.t(), xl)
        dx = (dx * scale).to(ctx.x_dtype).view(ctx.x_shape)
        dw = dw.to(ctx.w_dtype) * scale
        return dx, dw, None, None, None, None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         vocab_size: int, tuned: bool = False, kernel: str = "triton") -> torch.Tensor:
    """Mean cross-entropy of (x @ weight.T)[..., :vocab_size] against targets, never keeping the
    logits: the same value and gradients as `GPT.loss(lm_head(x), targets)`, up to rounding.
    `tuned`: the three matmuls through `pipeline.gpt.cublaslt.mm`; `kernel`: the softmax-gradient
    kernel on CUDA ("cuda", "triton" or "torch"; off CUDA always the reference math)."""
    if kernel not in LOSS_KERNELS:
        raise ValueError("loss kernel must be one of %s, got %r" % (LOSS_KERNELS, kernel))
    return _LinearCrossEntropy.apply(x, weight, targets, vocab_size, bool(tuned), kernel)


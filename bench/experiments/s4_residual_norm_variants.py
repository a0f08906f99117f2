"""Session-4 experiment (first run in session 5): two alternatives to the fused
residual + layernorm backward kernel of `pipeline/gpt/residual_norm.py`, which ran at about half
the memory bandwidth in the training step (96 us for ~200 MB at d12, B=32; 2 programs of 4 warps
per SM, each waiting for its loads every step):

- `prefetch`: each program loads the next step's rows before computing on the current ones
  (software pipelining by hand: the loads of step i+1 are in flight during step i's math);
- `deferred`: the three column sums accumulate per (row slot, column) and are reduced over the
  rows once at the end, instead of a cross-warp reduction (a barrier) every step.

Both restate the production kernel's row math on purpose (as helper functions, so that the two
variants share it); whichever wins replaces the production kernel's loop.

Each is timed (CUDA graphs, `graph_ms`) over launch shapes next to the production kernel, with
its errors against the reference math. `--interpret` checks the variants on small CPU tensors in
Triton's interpreter (TRITON_INTERPRET=1; no GPU)."""
import itertools
import json
import os
import sys

if "--interpret" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, "bench"); sys.path.insert(0, "bench/experiments"); sys.path.insert(0, ".")
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from pipeline.gpt import residual_norm as rn  # noqa: E402

OUT = os.environ.get("OUT", "/tmp/exp_out")


@triton.jit
def _load_rows(gx_ptr, gh_ptr, xnew_ptr, mean_ptr, rstd_ptr, rows, cols, M, C, gh_stride,
               HAS_GX: tl.constexpr):
    row_ok = rows < M
    mask = row_ok[:, None] & (cols < C)[None, :]
    rows64 = rows.to(tl.int64)[:, None]
    gh = tl.load(gh_ptr + rows64 * gh_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    xf = tl.load(xnew_ptr + rows64 * C + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_GX:
        gx = tl.load(gx_ptr + rows64 * C + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    else:
        gx = tl.zeros_like(xf)
    mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
    rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
    return gh, xf, gx, mean, rstd


@triton.jit
def _row_grad(gh, xf, gx, mean, rstd, w, mask, C):
    xhat = tl.where(mask, (xf - mean[:, None]) * rstd[:, None], 0.0)
    wdy = gh * w[None, :]
    c1 = tl.sum(xhat * wdy, axis=1) / C
    c2 = tl.sum(wdy, axis=1) / C
    g = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None] + gx
    return tl.where(mask, g, 0.0), xhat


@triton.jit
def backward_prefetch_kernel(gx_ptr, gh_ptr, xnew_ptr, mean_ptr, rstd_ptr, w_ptr, g_ptr, partial_ptr,
                             M, C, gh_stride, steps, HAS_GX: tl.constexpr, BLOCK_C: tl.constexpr,
                             ROWS: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < C
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    acc_bias = tl.zeros([BLOCK_C], tl.float32)
    acc_w = tl.zeros([BLOCK_C], tl.float32)
    acc_b = tl.zeros([BLOCK_C], tl.float32)
    rows = pid * ROWS + tl.arange(0, ROWS)
    gh, xf, gx, mean, rstd = _load_rows(gx_ptr, gh_ptr, xnew_ptr, mean_ptr, rstd_ptr, rows, cols, M, C,
                                        gh_stride, HAS_GX)
    for step in range(0, steps):
        next_rows = ((step + 1) * nprog + pid) * ROWS + tl.arange(0, ROWS)
        n_gh, n_xf, n_gx, n_mean, n_rstd = _load_rows(gx_ptr, gh_ptr, xnew_ptr, mean_ptr, rstd_ptr,
                                                      next_rows, cols, M, C, gh_stride, HAS_GX)
        mask = (rows < M)[:, None] & col_ok[None, :]
        g, xhat = _row_grad(gh, xf, gx, mean, rstd, w, mask, C)
        tl.store(g_ptr + rows.to(tl.int64)[:, None] * C + cols[None, :], g.to(g_ptr.dtype.element_ty), mask=mask)
        acc_bias += tl.sum(g, axis=0)
        acc_w += tl.sum(gh * xhat, axis=0)
        acc_b += tl.sum(gh, axis=0)
        rows, gh, xf, gx, mean, rstd = next_rows, n_gh, n_xf, n_gx, n_mean, n_rstd
    base = partial_ptr + pid * 3 * C
    tl.store(base + cols, acc_bias, mask=col_ok)
    tl.store(base + C + cols, acc_w, mask=col_ok)
    tl.store(base + 2 * C + cols, acc_b, mask=col_ok)


@triton.jit
def backward_deferred_kernel(gx_ptr, gh_ptr, xnew_ptr, mean_ptr, rstd_ptr, w_ptr, g_ptr, partial_ptr,
                             M, C, gh_stride, steps, HAS_GX: tl.constexpr, BLOCK_C: tl.constexpr,
                             ROWS: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    col_ok = cols < C
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    acc_bias = tl.zeros([ROWS, BLOCK_C], tl.float32)
    acc_w = tl.zeros([ROWS, BLOCK_C], tl.float32)
    acc_b = tl.zeros([ROWS, BLOCK_C], tl.float32)
    for step in range(0, steps):
        rows = (step * tl.num_programs(0) + pid) * ROWS + tl.arange(0, ROWS)
        gh, xf, gx, mean, rstd = _load_rows(gx_ptr, gh_ptr, xnew_ptr, mean_ptr, rstd_ptr, rows, cols, M, C,
                                            gh_stride, HAS_GX)
        mask = (rows < M)[:, None] & col_ok[None, :]
        g, xhat = _row_grad(gh, xf, gx, mean, rstd, w, mask, C)
        tl.store(g_ptr + rows.to(tl.int64)[:, None] * C + cols[None, :], g.to(g_ptr.dtype.element_ty), mask=mask)
        acc_bias += g
        acc_w += gh * xhat
        acc_b += gh
    base = partial_ptr + pid * 3 * C
    tl.store(base + cols, tl.sum(acc_bias, axis=0), mask=col_ok)
    tl.store(base + C + cols, tl.sum(acc_w, axis=0), mask=col_ok)
    tl.store(base + 2 * C + cols, tl.sum(acc_b, axis=0), mask=col_ok)


def run_backward(kernel, g_x, g_h, x_new, mean, rstd, weight, rows, warps, programs):
    """`rn._backward_triton` with another main kernel (same arguments and partial-sum step)."""
    _, _, sum_partials_kernel = rn._kernels()
    M, C = x_new.shape
    g = torch.empty_like(x_new)
    partial = x_new.new_empty((programs, 3 * C), dtype=torch.float32)
    gx = g_x if g_x is not None else x_new
    kernel[(programs,)](gx, g_h, x_new, mean, rstd, weight, g, partial, M, C, g_h.stride(0),
                        triton.cdiv(M, programs * rows), HAS_GX=g_x is not None,
                        BLOCK_C=triton.next_power_of_2(C), ROWS=rows, num_warps=warps)
    sums = [weight.new_empty((C,)) for _ in range(3)]
    sum_partials_kernel[(3, triton.cdiv(C, rn.SUM_LAUNCH["BLOCK_N"]))](partial, *sums, programs, C,
                                                                     **rn.SUM_LAUNCH)
    return (g, *sums)


VARIANTS = {"prefetch": backward_prefetch_kernel, "deferred": backward_deferred_kernel}


def errors(got, want):
    return [round(((a.float() - e.float()).norm() / e.float().norm()).item(), 8) for a, e in zip(got, want)]


def interpret_check():
    torch.manual_seed(0)
    for M, C, width, with_gx in ((37, 48, 112, True), (50, 40, 40, False)):
        x_new = torch.randn(M, C).bfloat16()
        mean, rstd = x_new.float().mean(1), torch.rsqrt(x_new.float().var(1, unbiased=False) + 1e-5)
        w = 1 + 0.1 * torch.randn(C)
        gx = torch.randn(M, C).bfloat16() if with_gx else None
        gh = torch.randn(M, width).bfloat16()
        want = rn._backward_reference(gx, gh, x_new, mean, rstd, w)
        for name, kernel in VARIANTS.items():
            for rows, programs in ((1, 1), (2, 3), (4, 7)):
                print(name, M, C, rows, programs, errors(run_backward(kernel, gx, gh, x_new, mean, rstd, w, rows, 4,
                                                                      programs), want))


def gpu_sweep(M=32768, C=768, width=832):
    from s3_profile import graph_ms
    os.makedirs(OUT, exist_ok=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(M, C, device="cuda", generator=gen).bfloat16()
    y = (0.5 * torch.randn(M, C, device="cuda", generator=gen)).bfloat16()
    bias, b = [0.1 * torch.randn(C, device="cuda", generator=gen) for _ in range(2)]
    w = 1 + 0.1 * torch.randn(C, device="cuda", generator=gen)
    x_new, h, mean, rstd = rn.residual_norm_forward(x, y, bias, w, b, width, 1e-5)
    g_x = torch.randn(M, C, device="cuda", generator=gen).bfloat16()
    g_h = torch.randn(M, width, device="cuda", generator=gen).bfloat16()
    want = rn._backward_reference(g_x, g_h, x_new, mean, rstd, w)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    res = {}
    for rows, warps, per_sm in itertools.product((1, 2, 4, 8), (4, 8, 16), (1, 2, 4, 8)):
        programs = min(triton.cdiv(M, rows), per_sm * sms)
        rn.BACKWARD_LAUNCH = dict(ROWS=rows, num_warps=warps, per_sm=per_sm)
        key = "rows%d_w%d_sm%d" % (rows, warps, per_sm)
        res["production_" + key] = dict(ms=graph_ms(lambda: rn.residual_norm_backward(g_x, g_h, x_new, mean, rstd, w)))
        for name, kernel in VARIANTS.items():
            def fn(kernel=kernel):
                return run_backward(kernel, g_x, g_h, x_new, mean, rstd, w, rows, warps, programs)
            try:
                res["%s_%s" % (name, key)] = dict(ms=graph_ms(fn), errors=errors(fn(), want))
            except Exception as e:  # noqa: BLE001 (e.g. out of registers/shared memory)
                res["%s_%s" % (name, key)] = dict(error=repr(e)[-300:])
        with open(os.path.join(OUT, "residual_norm_variants.json"), "w") as f:
            json.dump(res, f, indent=1)
    timed = sorted((v["ms"], k) for k, v in res.items() if "ms" in v)
    for ms, k in timed[:12]:
        print("%8.4f ms  %s  %s" % (ms, k, res[k].get("errors", "")))


if __name__ == "__main__":
    if "--interpret" in sys.argv:
        interpret_check()
    else:
        gpu_sweep()

"""bf16 training matmuls through cuBLASLt: GELU inside the MLP's matmuls (as llm.c's bf16 build
does it) and every matmul shape on the algorithm timed fastest.

GELU is the step's largest memory-bound piece after the classifier: PyTorch (even compiled) writes
the c_fc output, reads it back for GELU, writes GELU's output, and in backward reads both again to
form the GELU gradient and then the c_fc bias gradient. cuBLASLt can do both ends inside the
matmuls that are running anyway:

- forward, epilogue GELU_AUX_BIAS: `h = gelu(x @ W_fc^T + b_fc)` and, as the "aux" output, the
  pre-activation `pre` that backward needs; no separate GELU kernel.
- backward, epilogue DGELU on c_proj's input-gradient matmul: `dpre = (dy @ W_proj) * gelu'(pre)`
  in the same kernel.

PyTorch exposes neither epilogue, so this module calls cuBLASLt (the library PyTorch itself loaded)
through ctypes on PyTorch's current stream. The other matmuls (`linear`: attention projections with
the bias in the epilogue; `mm`: the classifier) go the same way for a second reason: cuBLAS's
default algorithm, which PyTorch takes, is not the fastest for several of GPT-2's shapes, so the
first call of each shape times the heuristic's candidates and PyTorch's own matmul and keeps the
fastest (`_CublasLt._tune`).

Every entry point is a `torch.library` custom op with a reference implementation (used off CUDA,
e.g. by the CPU tests), so torch.compile schedules them as opaque kernels and CUDA graphs can
capture them. `available()` runs a numerical self-check once per device against PyTorch's ops;
the trainer uses plain PyTorch when it fails, so this path is only ever a speed-up. cuBLASLt's
GELU is the tanh approximation that GPT-2 uses.

Column-major view (cuBLAS's): a row-major (M, N) tensor is an N x M column-major matrix with
leading dimension N, so every PyTorch product `out = a @ b` is computed as `out^T = b^T a^T`.
"""
from __future__ import annotations

import ctypes
import functools
import threading
from typing import Dict, Optional, Tuple

import torch

# cublasLt.h enum values
_CUBLAS_COMPUTE_32F = 68
_CUDA_R_32F, _CUDA_R_16BF = 0, 14
_OP_N, _OP_T = 0, 1
_DESC_TRANSA, _DESC_TRANSB, _DESC_EPILOGUE, _DESC_BIAS_POINTER = 3, 4, 7, 8
_DESC_AUX_POINTER, _DESC_AUX_LD, _DESC_BIAS_DATA_TYPE = 11, 12, 26
_EPILOGUE_DEFAULT, _EPILOGUE_GELU_AUX_BIAS, _EPILOGUE_DGELU = 1, 164, 192
_EPILOGUE_BIAS, _EPILOGUE_BGRADB = 4, 512
_PREF_MAX_WORKSPACE_BYTES = 1
_WORKSPACE_BYTES = 32 * 2 ** 20  # what cuBLAS asks for on Hopper


class _HeuristicResult(ctypes.Structure):
    _fields_ = [("algo", ctypes.c_uint64 * 8), ("workspaceSize", ctypes.c_size_t),
                ("state", ctypes.c_int), ("wavesCount", ctypes.c_float), ("reserved", ctypes.c_int * 4)]


def _find_library() -> ctypes.CDLL:
    """The libcublasLt PyTorch already loaded (same version as its own matmuls), else by soname."""
    torch.cuda.init()
    torch.ones(8, 8, device="cuda") @ torch.ones(8, 8, device="cuda")  # makes PyTorch load cuBLAS
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "libcublasLt.so" in line})
    except OSError:
        paths = []
    for name in paths + ["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11", "libcublasLt.so"]:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise OSError("libcublasLt not found")


class _CublasLt:
    """One cuBLASLt handle; matmul descriptors and chosen algorithms cached per problem."""

    def __init__(self):
        self.lib = _find_library()
        self.handle = ctypes.c_void_p()
        self._check(self.lib.cublasLtCreate(ctypes.byref(self.handle)), "cublasLtCreate")
        self.workspace: Dict[int, torch.Tensor] = {}
        self.plans: Dict[Tuple, list] = {}
        self.tuning: Dict[Tuple, list] = {}  # per problem: ms of each candidate algorithm
        self.lock = threading.Lock()

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError("%s failed with cuBLAS status %d" % (what, status))

    def _set(self, desc, attr: int, value) -> None:
        self._check(self.lib.cublasLtMatmulDescSetAttribute(desc, attr, ctypes.byref(value),
                                                            ctypes.sizeof(value)), "set attribute %d" % attr)

    def _layout(self, rows: int, cols: int, ld: int):
        layout = ctypes.c_void_p()
        self._check(self.lib.cublasLtMatrixLayoutCreate(ctypes.byref(layout), _CUDA_R_16BF,
                                                        ctypes.c_uint64(rows), ctypes.c_uint64(cols),
                                                        ctypes.c_int64(ld)), "layout")
        return layout

    def _plan(self, key, trans_a, trans_b, epilogue, a_shape, b_shape, d_shape, bias_fp32, has_bias,
              has_aux):
        """Descriptor, layouts and the heuristic's first algorithm for one problem (cached)."""
        plan = self.plans.get(key)
        if plan is not None:
            return plan
        desc = ctypes.c_void_p()
        self._check(self.lib.cublasLtMatmulDescCreate(ctypes.byref(desc), _CUBLAS_COMPUTE_32F,
                                                      _CUDA_R_32F), "desc")
        self._set(desc, _DESC_TRANSA, ctypes.c_int32(trans_a))
        self._set(desc, _DESC_TRANSB, ctypes.c_int32(trans_b))
        self._set(desc, _DESC_EPILOGUE, ctypes.c_int32(epilogue))
        # The heuristic checks pointer alignment through these attributes: any 256-byte-aligned
        # address stands in for the real ones, which are set per call.
        dummy = ctypes.c_void_p(256)
        if has_bias:
            self._set(desc, _DESC_BIAS_DATA_TYPE, ctypes.c_int32(_CUDA_R_32F if bias_fp32 else _CUDA_R_16BF))
            self._set(desc, _DESC_BIAS_POINTER, dummy)
        if has_aux:
            self._set(desc, _DESC_AUX_LD, ctypes.c_int64(d_shape[0]))
            self._set(desc, _DESC_AUX_POINTER, dummy)
        a, b, d = (self._layout(*s) for s in (a_shape, b_shape, d_shape))
        pref = ctypes.c_void_p()
        self._check(self.lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "preference")
        ws = ctypes.c_uint64(_WORKSPACE_BYTES)
        self._check(self.lib.cublasLtMatmulPreferenceSetAttribute(
            pref, _PREF_MAX_WORKSPACE_BYTES, ctypes.byref(ws), ctypes.sizeof(ws)), "preference")
        results, count = (_HeuristicResult * _CANDIDATES)(), ctypes.c_int(0)
        self._check(self.lib.cublasLtMatmulAlgoGetHeuristic(self.handle, desc, a, b, d, d, pref,
                                                            _CANDIDATES, results, ctypes.byref(count)),
                    "heuristic")
        self.lib.cublasLtMatmulPreferenceDestroy(pref)
        candidates = [results[i] for i in range(count.value) if results[i].state == 0]
        if not candidates:
            raise RuntimeError("cuBLASLt has no algorithm for epilogue %d at %s" % (epilogue, key))
        plan = [desc, a, b, d, candidates, None]  # None: algorithm not chosen yet
        self.plans[key] = plan
        return plan

    def matmul(self, trans_a, trans_b, epilogue, a: torch.Tensor, a_shape, b: torch.Tensor, b_shape,
               d: torch.Tensor, d_shape, bias: torch.Tensor, aux: torch.Tensor, fallback=None) -> None:
        """d = epilogue(op(a) @ op(b)) in cuBLASLt's column-major terms, on the current stream.

        The heuristic's first answer is often not the fastest kernel, so the first call of each
        problem times every candidate it offers, and `fallback` (the same product through
        PyTorch, writing d) where there is one, once (`_tune`: tens of ms), and keeps the fastest;
        a first call during CUDA-graph capture takes the heuristic's first."""
        device = d.device.index
        bias_dtype = None if bias is None else bias.dtype
        key = (device, trans_a, trans_b, epilogue, a_shape, b_shape, d_shape, bias_dtype, aux is None)
        with self.lock:
            plan = self._plan(key, trans_a, trans_b, epilogue, a_shape, b_shape, d_shape,
                              bias_dtype == torch.float32, bias is not None, aux is not None)
            desc, la, lb, ld, candidates, chosen = plan
            if bias is not None:
                self._set(desc, _DESC_BIAS_POINTER, ctypes.c_void_p(bias.data_ptr()))
            if aux is not None:
                self._set(desc, _DESC_AUX_POINTER, ctypes.c_void_p(aux.data_ptr()))
            ws = self.workspace.get(device)
            if ws is None:
                ws = torch.empty(_WORKSPACE_BYTES, dtype=torch.uint8, device=d.device)
                self.workspace[device] = ws
            stream = torch.cuda.current_stream(d.device)
            args = (self.handle, desc, ctypes.byref(_ONE), ctypes.c_void_p(a.data_ptr()), la,
                    ctypes.c_void_p(b.data_ptr()), lb, ctypes.byref(_ZERO), ctypes.c_void_p(d.data_ptr()),
                    ld, ctypes.c_void_p(d.data_ptr()), ld)
            tail = (ctypes.c_void_p(ws.data_ptr()), ctypes.c_size_t(_WORKSPACE_BYTES),
                    ctypes.c_void_p(stream.cuda_stream))
            if chosen is None:
                if torch.cuda.is_current_stream_capturing() or len(candidates) == 1:
                    chosen = 0
                else:
                    chosen = self._tune(key, candidates, args, ws, stream, fallback)
                plan[5] = chosen
            if chosen < 0:
                fallback()
                return
            self._check(self.lib.cublasLtMatmul(*args, ctypes.byref(candidates[chosen].algo), *tail),
                        "cublasLtMatmul")

    def _tune(self, key, candidates, args, ws, stream, fallback) -> int:
        """Index of the fastest candidate, or -1 for the PyTorch fallback.

        Each is timed eagerly: 3 calls after a warm-up. (Timing each inside a CUDA graph of 10
        back-to-back calls picked faster algorithms for 7 of the default step's 15 shapes, yet the
        whole step ran 1.0 ms slower with those picks (H100, B=32: 58.11 vs 57.09 ms per step),
        likely because back-to-back calls keep operands in L2 where the real step does not.)"""
        def lt(result):
            def run():  # on whatever stream is current: the capture stream while capturing
                tail = (ctypes.c_void_p(ws.data_ptr()), ctypes.c_size_t(_WORKSPACE_BYTES),
                        ctypes.c_void_p(torch.cuda.current_stream(stream.device).cuda_stream))
                self._check(self.lib.cublasLtMatmul(*args, ctypes.byref(result.algo), *tail), "cublasLtMatmul")
            return run

        def elapsed(launch, calls) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            launch()
            end.record(stream)
            end.synchronize()
            return start.elapsed_time(end) / calls

        def eager_timed(run) -> float:
            try:
                run()

                def three():
                    for _ in range(3):
                        run()
                return elapsed(three, 3)
            except RuntimeError:
                return float("inf")

        runs = [lt(result) for result in candidates] + ([fallback] if fallback is not None else [])
        times, how = [eager_timed(run) for run in runs], "eager"
        if fallback is None:
            times.append(float("inf"))
        times, torch_ms = times[:-1], times[-1]
        best = min(range(len(times)), key=times.__getitem__)
        chosen = -1 if torch_ms < times[best] else best
        if getattr(fallback, "last_resort", False) and times[best] < float("inf"):
            chosen = best
        self.tuning[key] = dict(candidates_ms=times, torch_ms=torch_ms, chosen=chosen, timed=how)
        if min(times[best], torch_ms) == float("inf"):
            raise RuntimeError("no cuBLASLt algorithm ran for %s" % (key,))
        return chosen


_CANDIDATES = 16
_ONE, _ZERO = ctypes.c_float(1.0), ctypes.c_float(0.0)


@functools.lru_cache(maxsize=None)
def _lt() -> _CublasLt:
    return _CublasLt()


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t itself when cuBLASLt can read it in place: 2-D, unit column stride, 16-byte aligned
    rows (row stride may exceed the width: a slice of a padded buffer); else a contiguous copy."""
    if (t.dim() == 2 and t.stride(1) == 1 and t.stride(0) >= t.size(1) and t.stride(0) % 8 == 0
            and t.data_ptr() % 16 == 0):
        return t
    return t.contiguous()


def lt_mm(a: torch.Tensor, b: torch.Tensor, trans_a: bool, trans_b: bool, epilogue: int,
          bias: Optional[torch.Tensor] = None, aux: Optional[torch.Tensor] = None,
          out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out = op(a) @ op(b) with a cuBLASLt epilogue, in PyTorch's row-major terms (op = transpose
    when trans_*). a, b: 2-D bf16 (rows may be padded, see `_rows`); `out`, when given, is written
    in place and may be a column slice of a wider buffer. Epilogue vectors follow out's columns
    (bias, BGRADB's gradient) and aux is a contiguous tensor of out's shape.

    cuBLAS sees each row-major (r, c) tensor with row stride ld as its column-major transpose
    (c x r, leading dimension ld), so it computes out^T = op(b)^T @ op(a)^T: b is its first
    operand, a its second.
    """
    a, b = _rows(a), _rows(b)
    (ra, ca), (rb, cb) = a.shape, b.shape
    M = ca if trans_a else ra
    N = rb if trans_b else cb
    if out is None:
        out = a.new_empty((M, N))
    elif tuple(out.shape) != (M, N) or _rows(out) is not out:
        raise ValueError("out must be (%d, %d) with unit column stride, got %s" % (M, N, tuple(out.shape)))
    if aux is not None and (not aux.is_contiguous() or out.stride(0) != N):
        raise ValueError("an aux epilogue needs contiguous aux and out")
    fallback = None
    if epilogue in (_EPILOGUE_DEFAULT, _EPILOGUE_BIAS):  # PyTorch's own choice competes too
        op_a, op_b = (a.t() if trans_a else a), (b.t() if trans_b else b)

        def torch_product(dst=None):
            if epilogue == _EPILOGUE_BIAS:
                return torch.addmm(bias, op_a, op_b, out=dst)
            return torch.mm(op_a, op_b, out=dst)
        # in place into a contiguous out; a column slice of a wider buffer gets a copy, so there
        # PyTorch's product is only the last resort (`_tune`): within timing noise of the best
        # cuBLASLt candidate, it once won and added a copy kernel to every such call
        if out.is_contiguous():
            fallback = lambda: torch_product(out)  # noqa: E731
        else:
            def fallback():
                out.copy_(torch_product())
            fallback.last_resort = True
    _lt().matmul(_OP_T if trans_b else _OP_N, _OP_T if trans_a else _OP_N, epilogue,
                 b, (cb, rb, b.stride(0)), a, (ca, ra, a.stride(0)), out, (N, M, out.stride(0)),
                 bias, aux, fallback)
    return out


# ----------------------------------------------------------------------------- GELU in c_fc

def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x, approximate="tanh")


def _linear_gelu_reference(x, weight, bias):
    pre = torch.addmm(bias, x, weight.t())
    return _gelu_tanh(pre), pre


linear_gelu = torch.library.custom_op(
    "gpt::linear_gelu", _linear_gelu_reference, mutates_args=(),
    schema="(Tensor x, Tensor weight, Tensor bias) -> (Tensor, Tensor)")


@linear_gelu.register_fake
def _(x, weight, bias):
    shape = (x.size(0), weight.size(0))
    return x.new_empty(shape), x.new_empty(shape)


@linear_gelu.register_kernel("cuda")
def _(x, weight, bias):
    """(h, pre) = (gelu(x @ weight^T + bias), x @ weight^T + bias); x (M, K), weight (N, K)."""
    pre = x.new_empty((x.size(0), weight.size(0)))
    h = lt_mm(x, weight, False, True, _EPILOGUE_GELU_AUX_BIAS,
              bias=bias.contiguous(), aux=pre)
    return h, pre


# ----------------------------------------------------------------------------- the MLP
# Forward and backward are each one opaque op: the epilogues belong to particular matmuls, and
# backward needs the pre-activation the forward epilogue wrote, which inductor's own choice (save
# the matmul output, recompute GELU) would not provide. `epilogue` picks the cuBLASLt path; without
# it (and off CUDA) the same math runs through PyTorch's ops (addmm, gelu, gelu_backward).

def _mlp_forward_reference(x, w_fc, b_fc, w_proj, b_proj, epilogue):
    pre = torch.addmm(b_fc, x[:, :w_fc.size(1)], w_fc.t())
    h = _gelu_tanh(pre)
    y = h @ w_proj.t() if b_proj is None else torch.addmm(b_proj, h, w_proj.t())
    return y, h, pre


mlp_forward = torch.library.custom_op(
    "gpt::mlp_forward", _mlp_forward_reference, mutates_args=(),
    schema="(Tensor x, Tensor w_fc, Tensor b_fc, Tensor w_proj, Tensor? b_proj, bool epilogue)"
           " -> (Tensor, Tensor, Tensor)")


@mlp_forward.register_fake
def _(x, w_fc, b_fc, w_proj, b_proj, epilogue):
    hidden = (x.size(0), w_fc.size(0))
    return x.new_empty((x.size(0), w_proj.size(0))), x.new_empty(hidden), x.new_empty(hidden)


@mlp_forward.register_kernel("cuda")
def _(x, w_fc, b_fc, w_proj, b_proj, epilogue):
    if not epilogue:
        return _mlp_forward_reference(x, w_fc, b_fc, w_proj, b_proj, epilogue)
    h, pre = linear_gelu(x[:, :w_fc.size(1)], w_fc, b_fc)
    if b_proj is None:
        return lt_mm(h, w_proj.contiguous(), False, True, _EPILOGUE_DEFAULT), h, pre
    return lt_mm(h, w_proj.contiguous(), False, True, _EPILOGUE_BIAS, bias=b_proj.contiguous()), h, pre


def _mlp_backward_reference(dy, x, w_fc, w_proj, h, pre, epilogue, fc_grad_width=0):
    dpre = torch.ops.aten.gelu_backward(dy @ w_proj, pre, approximate="tanh")
    dw_fc = dpre.t() @ _grad_columns(x, w_fc)
    if fc_grad_width:
        dw_fc = _pad_columns(dw_fc, fc_grad_width)
    return _pad_columns(dpre @ w_fc, x.size(1)), dw_fc, dpre, dy.t() @ h


# (dx, dw_fc, dpre, dw_proj). With x in the ones-column layout (`with_ones`), dx has x's padded
# width and dw_fc has BIAS_COLUMNS extra columns, the first of which is c_fc's bias gradient; otherwise the
# bias gradients (column sums of dpre and dy) are left to the caller's traced code, where
# inductor's reductions beat PyTorch's eager sum over rows 3x. fc_grad_width > 0: dw_fc is that wide,
# the columns past its product unwritten (zeros in the reference): a [W | b | 0...] mirror's gradient.
mlp_backward = torch.library.custom_op(
    "gpt::mlp_backward", _mlp_backward_reference, mutates_args=(),
    schema="(Tensor dy, Tensor x, Tensor w_fc, Tensor w_proj, Tensor h, Tensor pre, bool epilogue,"
           " int fc_grad_width=0) -> (Tensor, Tensor, Tensor, Tensor)")


@mlp_backward.register_fake
def _(dy, x, w_fc, w_proj, h, pre, epilogue, fc_grad_width=0):
    width = fc_grad_width or _grad_columns(x, w_fc).size(1)
    return (x.new_empty(x.shape), w_fc.new_empty((w_fc.size(0), width)), pre.new_empty(pre.shape),
            w_proj.new_empty(w_proj.shape))


@mlp_backward.register_kernel("cuda")
def _(dy, x, w_fc, w_proj, h, pre, epilogue, fc_grad_width=0):
    if not epilogue:
        return _mlp_backward_reference(dy, x, w_fc, w_proj, h, pre, epilogue, fc_grad_width)
    w_fc, w_proj = _rows(w_fc), _rows(w_proj)  # w_fc may be a view into a [W | b] mirror
    # The GELU gradient inside c_proj's input-gradient matmul (epilogue DGELU) rather than
    # PyTorch's gelu_backward after it. (DGELU_BGRAD, which would also sum the c_fc bias gradient,
    # runs a separate slow reduction kernel in cuBLAS 13: 0.9 ms against 0.38 ms on H100.)
    dpre = lt_mm(dy, w_proj, False, False, _EPILOGUE_DGELU, aux=pre.contiguous())
    grad_x = _grad_columns(x, w_fc)  # into the first columns of a mirror-wide gradient, if asked
    dw_fc = _mm_padded(dpre, grad_x, True, False, max(fc_grad_width, grad_x.size(1)))
    return (_mm_padded(dpre, w_fc, False, False, x.size(1)), dw_fc, dpre,
            lt_mm(dy, h, True, False, _EPILOGUE_DEFAULT))


def _mm_reference(a, b, trans_a, trans_b):
    return (a.t() if trans_a else a) @ (b.t() if trans_b else b)


# op(a) @ op(b) through cuBLASLt with the algorithm timed fastest for the shape (`lt_mm`): for
# several of GPT-2's shapes cuBLAS's default choice, which PyTorch takes, is 5-10% slower.
mm = torch.library.custom_op("gpt::mm", _mm_reference, mutates_args=(),
                             schema="(Tensor a, Tensor b, bool trans_a, bool trans_b) -> Tensor")


@mm.register_fake
def _(a, b, trans_a, trans_b):
    return a.new_empty((a.size(1) if trans_a else a.size(0), b.size(0) if trans_b else b.size(1)))


@mm.register_kernel("cuda")
def _(a, b, trans_a, trans_b):
    return lt_mm(a, b, trans_a, trans_b, _EPILOGUE_DEFAULT)


def _mm_setup(ctx, inputs, output):
    a, b, trans_a, trans_b = inputs
    ctx.save_for_backward(a, b)
    ctx.trans = (trans_a, trans_b)


def _mm_backward(ctx, grad):
    a, b = ctx.saved_tensors
    trans_a, trans_b = ctx.trans
    # out = A @ B with A = op(a), B = op(b): dA = grad @ B^T, dB = A^T @ grad
    da = mm(b, grad, trans_b, True) if trans_a else mm(grad, b, False, not trans_b)
    db = mm(grad, a, True, trans_a) if trans_b else mm(a, grad, not trans_a, False)
    return da, db, None, None


mm.register_autograd(_mm_backward, setup_context=_mm_setup)


def _linear_reference(x, weight, bias):
    return torch.addmm(bias, x[:, :weight.size(1)], weight.t())


# x @ weight^T + bias as one op: the bias is added in the matmul's epilogue, and torch.compile
# leaves it alone (inductor would split the add into a separate pass over the output when no
# pointwise op follows, as for the qkv projection that feeds attention). x may be in the
# ones-column layout (`with_ones`, wider than weight): the product uses its first K columns, and
# backward takes the bias gradient from the weight-gradient matmul.
linear = torch.library.custom_op("gpt::linear", _linear_reference, mutates_args=(),
                                 schema="(Tensor x, Tensor weight, Tensor bias) -> Tensor")


@linear.register_fake
def _(x, weight, bias):
    return x.new_empty((x.size(0), weight.size(0)))


@linear.register_kernel("cuda")
def _(x, weight, bias):
    return lt_mm(x[:, :weight.size(1)], weight, False, True, _EPILOGUE_BIAS, bias=bias.contiguous())


def _linear_setup(ctx, inputs, output):
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight)


def _linear_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    K = weight.size(1)
    if x.size(1) == K:
        # the bias gradient stays a traced sum, which inductor fuses with grad's producer
        return mm(grad, weight, False, False), mm(grad, x, True, False), grad.sum(0)
    dw_aug = mm(grad, _grad_columns(x, weight), True, False)  # (N, K + 8): [dW | d bias | 0 ...]
    return mm_padded(grad, weight, False, False, x.size(1)), dw_aug[:, :K], dw_aug[:, K]


linear.register_autograd(_linear_backward, setup_context=_linear_setup)


# ----------------------------------------------------------------------------- ones column
# A bias gradient is a column sum of the output gradient: a separate pass that reads the whole
# (rows x N) gradient again (78 us per layer for c_fc's at B=32 on an H100, 51 us for c_attn's).
# When the layer's input carries a column of ones, the weight-gradient matmul computes it almost
# for free: dW_aug = dY^T @ [x | 1 | 0...] has the bias gradient in column K. The layernorm that
# produces the input writes straight into the wider buffer (inductor fuses the concatenation), the
# forward matmuls read its first K columns in place, and the input gradient is written into the
# same padded shape, so nothing is copied in either direction. The input gradient's pad columns
# (those of the ones and zeros, constants) are left unwritten: their consumers, the layernorm
# backward (`residual_norm`) or the concatenation's slice, read the first K columns only. (Zeroing
# them took 24 fill kernels, 0.11 ms per B=32 step on an H100.)
#
# Rows are padded to a multiple of 64 elements (128 bytes: with 16-byte alignment only, 776
# columns, c_attn's forward matmul reading them ran 8% slower on an H100); the weight-gradient
# matmul reads only the first K + BIAS_COLUMNS of them (the ones column and 7 zeros, so that its
# output rows stay 16-byte aligned).

BIAS_COLUMNS = 8


def ones_width(k: int) -> int:
    """Columns of the ones-column layout for k features: at least k + 8, a multiple of 64."""
    return (k + BIAS_COLUMNS + 63) // 64 * 64


def with_ones(x: torch.Tensor) -> torch.Tensor:
    """(..., K) -> (..., ones_width(K)) bf16: x, then a column of ones, then zeros."""
    x = x.to(torch.bfloat16)
    k = x.size(-1)
    ones = x.new_ones(x.shape[:-1] + (1,))
    zeros = x.new_zeros(x.shape[:-1] + (ones_width(k) - k - 1,))
    return torch.cat([x, ones, zeros], dim=-1)


def _grad_columns(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The columns of x the weight gradient reads: all of a plain x; in the ones layout the
    features, the ones column and 7 zeros (a view, no copy)."""
    k = weight.size(1)
    return x if x.size(1) == k else x[:, :k + BIAS_COLUMNS]


def _pad_columns(t: torch.Tensor, width: int) -> torch.Tensor:
    return t if t.size(1) == width else torch.nn.functional.pad(t, (0, width - t.size(1)))


def _mm_padded(a, b, trans_a, trans_b, width):
    """op(a) @ op(b) written into the first columns of an (M, width) buffer; the other columns are
    not written (the reference pads with zeros)."""
    M = a.size(1) if trans_a else a.size(0)
    N = b.size(0) if trans_b else b.size(1)
    if width == N:
        return lt_mm(a, b, trans_a, trans_b, _EPILOGUE_DEFAULT)
    out = a.new_empty((M, width))
    lt_mm(a, b, trans_a, trans_b, _EPILOGUE_DEFAULT, out=out[:, :N])
    return out


def _mm_padded_reference(a, b, trans_a, trans_b, width):
    return _pad_columns(_mm_reference(a, b, trans_a, trans_b), width)


mm_padded = torch.library.custom_op(
    "gpt::mm_padded", _mm_padded_reference, mutates_args=(),
    schema="(Tensor a, Tensor b, bool trans_a, bool trans_b, int width) -> Tensor")


@mm_padded.register_fake
def _(a, b, trans_a, trans_b, width):
    return a.new_empty((a.size(1) if trans_a else a.size(0), width))


@mm_padded.register_kernel("cuda")
def _(a, b, trans_a, trans_b, width):
    return _mm_padded(a, b, trans_a, trans_b, width)


def bf16_weight(module: torch.nn.Linear) -> torch.Tensor:
    """The module's weight in bf16: its mirror (`adamw.AdamW.attach_bf16_mirrors`, kept equal to the
    float32 weight by every update, gradients landing on it) where it has one, else a cast."""
    mirror = getattr(module, "weight_bf16", None)
    return module.weight.to(torch.bfloat16) if mirror is None else mirror


def bias_column_mirror(module: torch.nn.Linear) -> Optional[torch.Tensor]:
    """The module's bf16 mirror if it holds weight and bias as [W | b | 0...] (`ones_width(K)`
    wide, 128-byte rows like the ones-column input's), else None."""
    mirror = getattr(module, "weight_bf16", None)
    return mirror if mirror is not None and mirror.size(1) != module.in_features else None


def _bias_column_gradient(dw: torch.Tensor, db: torch.Tensor, width: int) -> torch.Tensor:
    """[dW | db | 0...]: a [W | b] mirror's gradient assembled where no ones column produced it."""
    return _pad_columns(torch.cat([dw, db[:, None].to(dw.dtype)], dim=1), width)


class _BiasColumnLinear(torch.autograd.Function):
    """`linear` on a [W | b | 0...] mirror (`adamw.AdamW.attach_bf16_mirrors`): W read in place,
    and the mirror's gradient is the ones-column weight-gradient matmul's [dW | db | 0...] as it
    comes out (no slicing, which would make autograd copy the strided dW)."""

    @staticmethod
    def forward(ctx, x, wb, k):
        ctx.save_for_backward(x, wb)
        ctx.k = k
        return linear(x, wb[:, :k], wb[:, k].contiguous())

    @staticmethod
    def backward(ctx, grad):
        x, wb = ctx.saved_tensors
        k = ctx.k
        grad = grad.contiguous()
        dx = mm_padded(grad, wb[:, :k], False, False, x.size(1))
        if x.size(1) > k:  # ones column: [dW | db | 0...] from the one matmul, in the mirror's width
            return dx, mm_padded(grad, x[:, :k + BIAS_COLUMNS], True, False, wb.size(1)), None
        return dx, _bias_column_gradient(mm(grad, x, True, False), grad.sum(0), wb.size(1)), None


def tuned_linear(x: torch.Tensor, module: torch.nn.Linear, bias: bool = True) -> torch.Tensor:
    """`module(x)` in bf16 through `linear` (autocast's F.linear, with tuned cuBLASLt matmuls);
    `bias=False`: without the module's bias (the caller adds it, e.g. `residual_norm`)."""
    dt = torch.bfloat16
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).to(dt)
    wb = bias_column_mirror(module)
    if wb is not None:
        if not bias:
            raise ValueError("a [W | b] mirror's layer adds its own bias")
        y = _BiasColumnLinear.apply(x2, wb, module.in_features)
    else:
        w = bf16_weight(module)
        y = linear(x2, w, module.bias.to(dt)) if bias else mm(x2[:, :w.size(1)], w, False, True)
    return y.view(*shape[:-1], y.size(-1))


class _FusedMLP(torch.autograd.Function):
    """c_proj(gelu(c_fc(x))) on 2-D operands of one dtype, forward and backward as single ops.
    b_fc None: w_fc is a [W | b | 0...] mirror (`bias_column_mirror`) of a layer with fc_in
    input features, whose gradient is returned as [dW | db | 0...]."""

    @staticmethod
    def forward(ctx, x, w_fc, b_fc, w_proj, b_proj, epilogue, fc_in=0):
        ctx.fc_bias_column = b_fc is None
        ctx.fc_width = w_fc.size(1)
        if b_fc is None:
            w_fc, b_fc = w_fc[:, :fc_in], w_fc[:, fc_in].contiguous()
        y, h, pre = mlp_forward(x, w_fc, b_fc, w_proj, b_proj, epilogue)
        ctx.save_for_backward(x, w_fc, w_proj, h, pre)
        ctx.epilogue = epilogue
        ctx.no_proj_bias = b_proj is None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w_fc, w_proj, h, pre = ctx.saved_tensors
        dy = dy.contiguous()
        K = w_fc.size(1)
        # a [W | b] mirror with the ones column: the gradient comes out in the mirror's width
        width = ctx.fc_width if ctx.fc_bias_column and x.size(1) > K else 0
        dx, dw_fc, dpre, dw_proj = mlp_backward(dy, x, w_fc, w_proj, h, pre, ctx.epilogue, width)
        d_b_proj = None if ctx.no_proj_bias else dy.sum(0)
        if ctx.fc_bias_column:  # the mirror's [dW | db | 0...]
            if x.size(1) == K:
                dw_fc = _bias_column_gradient(dw_fc, dpre.sum(0), ctx.fc_width)
            return dx, dw_fc, None, dw_proj, d_b_proj, None, None
        if x.size(1) > K:  # ones column: the bias gradient came out of the weight gradient
            return dx, dw_fc[:, :K], dw_fc[:, K], dw_proj, d_b_proj, None, None
        return dx, dw_fc, dpre.sum(0), dw_proj, d_b_proj, None, None


def fused_mlp(x: torch.Tensor, c_fc: torch.nn.Linear, c_proj: torch.nn.Linear,
              epilogue: bool = True, proj_bias: bool = True) -> torch.Tensor:
    """`c_proj(gelu_tanh(c_fc(x)))` in bf16, forward and backward each one op; with `epilogue`,
    GELU runs inside cuBLASLt matmuls (CUDA, after `available()`). x: (..., C).
    `proj_bias=False`: without c_proj's bias (the caller adds it, e.g. `residual_norm`)."""
    dt = torch.bfloat16
    shape = x.shape
    fc_bias = bias_column_mirror(c_fc) is None  # else [W | b | 0...]: the bias is in the mirror
    y = _FusedMLP.apply(x.reshape(-1, shape[-1]).to(dt), bf16_weight(c_fc),
                        c_fc.bias.to(dt) if fc_bias else None,
                        bf16_weight(c_proj), c_proj.bias.to(dt) if proj_bias else None,
                        bool(epilogue), c_fc.in_features)
    return y.view(*shape[:-1], y.size(-1))


# ----------------------------------------------------------------------------- self-check

_checked: Dict[int, bool] = {}
_check_error: Dict[int, str] = {}


def available(device: Optional[torch.device] = None) -> bool:
    """Whether the fused MLP runs on this CUDA device and matches PyTorch's bf16 MLP (checked once:
    outputs and all five gradients against the same math through PyTorch's own kernels)."""
    if not torch.cuda.is_available():
        return False
    index = torch.cuda.current_device() if device is None or device.index is None else device.index
    if index not in _checked:
        try:
            _checked[index] = _self_check(torch.device("cuda", index))
        except Exception as exc:  # library missing, unsupported GPU, cuBLAS error: unfused path
            _check_error[index] = "%s: %s" % (type(exc).__name__, exc)
            _checked[index] = False
    return _checked[index]


def unavailable_reason(device_index: int = 0) -> str:
    return _check_error.get(device_index, "")


def _self_check(device: torch.device) -> bool:
    gen = torch.Generator(device=device).manual_seed(0)
    M, C = 512, 256

    def rand(*s, std=1.0):
        return (torch.randn(*s, generator=gen, device=device) * std).requires_grad_()

    x, w_fc, b_fc = rand(M, C), rand(4 * C, C, std=0.05), rand(4 * C, std=0.5)
    w_proj, b_proj = rand(C, 4 * C, std=0.05), rand(C, std=0.5)
    dy = torch.randn(M, C, generator=gen, device=device)
    params = (x, w_fc, b_fc, w_proj, b_proj)
    bf = [p.detach().to(torch.bfloat16).requires_grad_() for p in params]
    y = _FusedMLP.apply(*bf, True)
    y.backward(dy.to(torch.bfloat16))
    # reference: the same bf16 operands through PyTorch's matmuls and GELU, in float32
    ref = [p.detach().to(torch.bfloat16).float().requires_grad_() for p in params]
    yr = torch.addmm(ref[4], _gelu_tanh(torch.addmm(ref[2], ref[0], ref[1].t())), ref[3].t())
    yr.backward(dy.to(torch.bfloat16).float())
    pairs = [(y, yr)] + [(a.grad, b.grad) for a, b in zip(bf, ref)]
    # the tuned matmul in all four transpose combinations, and the bias epilogue
    a = torch.randn(384, 192, generator=gen, device=device)
    b = torch.randn(192, 320, generator=gen, device=device)
    bias = torch.randn(320, generator=gen, device=device)
    for ta in (False, True):
        for tb in (False, True):
            aa, bb = (a.t().contiguous() if ta else a), (b.t().contiguous() if tb else b)
            want = a.bfloat16().float() @ b.bfloat16().float()
            pairs.append((mm(aa.bfloat16(), bb.bfloat16(), ta, tb), want))
    pairs.append((linear(a.bfloat16(), b.t().contiguous().bfloat16(), bias.bfloat16()),
                  a.bfloat16().float() @ b.bfloat16().float() + bias.bfloat16().float()))
    # the ones-column layout: padded rows read in place, the input gradient written into a
    # padded buffer, the bias gradient from the weight-gradient matmul
    xa = with_ones(a).requires_grad_()
    wt = b.t().contiguous().bfloat16().requires_grad_()
    bb = bias.bfloat16().requires_grad_()
    out = linear(xa, wt, bb)
    g = torch.randn(out.shape, generator=gen, device=device).bfloat16()
    out.backward(g)
    af, wf, gf = a.bfloat16().float(), wt.detach().float(), g.float()
    pairs += [(out, af @ wf.t() + bb.detach().float()), (wt.grad, gf.t() @ af),
              (bb.grad, gf.sum(0)), (xa.grad[:, :a.size(1)], gf @ wf)]
    for got, want in pairs:
        err = ((got.float() - want).norm() / want.norm().clamp_min(1e-12)).detach()
        if not bool(torch.isfinite(err)) or float(err) > 2e-2:
            _check_error[device.index] = "relative error %.3g" % float(err)
            return False
    return True

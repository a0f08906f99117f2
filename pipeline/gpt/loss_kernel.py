"""The classifier loss kernel for Hopper GPUs (sm_90+): CUDA C compiled at first use with NVRTC
(which PyTorch's CUDA builds ship) and launched through the CUDA driver API on PyTorch's stream.

`GPT.loss` overwrites the (rows, 50304) bf16 logits with d(loss)/d(logits) = softmax - onehot and
returns each row's loss (`model.cross_entropy_grad_`). The logits are the step's largest tensor
(3.3 GB at B=32, T=1024), so the kernel is bound by memory traffic: its floor is one read and one
write, 1.97 ms on an H100. The portable Triton kernel reads each row twice (log-sum-exp, then the
gradient) and takes 3.2-3.3 ms: a row does not fit in registers, and Triton cannot stage it in
shared memory explicitly. Here one block of 1024 threads owns a row:

1. one thread asks the bulk copy engine (`cp.async.bulk`, completion counted on an mbarrier) to
   copy the whole row (100.6 KB) into shared memory; no registers hold data in flight;
2. every thread folds its share into a running max and rescaled sum of exponentials (online
   softmax); a block reduction gives the row's log-sum-exp;
3. every thread writes softmax - onehot for its share, read back from shared memory.

Two blocks fit on an SM (2 x 100.6 KB of its 228 KB), so one block's copy overlaps the other's
arithmetic and writes. Measured on an H100 at B=32, T=1024:
2.72 ms against 3.23 ms for the Triton kernel, and closer to float64 math (gradient error 4.9e-4
against 2.0e-3).

`launch()` returns False where this kernel cannot run (no CUDA 9.x GPU, no NVRTC, an unusual
shape, a failed self-check), and the caller runs the Triton kernel instead. `available()` says
up front whether it runs on a device (the plan's `loss_kernel`, pipeline/gpt/fast/plan.py).
"""
from __future__ import annotations

import ctypes
import functools
import glob
import os
import site
import sys
import threading
from typing import Dict, Optional

import torch

THREADS = 1024

SOURCE = r"""
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float bf16_lo(unsigned int w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(unsigned int w) { return __uint_as_float(w & 0xffff0000u); }

// float -> bf16 bits, rounded to nearest even (the values are finite)
__device__ __forceinline__ unsigned int to_bf16(float f) {
    const unsigned int u = __float_as_uint(f);
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

// One 16-byte vector holds 8 bf16 logits, columns col .. col+7; columns >= vocab are padding.
__device__ __forceinline__ float vec_max(uint4 v, int col, int vocab) {
    const unsigned int w[4] = {v.x, v.y, v.z, v.w};
    float m = NEG_INF;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (col + 2 * i < vocab) m = fmaxf(m, bf16_lo(w[i]));
        if (col + 2 * i + 1 < vocab) m = fmaxf(m, bf16_hi(w[i]));
    }
    return m;
}

__device__ __forceinline__ float vec_sum_exp(uint4 v, int col, int vocab, float m) {
    const unsigned int w[4] = {v.x, v.y, v.z, v.w};
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (col + 2 * i < vocab) s += __expf(bf16_lo(w[i]) - m);
        if (col + 2 * i + 1 < vocab) s += __expf(bf16_hi(w[i]) - m);
    }
    return s;
}

// softmax - onehot for the 8 columns; padding columns get 0
__device__ __forceinline__ uint4 vec_grad(uint4 v, int col, int vocab, float lse, long long target) {
    const unsigned int w[4] = {v.x, v.y, v.z, v.w};
    unsigned int g[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int c = col + 2 * i;
        float lo = c < vocab ? __expf(bf16_lo(w[i]) - lse) : 0.0f;
        float hi = c + 1 < vocab ? __expf(bf16_hi(w[i]) - lse) : 0.0f;
        if (c == target) lo -= 1.0f;
        if (c + 1 == target) hi -= 1.0f;
        g[i] = to_bf16(lo) | (to_bf16(hi) << 16);
    }
    return make_uint4(g[0], g[1], g[2], g[3]);
}

// max (IS_MAX) or sum over the block; every thread gets the result
template <bool IS_MAX>
__device__ __forceinline__ float block_reduce(float v, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) {
        const float other = __shfl_xor_sync(0xffffffffu, v, o);
        v = IS_MAX ? fmaxf(v, other) : v + other;
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < (THREADS >> 5) ? scratch[lane] : (IS_MAX ? NEG_INF : 0.0f);
    for (int o = 16; o > 0; o >>= 1) {
        const float other = __shfl_xor_sync(0xffffffffu, v, o);
        v = IS_MAX ? fmaxf(v, other) : v + other;
    }
    return v;
}

__device__ __forceinline__ unsigned int smem_addr(const void* p) {
    return (unsigned int)__cvta_generic_to_shared(p);
}

// One block per row of `width` bf16 logits (width a multiple of 8, rows 16-byte aligned; dynamic
// shared memory: width * 2 bytes). losses[row] = logsumexp(row[:vocab]) - row[target]; the row is
// overwritten with softmax(row[:vocab]) - onehot(target), and 0 in the padding columns.
extern "C" __global__ void __launch_bounds__(THREADS, 2)
cross_entropy_grad(unsigned short* logits, const long long* targets, float* losses, int width, int vocab) {
    extern __shared__ __align__(128) uint4 row_s[];
    __shared__ __align__(8) unsigned long long row_loaded;
    __shared__ float scratch_max[32];
    __shared__ float scratch_sum[32];
    const long long row = blockIdx.x;
    uint4* vecs = reinterpret_cast<uint4*>(logits + row * width);
    const int nvec = width >> 3;
    const long long target = targets[row];
    // read before any thread overwrites the row (the writes come after the block's barriers)
    const float x_target = __uint_as_float(((unsigned int)logits[row * width + target]) << 16);
    const unsigned int bar = smem_addr(&row_loaded);
    if (threadIdx.x == 0) {
        const unsigned int bytes = nvec * 16u;
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(bar) : "memory");
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(bar), "r"(bytes) : "memory");
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                     :: "r"(smem_addr(row_s)), "l"(vecs), "r"(bytes), "r"(bar) : "memory");
    }
    __syncthreads();  // the barrier is initialised before anyone waits on it
    unsigned int loaded = 0;
    while (!loaded) {
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], 0;\n"
                     " selp.u32 %0, 1, 0, p;\n}" : "=r"(loaded) : "r"(bar) : "memory");
    }
    float m = NEG_INF, s = 0.0f;  // this thread's running max and sum of exp(x - m)
    for (int idx = threadIdx.x; idx < nvec; idx += THREADS) {
        const uint4 v = row_s[idx];
        const float vm = vec_max(v, idx * 8, vocab);
        if (vm > m) {
            s *= __expf(m - vm);  // exp(-inf) = 0 on the first update
            m = vm;
        }
        s += vec_sum_exp(v, idx * 8, vocab, m);
    }
    const float row_max = block_reduce<true>(m, scratch_max);
    s = m == NEG_INF ? 0.0f : s * __expf(m - row_max);
    const float lse = row_max + __logf(block_reduce<false>(s, scratch_sum));
    if (threadIdx.x == 0) losses[row] = lse - x_target;
    for (int idx = threadIdx.x; idx < nvec; idx += THREADS)
        vecs[idx] = vec_grad(row_s[idx], idx * 8, vocab, lse, target);
}
"""

_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8  # CUfunction_attribute
_MAX_SHARED_PER_BLOCK_OPTIN = 97  # CUdevice_attribute

_lock = threading.Lock()
_kernels: Dict[int, "_Kernel"] = {}
_failed: Dict[int, str] = {}


def _load_first(names, patterns) -> ctypes.CDLL:
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            pass
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            try:
                return ctypes.CDLL(path)
            except OSError:
                pass
    raise OSError("none of %s found" % (names,))


@functools.lru_cache(maxsize=None)
def _nvrtc() -> ctypes.CDLL:
    """libnvrtc: PyTorch's CUDA wheels depend on NVIDIA's nvrtc wheel (nvidia/cu13/lib for CUDA
    13, nvidia/cuda_nvrtc/lib for CUDA 12); a system CUDA install also works."""
    roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
    patterns = [os.path.join(r, "nvidia", sub, "lib", "libnvrtc.so*")
                for r in roots for sub in ("cu13", "cuda_nvrtc", "*")]
    return _load_first(["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"], patterns)


def compile_cubin(arch: int) -> bytes:
    """SOURCE compiled for sm_<arch> (e.g. 90); raises RuntimeError with NVRTC's log."""
    lib = _nvrtc()
    prog = ctypes.c_void_p()
    src = ("#define THREADS %d\n" % THREADS + SOURCE).encode()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"loss_kernel.cu", 0, None, None) != 0:
        raise RuntimeError("nvrtcCreateProgram failed")
    try:
        opts = [("--gpu-architecture=sm_%d" % arch).encode(), b"-std=c++17"]
        status = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        if status != 0:
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, log)
            raise RuntimeError("NVRTC failed (%d): %s" % (status, log.value.decode(errors="replace")))
        size = ctypes.c_size_t()
        lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
        cubin = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetCUBIN(prog, cubin)
        return cubin.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


class _Kernel:
    """The compiled kernel loaded into PyTorch's (primary) context of one device."""

    def __init__(self, index: int):
        major, minor = torch.cuda.get_device_capability(index)
        with torch.cuda.device(index):
            torch.zeros(1, device="cuda")  # PyTorch makes the device's primary context current
            self.cuda = ctypes.CDLL("libcuda.so.1")
            cubin = compile_cubin(major * 10 + minor)
            self._image = ctypes.create_string_buffer(cubin, len(cubin))  # kept alive with the module
            self.module, self.func = ctypes.c_void_p(), ctypes.c_void_p()
            self._check(self.cuda.cuModuleLoadData(ctypes.byref(self.module), self._image), "cuModuleLoadData")
            self._check(self.cuda.cuModuleGetFunction(ctypes.byref(self.func), self.module, b"cross_entropy_grad"),
                        "cuModuleGetFunction")
            dev, optin = ctypes.c_int(), ctypes.c_int()
            self._check(self.cuda.cuDeviceGet(ctypes.byref(dev), index), "cuDeviceGet")
            self._check(self.cuda.cuDeviceGetAttribute(ctypes.byref(optin), _MAX_SHARED_PER_BLOCK_OPTIN, dev),
                        "cuDeviceGetAttribute")
        self.max_shared = optin.value - 1024  # room for the kernel's static shared memory
        self.shared_set = 0

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError("%s failed with CUDA driver error %d" % (what, status))

    def __call__(self, logits, targets, losses, width, vocab) -> None:
        shared = width * 2
        if shared > self.shared_set:
            self._check(self.cuda.cuFuncSetAttribute(self.func, _MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                                     ctypes.c_int(shared)), "cuFuncSetAttribute")
            self.shared_set = shared
        values = [ctypes.c_void_p(logits.data_ptr()), ctypes.c_void_p(targets.data_ptr()),
                  ctypes.c_void_p(losses.data_ptr()), ctypes.c_int(width), ctypes.c_int(vocab)]
        params = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.byref(v), ctypes.c_void_p) for v in values])
        stream = torch.cuda.current_stream(logits.device).cuda_stream
        self._check(self.cuda.cuLaunchKernel(self.func, logits.size(0), 1, 1, THREADS, 1, 1, shared,
                                             ctypes.c_void_p(stream), params, None), "cuLaunchKernel")


def _reference(logits, targets, vocab):
    """float32 math of the kernel's contract, for the self-check."""
    x = logits.float()
    lse = torch.logsumexp(x[:, :vocab], dim=1)
    grad = torch.zeros_like(x)
    grad[:, :vocab] = torch.exp(x[:, :vocab] - lse[:, None])
    grad[torch.arange(x.size(0), device=x.device), targets] -= 1.0
    return grad, lse - x.gather(1, targets[:, None])[:, 0]


def _self_check(kernel: _Kernel, device: torch.device) -> Optional[str]:
    """None when the kernel matches float32 math on a small problem (odd vocab, padded width),
    else what went wrong."""
    gen = torch.Generator(device=device).manual_seed(0)
    rows, width, vocab = 8, 50304, 50257
    logits = (4 * torch.randn(rows, width, generator=gen, device=device)).bfloat16()
    targets = torch.randint(0, vocab, (rows,), generator=gen, device=device)
    targets[0], targets[1] = 0, vocab - 1  # the first and last real columns
    want_grad, want_loss = _reference(logits, targets, vocab)
    losses = torch.empty(rows, device=device)
    kernel(logits, targets, losses, width, vocab)
    torch.cuda.synchronize(device)
    # the gradient is stored in bf16: allow one rounding (relative 2^-8) and __expf's tiny error
    grad_err = ((logits.float() - want_grad).abs() / (want_grad.abs() * 2 ** -8 + 1e-7)).max().item()
    loss_err = (losses - want_loss).abs().max().item()
    if not (grad_err <= 1.01 and loss_err <= 1e-3):  # also catches NaN
        return "self-check: gradient error %.3g bf16 roundings, loss error %.3g" % (grad_err, loss_err)
    return None


def _kernel_for(device: torch.device) -> Optional[_Kernel]:
    index = device.index if device.index is not None else torch.cuda.current_device()
    kernel = _kernels.get(index)
    if kernel is not None or index in _failed:
        return kernel
    if torch.cuda.is_current_stream_capturing():
        return None  # set up (compile, self-check) outside capture; Triton meanwhile
    with _lock:
        if index in _kernels or index in _failed:
            return _kernels.get(index)
        try:
            if torch.cuda.get_device_capability(index)[0] < 9:
                raise RuntimeError("needs a Hopper-class GPU (compute capability 9.0+) for cp.async.bulk")
            kernel = _Kernel(index)
            problem = _self_check(kernel, torch.device("cuda", index))
            if problem:
                raise RuntimeError(problem)
            _kernels[index] = kernel
        except Exception as exc:  # no NVRTC/driver symbols, old GPU, wrong numbers: Triton kernel
            _failed[index] = "%s: %s" % (type(exc).__name__, exc)
        return _kernels.get(index)


def available(device: torch.device) -> bool:
    """Whether the kernel compiles and passes its self-check on this CUDA device (once)."""
    return device.type == "cuda" and _kernel_for(device) is not None


def unavailable_reason(index: int = 0) -> str:
    return _failed.get(index, "")


def supported(logits: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor, vocab: int) -> bool:
    """Whether the tensors have the layout the kernel assumes (any device)."""
    if logits.dim() != 2:
        return False
    rows, width = logits.shape
    return (logits.dtype == torch.bfloat16 and logits.is_contiguous() and width % 8 == 0
            and logits.data_ptr() % 16 == 0 and 0 < vocab <= width and 0 < rows < 2 ** 31
            and targets.dtype == torch.int64 and targets.is_contiguous() and tuple(targets.shape) == (rows,)
            and losses.dtype == torch.float32 and losses.is_contiguous() and tuple(losses.shape) == (rows,))


def launch(logits: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor, vocab: int) -> bool:
    """Run the kernel (see the module docstring) if it can run here; False if not, with nothing
    written. logits: (rows, width) contiguous bf16, overwritten; targets: (rows,) int64 in
    [0, vocab); losses: (rows,) float32, written."""
    if not logits.is_cuda:
        return False
    if not supported(logits, targets, losses, vocab):
        return False
    kernel = _kernel_for(logits.device)
    if kernel is None or logits.size(1) * 2 > kernel.max_shared:
        return False
    kernel(logits, targets, losses, logits.size(1), vocab)
    return True

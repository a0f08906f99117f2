"""Session-4 experiment (first run in session 5): a one-read classifier loss kernel in
CUDA C, compiled at run time with NVRTC (which every CUDA build of PyTorch ships) and launched
through the driver API on PyTorch's stream, so that no nvcc is needed.

Triton could not hold a 50,304-wide bf16 row on chip without spilling (s3_ce_one_read.py,
s4_ce_packed.py: 6.1-17 ms against 3.2-3.4 ms for the two-pass kernel). Here one block of
THREADS threads owns a row: each thread loads its share as 16-byte vectors (8 bf16 each) into
registers (7 vectors = 28 registers at 1024 threads), the block reduces the max and the sum of
exponentials (warp shuffles, one shared-memory step), and each thread writes softmax - onehot
from its registers: the logits are read once and written once (the floor is 2.0 ms at 3.35 TB/s
for B=32, T=1024). Prints and writes (ce_cuda.json in $OUT) the time and the errors of each
variant against the reference math, next to the production kernel.

`python bench/experiments/s4_ce_cuda.py --compile-only` compiles the variants with NVRTC and
prints ptxas's register and spill counts (no GPU needed, only libnvrtc)."""
import ctypes
import json
import os
import sys

sys.path.insert(0, "bench")
sys.path.insert(0, ".")

OUT = os.environ.get("OUT", "/tmp/exp_out")

SOURCE = r"""
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float bf16_lo(unsigned int w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(unsigned int w) { return __uint_as_float(w & 0xffff0000u); }

// float -> bf16 bits, round to nearest even (the values are finite probabilities)
__device__ __forceinline__ unsigned int to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

__device__ __forceinline__ float word_max(unsigned int w, int col, int vocab, float m) {
    if (col < vocab) m = fmaxf(m, bf16_lo(w));
    if (col + 1 < vocab) m = fmaxf(m, bf16_hi(w));
    return m;
}

__device__ __forceinline__ float word_sum(unsigned int w, int col, int vocab, float m, float s) {
    if (col < vocab) s += __expf(bf16_lo(w) - m);
    if (col + 1 < vocab) s += __expf(bf16_hi(w) - m);
    return s;
}

__device__ __forceinline__ unsigned int word_grad(unsigned int w, int col, int vocab, float lse,
                                                  long long target) {
    float lo = col < vocab ? __expf(bf16_lo(w) - lse) : 0.0f;
    float hi = col + 1 < vocab ? __expf(bf16_hi(w) - lse) : 0.0f;
    if (col == target) lo -= 1.0f;
    if (col + 1 == target) hi -= 1.0f;
    return to_bf16(lo) | (to_bf16(hi) << 16);
}

// The same over one 16-byte vector (8 bf16, columns col..col+7).
__device__ __forceinline__ float vec_max(uint4 v, int col, int vocab, float m) {
    m = word_max(v.x, col, vocab, m);
    m = word_max(v.y, col + 2, vocab, m);
    m = word_max(v.z, col + 4, vocab, m);
    return word_max(v.w, col + 6, vocab, m);
}

__device__ __forceinline__ float vec_sum(uint4 v, int col, int vocab, float m, float s) {
    s = word_sum(v.x, col, vocab, m, s);
    s = word_sum(v.y, col + 2, vocab, m, s);
    s = word_sum(v.z, col + 4, vocab, m, s);
    return word_sum(v.w, col + 6, vocab, m, s);
}

__device__ __forceinline__ uint4 vec_grad(uint4 v, int col, int vocab, float lse, long long target) {
    uint4 g;
    g.x = word_grad(v.x, col, vocab, lse, target);
    g.y = word_grad(v.y, col + 2, vocab, lse, target);
    g.z = word_grad(v.z, col + 4, vocab, lse, target);
    g.w = word_grad(v.w, col + 6, vocab, lse, target);
    return g;
}

// What both kernels need first: the row as 16-byte vectors, its target, and the target's logit
// (read before any thread overwrites the row: the writes come after two block barriers).
struct Row {
    uint4* vecs;
    long long target;
    float x_target;
};

__device__ __forceinline__ Row row_setup(unsigned short* logits, const long long* targets, int width) {
    const long long row = blockIdx.x;
    Row r;
    r.vecs = reinterpret_cast<uint4*>(logits + row * width);
    r.target = targets[row];
    r.x_target = __uint_as_float(((unsigned int)logits[row * width + r.target]) << 16);
    return r;
}

template <bool IS_MAX>
__device__ __forceinline__ float block_reduce(float v, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) {
        float other = __shfl_xor_sync(0xffffffffu, v, o);
        v = IS_MAX ? fmaxf(v, other) : v + other;
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < (THREADS >> 5) ? scratch[lane] : (IS_MAX ? NEG_INF : 0.0f);
    for (int o = 16; o > 0; o >>= 1) {
        float other = __shfl_xor_sync(0xffffffffu, v, o);
        v = IS_MAX ? fmaxf(v, other) : v + other;
    }
    return v;  // every thread holds the block's result
}

// One block per row of `width` bf16 logits (width a multiple of 8, rows 16-byte aligned):
// losses[row] = logsumexp(row[:vocab]) - row[target]; the row is overwritten with
// softmax(row[:vocab]) - onehot(target), and 0 in the padding columns.
extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)
ce_one_read(unsigned short* logits, const long long* targets, float* losses, int width, int vocab) {
    __shared__ float scratch_max[32];
    __shared__ float scratch_sum[32];
    const Row r = row_setup(logits, targets, width);
    uint4* vecs = r.vecs;
    const long long target = r.target;
    const int nvec = width >> 3;
    uint4 v[VEC];
    float m = NEG_INF;
#pragma unroll
    for (int i = 0; i < VEC; i++) {
        const int idx = threadIdx.x + i * THREADS;
        v[i] = idx < nvec ? vecs[idx] : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int i = 0; i < VEC; i++) m = vec_max(v[i], (threadIdx.x + i * THREADS) * 8, vocab, m);
    m = block_reduce<true>(m, scratch_max);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < VEC; i++) s = vec_sum(v[i], (threadIdx.x + i * THREADS) * 8, vocab, m, s);
    s = block_reduce<false>(s, scratch_sum);
    const float lse = m + __logf(s);
    if (threadIdx.x == 0) losses[blockIdx.x] = lse - r.x_target;
#pragma unroll
    for (int i = 0; i < VEC; i++) {
        const int idx = threadIdx.x + i * THREADS;
        if (idx < nvec) vecs[idx] = vec_grad(v[i], idx * 8, vocab, lse, target);
    }
}

// The same with the row staged in shared memory (width * 2 bytes, dynamic) instead of registers:
// few registers, so two blocks (two rows) share an SM and one loads while the other computes.
extern "C" __global__ void __launch_bounds__(THREADS, 2)
ce_one_read_smem(unsigned short* logits, const long long* targets, float* losses, int width, int vocab) {
    extern __shared__ uint4 row_s[];
    __shared__ float scratch_max[32];
    __shared__ float scratch_sum[32];
    const Row r = row_setup(logits, targets, width);
    uint4* vecs = r.vecs;
    const long long target = r.target;
    const int nvec = width >> 3;
    float m = NEG_INF;
    for (int idx = threadIdx.x; idx < nvec; idx += THREADS) {
        const uint4 v = vecs[idx];
        row_s[idx] = v;
        m = vec_max(v, idx * 8, vocab, m);
    }
    m = block_reduce<true>(m, scratch_max);  // its barrier also publishes row_s
    float s = 0.0f;
    for (int idx = threadIdx.x; idx < nvec; idx += THREADS) s = vec_sum(row_s[idx], idx * 8, vocab, m, s);
    s = block_reduce<false>(s, scratch_sum);
    const float lse = m + __logf(s);
    if (threadIdx.x == 0) losses[blockIdx.x] = lse - r.x_target;
    for (int idx = threadIdx.x; idx < nvec; idx += THREADS) vecs[idx] = vec_grad(row_s[idx], idx * 8, vocab, lse, target);
}
"""


def nvrtc_lib():
    from pipeline.gpt.loss_kernel import _nvrtc  # the library the production kernel compiles with
    return _nvrtc()


def compile_cubin(threads, width, arch, verbose=False, min_blocks=1, source=None):
    """CUBIN bytes of `source` (default SOURCE) for one (threads, width) and an sm_XY architecture;
    ptxas log."""
    lib = nvrtc_lib()
    vec = -(-(width // 8) // threads)
    prog = ctypes.c_void_p()
    src = ("#define THREADS %d\n#define VEC %d\n#define MIN_BLOCKS %d\n" % (threads, vec, min_blocks)
           + (SOURCE if source is None else source)).encode()
    err = lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"ce_one_read.cu", 0, None, None)
    assert err == 0, "nvrtcCreateProgram %d" % err
    opts = [("--gpu-architecture=sm_%d" % arch).encode(), b"-std=c++17", b"--dopt=on"]
    if verbose:
        opts.append(b"--ptxas-options=-v")
    arr = (ctypes.c_char_p * len(opts))(*opts)
    err = lib.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    if err != 0:
        raise RuntimeError("NVRTC failed (%d):\n%s" % (err, log.value.decode(errors="replace")))
    lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
    cubin = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetCUBIN(prog, cubin)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return cubin.raw, log.value.decode(errors="replace")


class DriverKernel:
    """A CUBIN's kernel launched with cuLaunchKernel on a given stream (CUDA-graph capturable)."""

    def __init__(self, cubin, name):
        import torch
        torch.cuda.init()
        torch.zeros(1, device="cuda")  # the runtime makes the primary context current
        self.cuda = ctypes.CDLL("libcuda.so.1")
        ctx = ctypes.c_void_p()
        self._check(self.cuda.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
        if not ctx.value:
            dev = ctypes.c_int()
            self._check(self.cuda.cuDeviceGet(ctypes.byref(dev), torch.cuda.current_device()), "cuDeviceGet")
            self._check(self.cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "retain")
            self._check(self.cuda.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
        self.module = ctypes.c_void_p()
        self._image = ctypes.create_string_buffer(cubin, len(cubin))
        self._check(self.cuda.cuModuleLoadData(ctypes.byref(self.module), self._image), "cuModuleLoadData")
        self.func = ctypes.c_void_p()
        self._check(self.cuda.cuModuleGetFunction(ctypes.byref(self.func), self.module, name.encode()),
                    "cuModuleGetFunction")

    @staticmethod
    def _check(status, what):
        if status != 0:
            raise RuntimeError("%s failed with CUDA driver error %d" % (what, status))

    def set_max_dynamic_smem(self, nbytes):
        self._check(self.cuda.cuFuncSetAttribute(self.func, 8, ctypes.c_int(nbytes)),  # MAX_DYNAMIC_SHARED_SIZE_BYTES
                    "cuFuncSetAttribute")

    def __call__(self, grid, block, stream, *args, smem=0):
        holders = [a if isinstance(a, (ctypes.c_void_p, ctypes.c_int, ctypes.c_int64)) else ctypes.c_void_p(a)
                   for a in args]
        params = (ctypes.c_void_p * len(holders))(*[ctypes.cast(ctypes.byref(h), ctypes.c_void_p) for h in holders])
        self._check(self.cuda.cuLaunchKernel(self.func, grid, 1, 1, block, 1, 1, smem, ctypes.c_void_p(stream),
                                             params, None), "cuLaunchKernel")


# (kernel, threads per block, min blocks per SM for the register version)
VARIANTS = (("ce_one_read", 1024, 1), ("ce_one_read", 512, 2), ("ce_one_read", 768, 1),
            ("ce_one_read_smem", 512, 1), ("ce_one_read_smem", 256, 1), ("ce_one_read_smem", 1024, 1))


def compile_only(width=50304, arch=90):
    out = {}
    for kname, threads, min_blocks in VARIANTS:
        name = "%s_%d_%d" % (kname, threads, min_blocks)
        try:
            cubin, log = compile_cubin(threads, width, arch, verbose=True, min_blocks=min_blocks)
            lines = [ln for ln in log.splitlines() if "registers" in ln or "spill" in ln or "entry" in ln]
            out[name] = "\n".join(lines)
        except Exception as e:  # noqa: BLE001
            out[name] = repr(e)[-800:]
        print(name, "\n" + out[name], flush=True)
    return out


def time_kernel(kernel, threads, smem, problem, vocab, grid=None, extra=()):
    """{ms (CUDA-graph replay), errors against the reference} of one DriverKernel on the loss
    problem `s3_profile.loss_problem` returns: `grid` blocks (default one per row) of `threads`,
    `smem` bytes of dynamic shared memory; `extra`: arguments after (logits, targets, losses,
    width, vocab)."""
    import torch
    from s3_profile import graph_ms
    src, t, ref, ref_l = problem
    n, V = src.shape
    losses = torch.empty(n, device="cuda")
    g = src.clone()

    def run():
        kernel(n if grid is None else grid, threads, torch.cuda.current_stream().cuda_stream, g.data_ptr(),
               t.data_ptr(), losses.data_ptr(), ctypes.c_int(V), ctypes.c_int(vocab), *extra, smem=smem)
    run()
    torch.cuda.synchronize()
    errs = dict(loss=(losses - ref_l).abs().max().item(), grad=(g.float() - ref.float()).abs().max().item(),
                pad_zero=bool((g[:, vocab:] == 0).all()))
    return dict(ms=graph_ms(run), errors=errs)


def main(n=32768, V=50304, vocab=50257):
    import torch
    from pipeline.gpt import model as gm
    from s3_profile import graph_ms, loss_problem
    os.makedirs(OUT, exist_ok=True)
    major, minor = torch.cuda.get_device_capability()
    problem = loss_problem(n, V, vocab)
    src, t, ref, ref_l = problem
    work = src.clone()
    prod = src.clone()
    prod_l = gm.cross_entropy_grad_(prod, t, vocab)
    os.environ["GPT_CUDA_LOSS"] = "0"  # production = the Triton kernel these candidates compete with
    res = {"production_ms": graph_ms(lambda: gm.cross_entropy_grad_(work, t, vocab)),
           "production_err": dict(loss=(prod_l - ref_l).abs().max().item(),
                                  grad=(prod.float() - ref.float()).abs().max().item()),
           "floor_1r1w_ms": 2 * n * V * 2 / 3.35e12 * 1e3}
    print(res, flush=True)
    for kname, threads, min_blocks in VARIANTS:
        name = "%s_%d_%d" % (kname, threads, min_blocks)
        try:
            cubin, log = compile_cubin(threads, V, major * 10 + minor, verbose=True, min_blocks=min_blocks)
            kernel = DriverKernel(cubin, kname)
            smem = 2 * V if kname.endswith("smem") else 0
            if smem:
                kernel.set_max_dynamic_smem(smem)
            res[name] = dict(time_kernel(kernel, threads, smem, problem, vocab), ptxas=log.strip()[-300:])
        except Exception as e:  # noqa: BLE001
            res[name] = dict(error=repr(e)[-800:])
        print(name, res[name], flush=True)
        with open(os.path.join(OUT, "ce_cuda.json"), "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    if "--compile-only" in sys.argv:
        compile_only()
    else:
        main()

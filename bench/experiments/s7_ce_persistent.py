"""Session-7 experiment: a persistent, double-buffered classifier loss kernel against the
production one (pipeline/gpt/loss_kernel.py); not kept: slower.

The production kernel (session 5) runs one block of 1024 threads per row, two blocks per SM, each
waiting for its own row's bulk copy before reducing and writing it. The candidate here runs one
block per SM that works through rows in turn and prefetches its next row into a second
shared-memory buffer (two 100.6 KB rows per SM) while it reduces and writes the current one.

1. Kernel alone at B=32, T=1024 (32768 x 50304 bf16), CUDA-graph replay: the Triton kernel, the
   production kernel, and the persistent kernel at 1024 / 768 / 512 threads, with errors against
   float32 math.
2. `step [rounds]`: the default B=32 training step with the cuDNN frontend where available
   (`s3_profile.default_step_ms`), production vs persistent kernel, alternating in one process.

Measured (H100, session 7): production 2.713 ms, persistent 2.951 / 3.032 / 3.194 ms (1024 / 768 /
512 threads), Triton 3.220; default step 56.10 vs 56.29 ms (one round each).
Writes ce_persistent.json (and step_ab7.json) in $OUT.
Usage: python bench/experiments/s7_ce_persistent.py [kernel] [step ROUNDS]"""
import ctypes
import json
import os
import sys
import time

sys.path.insert(0, "bench"); sys.path.insert(0, "bench/experiments"); sys.path.insert(0, ".")

import torch  # noqa: E402

import s4_ce_cuda as s4  # noqa: E402
from pipeline.gpt import loss_kernel as lk  # noqa: E402
from pipeline.gpt import model as gm  # noqa: E402
from s3_profile import OUT, graph_ms, loss_problem  # noqa: E402


PERSISTENT = r"""
__device__ __forceinline__ void mbarrier_wait(unsigned int bar, unsigned int parity) {
    unsigned int done = 0;
    while (!done) {
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     " selp.u32 %0, 1, 0, p;\n}" : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    }
}

// Thread 0 only: the bulk copy engine brings `bytes` of a row into `dst`, counted on `bar`.
__device__ __forceinline__ void load_row(uint4* dst, const uint4* src, unsigned int bytes, unsigned int bar) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(bar), "r"(bytes) : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 :: "r"(smem_addr(dst)), "l"(src), "r"(bytes), "r"(bar) : "memory");
}

// Block b takes rows b, b + gridDim.x, ... and holds two of them in dynamic shared memory
// (2 * width * 2 bytes): the next row arrives while this one is reduced and written.
extern "C" __global__ void __launch_bounds__(THREADS, 1)
cross_entropy_grad_persistent(unsigned short* logits, const long long* targets, float* losses, int width,
                              int vocab, int rows) {
    extern __shared__ __align__(128) uint4 rows_s[];
    __shared__ __align__(8) unsigned long long loaded[2];
    __shared__ float scratch_max[32];
    __shared__ float scratch_sum[32];
    const int nvec = width >> 3;
    const unsigned int bytes = nvec * 16u;
    if (threadIdx.x == 0) {
        for (int b = 0; b < 2; b++)
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(smem_addr(&loaded[b])) : "memory");
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        if (blockIdx.x < rows)
            load_row(rows_s, reinterpret_cast<const uint4*>(logits + (long long)blockIdx.x * width), bytes,
                     smem_addr(&loaded[0]));
    }
    __syncthreads();
    int i = 0;
    for (long long row = blockIdx.x; row < rows; row += gridDim.x, i++) {
        const int buf = i & 1;
        const long long next = row + gridDim.x;
        if (threadIdx.x == 0 && next < rows)  // the other buffer was read to the end last iteration
            load_row(rows_s + (buf ^ 1) * nvec, reinterpret_cast<const uint4*>(logits + next * width), bytes,
                     smem_addr(&loaded[buf ^ 1]));
        mbarrier_wait(smem_addr(&loaded[buf]), (i >> 1) & 1);  // each buffer's barrier flips once per use
        const uint4* row_s = rows_s + buf * nvec;
        float m = NEG_INF, s = 0.0f;
        for (int idx = threadIdx.x; idx < nvec; idx += THREADS) {
            const uint4 v = row_s[idx];
            const float vm = vec_max(v, idx * 8, vocab);
            if (vm > m) {
                s *= __expf(m - vm);
                m = vm;
            }
            s += vec_sum_exp(v, idx * 8, vocab, m);
        }
        const float row_max = block_reduce<true>(m, scratch_max);
        s = m == NEG_INF ? 0.0f : s * __expf(m - row_max);
        const float lse = row_max + __logf(block_reduce<false>(s, scratch_sum));
        const long long target = targets[row];
        if (threadIdx.x == 0) {
            const unsigned short x_target = reinterpret_cast<const unsigned short*>(row_s)[target];
            losses[row] = lse - __uint_as_float(((unsigned int)x_target) << 16);
        }
        uint4* out = reinterpret_cast<uint4*>(logits + row * width);
        for (int idx = threadIdx.x; idx < nvec; idx += THREADS)
            out[idx] = vec_grad(row_s[idx], idx * 8, vocab, lse, target);
        __syncthreads();
    }
}
"""


def persistent_cubin(arch, threads):
    """The candidate compiled with production's helpers (loss_kernel.SOURCE, which also holds the
    production kernel) through production's NVRTC call, at `threads` per block."""
    saved = lk.SOURCE, lk.THREADS
    lk.SOURCE, lk.THREADS = saved[0] + PERSISTENT, threads
    try:
        return lk.compile_cubin(arch)
    finally:
        lk.SOURCE, lk.THREADS = saved


class PersistentAsProduction:
    """The candidate behind loss_kernel's `_Kernel` interface, for the step A/B."""

    def __init__(self, arch, width, production):
        self.kernel = s4.DriverKernel(persistent_cubin(arch, 1024), "cross_entropy_grad_persistent")
        self.kernel.set_max_dynamic_smem(4 * width)
        self.max_shared = production.max_shared
        self.blocks = torch.cuda.get_device_properties(0).multi_processor_count

    def __call__(self, logits, targets, losses, width, vocab):
        rows = logits.size(0)
        self.kernel(min(rows, self.blocks), 1024, torch.cuda.current_stream().cuda_stream, logits.data_ptr(),
                    targets.data_ptr(), losses.data_ptr(), ctypes.c_int(width), ctypes.c_int(vocab),
                    ctypes.c_int(rows), smem=4 * width)


def time_persistent(threads, arch, problem, vocab):
    n, V = problem[0].shape
    kernel = s4.DriverKernel(persistent_cubin(arch, threads), "cross_entropy_grad_persistent")
    kernel.set_max_dynamic_smem(4 * V)  # two rows of bf16
    blocks = min(n, torch.cuda.get_device_properties(0).multi_processor_count)
    return s4.time_kernel(kernel, threads, 4 * V, problem, vocab, grid=blocks, extra=(ctypes.c_int(n),))


def kernels(n=32768, V=50304, vocab=50257):
    major, minor = torch.cuda.get_device_capability()
    arch = major * 10 + minor
    problem = loss_problem(n, V, vocab)
    work, t = problem[0].clone(), problem[1]
    os.environ["GPT_CUDA_LOSS"] = "0"
    res = {"floor_1r1w_ms": 2 * n * V * 2 / 3.35e12 * 1e3,
           "triton_ms": graph_ms(lambda: gm.cross_entropy_grad_(work, t, vocab))}
    os.environ["GPT_CUDA_LOSS"] = "1"
    res["production_ms"] = graph_ms(lambda: gm.cross_entropy_grad_(work, t, vocab))
    print(res, flush=True)
    for threads in (1024, 768, 512):
        name = "persistent_%d" % threads
        try:
            res[name] = time_persistent(threads, arch, problem, vocab)
        except Exception as e:  # noqa: BLE001
            res[name] = dict(error=repr(e)[-800:])
        print(name, res[name], flush=True)
    with open(os.path.join(OUT, "ce_persistent.json"), "w") as f:
        json.dump(res, f, indent=1)


def step(rounds):
    import bench_train as bt
    from pipeline.gpt import cudnn_attention
    from s3_profile import default_step_ms
    glob_ = bt.make_shards("/tmp/bench_train_data")
    device = torch.device("cuda")
    frontend = cudnn_attention.available(device, 32, 1024, 12, 64)
    print("frontend available:", frontend, cudnn_attention.unavailable_reason(), flush=True)
    index = torch.cuda.current_device()
    production = lk._kernel_for(device)
    assert production is not None, lk.unavailable_reason(index)
    major, minor = torch.cuda.get_device_capability()
    configs = {"production_loss_kernel": production,
               "persistent_loss_kernel": PersistentAsProduction(major * 10 + minor, 50304, production)}
    res = {name: [] for name in configs}
    res["frontend"] = frontend
    for _ in range(rounds):
        for name, kernel in configs.items():
            lk._kernels[index] = kernel
            started = time.time()
            res[name].append(default_step_ms(glob_, configure=lambda raw: raw.set_cudnn_frontend(frontend)))
            print(name, res[name][-1], "(%.0f s)" % (time.time() - started), flush=True)
            with open(os.path.join(OUT, "step_ab7.json"), "w") as f:
                json.dump(res, f, indent=1)
    lk._kernels[index] = production
    for name in configs:
        flat = [ms for r in res[name] for ms in r]
        mean = sum(flat) / len(flat)
        print("%-24s mean %.3f ms = %.1fk tokens/s" % (name, mean, 32 * 1024 / mean))


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    args = sys.argv[1:] or ["kernel"]
    if "kernel" in args:
        kernels()
    if "step" in args:
        i = args.index("step")
        step(int(args[i + 1]) if len(args) > i + 1 else 2)

"""Session-5 experiment: one-read classifier loss kernels that stage the row in shared memory,
built on s4_ce_cuda.py (NVRTC + driver API, no nvcc).

Session 4's first GPU run of s4_ce_cuda.py (dev1): the register kernel at 1024 threads runs one
block per SM and takes 3.92 ms; the shared-memory kernel at 1024 threads, two blocks per SM,
2.99 ms; production 3.29 ms; the floor (one read + one write at 3.35 TB/s) 1.97 ms. Variants here:

- `ce_smem_online`: as s4's shared-memory kernel, but the load pass also keeps a running max and
  a rescaled sum of exponentials per thread (online softmax), so the row is read from shared
  memory once more (for the gradient) instead of twice;
- `ce_tma_online`: the row is brought into shared memory by Hopper's bulk copy engine
  (`cp.async.bulk`, completion on an mbarrier) in CHUNKS pieces, so no registers hold data in
  flight and the online pass starts on the first piece while the others arrive.

Prints and writes ce_tma.json in $OUT: time (CUDA-graph replay) and errors against the reference
per variant, next to production and s4's shared-memory kernel.
`--compile-only`: ptxas register/spill counts (needs only libnvrtc)."""
import json
import os
import sys

sys.path.insert(0, "bench/experiments")
sys.path.insert(0, "bench")
sys.path.insert(0, ".")

import s4_ce_cuda as s4  # noqa: E402

OUT = os.environ.get("OUT", "/tmp/exp_out")

KERNELS = r"""
// Per-thread online softmax over one 8-wide vector: (m, s) -> running max, sum of exp(x - m).
__device__ __forceinline__ void vec_online(uint4 v, int col, int vocab, float& m, float& s) {
    const float vm = vec_max(v, col, vocab, NEG_INF);
    if (vm > m) {
        s *= __expf(m - vm);  // m = -inf at the start: exp(-inf) = 0 and s is 0 anyway
        m = vm;
    }
    s = vec_sum(v, col, vocab, m, s);
}

// Block-wide log-sum-exp from every thread's (m, s).
__device__ __forceinline__ float block_lse(float m, float s, float* scratch_max, float* scratch_sum) {
    const float row_max = block_reduce<true>(m, scratch_max);
    s = m == NEG_INF ? 0.0f : s * __expf(m - row_max);
    return row_max + __logf(block_reduce<false>(s, scratch_sum));
}

extern "C" __global__ void __launch_bounds__(THREADS, 2)
ce_smem_online(unsigned short* logits, const long long* targets, float* losses, int width, int vocab) {
    extern __shared__ uint4 row_s[];
    __shared__ float scratch_max[32];
    __shared__ float scratch_sum[32];
    const Row r = row_setup(logits, targets, width);
    const int nvec = width >> 3;
    float m = NEG_INF, s = 0.0f;
    for (int idx = threadIdx.x; idx < nvec; idx += THREADS) {
        const uint4 v = r.vecs[idx];
        row_s[idx] = v;
        vec_online(v, idx * 8, vocab, m, s);
    }
    const float lse = block_lse(m, s, scratch_max, scratch_sum);  // its barriers publish row_s
    if (threadIdx.x == 0) losses[blockIdx.x] = lse - r.x_target;
    for (int idx = threadIdx.x; idx < nvec; idx += THREADS)
        r.vecs[idx] = vec_grad(row_s[idx], idx * 8, vocab, lse, r.target);
}

__device__ __forceinline__ unsigned int smem_addr(const void* p) {
    return (unsigned int)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ bool mbarrier_try_wait(unsigned int bar, unsigned int parity) {
    unsigned int ok;
    asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                 " selp.u32 %0, 1, 0, p;\n}" : "=r"(ok) : "r"(bar), "r"(parity) : "memory");
    return ok != 0;
}

extern "C" __global__ void __launch_bounds__(THREADS, 2)
ce_tma_online(unsigned short* logits, const long long* targets, float* losses, int width, int vocab) {
    extern __shared__ __align__(128) uint4 row_s[];
    __shared__ __align__(8) unsigned long long bars[CHUNKS];
    __shared__ float scratch_max[32];
    __shared__ float scratch_sum[32];
    const Row r = row_setup(logits, targets, width);
    const int nvec = width >> 3;
    const int per_chunk = (nvec + CHUNKS - 1) / CHUNKS;
    if (threadIdx.x == 0) {
        for (int c = 0; c < CHUNKS; c++)
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(smem_addr(&bars[c])) : "memory");
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        for (int c = 0; c < CHUNKS; c++) {
            const int first = c * per_chunk;
            const int count = min(per_chunk, nvec - first);
            if (count <= 0) break;
            const unsigned int bytes = count * 16u;
            const unsigned int bar = smem_addr(&bars[c]);
            asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;"
                         :: "r"(bar), "r"(bytes) : "memory");
            asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                         :: "r"(smem_addr(row_s + first)), "l"(r.vecs + first), "r"(bytes), "r"(bar)
                         : "memory");
        }
    }
    __syncthreads();  // the barriers exist before anyone waits on them
    float m = NEG_INF, s = 0.0f;
    for (int c = 0; c < CHUNKS; c++) {
        const int first = c * per_chunk;
        const int end = min(first + per_chunk, nvec);
        if (first >= end) break;
        while (!mbarrier_try_wait(smem_addr(&bars[c]), 0)) {}
        for (int idx = first + threadIdx.x; idx < end; idx += THREADS)
            vec_online(row_s[idx], idx * 8, vocab, m, s);
    }
    const float lse = block_lse(m, s, scratch_max, scratch_sum);
    if (threadIdx.x == 0) losses[blockIdx.x] = lse - r.x_target;
    for (int idx = threadIdx.x; idx < nvec; idx += THREADS)
        r.vecs[idx] = vec_grad(row_s[idx], idx * 8, vocab, lse, r.target);
}
"""

# (kernel, threads, chunks); s4's smem kernel at 1024 threads is the comparison point
VARIANTS = (("ce_one_read_smem", 1024, 1), ("ce_smem_online", 1024, 1), ("ce_smem_online", 512, 1),
            ("ce_tma_online", 1024, 1), ("ce_tma_online", 1024, 4), ("ce_tma_online", 1024, 8),
            ("ce_tma_online", 512, 4))


def source(chunks):
    return "#define CHUNKS %d\n" % chunks + s4.SOURCE + KERNELS


def compile_only(width=50304, arch=90):
    for kname, threads, chunks in VARIANTS:
        _, log = s4.compile_cubin(threads, width, arch, verbose=True, source=source(chunks))
        lines = log.splitlines()
        for i, ln in enumerate(lines):
            if "Function properties for %s" % kname in ln:
                print(kname, threads, chunks, " | ".join(x.strip() for x in lines[i:i + 3]))


def main(n=32768, V=50304, vocab=50257):
    import torch
    from pipeline.gpt import model as gm
    from s3_profile import graph_ms, loss_problem
    os.makedirs(OUT, exist_ok=True)
    major, minor = torch.cuda.get_device_capability()
    problem = loss_problem(n, V, vocab)
    work, t = problem[0].clone(), problem[1]
    os.environ["GPT_CUDA_LOSS"] = "0"  # production = the Triton kernel these candidates compete with
    res = {"production_ms": graph_ms(lambda: gm.cross_entropy_grad_(work, t, vocab)),
           "floor_1r1w_ms": 2 * n * V * 2 / 3.35e12 * 1e3}
    print(res, flush=True)
    for kname, threads, chunks in VARIANTS:
        name = "%s_%d_c%d" % (kname, threads, chunks)
        try:
            cubin, log = s4.compile_cubin(threads, V, major * 10 + minor, verbose=True, source=source(chunks))
            kernel = s4.DriverKernel(cubin, kname)
            smem = 2 * V
            kernel.set_max_dynamic_smem(smem)
            res[name] = s4.time_kernel(kernel, threads, smem, problem, vocab)
        except Exception as e:  # noqa: BLE001
            res[name] = dict(error=repr(e)[-800:])
        print(name, res[name], flush=True)
        with open(os.path.join(OUT, "ce_tma.json"), "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    if "--compile-only" in sys.argv:
        compile_only()
    else:
        main()

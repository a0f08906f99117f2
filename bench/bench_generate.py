"""Inference benchmark: HF transformers generate() vs our KV-cache/CUDA-graph engine, same weights.

    PYTHONPATH=. python bench/bench_generate.py                     # random d12 (timing only)
    PYTHONPATH=. python bench/bench_generate.py -e model_00004725.bin
    PYTHONPATH=. python bench/bench_generate.py --variants          # engine options, kernel profile

The first two are `pipeline generate --benchmark`: a table, and
bench/results/inference_<device>.{json,csv,png}. `--variants` times the engine's decode options at
batch 1 (CUDA graphs on/off, fused kernels on/off), the bare CUDA-graph replay against the
whole generate loop, and lists the kernels of one decode step; it writes
bench/results/inference_variants.json. Numbers: docs/benchmarks/inference.md.
"""
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.gpt.generate import main  # noqa: E402

HELLO = [31373]


def variants(out_dir="bench/results", n=256):
    import torch

    from pipeline.gpt.engine import Engine
    from pipeline.gpt.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_descriptor("d12")).to("cuda", torch.bfloat16).eval()
    results = {"device": torch.cuda.get_device_name(), "model": "random d12 bf16", "new_tokens": n, "rows": []}

    def timed(fn, reps=3):
        ts = []
        for _ in range(reps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    configs = [dict(cuda_graphs=False, fuse=False), dict(cuda_graphs=False, fuse=True),
               dict(cuda_graphs=True, fuse=False), dict(cuda_graphs=True, fuse=True)]
    for cfg in configs:
        row = dict(cfg)
        try:
            t0 = time.perf_counter()
            engine = Engine(model, max_batch_size=1, **cfg)
            gen = lambda: engine.generate([HELLO], n, temperature=0, stop_token=None)  # noqa: E731
            gen()
            row["warmup_s"] = time.perf_counter() - t0
            secs = timed(gen)
            row.update(seconds=secs, tokens_per_s=n / secs)
            if engine.cuda_graphs:  # bare replay of the captured step: GPU time per token, no Python loop
                graph, _ = engine._graphs[max(engine._graphs)]
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(200):
                    graph.replay()
                end.record()
                torch.cuda.synchronize()
                row["replay_ms_window_%d" % max(engine._graphs)[1]] = start.elapsed_time(end) / 200
            row["fused_active"] = [engine.fuse_gelu, engine.fuse_ln, engine.fuse_attn]
            del engine
        except Exception as e:  # a variant that does not run here is a result too
            row["error"] = "%s: %s" % (type(e).__name__, str(e)[:300])
        results["rows"].append(row)
        print(row, flush=True)

    # kernels of one decode step (eager, so the profiler sees each launch)
    from torch.profiler import ProfilerActivity, profile

    for cfg in (dict(fuse=False), dict(fuse=True)):
        engine = Engine(model, max_batch_size=1, cuda_graphs=False, **cfg)
        engine.generate([HELLO * 8], 2, temperature=0, stop_token=None)
        steps = 10
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
            for i in range(steps):
                engine._decode(1, 100 + i)
            torch.cuda.synchronize()
        kern = {}
        for ev in prof.events():
            if ev.device_type.name == "CUDA":
                k = kern.setdefault(ev.name[:90], [0, 0.0])
                k[0] += 1
                k[1] += ev.device_time_total if hasattr(ev, "device_time_total") else ev.cuda_time_total
        table = sorted(kern.items(), key=lambda kv: -kv[1][1])
        total_n = sum(v[0] for v in kern.values()) / steps
        total_us = sum(v[1] for v in kern.values()) / steps
        name = "profile_%s" % ("fused" if cfg["fuse"] else "unfused")
        results[name] = {"kernels_per_step": total_n, "kernel_us_per_step": total_us,
                         "top": [(k, v[0] / steps, v[1] / steps) for k, v in table[:14]]}
        print("\n%s: %.0f kernels, %.0f us of kernel time per step" % (name, total_n, total_us))
        for k, (cnt, us) in table[:14]:
            print("  %5.1f x %8.1f us  %s" % (cnt / steps, us / steps, k))
        del engine
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "inference_variants.json"), "w") as f:
        json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--variants" in args:
        out = args[args.index("--bench-out") + 1] if "--bench-out" in args else "bench/results"
        sys.exit(variants(out))
    sys.exit(main(["--benchmark"] + args))

"""Inference benchmark: HF transformers generate() vs our KV-cache/CUDA-graph engine, same weights.

    PYTHONPATH=. python bench/bench_generate.py                     # random d12 (timing only)
    PYTHONPATH=. python bench/bench_generate.py -e model_00004725.bin
    PYTHONPATH=. python bench/bench_generate.py --variants          # engine options, kernel profile
    PYTHONPATH=. python bench/bench_generate.py --decode-sweep      # split decode attention

The first two are `pipeline generate --benchmark`: a table, and
bench/results/inference_<device>.{json,csv,png}; `--json PATH` also copies that JSON (with the machine
and command) to PATH, e.g. docs/benchmarks/results/h100_decode.json. `--variants` times the engine's
decode options at batch 1 (CUDA graphs on/off, fused kernels on/off), the bare CUDA-graph replay against
the whole generate loop, and lists the kernels of one decode step; it writes
bench/results/inference_variants.json. `--decode-sweep` compares the decode-attention kernel's
split (flash-decoding) settings: the kernel alone per cached length, then batch-1 tokens/s over the
new-token sweep, batch-64 throughput and logits vs a full forward for each engine setting; it
writes bench/results/inference_decode_sweep.json. Numbers: docs/benchmarks/inference.md.
"""
import json
import os
import statistics
import sys
import time


from pipeline.gpt.generate import main  # noqa: E402
from runinfo import run_info  # noqa: E402  (bench/ is sys.path[0] when a bench script runs)

HELLO = [31373]


def replay_ms(graph, reps: int, warmup: int = 0) -> float:
    """Milliseconds per replay of a captured CUDA graph (CUDA events around `reps` replays)."""
    import torch

    for _ in range(warmup):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


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
                row["replay_ms_window_%d" % max(engine._graphs)[1]] = replay_ms(graph, 200)
            row["fused_active"] = engine.fused
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


def decode_sweep(out_dir="bench/results", sweep=(16, 32, 64, 128, 256, 512, 1023)):
    import torch

    from pipeline.gpt import decode_kernels as DK
    from pipeline.gpt import engine as E
    from pipeline.gpt.gen_benchmark import logits_error
    from pipeline.gpt.model import GPT, GPTConfig

    dev = torch.device("cuda")
    results = {"device": torch.cuda.get_device_name(), "model": "random d12 bf16", "kernel": [], "engine": []}

    def graph_us(fn, reps=200):
        """Microseconds per replay of a CUDA graph of fn (CUDA events around `reps` replays)."""
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        return g, 1000 * replay_ms(g, reps, warmup=10)

    # 1. the kernel alone: 12 launches (one per layer of d12) in a graph, batch 1, bf16
    H, D, S, L = 12, 64, 1024, 12
    C = H * D
    gen = torch.Generator(device=dev).manual_seed(0)
    qkv = torch.randn(1, 3 * C, device=dev, generator=gen).to(torch.bfloat16)
    cache = torch.randn(L, 1, S, 2 * C, device=dev, generator=gen).to(torch.bfloat16)
    pad = torch.zeros(1, dtype=torch.long, device=dev)
    cur = torch.zeros(1, dtype=torch.long, device=dev)
    work = torch.empty(H * 16 * (D + 2), dtype=torch.float32, device=dev)
    count = torch.zeros(H, dtype=torch.int32, device=dev)
    kernel_variants = [("single (1 split)", 1, 1, True), ("16 splits", 16, 1, True),
                       ("16 splits, >=2 blocks each", 16, 2, True), ("8 splits", 8, 1, True),
                       ("16 splits, merge in 2nd kernel", 16, 1, False)]
    for name, n, mb, red in kernel_variants:
        cur.fill_(1023)
        step = lambda: [DK.decode_attention(qkv, cache[i], cur, pad, H, work, count, n, mb, red)  # noqa: E731
                        for i in range(L)]
        g, _ = graph_us(step)
        row = {"variant": name, "splits": n, "min_blocks": mb, "reduce_in_kernel": red}
        for c in (16, 64, 128, 256, 512, 1023):
            cur.fill_(c)
            row["us_per_launch_cur_%d" % c] = 1000 * replay_ms(g, 200, warmup=10) / L
        row["counters_zero"] = int(count.abs().sum()) == 0
        results["kernel"].append(row)
        print(row, flush=True)
        del g

    # 2. the whole engine, batch 1 sweep, batch 64 throughput, logits vs full forward
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_descriptor("d12")).to(dev, torch.bfloat16).eval()
    engine_variants = [("1 split, no embed fusion", 1, 1, True, False), ("1 split", 1, 1, True, True),
                       ("auto splits, no embed fusion", None, 1, True, False),
                       ("auto splits", None, 1, True, True), ("auto, >=2 blocks each", None, 2, True, True),
                       ("auto, merge in 2nd kernel", None, 1, False, True)]
    tokens = {}
    for name, splits, mb, red, embed in engine_variants:
        engine = E.Engine(model, max_batch_size=1, max_seq_len=1024, attn_splits=splits)
        engine._attn_min_blocks, engine._attn_reduce_in_kernel = mb, red
        engine.fuse_embed = engine.fuse_embed and embed
        run = lambda n: engine.generate([HELLO], n, temperature=0, stop_token=None)[0]  # noqa: E731
        tokens[name] = run(1023)  # warm-up: captures the graph
        row = {"variant": name, "splits_b1": engine._splits(1),
               "fused": engine.fused}
        for n in sweep:
            ts = []
            for _ in range(5 if n <= 256 else 3):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                run(n)
                torch.cuda.synchronize()
                ts.append(time.perf_counter() - t0)
            row["tok_s_%d" % n] = n / statistics.median(ts)
        graph = engine._graphs[max(engine._graphs)][0]
        for c in (100, 1000):
            engine._cur.fill_(c)
            row["replay_ms_cur_%d" % c] = replay_ms(graph, 100, warmup=5)
        check_tokens = (HELLO + tokens[name])[:1024]
        row["logits_check_1024"] = logits_error(model, engine, check_tokens)
        row["greedy_prefix_vs_single"] = next(
            (i for i, (x, y) in enumerate(zip(tokens[name], tokens[engine_variants[0][0]])) if x != y), 1023)
        del engine
        # batch 64, 128 new tokens each, prompts of 1-63 tokens (as `pipeline generate --benchmark`)
        bengine = E.Engine(model, max_batch_size=64, max_seq_len=1024, attn_splits=splits)
        bengine._attn_min_blocks, bengine._attn_reduce_in_kernel = mb, red
        bengine.fuse_embed = bengine.fuse_embed and embed
        g = torch.Generator().manual_seed(1)
        lengths = torch.randint(1, 64, (64,), generator=g).tolist()
        prompts = [torch.randint(0, 50257, (k,), generator=g).tolist() for k in lengths]
        bengine.generate(prompts, 128, temperature=0, stop_token=None)
        ts = []
        for _ in range(3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            bengine.generate(prompts, 128, temperature=0, stop_token=None)
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
        row["batch64_tok_s"] = 64 * 128 / statistics.median(ts)
        row["splits_b64"] = bengine._splits(64)
        del bengine
        results["engine"].append(row)
        print(row, flush=True)
    # fp32: the split kernel against a full forward at fp32 precision
    model32 = model.float()
    e32 = E.Engine(model32, max_batch_size=1, max_seq_len=1024)
    check = (HELLO + tokens["auto splits"])[:1024]
    results["fp32_auto_logits_check_1024"] = logits_error(model32, e32, check)
    print("fp32 auto splits:", results["fp32_auto_logits_check_1024"], flush=True)

    print("\nkernel alone, batch 1, us per launch by cached slots:")
    cs = (16, 64, 128, 256, 512, 1023)
    print("%-32s" % "variant" + "".join("%9d" % c for c in cs))
    for r in results["kernel"]:
        print("%-32s" % r["variant"] + "".join("%9.2f" % r["us_per_launch_cur_%d" % c] for c in cs))
    print("\nengine, batch 1 tokens/s by new tokens; batch 64 tokens/s:")
    print("%-30s" % "variant" + "".join("%8d" % n for n in sweep) + "   b64")
    for r in results["engine"]:
        print("%-30s" % r["variant"] + "".join("%8.0f" % r["tok_s_%d" % n] for n in sweep)
              + "%8.0f" % r["batch64_tok_s"])
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "inference_decode_sweep.json"), "w") as f:
        json.dump(results, f, indent=2)
    return 0


def benchmark_to(json_path: str, args) -> int:
    """`pipeline generate --benchmark ARGS`, then its JSON copied to `json_path` (the CSV and plot stay in
    --bench-out, a temporary directory unless given)."""
    import glob
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args[args.index("--bench-out") + 1] if "--bench-out" in args else tmp
        if "--bench-out" not in args:
            args = args + ["--bench-out", tmp]
        rc = main(["--benchmark"] + args)
        if rc == 0:
            newest = max(glob.glob(os.path.join(out_dir, "inference_*.json")), key=os.path.getmtime)
            os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
            with open(newest) as f:
                result = json.load(f)
            result["run"] = run_info()
            with open(json_path, "w") as f:
                json.dump(result, f, indent=2, sort_keys=True)
            print("wrote %s" % json_path)
        return rc


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--variants" in args:
        out = args[args.index("--bench-out") + 1] if "--bench-out" in args else "bench/results"
        sys.exit(variants(out))
    if "--decode-sweep" in args:
        out = args[args.index("--bench-out") + 1] if "--bench-out" in args else "bench/results"
        sys.exit(decode_sweep(out))
    if "--json" in args:
        i = args.index("--json")
        sys.exit(benchmark_to(args[i + 1], args[:i] + args[i + 2:]))
    sys.exit(main(["--benchmark"] + args))

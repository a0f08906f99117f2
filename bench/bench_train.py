"""Training throughput and memory of `pipeline train` for GPT-2 124M (d12), all configs in one process.

    PYTHONPATH=. python bench/bench_train.py --suite all          # speed + memory tables
    PYTHONPATH=. python bench/bench_train.py --suite smoke        # correctness checks + main config
    PYTHONPATH=. python bench/bench_train.py --suite speed --steps 40 --configs flash+compile+lt+graphs+fe

Every config is a list of `pipeline train` flags: the run is built exactly as the trainer builds it
(`TrainConfig` from the flags, `resolve_plan` for the device, `train.build_trainer` applying the
plan), so the benchmark measures the trainer's own path selection. The default plan's config is
"flash+compile+lt+graphs+fe" (no extra flags: on an H100 it resolves to cuDNN attention, cuBLASLt,
CUDA graphs, torch.compile); the others switch one or more plan choices off by flag.

Speed: the trainer's step (llm.c data loader from a synthetic shard, pinned host->device copy,
bf16 autocast, AdamW, grad clip, losses read back one step late) for each config; tokens/s from
the median step after warm-up (compilation happens in the first steps). MFU = tokens/s x (6N +
6LCT) FLOP/token (llm.c's formula: 803.5 MFLOP/token at T=1024) / 989 TFLOP/s, the H100 SXM bf16
dense peak. Memory: the largest micro-batch whose step fits under `--memory-limit-gb 24` (an
A10G), found by doubling then bisection (one uncompiled step per trial), or, with
--default-memory, among candidates with the default plan. Writes JSON to --out (default
bench/results/train.json) and prints tables.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

from runinfo import run_info  # bench/ is sys.path[0] when a bench script runs

from pipeline.gpt import train as tr  # noqa: E402
from pipeline.gpt.data import DataLoader  # noqa: E402
from pipeline.gpt.fast.model import FastGPT, compile_model  # noqa: E402
from pipeline.gpt.fast.plan import FastPlan  # noqa: E402
from pipeline.shards.llmc import write_shard  # noqa: E402

H100_BF16_PEAK = 989e12

# Plan choices switched off by flag (everything else: the trainer's defaults for the device).
NO_LT, NO_FE, NO_GRAPHS, NO_COMPILE = ["--cublaslt", "0"], ["--cudnn-attention", "0"], \
    ["--cuda-graphs", "0"], ["--compile", "0"]
SPEED = [  # name, pipeline train flags, B, T[, accum]
    ("flash+compile+lt+graphs+fe", [], 32, 1024),                      # the default plan (H100)
    ("flash+compile+lt+graphs+fe-mirrors", ["--bf16-mirrors", "0"], 32, 1024),
    ("flash+compile+lt+graphs+fe-mirrors-triton", ["--bf16-mirrors", "0", "--triton-adamw", "0"], 32, 1024),
    ("flash+compile+lt+graphs", NO_FE, 32, 1024),
    ("flash+compile+lt", NO_FE + NO_GRAPHS, 32, 1024),
    ("flash+lt+graphs", NO_COMPILE + NO_FE, 32, 1024),
    ("flash+compile+lt+graphs+fa2", NO_FE + ["--sdpa", "flash"], 32, 1024),
    ("flash+compile+graphs", NO_LT + NO_FE, 32, 1024),                 # what an sm_86 GPU resolves to
    ("flash+compile", NO_LT + NO_FE + NO_GRAPHS, 32, 1024),
    ("flash+compile+unfused", NO_LT + NO_FE + NO_GRAPHS + ["--fused-loss", "0"], 32, 1024),
    ("flash+compile+cudnn", NO_LT + NO_FE + NO_GRAPHS + ["--sdpa", "cudnn"], 32, 1024),
    ("flash+compile+fa2", NO_LT + NO_FE + NO_GRAPHS + ["--sdpa", "flash"], 32, 1024),
    ("flash+compile+recompute", ["-r", "1"], 32, 1024),
    ("flash+compile+lt+recompute", ["-r", "1", "--cublaslt", "1"], 32, 1024),
    ("flash+compile B64", NO_LT + NO_FE + NO_GRAPHS, 64, 1024),
    ("course step+lt+graphs+fe", [], 64, 1024, 8),                       # -b 64 -d 524288
    ("course step", NO_LT + NO_FE + NO_GRAPHS, 64, 1024, 8),
    ("B32 x16", NO_LT + NO_FE + NO_GRAPHS, 32, 1024, 16),
    ("B32 x16+lt+graphs", NO_FE, 32, 1024, 16),
    ("flash", NO_COMPILE + NO_LT + NO_FE + NO_GRAPHS, 32, 1024),        # the fast path, eager PyTorch
    ("reference", ["--reference"], 32, 1024),                            # pipeline/gpt/model.py
    ("eager", ["--attention", "eager"] + NO_COMPILE + NO_LT + NO_GRAPHS, 16, 1024),
    ("eager+compile", ["--attention", "eager"] + NO_LT + NO_GRAPHS, 16, 1024),
    ("flash+recompute", ["-r", "1"] + NO_COMPILE, 32, 1024),
    ("eager+lt+graphs", ["--attention", "eager", "--cublaslt", "1"] + NO_COMPILE, 16, 1024),
    ("eager+compile+lt+graphs", ["--attention", "eager", "--cublaslt", "1"], 16, 1024),
]
MEMORY = [(att, r, T) for T in (1024, 2048) for att in ("flash", "eager") for r in (0, 1)]


def make_shards(directory: str, ntok: int = 24_000_000) -> str:
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(2):
        path = os.path.join(directory, "bench_train_%06d.bin" % (k + 1))
        if not os.path.exists(path):
            write_shard(path, rng.integers(0, 50257, size=ntok // 2, dtype=np.int64))
    return os.path.join(directory, "bench_train_*.bin")


def setup(glob_, flags, B, T, accum=1, steps=40, limit=None):
    """The trainer's own set-up for `pipeline train -e d12 -b B -t T -d B*T*accum <flags>`:
    (config, run, plan, model to call, optimizer, step_fn)."""
    argv = ["-i", glob_, "-e", "d12", "-b", str(B), "-t", str(T), "-d", str(B * T * accum),
            "-x", str(steps), "--quiet"] + list(flags)
    if limit:
        argv += ["--memory-limit-gb", str(limit)]
    cfg = tr.parse_args(argv)
    run = tr.Run(cfg)
    raw = tr.build_model(cfg, run, -1)
    plan, notes, model, opt, step_fn = tr.build_trainer(cfg, run, raw, accum, B * T * accum * steps)
    for note in notes:
        print(note, flush=True)
    return cfg, run, plan, model, opt, step_fn


def release():
    gc.collect()
    torch.cuda.empty_cache()
    torch._dynamo.reset()
    torch.cuda.reset_peak_memory_stats()


def speed(glob_, name, flags, B, T, steps, accum=1):
    cfg, run, plan, model, opt, step_fn = setup(glob_, flags, B, T, accum, steps)
    batches = tr.batch_source(DataLoader(glob_, B, T), run)
    times, losses = [], []
    torch.cuda.reset_peak_memory_stats()
    t_start = time.perf_counter()
    readback = tr.StepReadback(run)  # as the trainer reads losses: one step late

    def record(done):
        if done is not None:
            losses.append(done[2])
            times.append(done[4])
    for step in range(steps):
        readback.begin()
        loss, norm = step_fn(batches, 6e-4)
        record(readback.push(step, 6e-4, loss, norm))
        batches.prefetch()  # as the trainer does: next batch's host work while the GPU runs
    record(readback.drain())
    warm = max(3, steps // 3)
    med = statistics.median(times[warm:])
    tok_s = B * T * accum / med
    mc = tr.GPTConfig.from_descriptor("d12", max(1024, T))
    flop_tok = 6 * mc.num_params() + 6 * mc.n_layer * mc.n_embd * T
    out = dict(name=name, flags=list(flags), B=B, T=T, accum=accum, plan=plan.describe(),
               median_step_ms=1000 * med, tokens_per_s=tok_s, mfu=tok_s * flop_tok / H100_BF16_PEAK,
               peak_mem_gib=torch.cuda.max_memory_allocated() / 2 ** 30, first_step_s=times[0],
               wall_s=time.perf_counter() - t_start, losses=losses,
               graphs=bool(getattr(step_fn, "active", False)),
               bf16_mirrors=opt.num_mirrors() if hasattr(opt, "num_mirrors") else 0,
               graphs_failed=getattr(step_fn, "failed", None), matmul_tuning=tuning_report(),
               step_ms=[round(1000 * t, 2) for t in times])
    del cfg, run, model, opt, step_fn, batches
    for kind in ("flash", "cudnn", "mem_efficient"):  # back to PyTorch's defaults (--sdpa)
        getattr(torch.backends.cuda, "enable_%s_sdp" % kind)(True)
    release()
    return out


def tuning_report():
    """Per matmul problem the cuBLASLt path has seen: the best candidate's and PyTorch's time."""
    from pipeline.gpt import cublaslt
    if not cublaslt._lt.cache_info().currsize:
        return {}
    out = {}
    for key, t in cublaslt._lt().tuning.items():
        _, ta, tb, epi, a_shape, b_shape, d_shape = key[:7]
        out["epi%d %s x %s -> %s" % (epi, a_shape[:2], b_shape[:2], d_shape[:2])] = dict(
            best_lt_ms=round(min(t["candidates_ms"]), 4), torch_ms=round(t["torch_ms"], 4)
            if t["torch_ms"] != float("inf") else None, chosen=t["chosen"],
            candidates=len(t["candidates_ms"]))
    return out


def profile(glob_, steps=3, out=None, name="flash+compile+lt+graphs+fe"):
    """Top CUDA kernels of one B=32 config: where the step time goes. Also the GPU's busy time
    (kernel time) against the step's wall time: the difference is GPU idle time."""
    from torch.profiler import ProfilerActivity, profile as prof
    flags = next(c[1] for c in SPEED if c[0] == name)
    cfg, run, plan, model, opt, step_fn = setup(glob_, flags, 32, 1024)
    batches = tr.batch_source(DataLoader(glob_, 32, 1024), run)
    for _ in range(5):
        step_fn(batches, 6e-4)[0].item()
    torch.cuda.synchronize()
    with prof(activities=[ProfilerActivity.CUDA]) as p:
        t0 = time.perf_counter()
        for _ in range(steps):
            step_fn(batches, 6e-4)[0].item()
        wall = (time.perf_counter() - t0) / steps
    events = p.key_averages()
    busy = sum(e.self_device_time_total for e in events) / steps / 1000
    text = "%s: wall %.2f ms/step, kernels %.2f ms/step (profiler on)\n" % (name, wall * 1000, busy)
    text += events.table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=70)
    if out:
        with open(out, "w") as f:
            f.write(text)
    del cfg, run, model, opt, step_fn, batches
    release()
    return text


def try_batch(raw, opt, model, run, B, T):
    x = torch.randint(0, 50257, (B, T), device=run.device)
    try:
        with run.autocast():
            _, loss = model(x, x, return_logits=False)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        return True, torch.cuda.max_memory_allocated() / 2 ** 30
    except (torch.cuda.OutOfMemoryError, RuntimeError) as e:  # compiled code may wrap the OOM
        if "out of memory" not in str(e).lower():
            raise
        return False, None


def memory_flags(att, r, compiled):
    return ["--attention", att, "-r", str(r), "--compile", str(int(compiled))] + NO_LT + NO_FE + NO_GRAPHS


def max_batch_compiled(glob_, att, r, T, limit, candidates):
    """Compiled models need less memory (fused kernels save fewer activations): try candidate
    micro-batches in increasing order under the limit until one does not fit."""
    cfg, run, plan, model, opt, _ = setup(glob_, memory_flags(att, r, True), candidates[0], T, limit=limit)
    t0, fits = time.perf_counter(), {}
    for B in candidates:
        ok, peak = try_batch(None, opt, model, run, B, T)
        opt.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        fits[B] = peak if ok else None
        if not ok:
            break
    ok_bs = [b for b, p in fits.items() if p is not None]
    out = dict(attention=att, recompute=r, T=T, limit_gb=limit, compiled=1,
               max_B=max(ok_bs) if ok_bs else 0, tried=fits, search_s=time.perf_counter() - t0,
               peak_mem_gib_at_max=fits.get(max(ok_bs)) if ok_bs else None)
    del cfg, run, model, opt
    torch.cuda.set_per_process_memory_fraction(1.0)
    release()
    return out


DEFAULT_MEMORY = [  # attention, recompute, T, candidate micro-batches (tried in order)
    ("flash", 0, 1024, [32, 40, 48, 56]), ("flash", 1, 1024, [64, 96, 128, 160]),
    ("eager", 0, 1024, [8, 12, 16, 20]), ("eager", 1, 1024, [32, 48, 64]),
    ("flash", 0, 2048, [16, 20, 24, 28]), ("flash", 1, 2048, [32, 48, 64]),
    ("eager", 0, 2048, [2, 4, 6, 8, 10]), ("eager", 1, 2048, [8, 16, 24, 32, 40]),
]


def max_batch_default(glob_, att, r, T, limit, candidates, steps=5):
    """The trainer's default plan (`--attention att -r r` and nothing else) under the memory
    limit: a fresh model per candidate micro-batch, a few real steps each (the graphs are
    captured at step 4), in increasing order until one does not fit."""
    t0, fits, graphs = time.perf_counter(), {}, {}
    for B in candidates:
        cfg, run, plan, model, opt, step = setup(glob_, ["--attention", att, "-r", str(r)], B, T,
                                                 steps=steps, limit=limit)
        batches = tr.batch_source(DataLoader(glob_, B, T), run)
        torch.cuda.reset_peak_memory_stats()
        try:
            for _ in range(steps):
                step(batches, 6e-4)[0].item()
            fits[B] = torch.cuda.max_memory_allocated() / 2 ** 30
            graphs[B] = bool(getattr(step, "active", False))
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:  # compiled code may wrap the OOM
            if "out of memory" not in str(e).lower():
                raise
            fits[B] = None
        del cfg, run, model, opt, step, batches
        torch.cuda.set_per_process_memory_fraction(1.0)
        release()
        if fits[B] is None:
            break
    ok_bs = [b for b, p in fits.items() if p is not None]
    return dict(attention=att, recompute=r, T=T, limit_gb=limit, compiled=1, default_setup=1,
                max_B=max(ok_bs) if ok_bs else 0, tried=fits, graphs=graphs,
                search_s=time.perf_counter() - t0,
                peak_mem_gib_at_max=fits.get(max(ok_bs)) if ok_bs else None)


def max_batch(glob_, att, r, T, limit, cap=256, deadline=60.0):
    cfg, run, plan, model, opt, _ = setup(glob_, memory_flags(att, r, False), 1, T, limit=limit)
    t0 = time.perf_counter()
    results = {}

    def fits(B):
        ok, peak = try_batch(None, opt, model, run, B, T)
        opt.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        results[B] = peak
        return ok

    lo, hi = 0, None
    B = 1
    while B <= cap and time.perf_counter() - t0 < deadline:
        if fits(B):
            lo, B = B, B * 2
        else:
            hi = B
            break
    hi = hi or min(B, cap + 1)
    while hi - lo > 1 and time.perf_counter() - t0 < deadline:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    out = dict(attention=att, recompute=r, T=T, limit_gb=limit, compiled=0, max_B=lo,
               peak_mem_gib_at_max=results.get(lo), trials=len(results),
               search_s=time.perf_counter() - t0)
    del cfg, run, model, opt
    torch.cuda.set_per_process_memory_fraction(1.0)
    release()
    return out


def smoke(glob_):
    """Correctness on the GPU: the reference model against the eager-attention and compiled fast
    paths, loss at init ~ ln(50257)."""
    checks = {}
    torch.manual_seed(0)
    cfg, run, plan, raw, opt, _ = setup(glob_, ["--reference"], 4, 1024)
    x, y = tr.to_device(DataLoader(glob_, 4, 1024).next_batch(), run)
    with torch.no_grad():
        for dtype in ("fp32", "bf16"):
            ctx = run.autocast() if dtype == "bf16" else torch.autocast("cuda", enabled=False)
            with ctx:
                lf, a = raw(x, y)
                le, b = FastGPT(raw, FastPlan(attention="eager", bf16_residual=False))(x, y)
            rel = ((lf.float() - le.float()).norm() / le.float().norm()).item()
            checks["reference_vs_eager_%s" % dtype] = dict(loss_reference=a.item(), loss_eager=b.item(),
                                                            logits_rel_err=rel)
        comp = compile_model(FastGPT(raw, FastPlan()))
        with run.autocast():
            _, lc = comp(x, y, return_logits=False)
            _, lu = raw(x, y, return_logits=False)
        checks["compiled_fast_vs_reference_loss"] = dict(compiled=lc.item(), reference=lu.item())
    checks["ln_vocab"] = float(np.log(50257))
    del cfg, run, raw, opt
    release()
    return checks


def table(rows, cols):
    lines = [" | ".join(c for c, _ in cols)]
    for row in rows:
        lines.append(" | ".join(fmt % row[k] if row.get(k) is not None else "-" for k, fmt in cols))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--suite", choices=["smoke", "speed", "memory", "all"], default="all")
    p.add_argument("--profile", help="also write a kernel profile of --profile-config to this file")
    p.add_argument("--compiled-memory", action="store_true",
                   help="also probe compiled flash configs at the memory limit")
    p.add_argument("--profile-config", default="flash+compile+lt+graphs+fe",
                   help="SPEED name whose flags the profile uses")
    p.add_argument("--default-memory", action="store_true",
                   help="max micro-batch under --limit for the trainer's default plan")
    p.add_argument("--memory-only", help="comma-separated attention/recompute/T keys for "
                   "--default-memory, e.g. flash/0/1024,eager/1/2048 (default all)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--configs", help="comma-separated SPEED names to run (default all)")
    p.add_argument("--limit", type=float, default=24.0)
    p.add_argument("--data", default="/tmp/bench_train_data")
    p.add_argument("--out", default=os.path.join("bench", "results", "train.json"))
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_train needs a CUDA GPU")
        return 1
    glob_ = make_shards(a.data)
    res = dict(run=run_info(), device=torch.cuda.get_device_name(), torch=torch.__version__,
               python=platform.python_version(), speed=[], memory=[])

    def save():
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)

    if a.suite == "smoke":
        res["smoke"] = smoke(glob_)
        print(json.dumps(res["smoke"], indent=1))
        save()
    if a.suite in ("smoke", "speed", "all"):
        wanted = a.configs.split(",") if a.configs else [c[0] for c in SPEED]
        if a.suite == "smoke" and not a.configs:
            wanted = ["flash+compile+lt+graphs+fe"]
        for name, flags, B, T, *accum in SPEED:
            if name not in wanted:
                continue
            accum = accum[0] if accum else 1
            try:
                row = speed(glob_, name, flags, B, T, max(9, a.steps // accum), accum)
            except Exception as e:  # record it and go on with the other configs
                res["speed"].append(dict(name=name, error="%s: %s" % (type(e).__name__, e)))
                print("%s failed: %s" % (name, res["speed"][-1]["error"][:2000]), flush=True)
                release()
                continue
            res["speed"].append(row)
            save()
            print("%-30s %8.0f tok/s  %5.1f%% MFU  %6.2f GiB  step %.1f ms  first %.1f s"
                  % (name, row["tokens_per_s"], 100 * row["mfu"], row["peak_mem_gib"],
                     row["median_step_ms"], row["first_step_s"]), flush=True)
    if a.profile:
        print(profile(glob_, out=a.profile, name=a.profile_config)[:6000])
    if a.suite in ("memory", "all"):
        for att, r, T in MEMORY:
            row = max_batch(glob_, att, r, T, a.limit)
            res["memory"].append(row)
            save()
            print("max B at %.0f GB: T=%d %-5s recompute=%d -> B=%d (%s GiB, %d trials, %.0f s)"
                  % (a.limit, T, att, r, row["max_B"], row["peak_mem_gib_at_max"], row["trials"],
                     row["search_s"]), flush=True)
    if a.default_memory:
        for att, r, T, cands in DEFAULT_MEMORY:
            if a.memory_only and "%s/%d/%d" % (att, r, T) not in a.memory_only.split(","):
                continue
            row = max_batch_default(glob_, att, r, T, a.limit, cands)
            res["memory"].append(row)
            save()
            print("default setup, max B at %.0f GB: T=%d %s recompute=%d -> B>=%d  tried %s graphs %s (%.0f s)"
                  % (a.limit, T, att, r, row["max_B"], row["tried"], row["graphs"], row["search_s"]),
                  flush=True)
    if a.compiled_memory:
        for att, r, T, cands in (("flash", 0, 1024, [32, 40, 48, 56]), ("flash", 1, 1024, [64, 96])):
            row = max_batch_compiled(glob_, att, r, T, a.limit, cands)
            res["memory"].append(row)
            save()
            print("compiled, max B at %.0f GB: T=%d %s recompute=%d -> B>=%d  tried %s (%.0f s)"
                  % (a.limit, T, att, r, row["max_B"], row["tried"], row["search_s"]), flush=True)
    print()
    print(table(res["speed"], [("name", "%s"), ("B", "%d"), ("accum", "%d"),
                               ("tokens_per_s", "%.0f"), ("mfu", "%.3f"), ("peak_mem_gib", "%.1f"),
                               ("median_step_ms", "%.1f")]))
    if res["memory"]:
        print(table(res["memory"], [("T", "%d"), ("attention", "%s"), ("recompute", "%d"),
                                    ("compiled", "%d"),
                                    ("max_B", "%d"), ("peak_mem_gib_at_max", "%.1f")]))
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training throughput and memory of `pipeline train` for GPT-2 124M (d12), all configs in one process.

    PYTHONPATH=. python bench/bench_train.py --suite all          # speed + memory tables
    PYTHONPATH=. python bench/bench_train.py --suite smoke        # correctness checks + main config

Speed: the trainer's own step (`pipeline.gpt.train.train_step`: llm.c data loader from a synthetic
shard, pinned host->device copy, bf16 autocast, fused AdamW, grad clip, one host sync per step) for
each config; tokens/s from the median step after warm-up (compilation happens in the first steps).
MFU = tokens/s x (6N + 6LCT) FLOP/token (llm.c's formula: 803.5 MFLOP/token at T=1024) / 989 TFLOP/s,
the H100 SXM bf16 dense peak. Memory: the largest micro-batch whose step fits under
`--memory-limit-gb 24` (an A10G), found by doubling then bisection, one uncompiled step per trial.
Writes JSON to --out (default bench/results/train.json) and prints tables.
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.gpt import train as tr  # noqa: E402
from pipeline.gpt.data import DataLoader  # noqa: E402
from pipeline.shards import write_shard  # noqa: E402

H100_BF16_PEAK = 989e12

SPEED = [  # name, attention, compile, recompute, B, T, compile mode, SDPA kernel
    ("flash+compile", "flash", 1, 0, 32, 1024, "default", "auto"),
    ("flash+compile+f32res", "flash", 1, 0, 32, 1024, "default", "auto"),
    ("flash+compile+cdt", "flash", 1, 0, 32, 1024, "default+cdt", "auto"),
    ("flash+compile+cudnn", "flash", 1, 0, 32, 1024, "default", "cudnn"),
    ("flash+compile+fa2", "flash", 1, 0, 32, 1024, "default", "flash"),
    ("flash+compile+recompute", "flash", 1, 1, 32, 1024, "default", "auto"),
    ("flash", "flash", 0, 0, 32, 1024, "default", "auto"),
    ("flash+recompute", "flash", 0, 1, 32, 1024, "default", "auto"),
    ("eager", "eager", 0, 0, 16, 1024, "default", "auto"),
    ("eager+compile", "eager", 1, 0, 16, 1024, "default", "auto"),
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


def setup(glob_, att, compile_, r, B, T, limit=None, mode="default", sdpa="auto"):
    argv = ["-i", glob_, "-e", "d12", "-b", str(B), "-t", str(T), "-r", str(r), "--attention", att,
            "--compile", str(compile_), "--compile-mode", mode, "--sdpa", sdpa]
    if limit:
        argv += ["--memory-limit-gb", str(limit)]
    args = tr.parse_args(argv)
    run = tr.Run(args)
    raw = tr.build_model(args, run, -1)
    opt = tr.make_optimizer(raw, args, run)
    model = torch.compile(raw, mode=mode) if compile_ else raw
    return args, run, raw, opt, model


def release():
    gc.collect()
    torch.cuda.empty_cache()
    torch._dynamo.reset()
    torch.cuda.reset_peak_memory_stats()


def speed(glob_, name, att, compile_, r, B, T, steps, mode="default", sdpa="auto"):
    import torch._inductor.config as inductor_config
    # "+cdt": inductor's coordinate-descent tuning of its generated (non-matmul) kernels
    inductor_config.coordinate_descent_tuning = mode.endswith("+cdt")
    args, run, raw, opt, model = setup(glob_, att, compile_, r, B, T, mode=mode.replace("+cdt", ""),
                                       sdpa=sdpa)
    # "+f32res": the residual stream in fp32 (before the bf16-residual change), for comparison
    raw.lowp_residual = not name.endswith("+f32res")
    batches = tr.batch_source(DataLoader(glob_, B, T), run)
    times, losses = [], []
    torch.cuda.reset_peak_memory_stats()
    t_start = time.perf_counter()
    for step in range(steps):
        t0 = time.perf_counter()
        loss, norm = tr.train_step(model, raw, opt, batches, 1, run, 6e-4)
        losses.append(torch.stack([loss, norm.float()]).tolist()[0])  # the trainer's one sync
        times.append(time.perf_counter() - t0)
    warm = max(3, steps // 3)
    med = statistics.median(times[warm:])
    tok_s = B * T / med
    flop_tok = 6 * raw.config.num_params() + 6 * raw.config.n_layer * raw.config.n_embd * T
    out = dict(name=name, attention=att, compile=compile_, compile_mode=mode, sdpa=sdpa, recompute=r,
               B=B, T=T,
               median_step_ms=1000 * med, tokens_per_s=tok_s, mfu=tok_s * flop_tok / H100_BF16_PEAK,
               peak_mem_gib=torch.cuda.max_memory_allocated() / 2 ** 30, first_step_s=times[0],
               wall_s=time.perf_counter() - t_start, losses=losses[:3] + losses[-2:],
               step_ms=[round(1000 * t, 2) for t in times])
    del args, run, raw, opt, model, batches
    for kind in ("flash", "cudnn", "mem_efficient"):  # back to PyTorch's defaults
        getattr(torch.backends.cuda, "enable_%s_sdp" % kind)(True)
    release()
    return out


def profile(glob_, steps=3, out=None):
    """Top CUDA kernels of the main config (flash + compile, B=32): where the step time goes."""
    from torch.profiler import ProfilerActivity, profile as prof
    args, run, raw, opt, model = setup(glob_, "flash", 1, 0, 32, 1024)
    batches = tr.batch_source(DataLoader(glob_, 32, 1024), run)
    for _ in range(3):
        tr.train_step(model, raw, opt, batches, 1, run, 6e-4)[0].item()
    with prof(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(steps):
            tr.train_step(model, raw, opt, batches, 1, run, 6e-4)[0].item()
    text = p.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=70)
    if out:
        with open(out, "w") as f:
            f.write(text)
    del args, run, raw, opt, model, batches
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


def max_batch_compiled(glob_, att, r, T, limit, candidates):
    """Compiled models need less memory (fused kernels save fewer activations): try candidate
    micro-batches in increasing order under the limit until one does not fit."""
    args, run, raw, opt, model = setup(glob_, att, 1, r, candidates[0], T, limit=limit)
    t0, fits = time.perf_counter(), {}
    for B in candidates:
        ok, peak = try_batch(raw, opt, model, run, B, T)
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
    del args, run, raw, opt, model
    torch.cuda.set_per_process_memory_fraction(1.0)
    release()
    return out


def max_batch(glob_, att, r, T, limit, cap=256, deadline=60.0):
    args, run, raw, opt, model = setup(glob_, att, 0, r, 1, T, limit=limit)
    t0 = time.perf_counter()
    results = {}

    def fits(B):
        ok, peak = try_batch(raw, opt, model, run, B, T)
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
    del args, run, raw, opt, model
    torch.cuda.set_per_process_memory_fraction(1.0)
    release()
    return out


def smoke(glob_):
    """Correctness on the GPU: flash vs eager, compiled vs not, loss at init ~ ln(50257)."""
    checks = {}
    torch.manual_seed(0)
    args, run, raw, opt, model = setup(glob_, "flash", 0, 0, 4, 1024)
    x, y = tr.to_device(DataLoader(glob_, 4, 1024).next_batch(), run)
    with torch.no_grad():
        for dtype in ("fp32", "bf16"):
            ctx = run.autocast() if dtype == "bf16" else torch.autocast("cuda", enabled=False)
            with ctx:
                raw.set_attention("flash")
                lf, a = raw(x, y)
                raw.set_attention("eager")
                le, b = raw(x, y)
            rel = ((lf.float() - le.float()).norm() / le.float().norm()).item()
            checks["flash_vs_eager_%s" % dtype] = dict(loss_flash=a.item(), loss_eager=b.item(),
                                                        logits_rel_err=rel)
        raw.set_attention("flash")
        comp = torch.compile(raw)
        with run.autocast():
            _, lc = comp(x, y, return_logits=False)
            _, lu = raw(x, y, return_logits=False)
        checks["compiled_vs_eager_mode_loss"] = dict(compiled=lc.item(), uncompiled=lu.item())
    checks["ln_vocab"] = float(np.log(50257))
    del args, run, raw, opt, model
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
    p.add_argument("--profile", help="also write a kernel profile of the main config to this file")
    p.add_argument("--compiled-memory", action="store_true",
                   help="also probe compiled flash configs at the memory limit")
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
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
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
            wanted = ["flash+compile"]
        for name, att, comp, r, B, T, mode, sdpa in SPEED:
            if name not in wanted:
                continue
            row = speed(glob_, name, att, comp, r, B, T, a.steps, mode, sdpa)
            res["speed"].append(row)
            save()
            print("%-30s %8.0f tok/s  %5.1f%% MFU  %6.2f GiB  step %.1f ms  first %.1f s"
                  % (name, row["tokens_per_s"], 100 * row["mfu"], row["peak_mem_gib"],
                     row["median_step_ms"], row["first_step_s"]), flush=True)
    if a.profile:
        print(profile(glob_, out=a.profile)[:6000])
    if a.suite in ("memory", "all"):
        for att, r, T in MEMORY:
            row = max_batch(glob_, att, r, T, a.limit)
            res["memory"].append(row)
            save()
            print("max B at %.0f GB: T=%d %-5s recompute=%d -> B=%d (%s GiB, %d trials, %.0f s)"
                  % (a.limit, T, att, r, row["max_B"], row["peak_mem_gib_at_max"], row["trials"],
                     row["search_s"]), flush=True)
    if a.compiled_memory:
        for att, r, T, cands in (("flash", 0, 1024, [32, 40, 48, 56]), ("flash", 1, 1024, [64, 96])):
            row = max_batch_compiled(glob_, att, r, T, a.limit, cands)
            res["memory"].append(row)
            save()
            print("compiled, max B at %.0f GB: T=%d %s recompute=%d -> B>=%d  tried %s (%.0f s)"
                  % (a.limit, T, att, r, row["max_B"], row["tried"], row["search_s"]), flush=True)
    print()
    print(table(res["speed"], [("name", "%s"), ("B", "%d"),
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

"""Training throughput and memory of `pipeline train` for GPT-2 124M (d12), all configs in one process.

    PYTHONPATH=. python bench/bench_train.py --suite all          # speed + memory tables
    PYTHONPATH=. python bench/bench_train.py --suite smoke        # correctness checks + main config
    PYTHONPATH=. python bench/bench_train.py --suite speed --fused-check \
        --configs "flash+compile,flash+compile+unfused,course step,course step+unfused"

Speed: the trainer's own step (`pipeline.gpt.train.train_step`: llm.c data loader from a synthetic
shard, pinned host->device copy, bf16 autocast, fused AdamW, grad clip, one host sync per step) for
each config; tokens/s from the median step after warm-up (compilation happens in the first steps).
MFU = tokens/s x (6N + 6LCT) FLOP/token (llm.c's formula: 803.5 MFLOP/token at T=1024) / 989 TFLOP/s,
the H100 SXM bf16 dense peak. Memory: the largest micro-batch whose step fits under
`--memory-limit-gb 24` (an A10G), found by doubling then bisection, one uncompiled step per trial.
--fused-check: the fused classifier loss against autograd's cross-entropy (kernel and d12 gradients)
and the loss kernel's time per Triton launch shape (the fastest is used for the speed runs).
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

SPEED = [  # name, attention, compile, recompute, B, T, compile mode, SDPA kernel[, accum]
    ("flash+compile", "flash", 1, 0, 32, 1024, "default", "auto"),
    ("flash+compile+unfused", "flash", 1, 0, 32, 1024, "default", "auto"),
    ("flash+compile+f32res", "flash", 1, 0, 32, 1024, "default", "auto"),
    ("flash+compile+cdt", "flash", 1, 0, 32, 1024, "default+cdt", "auto"),
    ("flash+compile+cudnn", "flash", 1, 0, 32, 1024, "default", "cudnn"),
    ("flash+compile+fa2", "flash", 1, 0, 32, 1024, "default", "flash"),
    ("flash+compile+recompute", "flash", 1, 1, 32, 1024, "default", "auto"),
    ("flash+compile B48", "flash", 1, 0, 48, 1024, "default", "auto"),
    ("flash+compile B64", "flash", 1, 0, 64, 1024, "default", "auto"),
    ("flash+compile+unfused B64", "flash", 1, 0, 64, 1024, "default", "auto"),
    # the course preset's optimizer step: -b 64 -d 524288 (8 micro-steps, one AdamW update)
    ("course step", "flash", 1, 0, 64, 1024, "default", "auto", 8),
    ("course step+unfused", "flash", 1, 0, 64, 1024, "default", "auto", 8),
    ("flash+compile+cudagraphs", "flash", 1, 0, 32, 1024, "reduce-overhead", "auto"),
    ("course step+cudagraphs", "flash", 1, 0, 64, 1024, "reduce-overhead", "auto", 8),
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


def speed(glob_, name, att, compile_, r, B, T, steps, mode="default", sdpa="auto", accum=1):
    import torch._inductor.config as inductor_config
    # "+cdt": inductor's coordinate-descent tuning of its generated (non-matmul) kernels
    inductor_config.coordinate_descent_tuning = mode.endswith("+cdt")
    args, run, raw, opt, model = setup(glob_, att, compile_, r, B, T, mode=mode.replace("+cdt", ""),
                                       sdpa=sdpa)
    # "+f32res": the residual stream in fp32 (before the bf16-residual change), for comparison
    raw.lowp_residual = "+f32res" not in name
    # "+unfused": autograd's cross-entropy on materialised logits (before the fused loss)
    raw.fused_loss = False if "+unfused" in name else None
    batches = tr.batch_source(DataLoader(glob_, B, T), run)
    times, losses = [], []
    torch.cuda.reset_peak_memory_stats()
    t_start = time.perf_counter()
    for step in range(steps):
        t0 = time.perf_counter()
        loss, norm = tr.train_step(model, raw, opt, batches, accum, run, 6e-4)
        losses.append(torch.stack([loss, norm.float()]).tolist()[0])  # the trainer's one sync
        times.append(time.perf_counter() - t0)
    warm = max(3, steps // 3)
    med = statistics.median(times[warm:])
    tok_s = B * T * accum / med
    flop_tok = 6 * raw.config.num_params() + 6 * raw.config.n_layer * raw.config.n_embd * T
    out = dict(name=name, attention=att, compile=compile_, compile_mode=mode, sdpa=sdpa, recompute=r,
               B=B, T=T, accum=accum, fused_loss=raw.fused_loss is not False,
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


def cuda_ms(fn, reps=10):
    fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def loss_kernel_timing(n=32768):
    """The classifier loss alone at the main config's size (32k rows x 50304): forward + backward
    of the compiled autograd cross-entropy vs the fused kernel (forward only: it has no backward
    pass of its own), for a few Triton launch shapes. Sets the fastest one as the default."""
    from pipeline.gpt import model as gm
    logits = torch.randn(n, 50304, device="cuda").bfloat16().requires_grad_()
    targets = torch.randint(0, 50257, (n,), device="cuda")
    mask = torch.arange(50304, device="cuda") >= 50257

    @torch.compile
    def ce(lg, t):
        return torch.nn.functional.cross_entropy(lg.float().masked_fill(mask, float("-inf")), t)

    def unfused():
        logits.grad = None
        ce(logits, targets).backward()
    out = {"autograd_compiled_fwd_bwd_ms": cuda_ms(unfused)}
    logits.grad = None
    plain = logits.detach()  # overwritten by every call: later calls run on gradient values
    best = None
    for block, warps, per_sm in ((4096, 8, 0), (8192, 16, 0), (4096, 16, 0), (4096, 8, 2),
                                 (4096, 8, 4), (8192, 16, 1), (8192, 16, 2), (4096, 16, 2),
                                 (2048, 8, 4), (2048, 4, 8)):
        gm.CE_LAUNCH = dict(BLOCK=block, num_warps=warps, per_sm=per_sm)
        ms = cuda_ms(lambda: gm.cross_entropy_grad_(plain, targets, 50257))
        out["fused_B%d_w%d_sm%d_ms" % (block, warps, per_sm)] = ms
        if best is None or ms < best[0]:
            best = (ms, dict(gm.CE_LAUNCH))
    gm.CE_LAUNCH = best[1]
    out["best_launch"] = best[1]
    out["bytes_floor_ms"] = 2 * n * 50304 * 2 / 3.0e12 * 1e3  # one read + one write at 3.0 TB/s
    return out


def fused_check(glob_):
    """The fused loss against autograd's cross-entropy on the GPU: the Triton kernel vs the
    reference math on random bf16 logits, then a d12 model's loss and gradients both ways."""
    from pipeline.gpt import model as gm
    out = {}
    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = (4 * torch.randn(2048, 50304, device="cuda", generator=gen)).bfloat16()
    targets = torch.randint(0, 50257, (2048,), device="cuda", generator=gen)
    grad, ref_g = logits.clone(), logits.clone()
    losses = gm.cross_entropy_grad_(grad, targets, 50257)
    gm._cross_entropy_grad_reference(ref_g, targets, 50257)
    torch_l = torch.nn.functional.cross_entropy(logits[:, :50257].float(), targets, reduction="none")
    out["kernel"] = dict(loss_max_abs_err=(losses - torch_l).abs().max().item(),
                         grad_max_abs_err=(grad.float() - ref_g.float()).abs().max().item(),
                         grad_rows_sum_max=grad.float().sum(1).abs().max().item(),
                         padded_cols_all_zero=bool((grad[:, 50257:] == 0).all().item()),
                         finite=bool(torch.isfinite(grad.float()).all().item()))
    default = dict(gm.CE_LAUNCH)
    for per_sm in (1, 2):  # the grid-stride loop, where one program does many rows
        gm.CE_LAUNCH = dict(default, per_sm=per_sm)
        g2 = logits.clone()
        l2 = gm.cross_entropy_grad_(g2, targets, 50257)
        out["kernel"]["per_sm%d_same_as_per_row" % per_sm] = bool(torch.equal(g2, grad) and
                                                                  torch.equal(l2, losses))
    gm.CE_LAUNCH = default
    del logits, grad, ref_g, g2
    out["timing"] = loss_kernel_timing()
    torch.manual_seed(0)
    args, run, raw, opt, model = setup(glob_, "flash", 0, 0, 8, 1024)
    x, y = tr.to_device(DataLoader(glob_, 8, 1024).next_batch(), run)
    grads = {}
    for fused in (False, True):
        raw.fused_loss = fused
        raw.zero_grad(set_to_none=True)
        with run.autocast():
            _, loss = raw(x, y, return_logits=False)
        loss.backward()
        grads[fused] = (loss.item(), {n: p.grad.float().clone() for n, p in raw.named_parameters()})
    rel = {n: ((grads[True][1][n] - g).norm() / g.norm()).item() for n, g in grads[False][1].items()
           if g.norm() > 0}
    out["model"] = dict(loss_unfused=grads[False][0], loss_fused=grads[True][0],
                        grad_rel_err_max=max(rel.values()),
                        grad_rel_err_wte=rel["transformer.wte.weight"])
    # bf16 noise floor: the unfused path run twice in different orders is exact, so compare instead
    # with the fp32 unfused gradients
    raw.fused_loss = False
    raw.zero_grad(set_to_none=True)
    _, loss = raw(x, y, return_logits=False)
    loss.backward()
    f32 = {n: p.grad.float().clone() for n, p in raw.named_parameters()}
    out["model"]["bf16_unfused_vs_fp32_rel_err_wte"] = (
        (grads[False][1]["transformer.wte.weight"] - f32["transformer.wte.weight"]).norm()
        / f32["transformer.wte.weight"].norm()).item()
    out["model"]["bf16_fused_vs_fp32_rel_err_wte"] = (
        (grads[True][1]["transformer.wte.weight"] - f32["transformer.wte.weight"]).norm()
        / f32["transformer.wte.weight"].norm()).item()
    del args, run, raw, opt, model, grads, f32
    release()
    return out


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
    p.add_argument("--fused-check", action="store_true",
                   help="check the fused loss against autograd's cross-entropy first")
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

    if a.fused_check:
        res["fused_check"] = fused_check(glob_)
        print(json.dumps(res["fused_check"], indent=1), flush=True)
        save()
    if a.suite == "smoke":
        res["smoke"] = smoke(glob_)
        print(json.dumps(res["smoke"], indent=1))
        save()
    if a.suite in ("smoke", "speed", "all"):
        wanted = a.configs.split(",") if a.configs else [c[0] for c in SPEED]
        if a.suite == "smoke" and not a.configs:
            wanted = ["flash+compile"]
        for name, att, comp, r, B, T, mode, sdpa, *accum in SPEED:
            if name not in wanted:
                continue
            accum = accum[0] if accum else 1
            try:
                row = speed(glob_, name, att, comp, r, B, T, max(9, a.steps // accum), mode, sdpa,
                            accum)
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

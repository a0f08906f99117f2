"""Training throughput and memory of `pipeline train` for GPT-2 124M (d12), all configs in one process.

    PYTHONPATH=. python bench/bench_train.py --suite all          # speed + memory tables
    PYTHONPATH=. python bench/bench_train.py --suite smoke        # correctness checks + main config
    PYTHONPATH=. python bench/bench_train.py --suite speed --fused-check \
        --configs "flash+compile,flash+compile+unfused,course step,course step+unfused"

Speed: the trainer's own step (`pipeline.gpt.step.train_step`: llm.c data loader from a synthetic
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

from runinfo import run_info  # bench/ is sys.path[0] when a bench script runs

from pipeline.gpt import train as tr  # noqa: E402
from pipeline.gpt.data import DataLoader  # noqa: E402
from pipeline.gpt.model import compile_model  # noqa: E402
from pipeline.shards.llmc import write_shard  # noqa: E402

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
    # "+mlp": GELU inside the MLP matmuls (cuBLASLt epilogues); "+graphs": CUDA-graph replay
    # "+lt": every matmul through pipeline.gpt.cublaslt (GELU epilogues, tuned algorithms);
    # "+graphs": CUDA-graph replay of the whole step
    ("flash+compile+lt", "flash", 1, 0, 32, 1024, "default", "auto"),
    ("flash+compile+graphs", "flash", 1, 0, 32, 1024, "default", "auto"),
    ("flash+compile+lt+graphs", "flash", 1, 0, 32, 1024, "default", "auto"),
    ("B32 x16", "flash", 1, 0, 32, 1024, "default", "auto", 16),
    ("B32 x16+lt+graphs", "flash", 1, 0, 32, 1024, "default", "auto", 16),
    ("course step+lt+graphs", "flash", 1, 0, 64, 1024, "default", "auto", 8),
    ("flash+lt+graphs", "flash", 0, 0, 32, 1024, "default", "auto"),
    ("flash+compile+lt+graphs+fa2", "flash", 1, 0, 32, 1024, "default", "flash"),
    # "+fe": attention through the cuDNN frontend (pipeline.gpt.cudnn_attention), packed q|k|v
    ("flash+compile+lt+graphs+fe", "flash", 1, 0, 32, 1024, "default", "auto"),
    ("course step+lt+graphs+fe", "flash", 1, 0, 64, 1024, "default", "auto", 8),
    # the default step without the optimizer fast paths, for A/B: "-mirrors": no bf16 weight
    # mirrors (weights cast in every forward, gradients cast back); "-triton": PyTorch's fused AdamW
    # (clip factor as grad_scale) instead of pipeline.gpt.adamw's Triton update
    ("flash+compile+lt+graphs+fe-mirrors", "flash", 1, 0, 32, 1024, "default", "auto"),
    ("flash+compile+lt+graphs+fe-mirrors-triton", "flash", 1, 0, 32, 1024, "default", "auto"),
    ("flash+compile+lt+recompute", "flash", 1, 1, 32, 1024, "default", "auto"),
    ("flash+lt+recompute", "flash", 0, 1, 32, 1024, "default", "auto"),
    ("eager+lt+graphs", "eager", 0, 0, 16, 1024, "default", "auto"),
    ("eager+compile+lt+graphs", "eager", 1, 0, 16, 1024, "default", "auto"),
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
    model = compile_model(raw, mode=mode) if compile_ else raw
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
    # "+f32res": the residual stream in fp32 instead of bf16, for comparison
    raw.lowp_residual = "+f32res" not in name
    # "+unfused": autograd's cross-entropy on materialised logits instead of the fused loss
    raw.fused_loss = False if "+unfused" in name else None
    step_fn = make_step(name, args, run, raw, opt, model, accum)
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
    flop_tok = 6 * raw.config.num_params() + 6 * raw.config.n_layer * raw.config.n_embd * T
    out = dict(name=name, attention=att, compile=compile_, compile_mode=mode, sdpa=sdpa, recompute=r,
               B=B, T=T, accum=accum, fused_loss=raw.fused_loss is not False,
               median_step_ms=1000 * med, tokens_per_s=tok_s, mfu=tok_s * flop_tok / H100_BF16_PEAK,
               peak_mem_gib=torch.cuda.max_memory_allocated() / 2 ** 30, first_step_s=times[0],
               wall_s=time.perf_counter() - t_start, losses=losses,
               fused_mlp=any(b.mlp.fused for b in raw.transformer.h),
               cudnn_frontend=any(b.attn.cudnn_frontend for b in raw.transformer.h),
               graphs=bool(getattr(step_fn, "active", False)),
               bf16_mirrors=opt.num_mirrors() if hasattr(opt, "num_mirrors") else 0, triton_adamw=os.environ.get("GPT_TRITON_ADAMW"),
               graphs_failed=getattr(step_fn, "failed", None), matmul_tuning=tuning_report(),
               step_ms=[round(1000 * t, 2) for t in times])
    del args, run, raw, opt, model, batches
    for kind in ("flash", "cudnn", "mem_efficient"):  # back to PyTorch's defaults
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


def make_step(name, args, run, raw, opt, model, accum):
    """The trainer's step function (`make_step_fn`) with the paths a config name asks for:
    cuBLASLt matmuls with "+lt", CUDA-graph replay with "+graphs", cuDNN frontend
    attention with "+fe"."""
    from pipeline.gpt import cublaslt
    if "+lt" in name:
        ok = cublaslt.available(run.device)
        if not ok:
            print("cuBLASLt path unavailable: %s" % cublaslt.unavailable_reason(run.device.index), flush=True)
        raw.set_cublaslt(ok)
    if "+fe" in name:
        tr.enable_cudnn_attention(raw, run, args.b, args.t)
    args.cuda_graphs = int("+graphs" in name)
    args.bf16_mirrors = 0 if "-mirrors" in name else None
    os.environ["GPT_TRITON_ADAMW"] = "0" if "-triton" in name else "1"
    return tr.make_step_fn(args, run, model, raw, opt, accum)


def profile(glob_, steps=3, out=None, name="flash+compile"):
    """Top CUDA kernels of one B=32 config: where the step time goes. Also the GPU's busy time
    (kernel time) against the step's wall time: the difference is GPU idle time."""
    from torch.profiler import ProfilerActivity, profile as prof
    args, run, raw, opt, model = setup(glob_, "flash", 1, 0, 32, 1024)
    step_fn = make_step(name, args, run, raw, opt, model, 1)
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


def mlp_check(M=32768, C=768):
    """The fused MLP: self-check result, errors against PyTorch's bf16 MLP at the d12 size, and
    forward+backward time against the compiled unfused MLP."""
    from pipeline.gpt import cublaslt
    out = dict(available=cublaslt.available(), reason=cublaslt.unavailable_reason(0))
    if not out["available"]:
        return out
    torch.manual_seed(0)
    fc, proj = torch.nn.Linear(C, 4 * C).cuda(), torch.nn.Linear(4 * C, C).cuda()
    x = torch.randn(M, C, device="cuda", requires_grad=True)
    dy = torch.randn(M, C, device="cuda").bfloat16()

    def unfused(x):
        return proj(torch.nn.functional.gelu(fc(x), approximate="tanh"))
    compiled = torch.compile(unfused)
    res = {}
    def with_dgelu(flag):
        def fn(x):
            cublaslt.DGELU_EPILOGUE = flag
            return cublaslt.fused_mlp(x, fc, proj)
        return fn
    for label, fn in (("fused", with_dgelu(True)), ("fused_no_dgelu", with_dgelu(False)),
                      ("ops", lambda x: cublaslt.fused_mlp(x, fc, proj, epilogue=False)),
                      ("unfused_eager", unfused), ("unfused_compiled", compiled)):
        def run():
            for t in (x, fc.weight, fc.bias, proj.weight, proj.bias):
                t.grad = None
            with torch.autocast("cuda", dtype=torch.bfloat16):
                y = fn(x)
            y.backward(dy)
            return y
        y = run()
        res[label] = (y.float(), [t.grad.float().clone() for t in (x, fc.weight, fc.bias, proj.weight, proj.bias)])
        out[label + "_fwd_bwd_ms"] = cuda_ms(run)
    ref = res["unfused_eager"]
    cublaslt.DGELU_EPILOGUE = True
    for label in ("fused", "fused_no_dgelu", "ops", "unfused_compiled"):
        y, grads = res[label]
        errs = [((y - ref[0]).norm() / ref[0].norm()).item()]
        errs += [((g - r).norm() / r.norm()).item() for g, r in zip(grads, ref[1])]
        out[label + "_rel_err_y_dx_dwfc_dbfc_dwproj_dbproj"] = [float("%.3g" % e) for e in errs]
    out["tuning_ms"] = {str(k[3:7]): [round(t, 4) for t in v] for k, v in cublaslt._lt().tuning.items()}
    # the same products without epilogues, through PyTorch (cuBLAS)
    h = torch.randn(M, 4 * C, device="cuda").bfloat16()
    w, xb = fc.weight.bfloat16(), x.bfloat16()
    out["torch_mm_fc_fwd_ms"] = cuda_ms(lambda: torch.addmm(fc.bias.bfloat16(), xb, w.t()))
    out["torch_mm_proj_dx_ms"] = cuda_ms(lambda: dy @ proj.weight.bfloat16())
    # candidate epilogues for the backward, one product at a time (ms, and error vs PyTorch)
    L = cublaslt
    wp = proj.weight.bfloat16().contiguous()
    pre = torch.randn(M, 4 * C, device="cuda").bfloat16()
    dpre = torch.randn(M, 4 * C, device="cuda").bfloat16()

    def rel(a, b):
        return float("%.3g" % ((a.float() - b.float()).norm() / b.float().norm()).item())
    trials = {
        "lt_default_proj_dx": (lambda: L.lt_mm(dy, wp, False, False, L._EPILOGUE_DEFAULT), lambda: dy @ wp),
        "lt_dgelu_proj_dx": (lambda: L.lt_mm(dy, wp, False, False, L._EPILOGUE_DGELU, aux=pre),
                             lambda: torch.ops.aten.gelu_backward(dy @ wp, pre, approximate="tanh")),
        "torch_dw_fc": (lambda: dpre.t() @ xb, None),
        "torch_sum_dpre": (lambda: dpre.sum(0, dtype=torch.float32), None),
        "torch_mv_dpre": (lambda: torch.mv(dpre.t(), torch.ones(M, device="cuda", dtype=dpre.dtype)), None),
        "torch_sum_dy": (lambda: dy.sum(0, dtype=torch.float32), None),
        "torch_dw_proj": (lambda: dy.t() @ h, None),
    }
    for dt in (torch.float32, torch.bfloat16):
        db = torch.empty(4 * C, device="cuda", dtype=dt)
        dbp = torch.empty(C, device="cuda", dtype=dt)
        tag = "f32" if dt == torch.float32 else "bf16"
        trials["lt_bgradb_dw_fc_" + tag] = (
            lambda db=db: (L.lt_mm(dpre, xb, True, False, L._EPILOGUE_BGRADB, bias=db), db),
            lambda: (dpre.t() @ xb, dpre.float().sum(0)))
        trials["lt_bgradb_dw_proj_" + tag] = (
            lambda dbp=dbp: (L.lt_mm(dy, h, True, False, L._EPILOGUE_BGRADB, bias=dbp), dbp),
            lambda: (dy.t() @ h, dy.float().sum(0)))
    for label, (fn, ref) in trials.items():
        try:
            got = fn()
            entry = {"ms": round(cuda_ms(fn), 4)}
            if ref is not None:
                want = ref()
                if isinstance(got, tuple):
                    entry["err"] = [rel(g, w) for g, w in zip(got, want)]
                else:
                    entry["err"] = rel(got, want)
        except Exception as e:  # noqa: BLE001 - record which epilogues cuBLASLt refuses
            entry = {"error": "%s: %s" % (type(e).__name__, e)}
        out[label] = entry
    del h, pre, dpre
    release()
    return out


def attn_check(B=32, T=1024, C=768, H=12):
    """Where the attention gradients land: SDPA's dq/dk/dv strides when q, k, v are slices of one
    packed qkv tensor vs separate dense tensors, and the qkv projection + attention forward and
    backward (compiled) both ways."""
    import torch.nn.functional as F
    D = C // H
    out = {}
    torch.manual_seed(0)
    x = torch.randn(B, T, C, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (0.02 * torch.randn(3 * C, C, device="cuda")).bfloat16().requires_grad_()
    b = torch.zeros(3 * C, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    for label, packed in (("packed", True), ("dense", False)):
        if packed:
            qkv = torch.randn(B, T, 3 * C, device="cuda", dtype=torch.bfloat16)
            q, k, v = (t.view(B, T, H, D).transpose(1, 2).detach().requires_grad_()
                       for t in qkv.split(C, 2))
        else:
            q, k, v = (torch.randn(B, T, C, device="cuda", dtype=torch.bfloat16).view(B, T, H, D)
                       .transpose(1, 2).detach().requires_grad_() for _ in range(3))
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
        out["sdpa_%s_q_strides" % label] = list(q.stride())
        out["sdpa_%s_dq_strides" % label] = list(q.grad.stride())

    def packed(x):
        qkv = F.linear(x, w, b)
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in qkv.split(C, 2))
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)

    def separate(x):
        q, k, v = (F.linear(x, ws, bs).view(B, T, H, D).transpose(1, 2)
                   for ws, bs in zip(w.split(C, 0), b.split(C, 0)))
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
    dy = torch.randn(B, T, C, device="cuda", dtype=torch.bfloat16)
    for label, fn in (("packed", packed), ("separate", separate)):
        for comp in (False, True):
            f = torch.compile(fn) if comp else fn

            def step():
                x.grad = w.grad = b.grad = None
                f(x).backward(dy)
            try:
                out["%s_%s_fwd_bwd_ms" % (label, "compiled" if comp else "eager")] = round(cuda_ms(step), 4)
            except Exception as e:  # noqa: BLE001
                out["%s_%s_error" % (label, comp)] = str(e)[:300]
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


DEFAULT_MEMORY = [  # attention, recompute, T, candidate micro-batches (tried in order)
    ("flash", 0, 1024, [32, 40, 48, 56]), ("flash", 1, 1024, [64, 96, 128, 160]),
    ("eager", 0, 1024, [8, 12, 16, 20]), ("eager", 1, 1024, [32, 48, 64]),
    ("flash", 0, 2048, [16, 20, 24, 28]), ("flash", 1, 2048, [32, 48, 64]),
    ("eager", 0, 2048, [2, 4, 6, 8, 10]), ("eager", 1, 2048, [8, 16, 24, 32, 40]),
]


def max_batch_default(glob_, att, r, T, limit, candidates, steps=5):
    """The trainer's default CUDA setup (compiled; cuBLASLt and CUDA graphs unless -r 1) under the
    memory limit: a fresh model per candidate micro-batch, a few real steps each (the graphs are
    captured at step 4), in increasing order until one does not fit."""
    t0, fits, graphs = time.perf_counter(), {}, {}
    for B in candidates:
        args, run, raw, opt, model = setup(glob_, att, 1, r, B, T, limit=limit)
        step = make_step("" if r else "+lt+graphs", args, run, raw, opt, model, 1)
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
        del args, run, raw, opt, model, step, batches
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
        comp = compile_model(raw)
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
    p.add_argument("--profile-config", default="flash+compile",
                   help="SPEED name whose flags (+mlp, +graphs) the profile uses")
    p.add_argument("--mlp-check", action="store_true",
                   help="check and time the fused MLP (cuBLASLt GELU epilogues) first")
    p.add_argument("--default-memory", action="store_true",
                   help="max micro-batch under --limit for the trainer's default CUDA setup")
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

    if a.fused_check:
        res["fused_check"] = fused_check(glob_)
        print(json.dumps(res["fused_check"], indent=1), flush=True)
        save()
    if a.mlp_check:
        res["mlp_check"] = mlp_check()
        print(json.dumps(res["mlp_check"], indent=1), flush=True)
        try:
            res["attn_check"] = attn_check()
        except Exception as e:  # noqa: BLE001 - a diagnostic: report and go on
            res["attn_check"] = {"error": "%s: %s" % (type(e).__name__, e)}
        print(json.dumps(res["attn_check"], indent=1), flush=True)
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

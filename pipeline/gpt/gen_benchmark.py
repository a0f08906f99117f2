"""`pipeline generate --benchmark`: HuggingFace `generate()` against this engine, same weights.

The handout's comparison done properly: the same GPT-2 weights run (a) through transformers'
GPT2LMHeadModel.generate() (greedy, batch 1, prompt "hello", its default KV cache), (b) the naive
loop that recomputes the whole sequence for every token, and (c) our engine in fp32 and bf16, with
and without CUDA graphs. For each number of new tokens we time a full generate call (prefill
included, GPU synchronised). Also measured: batched throughput, per-token decode latency, time to
first token for a long prompt, and a numerical check of the engine's logits against a full forward.
Output: a printed table, and `inference_<device>.{json,csv,png}` in --bench-out.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import platform
import re
import statistics
import time
from typing import Callable, Dict, List

import torch

from pipeline.gpt.engine import Engine, reference_generate
from pipeline.gpt.model_loading import load, resolve_device

HELLO = [31373]  # tiktoken r50k_base encoding of "hello" (checked in tests/test_generate.py)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device, repeats: int = 1) -> float:
    """Median wall seconds of fn() over `repeats` runs, the device synchronised around each."""
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _hf_generate(hf, prompts: torch.Tensor, n: int):
    mask = torch.ones_like(prompts)
    with torch.inference_mode():
        return hf.generate(prompts, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=50256)


@torch.inference_mode()
def logits_error(model, engine: Engine, tokens: List[int]) -> Dict[str, float]:
    """Teacher-forced: the engine's logits at every position vs one full forward of the sequence."""
    full, _ = model(torch.tensor([tokens], device=engine.device))
    full = full[0].float()
    got = [engine._prefill(torch.tensor([tokens[:1]], device=engine.device),
                           torch.zeros(1, dtype=torch.long, device=engine.device))[0].float().clone()]
    engine._pad[:1].zero_()
    for i in range(1, len(tokens)):
        engine._tok[:1].fill_(tokens[i])
        got.append(engine._decode(1, i)[0].float().clone())
    got = torch.stack(got)
    err = (got - full).norm() / full.norm()
    same_argmax = (got.argmax(-1) == full.argmax(-1)).float().mean()
    return {"rel_err": float(err), "max_abs_err": float((got - full).abs().max()),
            "argmax_agreement": float(same_argmax)}


def _common_prefix(a: List[int], b: List[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def run(cfg) -> int:
    """The benchmark for a GenerateConfig (pipeline/gpt/generate.py) with --benchmark."""
    device = resolve_device(cfg.device)
    if cfg.model or cfg.init:
        base, desc = load(cfg)
    else:
        base, desc = load(dataclasses.replace(cfg, model=None, init="d12"))
    base = base.eval()
    block = base.config.block_size
    batch_n = min(128, block // 2)  # new tokens per sequence of the batched measurement
    prompt_len = min(cfg.bench_prompt_len, block - 1)
    sweep = sorted({min(int(x), block - len(HELLO)) for x in cfg.bench_tokens.split(",") if x.strip()})
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    meta = {"model": desc, "device": gpu_name, "torch": torch.__version__, "prompt": "hello",
            "weights_note": "random weights: timing only" if not cfg.model else "trained checkpoint"}
    rows: List[Dict] = []
    summary: Dict[str, object] = {}
    tokens_out: Dict[str, List[int]] = {}

    def record(impl: str, dtype: str, n: int, seconds: float, batch: int = 1) -> None:
        rows.append({"impl": impl, "dtype": dtype, "batch": batch, "new_tokens": n, "seconds": seconds,
                     "tokens_per_s": batch * n / seconds, "ms_per_step": 1000 * seconds / n})
        print("  %-22s %-5s n=%-5d %8.3f s  %9.1f tok/s" % (impl, dtype, n, seconds, batch * n / seconds),
              flush=True)

    # -- HuggingFace generate() ---------------------------------------------------------------
    if cfg.bench_hf:
        import transformers

        from pipeline.gpt.hf import to_hf

        meta["transformers"] = transformers.__version__
        hf32 = to_hf(base).to(device)
        hello = torch.tensor([HELLO], device=device)
        dtypes = [("fp32", hf32)]
        if device.type == "cuda":
            dtypes.append(("bf16", to_hf(base).to(device=device, dtype=torch.bfloat16)))
        for name, hf in dtypes:
            _hf_generate(hf, hello, 16)  # warm-up
            for n in sweep:
                if name == "bf16" and n > 256:
                    break  # ~30 tokens/s: longer runs only cost time
                out = [None]
                secs = timed(lambda: out.__setitem__(0, _hf_generate(hf, hello, n)), device)
                record("hf_generate", name, n, secs)
                if name == "fp32" and n == sweep[-1]:
                    tokens_out["hf_fp32"] = out[0][0, len(HELLO):].tolist()
        long_prompt = torch.randint(0, 50257, (1, prompt_len), device=device,
                                    generator=torch.Generator(device=device).manual_seed(0))
        summary["hf_fp32_ttft_s"] = timed(lambda: _hf_generate(hf32, long_prompt, 1), device, repeats=5)
        batch_prompts = torch.tensor([HELLO] * cfg.bench_batch, device=device)
        secs = timed(lambda: _hf_generate(hf32, batch_prompts, batch_n), device)
        record("hf_generate", "fp32", batch_n, secs, batch=cfg.bench_batch)
        del dtypes, hf32
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # -- naive: full recompute per token, no cache ----------------------------------------------
    model32 = base.to(device=device, dtype=torch.float32)
    naive_sweep = [n for n in sweep if device.type == "cuda" or n <= 64]
    reference_generate(model32, HELLO, 4, stop_token=None)  # warm-up
    for n in naive_sweep:
        out = [None]
        secs = timed(lambda: out.__setitem__(0, reference_generate(model32, HELLO, n, stop_token=None)),
                     device)
        record("no_cache_recompute", "fp32", n, secs)
    if naive_sweep and naive_sweep[-1] == sweep[-1]:
        tokens_out["no_cache_fp32"] = out[0]

    # -- our engine ------------------------------------------------------------------------------
    if device.type == "cuda":  # the last one shows what the CUDA graph buys
        variants = [("fp32", torch.float32, True), ("bf16", torch.bfloat16, True), ("bf16", torch.bfloat16, False)]
    else:
        variants = [("fp32", torch.float32, False)]  # bf16 matmuls on CPUs are mostly emulated: slow
    for name, dtype, graphs in variants:
        model = base.to(device=device, dtype=dtype)
        impl = "engine_cudagraph" if graphs else "engine_eager"
        engine = Engine(model, max_batch_size=1, max_seq_len=block, cuda_graphs=graphs)
        gen = lambda n: engine.generate([HELLO], n, temperature=0, stop_token=None)[0]  # noqa: E731
        gen(sweep[-1])  # warm-up; captures a graph for every cache window
        check_len = min(128, block)
        check = logits_error(model, engine, (HELLO + gen(check_len - len(HELLO)))[:check_len])
        check["fused"] = engine.fused
        summary["%s_%s_logits_check" % (impl, name)] = check
        print("  %s %s logits vs full forward: %s" % (impl, name, check), flush=True)
        for n in sweep:
            out = [None]
            reps = 3 if n <= 256 else 1
            secs = timed(lambda: out.__setitem__(0, gen(n)), device, repeats=reps)
            record(impl, name, n, secs)
        tokens_out["%s_%s" % (impl, name)] = out[0]
        if graphs or device.type != "cuda":
            # time to first token for a long prompt: prefill + one sample
            long_prompt = torch.randint(0, 50257, (prompt_len,),
                                        generator=torch.Generator().manual_seed(0)).tolist()
            summary["%s_%s_ttft_s" % (impl, name)] = timed(
                lambda: engine.generate([long_prompt], 1, temperature=0), device, repeats=5)
            # per-token decode latency: marginal time of the extra tokens
            a, b = sweep[0], sweep[-1]
            ta = [r["seconds"] for r in rows if r["impl"] == impl and r["dtype"] == name and r["new_tokens"] == a][0]
            tb = [r["seconds"] for r in rows if r["impl"] == impl and r["dtype"] == name and r["new_tokens"] == b][0]
            if b > a:
                summary["%s_%s_ms_per_token_marginal" % (impl, name)] = 1000 * (tb - ta) / (b - a)
            # batched throughput: bench_batch prompts of different lengths
            B = cfg.bench_batch
            bengine = Engine(model, max_batch_size=B, max_seq_len=block, cuda_graphs=graphs)
            g = torch.Generator().manual_seed(1)
            lengths = torch.randint(1, min(64, block - batch_n), (B,), generator=g).tolist()
            prompts = [torch.randint(0, 50257, (k,), generator=g).tolist() for k in lengths]
            bgen = lambda: bengine.generate(prompts, batch_n, temperature=0, stop_token=None)  # noqa: E731
            bgen()  # warm-up
            record(impl, name, batch_n, timed(bgen, device), batch=B)
            del bengine
        del engine
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # greedy agreement between implementations (random weights have near-ties: divergence after
    # a while is rounding, not a bug; the logits check above is the real correctness test)
    ref = tokens_out.get("no_cache_fp32")
    if ref is not None:
        summary["greedy_common_prefix_vs_no_cache_fp32"] = {k: _common_prefix(ref, v)
                                                           for k, v in tokens_out.items()}
    _summarise(rows, summary, sweep)
    return _write(cfg, meta, rows, summary)


def _pick(rows, impl, dtype, n, batch=1):
    for r in rows:
        if (r["impl"], r["dtype"], r["new_tokens"], r["batch"]) == (impl, dtype, n, batch):
            return r
    return None


def _summarise(rows, summary, sweep) -> None:
    n = 256 if 256 in sweep else sweep[-1]
    hf = _pick(rows, "hf_generate", "fp32", n)
    for impl, dtype in (("engine_cudagraph", "fp32"), ("engine_cudagraph", "bf16"), ("engine_eager", "bf16"),
                        ("engine_eager", "fp32")):
        r = _pick(rows, impl, dtype, n)
        if r:
            summary["%s_%s_tokens_per_s_at_%d" % (impl, dtype, n)] = r["tokens_per_s"]
            if hf:
                summary["%s_%s_speedup_vs_hf_fp32_at_%d" % (impl, dtype, n)] = r["tokens_per_s"] / hf["tokens_per_s"]
    if hf:
        summary["hf_generate_fp32_tokens_per_s_at_%d" % n] = hf["tokens_per_s"]


def _write(cfg, meta, rows, summary) -> int:
    os.makedirs(cfg.bench_out, exist_ok=True)
    tag = re.sub(r"[^A-Za-z0-9]+", "_", meta["device"]).strip("_").lower() or "device"
    stem = os.path.join(cfg.bench_out, "inference_%s" % tag)
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "summary": summary, "rows": rows}, f, indent=2, sort_keys=True)
    with open(stem + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("\n%-20s %-5s %5s %6s %10s %11s %9s" % ("impl", "dtype", "batch", "tokens", "seconds", "tokens/s",
                                                  "ms/step"))
    for r in rows:
        print("%-20s %-5s %5d %6d %10.4f %11.1f %9.3f" % (r["impl"], r["dtype"], r["batch"], r["new_tokens"],
                                                        r["seconds"], r["tokens_per_s"], r["ms_per_step"]))
    print()
    for k in sorted(summary):
        print("%s: %s" % (k, summary[k]))
    try:
        _plot(rows, meta, stem + ".png")
        print("\nwrote %s.{json,csv,png}" % stem)
    except ImportError:
        print("\nwrote %s.{json,csv} (no matplotlib: no plot)" % stem)
    return 0


def _plot(rows, meta, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines = sorted({(r["impl"], r["dtype"]) for r in rows if r["batch"] == 1})
    for impl, dtype in lines:
        pts = sorted((r["new_tokens"], r["seconds"]) for r in rows
                     if (r["impl"], r["dtype"], r["batch"]) == (impl, dtype, 1))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label="%s %s" % (impl, dtype))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("new tokens (greedy, batch 1, prompt 'hello')")
    ax.set_ylabel("seconds")
    ax.set_title("GPT-2 %s on %s" % (meta["model"], meta["device"]), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

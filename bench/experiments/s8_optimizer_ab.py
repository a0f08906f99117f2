"""Session-8 experiment: the default B=32 step with session 8's optimizer changes on and off,
interleaved in one process so that the GPU's power and thermal drift falls on all alike.

Configurations (bench_train names, all `flash+compile+lt+graphs+fe`):
- `mirrors`: pipeline.gpt.adamw's Triton update with bf16 weight mirrors (the new default);
- `triton`: the Triton update, weights cast in every forward as before (`-mirrors`);
- `torch`: PyTorch's fused AdamW with the clip factor as grad_scale (`-mirrors-triton`, session 7).

All three are built and warmed (compile, tuning, graph capture) first, then timed in ROUNDS
rounds of BURST replayed steps each, the order rotating every round. Then each is profiled for 3
steps: kernel time per step and the kernel kinds whose time differs most between configurations.
Writes optimizer_ab.json in $OUT. Usage: python bench/experiments/s8_optimizer_ab.py [rounds]"""
import collections
import json
import os
import statistics
import sys

sys.path.insert(0, "bench"); sys.path.insert(0, "bench/experiments"); sys.path.insert(0, ".")

import torch  # noqa: E402

import bench_train as bt  # noqa: E402
from pipeline.gpt import train as tr  # noqa: E402
from pipeline.gpt.data import DataLoader  # noqa: E402
from s3_profile import OUT  # noqa: E402
from s7_step_anatomy import GPU_CATS, trace_events  # noqa: E402

CONFIGS = {"mirrors": "flash+compile+lt+graphs+fe", "triton": "flash+compile+lt+graphs+fe-mirrors",
           "torch": "flash+compile+lt+graphs+fe-mirrors-triton"}
BURST = 10


def build(glob_, name):
    args, run, raw, opt, model = bt.setup(glob_, "flash", 1, 0, 32, 1024)
    step_fn = bt.make_step(name, args, run, raw, opt, model, 1)
    batches = tr.batch_source(DataLoader(glob_, 32, 1024), run)
    for _ in range(8):  # compile, tuning, capture (after 3 steps)
        step_fn(batches, 6e-4)[0].item()
    assert step_fn.active, step_fn.failed
    return dict(held=(args, run, raw, opt, model), step=step_fn, batches=batches,
                mirrors=opt.num_mirrors())


def burst_ms(entry):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    step_fn, batches = entry["step"], entry["batches"]
    batches.prefetch()
    start.record()
    for _ in range(BURST):
        step_fn(batches, 6e-4)
        batches.prefetch()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / BURST


def kernel_profile(key, entry, steps=3):
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(steps):
            entry["step"](entry["batches"], 6e-4)
        torch.cuda.synchronize()
    gpu = [e for e in trace_events(p, "trace_%s8.json" % key) if e.get("cat") in GPU_CATS]
    by_name = collections.defaultdict(float)
    for e in gpu:
        by_name[e["name"][:90]] += e["dur"] / 1e3 / steps  # ms per step
    return dict(kernel_ms=sum(by_name.values()), kernels=len(gpu) / steps, by_name=dict(by_name))


def main(rounds=6):
    os.makedirs(OUT, exist_ok=True)
    glob_ = bt.make_shards("/tmp/bench_train_data")
    entries = {}
    for key, name in CONFIGS.items():
        entries[key] = build(glob_, name)
        print("built", key, "mirrors:", entries[key]["mirrors"], flush=True)
    res = dict(burst=BURST, times={k: [] for k in CONFIGS})
    keys = list(CONFIGS)
    for r in range(rounds):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        for key in order:
            res["times"][key].append(burst_ms(entries[key]))
        print("round", r, {k: round(v[-1], 2) for k, v in res["times"].items()}, flush=True)
    res["median_ms"] = {k: statistics.median(v) for k, v in res["times"].items()}
    res["tokens_per_s"] = {k: 32 * 1024 / (ms / 1e3) for k, ms in res["median_ms"].items()}
    print(json.dumps({k: round(v) for k, v in res["tokens_per_s"].items()}), flush=True)
    profiles = {k: kernel_profile(k, e) for k, e in entries.items()}
    res["kernel_ms"] = {k: round(p["kernel_ms"], 3) for k, p in profiles.items()}
    res["kernels"] = {k: p["kernels"] for k, p in profiles.items()}
    names = set().union(*(p["by_name"] for p in profiles.values()))
    diffs = sorted(names, key=lambda n: -max(abs(profiles[a]["by_name"].get(n, 0) - profiles[b]["by_name"].get(n, 0))
                                             for a in keys for b in keys))
    res["largest_differences_ms"] = [dict(kernel=n, **{k: round(profiles[k]["by_name"].get(n, 0.0), 4) for k in keys})
                                     for n in diffs[:30]]
    print(json.dumps({k: res[k] for k in ("kernel_ms", "kernels")}), flush=True)
    for row in res["largest_differences_ms"]:
        print("  %-90s %s" % (row["kernel"], " ".join("%s=%.3f" % (k, row[k]) for k in keys)))
    with open(os.path.join(OUT, "optimizer_ab.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6)

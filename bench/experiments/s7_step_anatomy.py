"""Session-7 experiment: where the default B=32 step's GPU time between kernels goes, and who
issues its memsets.

1. `ungraphed`: the compiled step with cuBLASLt and the cuDNN frontend (where installed), without
   CUDA graphs, profiled with CPU and CUDA activity for 2 steps. Every memset and every kernel is
   traced back (through its correlation id) to the CUDA runtime/driver call that queued it and
   the innermost PyTorch op around that call. Prints the memsets per step by issuing op and API.
2. `graphed`: the default step replayed from CUDA graphs, 3 steps traced: GPU idle per step and
   the idle before each kind of kernel (the gap from the end of the previous kernel).

Writes step_anatomy.json (and gzipped traces) in $OUT.
Usage: python bench/experiments/s7_step_anatomy.py [ungraphed] [graphed]"""
import collections
import gzip
import json
import os
import re
import sys

sys.path.insert(0, "bench"); sys.path.insert(0, "bench/experiments"); sys.path.insert(0, ".")

import torch  # noqa: E402

import bench_train as bt  # noqa: E402
from pipeline.gpt import cudnn_attention  # noqa: E402
from pipeline.gpt import train as tr  # noqa: E402
from pipeline.gpt.data import DataLoader  # noqa: E402
from s3_profile import OUT, dump_trace  # noqa: E402

GPU_CATS = ("kernel", "gpu_memset", "gpu_memcpy")
res = {}


def save():
    with open(os.path.join(OUT, "step_anatomy.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)


def family(name):
    """A short kind for a kernel name: library prefix and tile shape stripped to the gist."""
    if name.startswith("Memset"):
        return "memset"
    if name.startswith("Memcpy"):
        return name.split("(")[0].strip()
    for prefix in ("nvjet", "sm90_xmma", "cudnn_generated", "triton_", "cross_entropy", "forward_kernel",
                   "backward_kernel", "sum_partials"):
        if name.startswith(prefix):
            return prefix
    m = re.search(r"(cudnn::\w+::\w+|cublasLt::\w+|at::native::\w+)", name)
    return m.group(1) if m else name[:40]


def trace_events(prof, name):
    """The complete ("X") events of a profile, written as $OUT/<name>.gz by s3_profile.dump_trace."""
    dump_trace(prof, name)
    with gzip.open(os.path.join(OUT, name + ".gz"), "rt") as f:
        return [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]


def model_and_step(glob_, config):
    args, run, raw, opt, model = bt.setup(glob_, "flash", 1, 0, 32, 1024)
    step_fn = bt.make_step(config + "+fe", args, run, raw, opt, model, 1)
    res["frontend"] = raw.transformer.h[0].attn.cudnn_frontend or cudnn_attention.unavailable_reason()
    batches = tr.batch_source(DataLoader(glob_, 32, 1024), run)
    return (args, run, raw, opt, model), step_fn, batches


def ungraphed(glob_, steps=2):
    from torch.profiler import ProfilerActivity, profile
    held, step_fn, batches = model_and_step(glob_, "flash+compile+lt")
    for _ in range(6):
        step_fn(batches, 6e-4)[0].item()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        for _ in range(steps):
            step_fn(batches, 6e-4)[0].item()
        torch.cuda.synchronize()
    events = trace_events(p, "trace_ungraphed7.json")
    del held, step_fn
    bt.release()
    by_corr = {}
    for e in events:
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {}):
            by_corr[e["args"]["correlation"]] = e
    ops = collections.defaultdict(list)  # tid -> cpu ops, for the innermost-op lookup
    for e in events:
        if e.get("cat") == "cpu_op":
            ops[e["tid"]].append(e)

    def innermost_op(call):
        best = None
        for op in ops.get(call["tid"], ()):
            if op["ts"] <= call["ts"] and call["ts"] + call["dur"] <= op["ts"] + op["dur"]:
                if best is None or op["dur"] < best["dur"]:
                    best = op
        return best["name"] if best else "?"

    memsets = collections.Counter()
    launches = collections.Counter()
    for e in events:
        if e.get("cat") not in GPU_CATS:
            continue
        call = by_corr.get(e.get("args", {}).get("correlation"))
        where = (call["name"], innermost_op(call)) if call else ("?", "?")
        if e["cat"] == "gpu_memset":
            memsets[(where[0], where[1], e.get("args", {}).get("bytes", "?"))] += 1
        launches[(family(e["name"]), where[1])] += 1
    res["memsets_per_step"] = [dict(api=k[0], op=k[1], bytes=k[2], count=v / steps)
                               for k, v in memsets.most_common()]
    res["kernels_per_step_by_op"] = [dict(kind=k[0], op=k[1], count=v / steps) for k, v in launches.most_common(60)]
    print("memsets per step (api, issuing op, bytes):", flush=True)
    for row in res["memsets_per_step"]:
        print("  %6.1f  %-28s %-50s %s" % (row["count"], row["api"], row["op"][:50], row["bytes"]))
    save()


def graphed(glob_, steps=3):
    from torch.profiler import ProfilerActivity, profile
    held, step_fn, batches = model_and_step(glob_, "flash+compile+lt+graphs")
    for _ in range(10):
        step_fn(batches, 6e-4)[0].item()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(steps):
            step_fn(batches, 6e-4)
        torch.cuda.synchronize()
    events = trace_events(p, "trace_graphed7.json")
    del held, step_fn
    bt.release()
    gpu = sorted((e for e in events if e.get("cat") in GPU_CATS), key=lambda e: e["ts"])
    busy = sum(e["dur"] for e in gpu)
    span = gpu[-1]["ts"] + gpu[-1]["dur"] - gpu[0]["ts"]
    before = collections.defaultdict(lambda: [0, 0.0])
    end = gpu[0]["ts"]
    for e in gpu:
        gap = max(0.0, e["ts"] - end)
        if gap < 100:  # larger gaps are between steps (host), not inside the graphs
            before[family(e["name"])][0] += 1
            before[family(e["name"])][1] += gap
        end = max(end, e["ts"] + e["dur"])
    res["graphed"] = dict(span_ms_per_step=span / steps / 1e3, kernel_ms_per_step=busy / steps / 1e3,
                          kernels_per_step=len(gpu) / steps,
                          idle_before=[dict(kind=k, count=v[0] / steps, idle_us=round(v[1] / steps, 1))
                                       for k, v in sorted(before.items(), key=lambda kv: -kv[1][1])])
    print(json.dumps(res["graphed"], indent=1), flush=True)
    save()


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    parts = sys.argv[1:] or ["ungraphed", "graphed"]
    glob_ = bt.make_shards("/tmp/bench_train_data")
    if "ungraphed" in parts:
        ungraphed(glob_)
    if "graphed" in parts:
        graphed(glob_)

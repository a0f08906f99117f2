"""Session-4 probe of the default training step (H100): what the GPU machine offers (libraries
that could replace a kernel), the kernel-time table of the default B=32 step, the matmul tuning
table with achieved TFLOP/s, and per-kernel-family totals. JSON and text land in $OUT."""
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, "bench")
sys.path.insert(0, ".")
import torch  # noqa: E402

import bench_train as bt  # noqa: E402
from pipeline.gpt import train as tr  # noqa: E402
from pipeline.gpt.data import DataLoader  # noqa: E402

OUT = os.environ.get("OUT", "/tmp/exp_out")
os.makedirs(OUT, exist_ok=True)


def env_report():
    info = dict(torch=torch.__version__, cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version(), gpu=torch.cuda.get_device_name())
    for mod in ("triton", "cudnn", "flash_attn", "flash_attn_interface", "transformer_engine",
                "xformers", "apex", "liger_kernel", "cutlass", "nvidia.cutlass", "cuda"):
        try:
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", "present")
        except Exception as e:  # noqa: BLE001
            info[mod] = "absent (%s)" % type(e).__name__
    for cmd in ("nvcc --version", "nvidia-smi -q -d CLOCK,POWER", "pip list"):
        try:
            info[cmd] = subprocess.run(cmd, shell=True, capture_output=True, text=True,
                                       timeout=60).stdout[-6000:]
        except Exception as e:  # noqa: BLE001
            info[cmd] = repr(e)
    return info


FAMILIES = [
    ("attention fwd", r"fprop|flash_fwd|sdpa.*fwd"),
    ("attention bwd", r"bprop|dgrad|flash_bwd|dot_do_o|convert_dq"),
    ("matmul", r"gemm|sm90_xmma|cutlass|nvjet|Kernel2"),
    ("loss", r"ce_kernel"),
    ("optimizer", r"multi_tensor|fused_adam|Adam|foreach|norm"),
    ("triton (inductor)", r"^triton_"),
]


def family(name):
    for fam, pat in FAMILIES:
        if re.search(pat, name, re.I):
            return fam
    return "other"


def profile_default(glob_, configure=None, tag=""):
    from torch.profiler import ProfilerActivity, profile
    args, run, raw, opt, model = bt.setup(glob_, "flash", 1, 0, 32, 1024)
    if configure is not None:
        configure(raw)
    step_fn = bt.make_step("flash+compile+lt+graphs", args, run, raw, opt, model, 1)
    batches = tr.batch_source(DataLoader(glob_, 32, 1024), run)
    rb = tr.StepReadback(run)

    def loop(n):
        ts = []
        for s in range(n):
            rb.begin()
            loss, norm = step_fn(batches, 6e-4)
            d = rb.push(s, 6e-4, loss, norm)
            batches.prefetch()
            if d:
                ts.append(d[4])
        rb.drain()
        return ts
    loop(8)
    step_s = sorted(loop(30)[3:])
    steps = 4
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        loop(steps)
        torch.cuda.synchronize()
    trace = os.path.join(OUT, "trace%s.json" % tag)
    p.export_chrome_trace(trace)
    timeline = [(e["ts"], e.get("dur", 0), e["name"][:90]) for e in json.load(open(trace))["traceEvents"]
                if e.get("cat") in ("kernel", "gpu_memset", "gpu_memcpy")]
    os.remove(trace)
    timeline.sort()
    with open(os.path.join(OUT, "timeline%s.txt" % tag), "w") as f:
        t0 = timeline[0][0]
        prev_end = t0
        for ts, dur, name in timeline:
            f.write("%10.1f %8.1f gap %6.1f  %s\n" % (ts - t0, dur, ts - prev_end, name))
            prev_end = max(prev_end, ts + dur)
    rows = []
    for e in p.key_averages():
        if e.self_device_time_total <= 0:
            continue
        rows.append(dict(name=e.key[:160], calls=e.count // steps,
                         ms=round(e.self_device_time_total / steps / 1000, 4)))
    rows.sort(key=lambda r: -r["ms"])
    fams = {}
    for r in rows:
        f = family(r["name"])
        fams[f] = round(fams.get(f, 0) + r["ms"], 3)
    tuning = bt.tuning_report()
    del args, run, raw, opt, model
    bt.release()
    return dict(step_ms_median=round(1000 * step_s[len(step_s) // 2], 3), kernels=rows, families=fams,
                kernel_ms=round(sum(r["ms"] for r in rows), 3), tuning=tuning)


def main():
    res = dict(env=env_report())
    json.dump(res, open(os.path.join(OUT, "probe.json"), "w"), indent=1, default=str)
    glob_ = bt.make_shards("/tmp/bench_train_data")
    res["default"] = profile_default(glob_)
    json.dump(res, open(os.path.join(OUT, "probe.json"), "w"), indent=1, default=str)
    d = res["default"]
    print("step %.3f ms, kernels %.3f ms" % (d["step_ms_median"], d["kernel_ms"]))
    print(json.dumps(d["families"], indent=1))
    for r in d["kernels"][:70]:
        print("%8.4f ms %4d  %s" % (r["ms"], r["calls"], r["name"][:110]))
    for k, v in d["tuning"].items():
        print(k, v)


if __name__ == "__main__":
    main()

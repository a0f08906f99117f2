"""Session-4 probe of the default training step (H100): what the GPU machine offers (libraries
that could replace a kernel), the kernel-time table of the default B=32 step with per-family
totals and a kernel timeline, and the matmul tuning table. JSON and text land in $OUT."""
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, "bench")
sys.path.insert(0, "bench/experiments")
sys.path.insert(0, ".")
import torch  # noqa: E402

import bench_train as bt  # noqa: E402
from s3_profile import default_step_ms  # noqa: E402

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
    """The default step's median ms (s3_profile.default_step_ms), then 4 profiled steps: kernel
    table, per-family totals, a kernel timeline (timeline<tag>.txt) and the matmul tuning table."""
    from torch.profiler import ProfilerActivity, profile
    out = {}

    def inspect(loop, steps=4):
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
            prev_end = t0 = timeline[0][0]
            for ts, dur, name in timeline:
                f.write("%10.1f %8.1f gap %6.1f  %s\n" % (ts - t0, dur, ts - prev_end, name))
                prev_end = max(prev_end, ts + dur)
        rows = [dict(name=e.key[:160], calls=e.count // steps, ms=round(e.self_device_time_total / steps / 1000, 4))
                for e in p.key_averages() if e.self_device_time_total > 0]
        rows.sort(key=lambda r: -r["ms"])
        fams = {}
        for r in rows:
            fams[family(r["name"])] = round(fams.get(family(r["name"]), 0) + r["ms"], 3)
        out.update(kernels=rows, families=fams, kernel_ms=round(sum(r["ms"] for r in rows), 3),
                   tuning=bt.tuning_report())
    medians = default_step_ms(glob_, configure, after=inspect)
    out["step_ms_median"] = min(medians)
    return out


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

"""Session-4 experiment: inductor options on the default step, in one process (each config
compiles the model afresh): combo kernels (independent small kernels launched as one),
no mix-order reduction (layernorm backward without partial sums), coordinate-descent tuning of
inductor's kernels. Prints and writes median step ms (two rounds of 30 steps) and setup time."""
import json
import os
import sys
import time

sys.path.insert(0, "bench"); sys.path.insert(0, "bench/experiments"); sys.path.insert(0, ".")
import torch._inductor.config as ic  # noqa: E402

import bench_train as bt  # noqa: E402
from s3_profile import OUT, default_step_ms  # noqa: E402

KNOBS = {
    "baseline": {},
    "combo_kernels": {"combo_kernels": True},
    "no_mix_order": {"triton.mix_order_reduction": False},
    "coordinate_descent": {"coordinate_descent_tuning": True},
}


def set_knob(name, value):
    obj = ic
    parts = name.split(".")
    for p in parts[:-1]:
        obj = getattr(obj, p)
    old = getattr(obj, parts[-1])
    setattr(obj, parts[-1], value)
    return old


def main():
    glob_ = bt.make_shards("/tmp/bench_train_data")
    order = sys.argv[1].split(",") if len(sys.argv) > 1 else ["baseline", "combo_kernels", "no_mix_order",
                                                             "coordinate_descent", "baseline"]
    res = {}
    for name in order:
        olds = {k: set_knob(k, v) for k, v in KNOBS[name].items()}
        t0 = time.time()
        try:
            ms = default_step_ms(glob_)
        except Exception as e:  # noqa: BLE001
            ms = repr(e)[:400]
        res.setdefault(name, []).append(dict(step_ms=ms, seconds=round(time.time() - t0, 1)))
        for k, v in olds.items():
            set_knob(k, v)
        print(name, res[name][-1], flush=True)
        with open(os.path.join(OUT, "knobs.json"), "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()

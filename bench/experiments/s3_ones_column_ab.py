"""Session-3 A/B: the default step with and without cuBLASLt's ones column (same process), plus a
kernel trace of the step with it."""
import json
import os
import sys

sys.path.insert(0, "bench"); sys.path.insert(0, "bench/experiments"); sys.path.insert(0, ".")
import bench_train as bt  # noqa: E402
from s3_profile import OUT, default_step_ms  # noqa: E402


def ones(setting):
    def configure(raw):
        for block in raw.transformer.h:
            block.ones_column = setting
    return configure


glob_ = bt.make_shards("/tmp/bench_train_data")
res = {"ones_on": default_step_ms(glob_, ones(None), trace="trace_new.json")}
print(res, flush=True)
res["ones_off"] = default_step_ms(glob_, ones(False))
print(res, flush=True)
with open(os.path.join(OUT, "exp6.json"), "w") as f:
    json.dump(res, f)

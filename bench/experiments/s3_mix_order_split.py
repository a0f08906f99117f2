"""Session-3 experiment: inductor's mix-order reduction split size (the partial sums of each
layernorm backward's weight and bias gradients); None = inductor's choice (16 rows per split)."""
import json
import os
import sys

sys.path.insert(0, "bench"); sys.path.insert(0, "bench/experiments"); sys.path.insert(0, ".")
import torch._inductor.config as ic  # noqa: E402

import bench_train as bt  # noqa: E402
from s3_profile import OUT, default_step_ms  # noqa: E402

glob_ = bt.make_shards("/tmp/bench_train_data")
res = {}
for split in (None, 64, 128, 32, None):
    ic.triton.mix_order_reduction_split_size = split
    res.setdefault("split_%s" % split, []).append(default_step_ms(glob_))
    print(res, flush=True)
    with open(os.path.join(OUT, "exp9.json"), "w") as f:
        json.dump(res, f)

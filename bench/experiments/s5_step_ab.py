"""Session-5 experiment: the default B=32 training step (trainer loop, `s3_profile.default_step_ms`)
with session 5's two changes switched on one at a time, alternating in one process:

- `session4`: matmul algorithms timed eagerly (`cublaslt.TUNE_IN_GRAPH = False`) and the Triton
  loss kernel (`GPT_CUDA_LOSS=0`);
- `graph_tuning`: algorithms timed inside CUDA graphs (s4_graph_tuning.py found eager timing
  picks algorithms that are slower under graph replay);
- `graph_tuning+cuda_loss`: also the one-read loss kernel of pipeline/gpt/loss_kernel.py.

The matmul plan cache is cleared between configurations so each one tunes afresh.
Writes step_ab.json in $OUT."""
import json
import os
import sys
import time

sys.path.insert(0, "bench"); sys.path.insert(0, "bench/experiments"); sys.path.insert(0, ".")

import bench_train as bt  # noqa: E402
from pipeline.gpt import cublaslt  # noqa: E402
from s3_profile import OUT, default_step_ms  # noqa: E402

CONFIGS = {"session4": (False, "0"), "graph_tuning": (True, "0"), "graph_tuning+cuda_loss": (True, "1")}


def main(rounds=2):
    glob_ = bt.make_shards("/tmp/bench_train_data")
    res = {name: [] for name in CONFIGS}
    for _ in range(rounds):
        for name, (in_graph, cuda_loss) in CONFIGS.items():
            cublaslt.TUNE_IN_GRAPH = in_graph
            os.environ["GPT_CUDA_LOSS"] = cuda_loss
            cublaslt._lt.cache_clear()
            started = time.time()
            print(time.strftime("%H:%M:%S"), "start", name, flush=True)
            res[name].append(default_step_ms(glob_))
            print(name, res[name][-1], "(%.0f s with compile and tuning)" % (time.time() - started), flush=True)
            with open(os.path.join(OUT, "step_ab.json"), "w") as f:
                json.dump(res, f, indent=1)
    for name, runs in res.items():
        flat = [ms for r in runs for ms in r]
        mean = sum(flat) / len(flat)
        print("%-24s mean %.3f ms = %.1fk tokens/s" % (name, mean, 32 * 1024 / mean))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)

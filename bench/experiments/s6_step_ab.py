"""Session-6 experiment: the default B=32 training step (trainer loop, `s3_profile.default_step_ms`)
in three configurations, alternating in one process:

- `triton_loss`: matmul algorithms timed eagerly, the Triton loss kernel (`GPT_CUDA_LOSS=0`);
- `cuda_loss`: the Hopper loss kernel of pipeline/gpt/loss_kernel.py (the default without the
  cuDNN frontend package);
- `cuda_loss+frontend`: also attention through pipeline/gpt/cudnn_attention.py (the default with
  `nvidia-cudnn-frontend` installed).

s5_step_ab.py showed graph-timed matmul tuning slower in the full step, so all three tune eagerly.
Writes step_ab6.json in $OUT."""
import json
import os
import sys
import time

sys.path.insert(0, "bench"); sys.path.insert(0, "bench/experiments"); sys.path.insert(0, ".")

import torch  # noqa: E402

import bench_train as bt  # noqa: E402
from pipeline.gpt import cublaslt, cudnn_attention  # noqa: E402
from s3_profile import OUT, default_step_ms  # noqa: E402

CONFIGS = {"triton_loss": ("0", False), "cuda_loss": ("1", False), "cuda_loss+frontend": ("1", True)}


def main(rounds=2):
    glob_ = bt.make_shards("/tmp/bench_train_data")
    frontend_ok = cudnn_attention.available(torch.device("cuda"), 32, 1024, 12, 64)
    print("frontend available:", frontend_ok, cudnn_attention.unavailable_reason(), flush=True)
    res = {name: [] for name in CONFIGS}
    for _ in range(rounds):
        for name, (cuda_loss, frontend) in CONFIGS.items():
            if frontend and not frontend_ok:
                continue
            cublaslt.TUNE_IN_GRAPH = False
            os.environ["GPT_CUDA_LOSS"] = cuda_loss
            cublaslt._lt.cache_clear()
            started = time.time()
            res[name].append(default_step_ms(glob_, configure=lambda raw: raw.set_cudnn_frontend(frontend)))
            print(name, res[name][-1], "(%.0f s with compile and tuning)" % (time.time() - started), flush=True)
            with open(os.path.join(OUT, "step_ab6.json"), "w") as f:
                json.dump(res, f, indent=1)
    for name, runs in res.items():
        flat = [ms for r in runs for ms in r]
        if flat:
            mean = sum(flat) / len(flat)
            print("%-20s mean %.3f ms = %.1fk tokens/s" % (name, mean, 32 * 1024 / mean))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)

"""Session-6 experiment: the default B=32 training step (trainer loop, `s3_profile.default_step_ms`)
in three configurations, alternating in one process:

- `triton_loss`: matmul algorithms timed eagerly, the Triton loss kernel (`GPT_CUDA_LOSS=0`);
- `cuda_loss`: the Hopper loss kernel of pipeline/gpt/loss_kernel.py (the default without the
  cuDNN frontend package);
- `cuda_loss+frontend`: also attention through pipeline/gpt/cudnn_attention.py (the default with
  `nvidia-cudnn-frontend` installed), each direction on the execution plan timed fastest;
- `cuda_loss+frontend_heuristic`: the same on cuDNN's heuristic first plan (`GPT_CUDNN_TUNE=0`).
  In the measured run (bench/results/s6/step_ab6_tuned.json) this configuration still built every
  plan and called plain `execute`, which ran slower plans (62.4 ms); it now builds only the
  heuristic's choice, as the untuned run (step_ab6.json, 56.46 ms on another machine) did.

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

CONFIGS = {"triton_loss": ("0", False, True), "cuda_loss": ("1", False, True),
           "cuda_loss+frontend": ("1", True, True), "cuda_loss+frontend_heuristic": ("1", True, False)}


def main(rounds=2):
    glob_ = bt.make_shards("/tmp/bench_train_data")
    frontend_ok = cudnn_attention.available(torch.device("cuda"), 32, 1024, 12, 64)
    print("frontend available:", frontend_ok, cudnn_attention.unavailable_reason(), flush=True)
    res = {name: [] for name in CONFIGS}
    for _ in range(rounds):
        for name, (cuda_loss, frontend, tune_plans) in CONFIGS.items():
            if frontend and not frontend_ok:
                continue
            cudnn_attention.TUNE_PLANS = tune_plans
            cudnn_attention._graphs.clear()
            cublaslt.TUNE_IN_GRAPH = False
            os.environ["GPT_CUDA_LOSS"] = cuda_loss
            cublaslt._lt.cache_clear()
            started = time.time()
            res[name].append(default_step_ms(glob_, configure=lambda raw: raw.set_cudnn_frontend(frontend)))
            print(name, res[name][-1], "(%.0f s with compile and tuning)" % (time.time() - started), flush=True)
            for graphs in (g for g in cudnn_attention._graphs.values() if g.tuning):
                res.setdefault("plan_tuning", {})[str(graphs.shape)] = graphs.tuning
            with open(os.path.join(OUT, "step_ab6.json"), "w") as f:
                json.dump(res, f, indent=1)
    print(json.dumps(res.get("plan_tuning"), indent=1))
    for name in CONFIGS:
        runs = res[name]
        flat = [ms for r in runs for ms in r]
        if flat:
            mean = sum(flat) / len(flat)
            print("%-30s mean %.3f ms = %.1fk tokens/s" % (name, mean, 32 * 1024 / mean))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)

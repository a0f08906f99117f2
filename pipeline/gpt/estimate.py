"""`pipeline train --estimate`: project a full run's time and cost from a short timed run.

The course handout's rule: run 20 steps, take the slowest of steps 10-19 (steps 0-9 include
compilation, cuDNN/cuBLAS autotuning and allocator warm-up), and assume every step of the full run
costs that much:

    hours   = slowest_step_seconds * max_steps / 3600
    dollars = hours * price_per_hour          (default 1.006 $/h: g5.xlarge on-demand, us-east-1)

Taking the slowest rather than the mean step makes the projection a (mild) upper bound: evaluation,
sampling and checkpoint writes are not included, so budget some margin for those.
"""
from __future__ import annotations

from typing import Dict, List

G5_XLARGE_PRICE = 1.006
ESTIMATE_STEPS = 20
TIMED_FROM = 10


def estimate(step_seconds: List[float], max_steps: int, price_per_hour: float = G5_XLARGE_PRICE,
             tokens_per_step: int = 0, peak_memory_gb: float = 0.0) -> Dict[str, float]:
    if len(step_seconds) <= TIMED_FROM:
        raise ValueError("need more than %d timed steps to estimate (got %d)"
                         % (TIMED_FROM, len(step_seconds)))
    if max_steps <= 0:
        raise ValueError("max_steps must be positive (pass -x, or shards for one epoch)")
    slowest = max(step_seconds[TIMED_FROM:ESTIMATE_STEPS])
    hours = slowest * max_steps / 3600.0
    out = {"slowest_step_s": slowest, "max_steps": max_steps, "hours": hours,
           "price_per_hour": price_per_hour, "dollars": hours * price_per_hour,
           "peak_memory_gb": peak_memory_gb}
    if tokens_per_step:
        out["tokens_per_second"] = tokens_per_step / slowest
    return out


def format_estimate(e: Dict[str, float]) -> str:
    lines = ["slowest of steps %d-%d: %.1f ms" % (TIMED_FROM, ESTIMATE_STEPS - 1,
                                                  e["slowest_step_s"] * 1000)]
    if "tokens_per_second" in e:
        lines.append("throughput at that step: %.0f tokens/s" % e["tokens_per_second"])
    lines += ["projected: %d steps x %.3f s = %.2f hours" % (e["max_steps"], e["slowest_step_s"],
                                                           e["hours"]),
              "cost at $%.3f/hour: $%.2f" % (e["price_per_hour"], e["dollars"]),
              "peak GPU memory: %.2f GiB" % e["peak_memory_gb"]]
    return "\n".join(lines)

"""The plan's price before anything trains.

For each distinct model shape, `pipeline train --estimate` times 20 real steps on this machine with the
plan's trainer flags (writing estimate.json); the slowest of steps 10-19 is the price of a step. The
estimate run's wall time minus 20 such steps is the measured per-trial start-up cost (process start,
imports, model build, data open, compilation and autotuning, which land in the first steps). A trial
then costs

    seconds = start-up + steps x slowest step + evaluations x val batches x (slowest step / accum / 3)

(a val batch is a forward pass of one micro-batch: about a third of its share of a training step), and
dollars = seconds x $/h / 3600, divided among the GPUs when trials run side by side.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Sequence, Tuple

from pipeline.tune.config import TuneConfig
from pipeline.tune.plan import TrialSpec, estimate_command
from pipeline.tune.shapes import Shape

PRICING_FILE = "pricing.json"
ESTIMATE_STEPS = 20


@dataclass(frozen=True)
class StepPrice:
    shape: str
    slowest_step_s: float
    startup_s: float
    estimate_wall_s: float

    def val_batch_s(self, config: TuneConfig) -> float:
        micro_tokens = int(config.trainer_value("-b", "4")) * config.seq_len
        accum = max(1, config.batch_tokens // max(1, micro_tokens))
        return self.slowest_step_s / accum / 3.0


class PricingError(RuntimeError):
    pass


def measure(config: TuneConfig, shapes: Sequence[Shape], echo=print) -> Dict[str, StepPrice]:
    """Step price per shape, from pricing.json in --out when measured before (a resumed run)."""
    path = os.path.join(config.out, PRICING_FILE)
    prices: Dict[str, StepPrice] = {}
    if os.path.exists(path):
        with open(path) as f:
            prices = {k: StepPrice(**v) for k, v in json.load(f).items()}
    for shape in shapes:
        if shape.label in prices:
            continue
        directory = os.path.join(config.out, "pricing", shape.label.replace("/", "-"))
        os.makedirs(directory, exist_ok=True)
        cmd = estimate_command(config, shape, max(ESTIMATE_STEPS, config.steps), directory)
        echo("pricing %s: %s" % (shape.label, " ".join(cmd[3:])))
        t0 = time.time()
        with open(os.path.join(directory, "stdout.log"), "w") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT,
                                 env=dict(os.environ, PYTHONUNBUFFERED="1"))
        wall = time.time() - t0
        est_path = os.path.join(directory, "estimate.json")
        if rc != 0 or not os.path.exists(est_path):
            with open(os.path.join(directory, "stdout.log")) as f:
                tail = f.read()[-2000:]
            raise PricingError("pricing shape %s failed (exit %d):\n%s" % (shape.label, rc, tail))
        with open(est_path) as f:
            slowest = float(json.load(f)["slowest_step_s"])
        prices[shape.label] = StepPrice(shape.label, slowest, max(0.0, wall - ESTIMATE_STEPS * slowest),
                                        wall)
        with open(path, "w") as f:
            json.dump({k: asdict(v) for k, v in prices.items()}, f, indent=2)
    return prices


def pricing_seconds(prices: Dict[str, StepPrice]) -> float:
    return sum(p.estimate_wall_s for p in prices.values())


def trial_seconds(config: TuneConfig, spec: TrialSpec, price: StepPrice) -> float:
    every = int(config.trainer_value("-v", "20"))
    val_batches = int(config.trainer_value("-m", "20"))
    evals = (spec.run_steps // every + 1) if every > 0 else 1
    return (price.startup_s + spec.run_steps * price.slowest_step_s
            + evals * max(val_batches, 0) * price.val_batch_s(config))


@dataclass(frozen=True)
class PlanPrice:
    rows: Tuple[Tuple[str, int, int, float, float], ...]   # group, trials, steps, hours, dollars
    pricing_dollars: float
    total_dollars: float
    total_hours: float


def price_plan(config: TuneConfig, specs: Sequence[TrialSpec], prices: Dict[str, StepPrice]) -> PlanPrice:
    gpus = max(1, len(config.gpus))
    usd_per_s = config.price_per_hour / 3600.0
    groups: Dict[str, List[float]] = {}
    for spec in specs:
        g = groups.setdefault(spec.group, [0, 0, 0.0])
        g[0] += 1
        g[1] += spec.run_steps
        g[2] += trial_seconds(config, spec, prices[spec.shape.label])
    rows = tuple((name, int(t), int(s), sec / gpus / 3600, sec / gpus * usd_per_s)
                 for name, (t, s, sec) in groups.items())
    pricing_usd = pricing_seconds(prices) * usd_per_s
    total = sum(r[4] for r in rows) + pricing_usd
    return PlanPrice(rows, pricing_usd, total, sum(r[3] for r in rows) + pricing_seconds(prices) / 3600)


def format_plan(config: TuneConfig, plan: PlanPrice) -> str:
    lines = ["%-14s %7s %8s %9s %10s" % ("group", "trials", "steps", "hours", "dollars")]
    for name, trials, steps, hours, dollars in plan.rows:
        lines.append("%-14s %7d %8d %9.3f %10.2f" % (name, trials, steps, hours, dollars))
    lines.append("%-14s %7s %8s %9s %10.2f" % ("pricing runs", "", "", "", plan.pricing_dollars))
    lines.append("%-14s %7d %8d %9.3f %10.2f" % (
        "total", sum(r[1] for r in plan.rows), sum(r[2] for r in plan.rows), plan.total_hours,
        plan.total_dollars))
    lines.append("at $%.3f/h%s; budget $%.2f" % (
        config.price_per_hour, " over %d GPUs side by side" % len(config.gpus) if len(config.gpus) > 1
        else "", config.budget_usd))
    return "\n".join(lines)


def over_budget_message(config: TuneConfig, plan: PlanPrice) -> str:
    over = plan.total_dollars - config.budget_usd
    trial_usd = plan.total_dollars - plan.pricing_dollars
    room = config.budget_usd - plan.pricing_dollars
    cuts = []
    if trial_usd > 0 and room > 0:
        share = room / trial_usd
        cuts.append("--n-lrs %d (trials scale with it)" % max(1, int(config.n_lrs * share)))
        cuts.append("fewer steps per trial (about %.0f%% of today's)" % (100 * share))
    biggest = max(plan.rows, key=lambda r: r[4])
    if len(plan.rows) > 1:
        cuts.append("drop %s ($%.2f of the plan)" % (biggest[0], biggest[4]))
    if room <= 0:
        cuts.insert(0, "the pricing runs alone cost $%.2f" % plan.pricing_dollars)
    cuts.append("or raise --budget-usd to %.2f" % plan.total_dollars)
    return ("plan refused: it costs $%.2f, $%.2f (%.0f%%) over --budget-usd %.2f. Cut: %s."
            % (plan.total_dollars, over, 100 * over / max(config.budget_usd, 1e-9), config.budget_usd,
               "; ".join(cuts)))

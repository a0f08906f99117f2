"""What each strategy runs and what it recommends.

A strategy lists its trials up front (`planned`: what the plan is priced on; for adaptive strategies an
upper bound), runs them through the Runner (`execute`), and turns the results into a Recommendation.
Trial ids are deterministic, so a resumed run asks the Runner for the same trials and gets the finished
ones back from the study without running them.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import optuna

from pipeline.tune import fit
from pipeline.tune.config import TuneConfig
from pipeline.tune.plan import TrialSpec
from pipeline.tune.runner import remove_checkpoints
from pipeline.tune.shapes import Shape
from pipeline.tune.store import TrialRecord


@dataclass
class Recommendation:
    lr: float
    rule: str
    band: Optional[Tuple[float, float]] = None
    fits: Dict[str, fit.UCurve] = field(default_factory=dict)       # group -> U-curve
    projection: Optional[fit.Projection] = None
    projection_axis: str = ""                                        # "parameters" or "tokens"
    table: List[dict] = field(default_factory=list)                  # e.g. Hyperband's n_i / r_i


# ---------------------------------------------------------------------------------------- LR sets

def grid_lrs(config: TuneConfig) -> List[float]:
    return [float(v) for v in np.logspace(math.log10(config.lr_min), math.log10(config.lr_max),
                                          config.n_lrs)]


def random_lrs(config: TuneConfig, count: int, stream: int = 0) -> List[float]:
    """`count` log-uniform LRs from Optuna's RandomSampler, seeded by --tune-seed and `stream`, drawn in
    a throwaway in-memory study so the plan is fixed (and priced) before any trial runs."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.RandomSampler(seed=config.seed * 1000 + stream)
    study = optuna.create_study(sampler=sampler)
    dist = optuna.distributions.FloatDistribution(config.lr_min, config.lr_max, log=True)
    return [study.ask({"lr": dist}).params["lr"] for _ in range(count)]


def _tag(shape: Shape) -> str:
    return "d%dc%dh%d" % (shape.depth, shape.channels, shape.heads)


def _search_lrs(config: TuneConfig, stream: int) -> List[float]:
    return random_lrs(config, config.n_lrs, stream) if config.search == "random" else grid_lrs(config)


def _u_curves(records: Sequence[TrialRecord]) -> Dict[str, fit.UCurve]:
    groups: Dict[str, List[TrialRecord]] = {}
    for r in records:
        if r.usable:
            groups.setdefault(r.group, []).append(r)
    return {g: fit.fit_u_curve([r.lr for r in rs], [r.final_val for r in rs]) for g, rs in groups.items()}


class Strategy:
    def __init__(self, config: TuneConfig):
        self.config = config

    def planned(self) -> List[TrialSpec]:
        raise NotImplementedError

    def execute(self, runner) -> List[TrialRecord]:
        specs = self.planned()
        results = runner.run(specs)
        return [results[s.trial_id] for s in specs if s.trial_id in results]

    def recommend(self, records: Sequence[TrialRecord]) -> Recommendation:
        raise NotImplementedError


class OneScaleSearch(Strategy):
    """grid / random: n LRs at one shape, a U-curve, its minimum."""

    def planned(self) -> List[TrialSpec]:
        c = self.config
        return [TrialSpec("%s-%02d" % (_tag(c.shape), k), c.shape.label, c.shape, lr, c.steps)
                for k, lr in enumerate(_search_lrs(c, 0))]

    def recommend(self, records):
        fits = _u_curves(records)
        if not fits:
            raise ValueError("no trial finished without diverging: nothing to fit")
        u = fits[self.config.shape.label]
        rule = "U-curve at %s, %d steps: %s" % (self.config.shape.label, self.config.steps, u.rule)
        if self.config.shape != self.config.target:
            rule += " (the optimum of this shape, not transferred to %s: add +model-scale to project)" \
                    % self.config.target.label
        return Recommendation(u.lr_opt, rule, fits=fits)


class Projection(Strategy):
    """model-scale / data-scale: a search at each point of a ladder, a power law through the optima."""

    def points(self) -> List[Tuple[str, Shape, int, float]]:
        """(group, shape, steps, x) per point; x = parameters or tokens."""
        c = self.config
        block = max(1024, c.seq_len)
        if c.projection == "model-scale":
            return [(s.label, s, c.steps, float(s.params(block))) for s in c.ladder]
        return [("%d steps" % n, c.target, n, float(n * c.batch_tokens)) for n in c.data_steps]

    def target_x(self) -> float:
        c = self.config
        if c.projection == "model-scale":
            return float(c.target.params(max(1024, c.seq_len)))
        return float(c.target_steps * c.target_batch_tokens)

    def planned(self) -> List[TrialSpec]:
        specs = []
        for i, (group, shape, steps, _) in enumerate(self.points()):
            tag = _tag(shape) if self.config.projection == "model-scale" else "x%d" % steps
            specs += [TrialSpec("%s-%02d" % (tag, k), group, shape, lr, steps)
                      for k, lr in enumerate(_search_lrs(self.config, i))]
        return specs

    def recommend(self, records):
        c = self.config
        fits = _u_curves(records)
        groups = []
        for group, _, _, x in self.points():
            rs = [r for r in records if r.group == group and r.usable]
            if len(rs) >= 1:
                groups.append((x, [r.lr for r in rs], [r.final_val for r in rs]))
        if len(groups) < 2:
            raise ValueError("fewer than two scales have finished trials: no power law to fit")
        proj = fit.project(groups, self.target_x(), c.bootstrap, c.seed)
        axis = "parameters" if c.projection == "model-scale" else "tokens"
        rule = ("power law of the U-curve optima against %s, lr* = %.4g x %s^%.3f, extrapolated to %.3g %s "
                "(%s); bootstrap 10-90%% band %.3g-%.3g over %d resamples"
                % (axis, proj.law.coef, "N" if axis == "parameters" else "D", proj.law.exponent,
                   proj.target, axis, c.target.label if axis == "parameters" else
                   "%d steps x %d tokens" % (c.target_steps, c.target_batch_tokens),
                   proj.band[0], proj.band[1], proj.samples))
        return Recommendation(proj.lr, rule, proj.band, fits, proj, axis)


# ------------------------------------------------------------------------- successive halving

def hyperband_brackets(R: int, eta: int) -> List[dict]:
    """Li et al.'s Hyperband table: s_max = floor(log_eta R), B = (s_max + 1) R; bracket s starts
    n = ceil(B / R * eta^s / (s + 1)) arms at r = R eta^-s steps; round i keeps n_i = floor(n eta^-i)
    arms for r_i = r eta^i steps (rounded to whole steps, at least 1)."""
    s_max = 0
    while eta ** (s_max + 1) <= R:
        s_max += 1
    B = (s_max + 1) * R
    out = []
    for s in range(s_max, -1, -1):
        n = int(math.ceil(B / R * eta ** s / (s + 1)))
        r = R * eta ** (-s)
        rounds = [(int(n * eta ** (-i)), max(1, int(round(r * eta ** i)))) for i in range(s + 1)]
        out.append({"s": s, "n": n, "r": r, "rounds": rounds})
    return out


def successive_halving(arms: Sequence[str], rounds: Sequence[Tuple[int, int]],
                       evaluate: Callable[[List[str], int, int], Dict[str, float]]) -> List[dict]:
    """Run `rounds` [(n_i, r_i)]: evaluate the surviving arms at r_i steps (`evaluate(arms, round, r_i)`
    -> loss per arm; NaN/inf = diverged), keep the n_{i+1} with the lowest finite losses.
    Returns per round what actually ran: n_i, r_i, the arms and their losses."""
    alive = list(arms)[: rounds[0][0]]
    history = []
    for i, (n_i, r_i) in enumerate(rounds):
        losses = evaluate(alive, i, r_i)
        history.append({"round": i, "n_i": len(alive), "r_i": r_i, "losses": dict(losses)})
        if i + 1 < len(rounds):
            finite = sorted((v, a) for a, v in losses.items() if math.isfinite(v))
            alive = [a for _, a in finite[: rounds[i + 1][0]]]
            if not alive:
                break
    return history


class Hyperband(Strategy):
    """The exact Hyperband table (eta, R): per bracket, random LRs from Optuna's RandomSampler run by
    successive halving; a promoted arm continues from its checkpoint at r_i (the trainer's `-es`, `-n`,
    `-y 1`) with the LR schedule spanning R steps, so r_i are cumulative steps as in the table."""

    def brackets(self):
        c = self.config
        out = []
        for b in hyperband_brackets(c.max_resource, c.eta):
            lrs = random_lrs(c, b["n"], stream=b["s"])
            out.append(dict(b, arms={"s%d-a%03d" % (b["s"], k): lr for k, lr in enumerate(lrs)}))
        return out

    def _spec(self, arm: str, lr: float, i: int, rounds) -> TrialSpec:
        c = self.config
        r_i, start = rounds[i][1], rounds[i - 1][1] if i else 0
        return TrialSpec("%s-r%d" % (arm, i), arm.split("-")[0], c.shape, lr, c.max_resource,
                         stop_step=r_i, start_step=start, log_dir=arm, rung="%s/%d" % (arm.split("-")[0], i))

    def planned(self) -> List[TrialSpec]:
        specs = []
        for b in self.brackets():
            arms = list(b["arms"].items())
            for i, (n_i, _) in enumerate(b["rounds"]):
                specs += [self._spec(a, lr, i, b["rounds"]) for a, lr in arms[:n_i]]
        return specs

    def execute(self, runner) -> List[TrialRecord]:
        records: List[TrialRecord] = []
        for b in self.brackets():
            def evaluate(alive, i, r_i, b=b):
                specs = [self._spec(a, b["arms"][a], i, b["rounds"]) for a in alive]
                results = runner.run(specs)
                out = {}
                for spec in specs:
                    rec = results.get(spec.trial_id)
                    if rec is not None:
                        records.append(rec)
                    out[spec.log_dir] = rec.final_val if rec is not None and rec.status == "done" \
                        else float("inf")
                return out
            successive_halving(list(b["arms"]), b["rounds"], evaluate)
            for arm in b["arms"]:            # the bracket is over: no arm continues
                remove_checkpoints(os.path.join(self.config.out, "trials", arm))
            if runner.out_of_budget:
                break
        return records

    def recommend(self, records):
        finished = [r for r in records if r.status == "done" and math.isfinite(r.final_val)]
        if not finished:
            raise ValueError("no Hyperband arm finished a round")
        top = max(r.steps for r in finished)
        best = min((r for r in finished if r.steps == top), key=lambda r: r.final_val)
        ran: Dict[int, Dict[int, List[int]]] = {}
        for r in records:
            if r.rung:
                bracket, i = r.rung.split("/")
                ran.setdefault(int(bracket[1:]), {}).setdefault(int(i), []).append(r.steps)
        planned = {b["s"]: b["rounds"] for b in hyperband_brackets(self.config.max_resource, self.config.eta)}
        table = [{"s": s, "rounds": [(len(v), v[0]) for _, v in sorted(ran[s].items())],
                  "planned": planned.get(s, [])} for s in sorted(ran, reverse=True)]
        return Recommendation(best.lr, "Hyperband (eta=%d, R=%d): lowest val loss among the arms that ran "
                              "the most steps (%d), trial %s" % (self.config.eta, self.config.max_resource,
                                                                 top, best.trial_id), table=table)


class _KeptAttempts:
    """A study as a pruner should see it: without the failed attempts (an interrupted or crashed trial,
    state FAIL), which run again on resume and whose rung values would otherwise count twice."""

    def __init__(self, study: optuna.Study):
        self._study = study

    def __getattr__(self, name):
        return getattr(self._study, name)

    def get_trials(self, deepcopy: bool = True, states=None):
        return [t for t in self._study.get_trials(deepcopy=deepcopy, states=states)
                if t.state != optuna.trial.TrialState.FAIL]


class KeptAttemptsPruner(optuna.pruners.BasePruner):
    """Optuna's pruner, comparing a trial only with the attempts the study keeps (see _KeptAttempts),
    so an attempt that runs again meets the competitors it would have met in an uninterrupted run."""

    def __init__(self, pruner: optuna.pruners.BasePruner):
        self.pruner = pruner

    def prune(self, study, trial) -> bool:
        return self.pruner.prune(_KeptAttempts(study), trial)


class OptunaHalving(Strategy):
    """Random LRs at one shape, each trial stopped early by Optuna's SuccessiveHalvingPruner from the val
    losses it reports every -v steps (asynchronous successive halving)."""

    def planned(self):
        c = self.config
        return [TrialSpec("%s-%02d" % (_tag(c.shape), k), c.shape.label, c.shape, lr, c.steps)
                for k, lr in enumerate(random_lrs(c, c.n_lrs))]

    def pruner(self):
        every = max(1, int(self.config.trainer_value("-v", "20")))
        return KeptAttemptsPruner(optuna.pruners.SuccessiveHalvingPruner(
            min_resource=every, reduction_factor=self.config.eta, min_early_stopping_rate=0))

    def recommend(self, records):
        done = [r for r in records if r.status == "done" and math.isfinite(r.final_val)]
        if not done:
            raise ValueError("no trial ran to the end")
        best = min(done, key=lambda r: r.final_val)
        return Recommendation(best.lr, "successive halving (Optuna pruner, eta=%d): lowest final val loss "
                              "of the %d trials not pruned, %s" % (self.config.eta, len(done), best.trial_id),
                              fits=_u_curves(records))


class Greedy(Strategy):
    """Aggressive: warmup off, double the LR from the bottom of --lr-range until a trial diverges, then
    try fractions 2^-1/4, 2^-1/2, 2^-3/4 of the first diverging LR; the best stable trial wins."""
    FRACTIONS = (2 ** -0.25, 2 ** -0.5, 2 ** -0.75)

    def doublings(self) -> List[float]:
        c = self.config
        n = int(math.ceil(math.log2(c.lr_max / c.lr_min))) + 1
        return [c.lr_min * 2 ** k for k in range(n)]

    def _spec(self, name: str, lr: float) -> TrialSpec:
        c = self.config
        return TrialSpec("%s-%s" % (_tag(c.shape), name), c.shape.label, c.shape, lr, c.steps, warmup=0)

    def planned(self):
        specs = [self._spec("x%02d" % k, lr) for k, lr in enumerate(self.doublings())]
        last = self.doublings()[-1]
        return specs + [self._spec("f%d" % k, last * f) for k, f in enumerate(self.FRACTIONS)]

    def execute(self, runner):
        records = []
        diverged_at = None
        for k, lr in enumerate(self.doublings()):
            spec = self._spec("x%02d" % k, lr)
            rec = runner.run([spec]).get(spec.trial_id)
            if rec is None:
                return records
            records.append(rec)
            if rec.status == "diverged":
                diverged_at = lr
                break
        if diverged_at is not None:
            specs = [self._spec("f%d" % k, diverged_at * f) for k, f in enumerate(self.FRACTIONS)]
            results = runner.run(specs)
            records += [results[s.trial_id] for s in specs if s.trial_id in results]
        self.diverged_at = diverged_at
        return records

    def recommend(self, records):
        stable = [r for r in records if r.status == "done" and math.isfinite(r.final_val)]
        if not stable:
            raise ValueError("every greedy trial diverged: lower --lr-range")
        best = min(stable, key=lambda r: r.final_val)
        div = getattr(self, "diverged_at", None)
        if div is None:
            div = next((r.lr for r in records if r.status == "diverged"), None)
        return Recommendation(best.lr, "greedy: warmup off, LR doubled from %.3g %s; lowest val loss of the "
                              "stable trials (%s)" % (self.config.lr_min, "until %.3g diverged, then fractions "
                                                      "of it" % div if div else "(none diverged up to the range's top)",
                                                      best.trial_id), fits=_u_curves(records))


def make(config: TuneConfig) -> Strategy:
    if config.projection:
        return Projection(config)
    return {"grid": OneScaleSearch, "random": OneScaleSearch, "halving": OptunaHalving,
            "hyperband": Hyperband, "greedy": Greedy}[config.search](config)

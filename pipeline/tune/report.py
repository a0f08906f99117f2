"""What the user gets: the results table (printed and results.csv), the plots (ucurve.png,
projection.png, curves.png), and the recommendation (recommendation.json) with the exact
`pipeline train` command of the final run. `pipeline tune report DIR` rebuilds all of it from
tune_config.json and the study."""
from __future__ import annotations

import csv
import json
import math
import os
import shlex
from typing import Dict, List, Optional, Sequence

from pipeline.gpt.logs import parse_log
from pipeline.tune.config import TuneConfig, pairs
from pipeline.tune.store import TrialRecord
from pipeline.tune.strategies import Recommendation

COLUMNS = ("trial", "shape", "lr", "steps", "final_val", "min_val", "hellaswag", "seconds", "dollars",
           "status")
# Columns that depend on the machine's speed, not on what was trained.
TIMING_COLUMNS = ("seconds", "dollars")


def _num(v: float, fmt: str) -> str:
    return fmt % v if isinstance(v, (int, float)) and math.isfinite(v) else ""


def rows(records: Sequence[TrialRecord]) -> List[Dict[str, str]]:
    return [{"trial": r.trial_id, "shape": r.shape, "lr": "%.4g" % r.lr, "steps": str(r.steps),
             "final_val": _num(r.final_val, "%.4f"), "min_val": _num(r.min_val, "%.4f"),
             "hellaswag": _num(r.hellaswag, "%.4f"), "seconds": "%.1f" % r.seconds,
             "dollars": "%.4f" % r.dollars, "status": r.status} for r in records]


def format_table(table: List[Dict[str, str]]) -> str:
    widths = {c: max([len(c)] + [len(row[c]) for row in table]) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS)]
    lines += ["  ".join(row[c].ljust(widths[c]) for c in COLUMNS) for row in table]
    return "\n".join(lines)


def write_csv(path: str, table: List[Dict[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(table)


def final_command(config: TuneConfig, lr: float) -> str:
    """The final run: the course preset at the target shape, the tuner's data flags, the tuned LR."""
    t = config.target
    cmd = ["pipeline", "train", "--preset", "course", "-1d", str(t.depth), "-1c", str(t.channels),
           "-1h", str(t.heads), "-b", str(config.final_micro_batch)]
    for name, value in pairs(config.trainer_args):
        if name in ("-i", "-id", "-j", "-iv", "-ih") and value is not None:
            cmd += [name, value]
    if config.target_steps != 4725:
        cmd += ["-x", str(config.target_steps)]
    if config.target_batch_tokens != 524288:
        cmd += ["-d", str(config.target_batch_tokens)]
    cmd += ["-o", config.final_log_dir, "-y", "1"]
    if config.final_init:
        cmd += ["-e", config.final_init]
        if config.final_start_step is not None:
            cmd += ["-ss", str(config.final_start_step)]
    cmd += ["-l", "%.3g" % lr]
    return " ".join(shlex.quote(c) for c in cmd)


def recommendation_dict(config: TuneConfig, rec: Recommendation, spent_usd: float) -> dict:
    return {"lr": rec.lr, "rule": rec.rule, "band": list(rec.band) if rec.band else None,
            "strategy": config.strategy, "spent_usd": round(spent_usd, 4),
            "command": final_command(config, rec.lr),
            "u_curves": {g: {"lr_opt": u.lr_opt, "loss_opt": u.loss_opt, "rule": u.rule}
                         for g, u in rec.fits.items()},
            "projection": None if rec.projection is None else {
                "axis": rec.projection_axis, "coef": rec.projection.law.coef,
                "exponent": rec.projection.law.exponent, "scales": list(rec.projection.scales),
                "optima": list(rec.projection.optima), "target": rec.projection.target},
            "hyperband": rec.table or None}


def format_recommendation(d: dict) -> str:
    lines = ["recommended peak LR: %.3g" % d["lr"]]
    if d["band"]:
        lines[0] += " (10-90%% band %.3g-%.3g)" % tuple(d["band"])
    lines += ["rule: %s" % d["rule"], "spent: $%.2f" % d["spent_usd"], "final run:", "  " + d["command"]]
    for g, u in d["u_curves"].items():
        lines.insert(-3, "U-curve %s: optimum %.3g (val %.4f; %s)" % (g, u["lr_opt"], u["loss_opt"], u["rule"]))
    if d.get("hyperband"):
        lines.insert(-3, "Hyperband rounds that ran (n_i x r_i steps):")
        for b in d["hyperband"]:
            lines.insert(-3, "  s=%d: %s" % (b["s"], "  ".join("%dx%d" % tuple(x) for x in b["rounds"])))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- plots

def _train_curve(out: str, record: TrialRecord) -> List[tuple]:
    """(step, train loss) of the trial's main.log; a Hyperband arm's rounds share one log."""
    path = os.path.join(out, "trials", record.trial_id.rsplit("-r", 1)[0] if record.rung else
                        record.trial_id, "main.log")
    return parse_log(path)["train"] if os.path.exists(path) else []


def _save(fig, out: str, name: str) -> str:
    """Write a finished figure to out/name as PNG, free it, and return the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = os.path.join(out, name)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot(config: TuneConfig, records: Sequence[TrialRecord], rec: Optional[Recommendation],
         out: str) -> List[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    groups: Dict[str, List[TrialRecord]] = {}
    for r in records:
        groups.setdefault(r.group, []).append(r)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for k, (g, rs) in enumerate(groups.items()):
        color = colors[k % len(colors)]
        ok = sorted((r.lr, r.final_val) for r in rs if r.usable)
        if ok:
            ax.plot([math.log10(x) for x, _ in ok], [y for _, y in ok], "o", color=color, label=g)
        bad = [r.lr for r in rs if not r.usable]
        if bad and ok:
            top = max(y for _, y in ok)
            ax.plot([math.log10(x) for x in bad], [top] * len(bad), "x", color=color)
        u = rec.fits.get(g) if rec else None
        if u is not None and u.coeffs:
            xs = np.linspace(u.x_range[0], u.x_range[1], 50)
            a, b, c = u.coeffs
            ax.plot(xs, a * xs * xs + b * xs + c, "-", color=color, lw=1)
        if u is not None:
            ax.plot([math.log10(u.lr_opt)], [u.loss_opt], "*", color=color, ms=14, mec="k")
    ax.set_xlabel("log10(peak LR)")
    ax.set_ylabel("final val loss")
    ax.set_title("val loss vs LR (x: diverged, *: fitted minimum)")
    ax.legend(fontsize=8)
    written.append(_save(fig, out, "ucurve.png"))

    if rec is not None and rec.projection is not None:
        p = rec.projection
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
        ax.loglog(p.scales, p.optima, "o", label="U-curve optima")
        xs = np.logspace(math.log10(min(p.scales)), math.log10(p.target), 50)
        ax.loglog(xs, [p.law(x) for x in xs], "-", label="lr* = %.3g x^%.3f" % (p.law.coef, p.law.exponent))
        ax.errorbar([p.target], [p.lr], yerr=[[p.lr - p.band[0]], [p.band[1] - p.lr]], fmt="*", ms=12,
                    capsize=4, label="target %.3g: %.3g (10-90%%: %.3g-%.3g)" % (p.target, p.lr, *p.band))
        ax.set_xlabel(rec.projection_axis)
        ax.set_ylabel("optimal peak LR")
        ax.set_title("optimal LR vs %s" % rec.projection_axis)
        ax.legend(fontsize=8)
        written.append(_save(fig, out, "projection.png"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for k, (g, rs) in enumerate(groups.items()):
        color = colors[k % len(colors)]
        for j, r in enumerate(rs):
            tr = _train_curve(out, r)
            if tr:
                axes[0].plot([s for s, _ in tr], [v for _, v in tr], color=color, lw=0.6, alpha=0.7,
                             label=g if j == 0 else None)
            vc = [(s, v) for s, v in r.val_curve if math.isfinite(v)]
            if vc:
                axes[1].plot([s for s, _ in vc], [v for _, v in vc], ".-", color=color, lw=0.6, alpha=0.7,
                             label=g if j == 0 else None)
    for ax, name in zip(axes, ("train loss", "val loss")):
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.set_ylim(top=11.5)
        ax.legend(fontsize=8)
    fig.suptitle("loss curves of all trials")
    written.append(_save(fig, out, "curves.png"))
    return written

"""Curve fits of the tuner, in plain numpy: the U-curve of loss against log-LR, power laws of the
optimal LR against scale, and bootstrap bands. (Each is a few lines of least squares; a fitting
library would add a dependency without adding a method.)"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

# Points around the best one that the quadratic is fitted to: far from the optimum the loss against
# log-LR is not a parabola (slow learning on the left, divergence on the right).
U_WINDOW = 2


@dataclass(frozen=True)
class UCurve:
    """loss(log10 lr) ~ a x^2 + b x + c near the optimum; `lr_opt` its minimum."""
    lr_opt: float
    loss_opt: float
    coeffs: Optional[Tuple[float, float, float]]   # None: fell back to the best trial
    rule: str
    x_range: Tuple[float, float]

    def loss_at(self, lr: float) -> float:
        a, b, c = self.coeffs
        x = math.log10(lr)
        return a * x * x + b * x + c


def fit_u_curve(lrs: Sequence[float], losses: Sequence[float]) -> UCurve:
    """Quadratic in log10(LR) over the best point and up to U_WINDOW neighbours on each side (by LR);
    its vertex is the optimum. Falls back to the best point when fewer than three points are usable,
    the parabola opens downwards, or its vertex lies outside the fitted points (the optimum is then at
    or beyond the searched range, which the rule says)."""
    by_x: dict = {}
    for lr, loss in zip(lrs, losses):
        if lr > 0 and math.isfinite(loss):
            by_x.setdefault(math.log10(lr), []).append(float(loss))
    if not by_x:
        raise ValueError("no finite losses to fit")
    xs = np.array(sorted(by_x))                      # repeated LRs (a bootstrap draw) count once,
    ys = np.array([np.mean(by_x[x]) for x in xs])    # at their mean loss
    best = int(np.argmin(ys))
    lo, hi = max(0, best - U_WINDOW), min(len(xs), best + U_WINDOW + 1)
    wx, wy = xs[lo:hi], ys[lo:hi]
    x_range = (float(wx[0]), float(wx[-1]))
    fallback = UCurve(float(10 ** xs[best]), float(ys[best]), None, "best trial", x_range)
    if len(wx) < 3:
        return fallback
    a, b, c = np.polyfit(wx, wy, 2)
    if a <= 0:
        return UCurve(fallback.lr_opt, fallback.loss_opt, None, "best trial (no U shape)", x_range)
    vertex = -b / (2 * a)
    if not wx[0] <= vertex <= wx[-1]:
        edge = "below" if vertex < wx[0] else "above"
        return UCurve(fallback.lr_opt, fallback.loss_opt, None,
                      "best trial (optimum %s the searched LRs: widen --lr-range)" % edge, x_range)
    loss = a * vertex * vertex + b * vertex + c
    return UCurve(float(10 ** vertex), float(loss), (float(a), float(b), float(c)),
                  "minimum of a quadratic in log10(LR) through %d trials" % len(wx), x_range)


@dataclass(frozen=True)
class PowerLaw:
    """y = coef * x ** exponent, fitted as a line in log-log space."""
    coef: float
    exponent: float

    def __call__(self, x: float) -> float:
        return self.coef * x ** self.exponent


def fit_power_law(xs: Sequence[float], ys: Sequence[float]) -> PowerLaw:
    if len(xs) < 2 or len(set(xs)) < 2:
        raise ValueError("a power law needs at least two distinct x values")
    slope, intercept = np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)
    return PowerLaw(float(math.exp(intercept)), float(slope))


@dataclass(frozen=True)
class Projection:
    law: PowerLaw
    scales: Tuple[float, ...]          # x of each fitted point (parameters or tokens)
    optima: Tuple[float, ...]          # optimal LR at each point
    target: float
    lr: float                          # law(target)
    band: Tuple[float, float]          # bootstrap 10th..90th percentile of law(target)
    samples: int


def project(groups: Sequence[Tuple[float, Sequence[float], Sequence[float]]], target: float,
            resamples: int = 200, seed: int = 0) -> Projection:
    """groups: (scale, lrs, losses) per scale. Optimum per scale from its U-curve, power law through
    the optima, extrapolated to `target`. The band resamples each scale's trials with replacement,
    refits every U-curve and the law, and takes the 10th and 90th percentiles of the extrapolation."""
    scales = [g[0] for g in groups]
    optima = [fit_u_curve(g[1], g[2]).lr_opt for g in groups]
    law = fit_power_law(scales, optima)
    rng = np.random.default_rng(seed)
    draws: List[float] = []
    for _ in range(resamples):
        resampled = []
        for scale, lrs, losses in groups:
            idx = rng.integers(0, len(lrs), len(lrs))
            try:
                resampled.append(fit_u_curve([lrs[i] for i in idx], [losses[i] for i in idx]).lr_opt)
            except ValueError:
                break
        else:
            draws.append(fit_power_law(scales, resampled)(target))
    band = (float(np.percentile(draws, 10)), float(np.percentile(draws, 90))) if draws else \
        (law(target), law(target))
    return Projection(law, tuple(scales), tuple(optima), target, law(target), band, len(draws))

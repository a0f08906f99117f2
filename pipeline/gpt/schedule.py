"""Learning-rate schedules with llm.c's exact semantics (`llmc/schedulers.h`, flag `-k`).

All four take the peak rate `lr` (`-l`), `warmup` steps (`-u`), the schedule length `total` (`-x`, or
one epoch) and the final fraction `final_frac` (`-q`):

- cosine:   linear warmup lr*(step+1)/warmup, then cosine from lr down to lr*final_frac at `total`.
- linear:   same warmup, then a straight line down to lr*final_frac.
- constant: lr at every step (llm.c's constant schedule ignores warmup).
- wsd:      warmup-stable-decay: warmup, flat until 80% of `total`, then 1-sqrt decay to
            lr*final_frac (https://arxiv.org/abs/2405.18392; use -q 0).

llm.c computes in float32; we compute in float64, so values agree to ~1e-7 relative.
"""
from __future__ import annotations

import math

SCHEDULERS = ("cosine", "linear", "constant", "wsd")


def _warmup(lr: float, step: int, warmup: int) -> float:
    return lr * (step + 1) / warmup


def get_lr(kind: str, step: int, lr: float, warmup: int, total: int, final_frac: float) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if kind not in SCHEDULERS:
        raise ValueError("unknown scheduler %r (choose one of %s)" % (kind, ", ".join(SCHEDULERS)))
    min_lr = lr * final_frac
    if kind == "constant":
        return lr
    if kind == "wsd":
        decay_point = int(0.8 * total)
        if step < warmup:
            return _warmup(lr, step, warmup)
        if step < decay_point:
            return lr
        ratio = _ratio(step - decay_point, total - decay_point)
        return min_lr + (1.0 - math.sqrt(ratio)) * (lr - min_lr)
    if step < warmup:
        return _warmup(lr, step, warmup)
    ratio = _ratio(step - warmup, total - warmup)
    if kind == "cosine":
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)
    return lr - ratio * (lr - min_lr)  # linear


def _ratio(num: int, den: int) -> float:
    # llm.c asserts 0 <= ratio <= 1; clamp instead so `-es`/`-ss` runs past the end stay at the floor.
    if den <= 0:
        return 1.0
    return min(max(num / den, 0.0), 1.0)


class LRScheduler:
    """`get_lr` bound to one run's settings."""

    def __init__(self, kind: str, lr: float, warmup: int, total: int, final_frac: float):
        if kind not in SCHEDULERS:
            raise ValueError("unknown scheduler %r (choose one of %s)" % (kind, ", ".join(SCHEDULERS)))
        if warmup < 0:
            raise ValueError("warmup steps (-u) must be >= 0")
        self.kind, self.lr, self.warmup, self.total, self.final_frac = kind, lr, warmup, total, final_frac

    def __call__(self, step: int) -> float:
        return get_lr(self.kind, step, self.lr, self.warmup, self.total, self.final_frac)

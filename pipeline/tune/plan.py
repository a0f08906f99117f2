"""One trial of a plan, and the `pipeline train` command line that runs it."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import List, Optional

from pipeline.tune.config import TuneConfig
from pipeline.tune.shapes import Shape


@dataclass(frozen=True)
class TrialSpec:
    trial_id: str              # unique, stable across resumes; also the Optuna record's key
    group: str                 # the point of a fit it belongs to: a shape label or "N steps"
    shape: Shape
    lr: float
    steps: int                 # -x: the LR schedule's length
    stop_step: Optional[int] = None   # -es: stop here (a Hyperband rung); None = run all steps
    start_step: int = 0               # a continued rung starts from the checkpoint at this step
    warmup: Optional[int] = None      # -u override (greedy turns warmup off); None = passthrough
    log_dir: Optional[str] = None     # trials/<dir>; default trials/<trial_id>
    rung: Optional[str] = None        # "bracket/round" for Hyperband rows

    @property
    def run_steps(self) -> int:
        """Optimizer steps this run executes."""
        return (self.stop_step if self.stop_step is not None else self.steps) - self.start_step

    @property
    def last_step(self) -> int:
        return self.stop_step if self.stop_step is not None else self.steps

    def directory(self, out: str) -> str:
        return os.path.join(out, "trials", self.log_dir or self.trial_id)


def trainer_command(config: TuneConfig, spec: TrialSpec, out: str) -> List[str]:
    """`pipeline train` with the passthrough flags, then what this trial varies or needs."""
    cmd = [sys.executable, "-m", "pipeline", "train"] + list(config.trainer_args)
    cmd += spec.shape.flags() + ["-x", str(spec.steps), "-l", repr(spec.lr),
                                 "-o", spec.directory(out)]
    if spec.warmup is not None:
        cmd += ["-u", str(spec.warmup)]
    if spec.stop_step is not None:
        # a rung: stop at stop_step with a checkpoint there, which the next rung resumes (-y 1)
        cmd += ["-es", str(spec.stop_step), "-n", str(spec.stop_step), "-y", "1"]
    return cmd


def estimate_command(config: TuneConfig, shape: Shape, steps: int, directory: str) -> List[str]:
    return ([sys.executable, "-m", "pipeline", "train"] + list(config.trainer_args) + shape.flags()
            + ["-x", str(steps), "--estimate", "--price-per-hour", repr(config.price_per_hour),
               "-o", directory])

"""The study: an Optuna study in SQLite (`--out/study.db`), the resumable record of every trial.

Each trial of the plan becomes an Optuna trial whose parameter is its LR (enqueued, so the plan and
not the sampler decides it) and whose user attributes hold the trial id, shape, steps, status,
final / minimum val loss, HellaSwag accuracy, seconds and dollars. Val losses are reported as
intermediate values (which Optuna's pruners read). A trial left RUNNING by a killed tuner is marked
`interrupted` on resume and runs again.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import optuna

from pipeline.tune.plan import TrialSpec

STUDY_NAME = "tune"
# statuses that end a trial for good: a resumed run never reruns them. A `failed` trial (out of GPU
# memory, a crash) and an `interrupted` one run again on resume.
FINAL = ("done", "diverged", "pruned")
LR_DISTRIBUTION = optuna.distributions.FloatDistribution(1e-12, 1e3, log=True)


@dataclass
class TrialRecord:
    trial_id: str
    group: str
    shape: str
    lr: float
    steps: int
    status: str
    final_val: float = float("nan")
    min_val: float = float("nan")
    hellaswag: float = float("nan")
    seconds: float = 0.0
    dollars: float = 0.0
    rung: str = ""
    val_curve: List[List[float]] = field(default_factory=list)   # [[step, loss], ...]

    @property
    def usable(self) -> bool:
        """A loss that can enter a fit: the trial ran all its steps without diverging."""
        return self.status == "done" and math.isfinite(self.final_val)


def open_study(out: str, pruner: Optional[optuna.pruners.BasePruner] = None) -> optuna.Study:
    optuna.logging.set_verbosity(logging.WARNING)
    os.makedirs(out, exist_ok=True)
    storage = "sqlite:///%s" % os.path.abspath(os.path.join(out, "study.db"))
    return optuna.create_study(study_name=STUDY_NAME, storage=storage, load_if_exists=True,
                               direction="minimize", pruner=pruner or optuna.pruners.NopPruner())


def records(study: optuna.Study) -> Dict[str, TrialRecord]:
    """trial id -> the record of its latest final attempt."""
    out: Dict[str, TrialRecord] = {}
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        if attrs.get("status") in FINAL and "record" in attrs:
            out[attrs["trial_id"]] = from_stored(attrs["record"])
    return out


def mark_interrupted(study: optuna.Study) -> List[str]:
    """Trials a killed tuner left RUNNING: recorded as failed attempts (status `interrupted`)."""
    cut = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "status", "interrupted")
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        cut.append(t.user_attrs.get("trial_id", str(t.number)))
    return cut


def begin(study: optuna.Study, spec: TrialSpec) -> optuna.Trial:
    study.enqueue_trial({"lr": spec.lr}, skip_if_exists=False)
    trial = study.ask({"lr": LR_DISTRIBUTION})
    for key, value in (("trial_id", spec.trial_id), ("group", spec.group), ("shape", spec.shape.label),
                       ("steps", spec.last_step), ("status", "running")):
        trial.set_user_attr(key, value)
    return trial


def finish(study: optuna.Study, trial: optuna.Trial, record: TrialRecord) -> None:
    trial.set_user_attr("record", _jsonable(asdict(record)))
    trial.set_user_attr("status", record.status)
    if record.status == "done" and math.isfinite(record.final_val):
        study.tell(trial, record.final_val)
    elif record.status in ("diverged", "pruned"):
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)


def add_spent_seconds(study: optuna.Study, seconds: float) -> float:
    total = float(study.user_attrs.get("spent_seconds", 0.0)) + seconds
    study.set_user_attr("spent_seconds", total)
    return total


def _jsonable(d: dict) -> dict:
    """NaN/inf are not JSON: stored as strings, read back by float()."""
    def fix(v):
        if isinstance(v, float) and not math.isfinite(v):
            return repr(v)
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v
    return {k: fix(v) for k, v in d.items()}


def from_stored(d: dict) -> TrialRecord:
    def unfix(v):
        if isinstance(v, str) and v in ("nan", "inf", "-inf"):
            return float(v)
        if isinstance(v, list):
            return [unfix(x) for x in v]
        return v
    return TrialRecord(**{k: unfix(v) for k, v in d.items()})

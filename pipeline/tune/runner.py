"""Trials as `pipeline train` subprocesses: one after another, or one per GPU side by side.

One loop in the tuner's main thread launches trials, follows each trial's main.log as it is written,
reports val losses to the study (where Optuna's pruners read them), stops a trial that diverges or is
pruned, and tracks real spend as wall time x $/h, stopping cleanly before the budget runs out.
Every Optuna call stays in this thread; the trials are separate processes.
"""
from __future__ import annotations

import ctypes
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import optuna

from pipeline.gpt.logs import checkpoint_step, parse_line
from pipeline.tune import store
from pipeline.tune.config import TuneConfig
from pipeline.tune.plan import TrialSpec, trainer_command

POLL_SECONDS = 0.2
SPEND_WRITE_SECONDS = 5.0




def remove_checkpoints(directory: str, keep_step: Optional[int] = None) -> None:
    """Delete a trial dir's checkpoint files (llm.c's model_/state_/DONE_ names) except keep_step's:
    a Hyperband arm needs only its latest round's checkpoint, and a dropped arm none."""
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        step = checkpoint_step(name)
        if step is not None and step != keep_step:
            os.remove(os.path.join(directory, name))


class LogFollower:
    """Reads the new complete lines of a main.log (llm.c's `s:N trl:/tel:/eval:` lines)."""

    def __init__(self, path: str):
        self.path, self.offset, self.partial = path, 0, ""
        self.train: Dict[int, float] = {}
        self.val: Dict[int, float] = {}
        self.eval: Dict[int, float] = {}

    def poll(self) -> List[Tuple[str, int, float]]:
        try:
            with open(self.path) as f:
                f.seek(self.offset)
                chunk = f.read()
                self.offset = f.tell()
        except FileNotFoundError:
            return []
        lines = (self.partial + chunk).split("\n")
        self.partial = lines.pop()
        new = []
        for line in lines:
            parsed = parse_line(line)
            if not parsed:
                continue
            kind, step, value = parsed
            {"trl": self.train, "tel": self.val, "eval": self.eval}[kind][step] = value
            new.append((kind, step, value))
        return new

    def divergence(self) -> Optional[Tuple[str, int]]:
        """(why, step) of the first sign of divergence, or None: a val or train loss that is NaN/inf, or
        a train loss above the first one."""
        signs = [("val loss %s at step %d" % (v, s), s) for s, v in self.val.items() if not math.isfinite(v)]
        if self.train:
            steps = sorted(self.train)
            first = self.train[steps[0]]
            for step in steps:
                v = self.train[step]
                if not math.isfinite(v):
                    signs.append(("train loss %s at step %d" % (v, step), step))
                    break
                if v > first:
                    signs.append(("train loss %.4f at step %d above the first %.4f" % (v, step, first), step))
                    break
        return min(signs, key=lambda x: x[1]) if signs else None


def _die_with_parent() -> None:
    """Child side of Popen: get SIGKILL when the tuner dies (Linux prctl PR_SET_PDEATHSIG), so a killed
    tuner leaves no trial writing into a directory that its resume restarts."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    os.setsid()


@dataclass
class _Running:
    spec: TrialSpec
    trial: optuna.Trial
    proc: subprocess.Popen
    follower: LogFollower
    slot: Optional[str]
    started: float
    reported: set = field(default_factory=set)
    stop_reason: Optional[str] = None      # "diverged", "pruned", "budget"
    stop_detail: str = ""
    pruned_at: Optional[int] = None


class Runner:
    """Runs lists of TrialSpecs; finished trials (in the study) are returned without running again."""

    def __init__(self, config: TuneConfig, study: optuna.Study, predicted_seconds: Callable[[TrialSpec], float],
                 spent_before_usd: float = 0.0, prune: bool = False, echo: Callable[[str], None] = print):
        self.config, self.study, self.predict = config, study, predicted_seconds
        self.prune, self.echo = prune, echo
        self.slots: List[Optional[str]] = list(config.gpus) or [None]
        self.usd_per_second = config.price_per_hour / 3600.0
        self.spent_before_usd = spent_before_usd      # pricing runs and earlier sessions
        self.session_start = time.time()
        self.session_written = 0.0
        self.last_spend_write = time.time()
        self.out_of_budget = False

    # -- money
    def spent_usd(self) -> float:
        return self.spent_before_usd + (time.time() - self.session_start) * self.usd_per_second

    def _write_spend(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self.last_spend_write >= SPEND_WRITE_SECONDS:
            elapsed = now - self.session_start
            store.add_spent_seconds(self.study, elapsed - self.session_written)
            self.session_written, self.last_spend_write = elapsed, now

    def close(self) -> None:
        self._write_spend(force=True)

    # -- running
    def run(self, specs: Sequence[TrialSpec]) -> Dict[str, store.TrialRecord]:
        done = store.records(self.study)
        results = {s.trial_id: done[s.trial_id] for s in specs if s.trial_id in done}
        queue = [s for s in specs if s.trial_id not in done]
        running: List[_Running] = []
        free = list(self.slots)
        while queue or running:
            while queue and free and not self.out_of_budget:
                spec = queue[0]
                projected = self.spent_usd() + self.predict(spec) * self.usd_per_second / len(self.slots)
                if projected > self.config.budget_usd:
                    self.echo("budget: %s would bring spend to $%.2f > $%.2f; not starting it or any later "
                              "trial (resume with a larger --budget-usd to continue)"
                              % (spec.trial_id, projected, self.config.budget_usd))
                    self.out_of_budget = True
                    break
                queue.pop(0)
                running.append(self._launch(spec, free.pop(0)))
            if self.out_of_budget and not running:
                break
            time.sleep(POLL_SECONDS)
            for r in list(running):
                self._follow(r)
                if r.proc.poll() is not None:
                    running.remove(r)
                    free.append(r.slot)
                    results[r.spec.trial_id] = self._finish(r)
            self._write_spend()
        self._write_spend(force=True)
        return results

    def _launch(self, spec: TrialSpec, slot: Optional[str]) -> _Running:
        directory = spec.directory(self.config.out)
        if spec.start_step == 0 and os.path.isdir(directory):
            shutil.rmtree(directory)         # an attempt cut off earlier: start it again from scratch
        os.makedirs(directory, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        cmd = trainer_command(self.config, spec, self.config.out)
        with open(os.path.join(directory, "command.txt"), "w") as f:
            f.write(" ".join(cmd[3:]) + "\n")
        stdout = open(os.path.join(directory, "stdout.log"), "a")
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_die_with_parent)
        stdout.close()
        trial = store.begin(self.study, spec)
        self.echo("trial %s: shape %s lr %.3g steps %d%s%s" % (
            spec.trial_id, spec.shape.label, spec.lr, spec.last_step,
            " (from step %d)" % spec.start_step if spec.start_step else "",
            " on GPU %s" % slot if slot is not None else ""))
        follower = LogFollower(os.path.join(directory, "main.log"))
        return _Running(spec, trial, proc, follower, slot, time.time())

    def _follow(self, r: _Running) -> None:
        new = r.follower.poll()
        if r.stop_reason is not None:
            return                           # stopped: nothing more reaches the study
        sign = r.follower.divergence()
        # How many lines one poll sees depends on timing; what reaches the study must not. So val
        # losses past a divergence, or after the pruner stopped the trial, are never reported (a
        # stopped trial would otherwise stand at later rungs the pruner compares others against).
        for kind, step, value in new:
            if sign is not None and step > sign[1]:
                break
            if kind == "tel" and math.isfinite(value) and step not in r.reported:
                r.trial.report(value, step)
                r.reported.add(step)
                if self.prune and step > 0 and step < r.spec.last_step and r.trial.should_prune():
                    self._stop(r, "pruned", "val loss %.4f at step %d" % (value, step))
                    r.pruned_at = step
                    return
        if sign:
            self._stop(r, "diverged", sign[0])
        if r.stop_reason is None and self.spent_usd() >= self.config.budget_usd:
            self._stop(r, "budget", "spend reached $%.2f" % self.spent_usd())
            self.out_of_budget = True

    def _stop(self, r: _Running, reason: str, detail: str) -> None:
        r.stop_reason, r.stop_detail = reason, detail
        if r.proc.poll() is None:
            try:
                os.killpg(r.proc.pid, signal.SIGTERM)
                r.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(r.proc.pid, signal.SIGKILL)
                r.proc.wait()
            except ProcessLookupError:
                pass

    def _finish(self, r: _Running) -> store.TrialRecord:
        self._follow(r)                      # the lines written just before the process ended
        seconds = time.time() - r.started
        f = r.follower
        sign = f.divergence()
        if r.stop_reason:
            status = r.stop_reason
        elif r.proc.returncode != 0:
            status = "diverged" if sign or r.proc.returncode == 4 else "failed"
        elif not f.val or max(f.val) < r.spec.last_step:
            status = "failed"
        else:
            status = "done"
        val = sorted(f.val.items())
        if status == "diverged" and sign:
            # what the log holds past the divergence depends on when the tuner stopped the trial:
            # keep the losses up to it, so the row is the same in every run
            val = [(s, v) for s, v in val if s <= sign[1]]
        if status == "pruned" and r.pruned_at is not None:
            val = [(s, v) for s, v in val if s <= r.pruned_at]
        finite = [v for _, v in val if math.isfinite(v)]
        if status == "failed" and not r.stop_detail:
            r.stop_detail = "exit code %s, see %s" % (r.proc.returncode, os.path.join(
                r.spec.directory(self.config.out), "stdout.log"))
        evals = sorted(f.eval.items())
        record = store.TrialRecord(
            trial_id=r.spec.trial_id, group=r.spec.group, shape=r.spec.shape.label, lr=r.spec.lr,
            steps=r.spec.last_step, status=status,
            final_val=val[-1][1] if val else float("nan"),
            min_val=min(finite) if finite else float("nan"),
            hellaswag=evals[-1][1] if evals else float("nan"), seconds=round(seconds, 3),
            dollars=round(seconds * self.usd_per_second / len(self.slots), 6),
            rung=r.spec.rung or "", val_curve=[[s, v] for s, v in val])
        if r.spec.stop_step is not None:     # a round: only its own checkpoint is needed from now on
            remove_checkpoints(r.spec.directory(self.config.out),
                               r.spec.stop_step if status == "done" else r.spec.start_step)
        store.finish(self.study, r.trial, record)
        self.echo("trial %s: %s%s (final val %.4f, %.1f s)" % (
            r.spec.trial_id, status, " - " + r.stop_detail if r.stop_detail else "", record.final_val,
            seconds))
        return record

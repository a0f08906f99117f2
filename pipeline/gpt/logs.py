"""`main.log` in llm.c's line formats (`llmc/logger.h`), its parser, checkpoint file names, and
`run_parameters.txt`.

Lines, one per event, appended (a fresh run truncates the file, a resumed run `-y 1` appends):

    s:%d trl:%.4f lr:%.6f norm:%.2f     train loss, learning rate, grad norm at step s
    s:%d tel:%.4f                       validation loss at step s
    s:%d eval:%.4f                      HellaSwag accuracy at step s

Steps are llm.c's 0-based optimizer steps, so existing llm.c plotting notebooks read these logs.
"""
from __future__ import annotations

import os
import re
from typing import Dict, List, Optional, Tuple

_LINE = re.compile(r"^s:(\d+)\s+(trl|tel|eval):(\S+)")


# The trainer's checkpoint files in a log dir, as llm.c names them: model_00001000.bin,
# state_00001000_00000.bin (step, rank), and the DONE_00001000 marker written once both are complete.
_CHECKPOINT_FILE = re.compile(r"^(?:model_(\d{8})\.bin|state_(\d{8})_\d{5}\.bin|DONE_(\d{8}))$")


def checkpoint_step(name: str) -> Optional[int]:
    """The step of a checkpoint file name (model_/state_/DONE_), or None for any other file."""
    m = _CHECKPOINT_FILE.match(name)
    return int(next(g for g in m.groups() if g)) if m else None


def parse_line(line: str) -> Optional[Tuple[str, int, float]]:
    """One main.log line -> (kind 'trl' | 'tel' | 'eval', step, value), or None for any other line."""
    m = _LINE.match(line.strip())
    return (m.group(2), int(m.group(1)), float(m.group(3))) if m else None


class Logger:
    """Writes main.log in `log_dir` (only when active, i.e. rank 0 with a log dir)."""

    def __init__(self, log_dir: Optional[str], rank: int = 0, resume: bool = False):
        self.path = os.path.join(log_dir, "main.log") if (log_dir and rank == 0) else None
        if self.path:
            os.makedirs(log_dir, exist_ok=True)
            if not resume:
                open(self.path, "w").close()

    def _write(self, line: str) -> None:
        if self.path:
            with open(self.path, "a") as f:
                f.write(line + "\n")

    def log_train(self, step: int, loss: float, lr: float, norm: float) -> None:
        self._write("s:%d trl:%.4f lr:%.6f norm:%.2f" % (step, loss, lr, norm))

    def log_val(self, step: int, loss: float) -> None:
        self._write("s:%d tel:%.4f" % (step, loss))

    def log_eval(self, step: int, acc: float) -> None:
        self._write("s:%d eval:%.4f" % (step, acc))


def parse_log(path: str) -> Dict[str, List[Tuple[int, float]]]:
    """main.log (or its directory) -> {'train': [(step, loss)], 'val': [...], 'eval': [...]}.

    A resumed run may repeat steps (the checkpoint's step is evaluated again); the last value wins.
    """
    if os.path.isdir(path):
        path = os.path.join(path, "main.log")
    series = {"trl": {}, "tel": {}, "eval": {}}
    with open(path) as f:
        for line in f:
            parsed = parse_line(line)
            if parsed:
                kind, step, value = parsed
                series[kind][step] = value
    names = {"trl": "train", "tel": "val", "eval": "eval"}
    return {names[k]: sorted(v.items()) for k, v in series.items()}


def write_run_parameters(log_dir: str, params: Dict[str, object]) -> str:
    """The run's settings as an aligned `name | value` table (llm.c prints the same table)."""
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, "run_parameters.txt")
    width = max(len(k) for k in params)
    with open(path, "w") as f:
        for key, value in params.items():
            f.write("%s | %s\n" % (key.ljust(width), value))
    return path

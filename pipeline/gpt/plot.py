"""`pipeline plot LOGDIR... -o loss.png`: train/val loss and HellaSwag accuracy of one or more runs.

Reads each run's `main.log` (llm.c format, see logs.py), from a local directory or an S3 prefix
(`pipeline plot s3://bucket/g5-run1/log124M`, as `--sync-to` and `upload-logs` leave them). Left panel: train loss (thin) and val loss
(bold, same colour) per run, each run's minimum val loss marked and labelled. Right panel (only when
some run logged `eval:` lines): HellaSwag accuracy. Optional horizontal reference lines, e.g. the
GPT-2 124M checkpoint's val loss (`--loss-ref 3.28`) and HellaSwag accuracy (`--eval-ref 0.294`).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from typing import List, Optional

from pipeline import storage
from pipeline.gpt.logs import parse_log


def _log_uri(path: str) -> str:
    return path if path.endswith(".log") else storage.join(path, "main.log")


def fetch_s3_logs(log_dirs: List[str], scratch: str) -> List[str]:
    """Local copies of the main.log of every s3:// entry (local entries are returned unchanged);
    raises storage.InputError naming the missing ones."""
    out, missing = [], []
    for k, d in enumerate(log_dirs):
        if not storage.is_s3(d):
            out.append(d)
            continue
        local = os.path.join(scratch, str(k), os.path.basename(d.rstrip("/")) or "run", "main.log")
        os.makedirs(os.path.dirname(local))
        try:
            with storage.open_read(_log_uri(d)) as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except storage.InputError:
            missing.append(d)
        out.append(os.path.dirname(local))
    if missing:
        raise storage.InputError("no main.log in %s" % ", ".join(missing))
    return out


def plot(log_dirs: List[str], out: str, labels: Optional[List[str]] = None,
         loss_ref: Optional[float] = None, eval_ref: Optional[float] = None,
         ymax: Optional[float] = None) -> str:
    import matplotlib
    matplotlib.use("Agg")  # files only; works on headless training boxes
    import matplotlib.pyplot as plt

    runs = [(labels[k] if labels and k < len(labels) else os.path.basename(os.path.normpath(d)) or d,
             parse_log(d)) for k, d in enumerate(log_dirs)]
    has_eval = any(r["eval"] for _, r in runs)
    fig, axes = plt.subplots(1, 2 if has_eval else 1, figsize=(14 if has_eval else 8, 5), squeeze=False)
    ax = axes[0][0]
    for k, (name, r) in enumerate(runs):
        color = "C%d" % (k % 10)
        if r["train"]:
            xs, ys = zip(*r["train"])
            ax.plot(xs, ys, color=color, alpha=0.35, linewidth=0.8, label="%s train" % name)
        if r["val"]:
            xs, ys = zip(*r["val"])
            ax.plot(xs, ys, color=color, linewidth=2, label="%s val" % name)
            best = min(r["val"], key=lambda p: p[1])
            ax.scatter([best[0]], [best[1]], color=color, marker="*", s=160, zorder=5,
                       edgecolors="black")
            ax.annotate("min %.4f @ %d" % (best[1], best[0]), best, textcoords="offset points",
                        xytext=(6, 8), color=color, fontsize=9)
    if loss_ref is not None:
        ax.axhline(loss_ref, color="red", linestyle="--", linewidth=1, label="reference %.3f" % loss_ref)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("train / val loss")
    if ymax is not None:
        ax.set_ylim(top=ymax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if has_eval:
        ax = axes[0][1]
        for k, (name, r) in enumerate(runs):
            if r["eval"]:
                xs, ys = zip(*r["eval"])
                ax.plot(xs, ys, color="C%d" % (k % 10), linewidth=2, label=name)
        if eval_ref is not None:
            ax.axhline(eval_ref, color="red", linestyle="--", linewidth=1,
                       label="reference %.3f" % eval_ref)
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy")
        ax.set_title("HellaSwag")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="pipeline plot", description=__doc__.split("\n")[0])
    p.add_argument("logdirs", nargs="+", help="run directories (with main.log) or main.log files")
    p.add_argument("-o", "--output", default="loss.png", help="image to write (default loss.png)")
    p.add_argument("--labels", help="comma-separated run names (default: directory names)")
    p.add_argument("--loss-ref", type=float, help="draw a reference val loss line")
    p.add_argument("--eval-ref", type=float, help="draw a reference HellaSwag accuracy line")
    p.add_argument("--ymax", type=float, help="clip the loss axis (early losses are ~11)")
    a = p.parse_args(argv)
    missing = [d for d in a.logdirs if not storage.is_s3(d) and not os.path.exists(
        d if not os.path.isdir(d) else os.path.join(d, "main.log"))]
    if missing:
        print("pipeline plot: no main.log in %s" % ", ".join(missing), file=sys.stderr)
        return 2
    scratch = tempfile.mkdtemp(prefix="pipeline-plot-")
    try:
        try:
            local = fetch_s3_logs(a.logdirs, scratch)
        except storage.InputError as e:
            print("pipeline plot: %s" % e, file=sys.stderr)
            return 2
        # Runs are named after the directory (or S3 folder) they came from unless --labels says.
        labels = a.labels.split(",") if a.labels else [
            os.path.basename(os.path.normpath(d.rstrip("/"))) or d for d in a.logdirs]
        out = plot(local, a.output, labels, a.loss_ref, a.eval_ref, a.ymax)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("wrote %s" % out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

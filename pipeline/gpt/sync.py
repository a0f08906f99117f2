"""Copy a training run's log and checkpoints to S3 while it trains, and a finished run's logs after.

    pipeline train -o log124M --sync-to s3://my-bucket/runs/log124M ...
    pipeline upload-logs my-bucket log124M g5-run1        # -> s3://my-bucket/g5-run1/log124M/...

`--sync-to`: a background thread looks at the run directory every few seconds and uploads
- `main.log` and the other small run files (`run_parameters.txt`, `estimate.json`) whenever they
  changed since their last upload;
- each checkpoint's files (`model_%08d.bin`, `state_%08d_%05d.bin`) once its `DONE_%08d` marker
  exists (the trainer writes the marker last, so the files are complete), then the marker itself.
A GPU instance can then be stopped at any time with at most one poll interval of log and the
checkpoint being written missing. Uploads use boto3's managed transfer (multipart, its own retries).
A failed upload prints a warning and is retried on a later pass with exponential backoff; nothing
here raises into the trainer. When training ends, a final pass runs (bounded by a timeout) so the
last checkpoint and the final log lines get there too; whatever is still missing then is listed.

`upload-logs BUCKET LOGDIR RUN_CLUSTER`: the same files, once, to s3://BUCKET/RUN_CLUSTER/<name of
LOGDIR>/<file>, for a run that trained without --sync-to.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from pipeline import storage
from pipeline.gpt.logs import checkpoint_step

_MAX_BACKOFF = 300.0


def _warn(msg: str) -> None:
    print("sync: %s" % msg, file=sys.stderr, flush=True)


class RunSync:
    """Uploads the files of `run_dir` to the S3 prefix `dest` (see the module docstring).

    `sync_once()` is one pass and is what the thread calls; tests call it directly too.
    """

    def __init__(self, run_dir: str, dest: str, interval: float = 10.0,
                 upload: Callable[[str, str], None] = storage.upload_file,
                 clock: Callable[[], float] = time.monotonic):
        if not storage.is_s3(dest):
            raise ValueError("--sync-to wants an s3://bucket/prefix URI, got %r" % dest)
        self.run_dir, self.dest, self.interval = run_dir, dest.rstrip("/"), interval
        self._upload, self._clock = upload, clock
        self._sent: Dict[str, Tuple[int, int]] = {}  # name -> (size, mtime_ns) last uploaded
        self._failures: Dict[str, Tuple[int, float]] = {}  # name -> (failures, next attempt time)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.uploads = 0

    def uri(self, name: str) -> str:
        return "%s/%s" % (self.dest, name)

    def _due(self) -> List[str]:
        """Files to upload now, checkpoint markers after their checkpoint's files."""
        try:
            names = sorted(n for n in os.listdir(self.run_dir)
                           if os.path.isfile(os.path.join(self.run_dir, n)))
        except FileNotFoundError:
            return []
        done = {checkpoint_step(n) for n in names if n.startswith("DONE_")}
        files, markers = [], []
        for name in names:
            step = checkpoint_step(name)
            if name.startswith(".") or name.endswith(".tmp") or (step is not None and step not in done):
                continue  # hidden, being written, or a checkpoint not finished yet
            try:
                st = os.stat(os.path.join(self.run_dir, name))
            except FileNotFoundError:
                continue
            if self._sent.get(name) == (st.st_size, st.st_mtime_ns):
                continue
            (markers if name.startswith("DONE_") else files).append(name)
        return files + markers

    def sync_once(self, force: bool = False) -> List[str]:
        """Upload what changed; returns the names still not uploaded. `force` ignores the backoff."""
        pending = []
        now = self._clock()
        failed_steps = set()
        for name in self._due():
            failures, next_try = self._failures.get(name, (0, 0.0))
            step = checkpoint_step(name)
            if (not force and now < next_try) or (name.startswith("DONE_") and step in failed_steps):
                pending.append(name)
                if step is not None:
                    failed_steps.add(step)
                continue
            path = os.path.join(self.run_dir, name)
            try:
                st = os.stat(path)
                self._upload(path, self.uri(name))
            except FileNotFoundError:
                continue  # removed meanwhile (-nk keeps only the last checkpoints)
            except Exception as e:  # any failure: warn, keep training, try again later
                failures += 1
                delay = min(_MAX_BACKOFF, self.interval * 2 ** (failures - 1))
                self._failures[name] = (failures, now + delay)
                _warn("upload of %s to %s failed (%s: %s); retrying in %.0fs"
                      % (name, self.uri(name), type(e).__name__, e, delay))
                pending.append(name)
                if step is not None:
                    failed_steps.add(step)  # its DONE marker waits for it
                continue
            self._sent[name] = (st.st_size, st.st_mtime_ns)
            self._failures.pop(name, None)
            self.uploads += 1
        return pending

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sync_once()
            except Exception as e:  # never let the thread die silently, never reach the trainer
                _warn("pass failed (%s: %s)" % (type(e).__name__, e))

    def start(self) -> "RunSync":
        self._thread = threading.Thread(target=self._loop, name="sync-to-s3", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 600.0) -> List[str]:
        """Stop the thread, then final passes until everything is up or `timeout` passes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(1.0, self.interval * 2))
        deadline = self._clock() + timeout
        pending = self.sync_once(force=True)
        while pending and self._clock() < deadline:
            time.sleep(min(self.interval, max(0.0, deadline - self._clock())))
            pending = self.sync_once(force=True)
        if pending:
            _warn("not uploaded to %s: %s (copy them before stopping this machine, e.g. "
                  "`pipeline upload-logs`)" % (self.dest, ", ".join(pending)))
        return pending

    def __enter__(self) -> "RunSync":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def upload_logs(bucket: str, log_dir: str, run_cluster: str,
                upload: Callable[[str, str], None] = storage.upload_file) -> List[str]:
    """Every finished file of `log_dir` to s3://bucket/run_cluster/<basename of log_dir>/; returns
    the URIs written. Checkpoints without their DONE marker (interrupted writes) are skipped."""
    name = os.path.basename(os.path.normpath(log_dir))
    if not os.path.isdir(log_dir):
        raise FileNotFoundError("no log directory %s" % log_dir)
    dest = "s3://%s/%s/%s" % (bucket.replace("s3://", "").strip("/"), run_cluster.strip("/"), name)
    sync = RunSync(log_dir, dest, upload=upload)
    due = sync._due()
    for f in due:
        upload(os.path.join(log_dir, f), sync.uri(f))
    return [sync.uri(f) for f in due]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="pipeline upload-logs", description=(
        "Upload a training run's log directory (main.log, run files, finished checkpoints) to "
        "s3://BUCKET/RUN_CLUSTER/<LOGDIR name>/."))
    p.add_argument("bucket", help="S3 bucket name (or s3://bucket)")
    p.add_argument("logdir", help="the run's -o directory")
    p.add_argument("run_cluster", help="a name for the machine/run, the top-level S3 folder")
    a = p.parse_args(argv)
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        for uri in upload_logs(a.bucket, a.logdir, a.run_cluster):
            print(uri)
    except (FileNotFoundError, BotoCoreError, ClientError, OSError) as e:
        print("pipeline upload-logs: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Input planning and per-file processing: which files are read how, and all records of one
streamed file (no Spark needed). The record type is in `pipeline.ingest.records`.
"""
from __future__ import annotations

import io
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from pipeline import storage
from pipeline.ingest import tabular, warc
from pipeline.ingest.records import IngestOptions, Record, dropped

SUFFIXES = {
    "warc": (".warc", ".warc.gz"),
    "parquet": (".parquet",),
    "jsonl": (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz", ".json", ".json.gz"),
}
STREAMED_FORMATS = ("warc", "jsonl")  # read by our own Python code, one task per file


def detect_format(path: str) -> Optional[str]:
    name = path.lower()
    for fmt, suffixes in SUFFIXES.items():
        if name.endswith(suffixes):
            return fmt
    return None


def plan_inputs(patterns: Sequence[str], fmt: str = "auto") -> Tuple[Dict[str, List[str]], List[str]]:
    """Expand inputs into {format: sorted files} plus the files skipped for an unknown extension.

    With an explicit format every file is read as that format; with `auto` a file with an unknown
    extension (a README next to the data) is skipped and reported, not guessed at.
    """
    plan: Dict[str, List[str]] = {f: [] for f in SUFFIXES}
    skipped: List[str] = []
    for path in storage.list_files(patterns):
        if not storage.is_s3(path):
            path = os.path.abspath(path)  # `source` names the same file however it was given
        f = fmt if fmt != "auto" else detect_format(path)
        if f is None:
            skipped.append(path)
        else:
            plan[f].append(path)
    return plan, skipped


def _buffered(stream) -> io.BufferedReader:
    if isinstance(stream, io.BufferedReader):
        return stream
    return io.BufferedReader(stream, buffer_size=1 << 20)  # S3 bodies: fast readline/peek


def process_file(path: str, fmt: str, opts: IngestOptions) -> Iterator[Record]:
    """All records of one WARC or JSON-lines file. Never raises for bad input: a file that cannot
    be opened or parsed at all yields one `unreadable_file` record naming the problem."""
    try:
        stream = storage.open_read(path)
    except Exception as e:  # missing, permission denied, S3 errors
        yield dropped(path, 0, "unreadable_file", "cannot open %s: %s" % (path, e))
        return
    try:
        if fmt == "warc":
            yield from warc.iter_warc(stream, path, opts, reopen=lambda: storage.open_read(path))
        elif fmt == "jsonl":
            yield from tabular.iter_jsonl(_buffered(stream), path, opts)
        else:
            raise ValueError("process_file reads warc or jsonl, not %r" % fmt)
    finally:
        stream.close()


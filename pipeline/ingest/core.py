"""The record every reader yields, input planning, and per-file processing (no Spark needed).

Each input record becomes exactly one `Record`: a kept document (`reason` None) or a drop row
(`reason` from pipeline.accounting.DROP_REASONS, `detail` saying why). `pos` orders records within
their source file (byte offset in a WARC, line number in JSON lines, row index in parquet), which is
how "the first of several records with the same id" is defined.
"""
from __future__ import annotations

import io
import os
from collections import namedtuple
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from pipeline import storage

Record = namedtuple("Record", ["source", "pos", "id", "url", "text", "warc_date", "reason", "detail"])
RECORD_DDL = ("source string, pos long, id string, url string, text string, warc_date string, "
              "reason string, detail string")

SUFFIXES = {
    "warc": (".warc", ".warc.gz"),
    "parquet": (".parquet",),
    "jsonl": (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz", ".json", ".json.gz"),
}
STREAMED_FORMATS = ("warc", "jsonl")  # read by our own Python code, one task per file


@dataclass(frozen=True)
class IngestOptions:
    """What executors need from the config (small and picklable)."""
    extractor: str = "bs4"
    min_chars: int = 1
    max_record_bytes: int = 5 * 1024 * 1024
    text_col: str = "text"
    id_col: str = "id"
    url_col: str = "url"

    @classmethod
    def from_config(cls, cfg) -> "IngestOptions":
        return cls(extractor=cfg.extractor, min_chars=cfg.min_chars,
                   max_record_bytes=cfg.max_record_bytes, text_col=cfg.text_col, id_col=cfg.id_col,
                   url_col=cfg.url_col)


def kept(source: str, pos: int, id: str, url: Optional[str], text: str,
         warc_date: Optional[str] = None) -> Record:
    return Record(source, pos, id, url, text, warc_date, None, None)


def dropped(source: str, pos: int, reason: str, detail: str, id: Optional[str] = None,
            url: Optional[str] = None, warc_date: Optional[str] = None) -> Record:
    return Record(source, pos, id, url, None, warc_date, reason, detail)


def text_problem(text: str, opts: IngestOptions) -> Optional[Tuple[str, str]]:
    """(reason, detail) if extracted/given text is unusable, else None."""
    if not text or not text.strip():
        return "empty_text", "no text"
    if len(text) < opts.min_chars:
        return "too_short", "%d chars < --min-chars %d" % (len(text), opts.min_chars)
    return None


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
    # Imported here so that `core` stays importable without warcio for parquet-only use.
    from pipeline.ingest import tabular, warc

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


def source_name(path: str) -> str:
    """The `source` value for a path as Spark reports it (`file:/x/y.parquet` -> `/x/y.parquet`)."""
    if path.startswith("file:"):
        path = path[len("file:"):]
        if path.startswith("//"):
            path = path[2:]
        return os.path.normpath(path)
    return path

"""The record every ingest reader yields (no Spark, no I/O).

Each input record becomes exactly one `Record`: a kept document (`reason` None) or a drop row
(`reason` from pipeline.accounting, `detail` saying why). `source` is the input file and `pos` the
record's position in it (byte offset in a WARC, line number in JSON lines, row index in parquet):
together they are the record's place in the input order, the same on every rerun whatever the
partitioning. They define "the first of several records with the same id" here, and travel with each
document to the dedup stage, where `--keep first` keeps the earliest member of a cluster.
"""
from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass
from typing import Optional, Tuple

Record = namedtuple("Record", ["source", "pos", "id", "url", "text", "warc_date", "reason", "detail"])
RECORD_DDL = ("source string, pos long, id string, url string, text string, warc_date string, "
              "reason string, detail string")


@dataclass(frozen=True)
class IngestOptions:
    """What executors need from the config (small and picklable). `extractor` and `warc_reader` are
    concrete names here: the config's `auto` extractor is resolved on the driver (spark_plan.resolve_tools)."""
    extractor: str = "resiliparse"
    warc_reader: str = "warcio"
    min_chars: int = 1
    max_record_bytes: int = 5 * 1024 * 1024
    text_col: str = "text"
    id_col: str = "id"
    url_col: str = "url"

    @classmethod
    def from_config(cls, cfg, extractor: str, warc_reader: str) -> "IngestOptions":
        return cls(extractor=extractor, warc_reader=warc_reader, min_chars=cfg.min_chars,
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

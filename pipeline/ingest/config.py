"""The ingest job's frozen config (CLI flags declared on the fields, see pipeline/config.py)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Callable, Tuple

from pipeline.config import JobConfig, flag
from pipeline.ingest import extract, warc

FORMATS = ("auto", "warc", "parquet", "jsonl")
DEFAULT_MAX_RECORD_BYTES = 5 * 1024 * 1024


def _installed(resolve: Callable[[str], tuple]) -> Callable[[str], str]:
    """An argparse `type` that rejects an explicit choice whose package is missing, at parse time:
    before any Spark work, with the install hint (`--extractor auto` always parses; it falls back at
    run time)."""
    def check(choice: str) -> str:
        try:
            resolve(choice)
        except (extract.ExtractorUnavailable, warc.ReaderUnavailable) as e:
            raise argparse.ArgumentTypeError(str(e))
        except ValueError:
            pass  # an unknown name: argparse's `choices` says which names there are
        return choice
    return check


@dataclass(frozen=True)
class IngestConfig(JobConfig):
    """Ingest WARC / parquet / JSON-lines files into DIR/docs (id, url, text, source, warc_date)."""

    input: Tuple[str, ...] = field(default=(), metadata=flag(
        "--input", nargs="+", required=True, default=None, metavar="PATH",
        help="files, directories or globs; local paths or s3:// URIs"))
    output: str = field(default="", metadata=flag(
        "--output", required=True, default=None, metavar="DIR",
        help="output root: writes DIR/docs and DIR/ingest/dropped"))
    format: str = field(default="auto", metadata=flag(
        "--format", choices=FORMATS,
        help="input format; auto decides per file by extension (.warc[.gz], .parquet, .jsonl[.gz])"))
    extractor: str = field(default=extract.AUTO, metadata=flag(
        "--extractor", choices=[extract.AUTO] + sorted(extract.EXTRACTORS),
        type=_installed(extract.resolve_extractor),
        help="HTML-to-text extractor for WARC input; auto = %s where it is installed, else %s (the "
             "job says so and records which one ran)" % (extract.DEFAULT_EXTRACTOR, extract.FALLBACK_EXTRACTOR)))
    warc_reader: str = field(default=warc.DEFAULT_READER, metadata=flag(
        "--warc-reader", choices=list(warc.READERS), type=_installed(warc.resolve_reader),
        help="WARC reader; both give the same records and drop rows"))
    text_col: str = field(default="text", metadata=flag(
        "--text-col", help="text column of parquet/jsonl input"))
    id_col: str = field(default="id", metadata=flag(
        "--id-col", help="id column of parquet/jsonl input; if absent, id = sha1(url + '\\n' + text)"))
    url_col: str = field(default="url", metadata=flag(
        "--url-col", help="optional url column of parquet/jsonl input"))
    min_chars: int = field(default=1, metadata=flag(
        "--min-chars", type=int,
        help="drop documents with fewer characters as too_short (1 keeps every non-empty text)"))
    max_record_bytes: int = field(default=DEFAULT_MAX_RECORD_BYTES, metadata=flag(
        "--max-record-bytes", type=int,
        help="drop HTML bodies / texts larger than this as too_large"))
    num_partitions: int = field(default=0, metadata=flag(
        "--num-partitions", type=int,
        help="output parquet partitions; 0 = about one per 128 MiB of text"))

    def __post_init__(self):
        # Accept a single path or a list from Python callers; the config stays hashable and frozen.
        paths = (self.input,) if isinstance(self.input, str) else tuple(self.input)
        object.__setattr__(self, "input", paths)
        if self.format not in FORMATS:
            raise ValueError("format must be one of %s, not %r" % (FORMATS, self.format))
        if self.extractor != extract.AUTO and self.extractor not in extract.EXTRACTORS:
            raise ValueError("unknown extractor %r" % self.extractor)
        if self.warc_reader not in warc.READERS:
            raise ValueError("unknown WARC reader %r" % self.warc_reader)
        if self.min_chars < 0 or self.max_record_bytes <= 0 or self.num_partitions < 0:
            raise ValueError("min_chars >= 0, max_record_bytes > 0 and num_partitions >= 0 required")

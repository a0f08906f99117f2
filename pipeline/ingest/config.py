"""The ingest job's frozen config (CLI flags declared on the fields, see pipeline/config.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple

from pipeline.config import JobConfig, flag
from pipeline.ingest.extract import EXTRACTORS

FORMATS = ("auto", "warc", "parquet", "jsonl")
DEFAULT_MAX_RECORD_BYTES = 5 * 1024 * 1024


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
    extractor: str = field(default="bs4", metadata=flag(
        "--extractor", choices=sorted(EXTRACTORS),
        help="HTML-to-text extractor for WARC input"))
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
        if self.min_chars < 0 or self.max_record_bytes <= 0 or self.num_partitions < 0:
            raise ValueError("min_chars >= 0, max_record_bytes > 0 and num_partitions >= 0 required")

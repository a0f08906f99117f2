"""TokenizeConfig: the flags of `pipeline tokenize` / `spark-submit jobs/tokenize_job.py`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from pipeline.config import JobConfig, flag
from pipeline.tokenize.encode import DEFAULT_BATCH_SIZE


@dataclass(frozen=True)
class TokenizeConfig(JobConfig):
    """GPT-2 BPE tokens (tiktoken r50k_base, <|endoftext|> before each document) -> DIR/tokens"""
    input: str = field(metadata=flag("--input", required=True, help="parquet with id, text (DIR/dedup/kept)"))
    output: str = field(metadata=flag("--output", required=True, help="run directory; writes DIR/tokens"))
    tiktoken_cache: Optional[str] = field(default=None, metadata=flag(
        "--tiktoken-cache", help="tiktoken cache dir holding r50k_base (driver-side; shipped to executors)"))
    bpe_file: Optional[str] = field(default=None, metadata=flag(
        "--bpe-file", help="r50k_base.tiktoken rank file, local or s3:// (driver-side; shipped to executors)"))
    encode_batch_size: int = field(default=DEFAULT_BATCH_SIZE, metadata=flag(
        "--encode-batch-size", type=int, help="documents encoded per chunk (one encode_ordinary_batch call "
        "when --encode-threads > 1)"))
    encode_threads: int = field(default=1, metadata=flag(
        "--encode-threads", type=int, help="tiktoken threads per Spark task; >1 only helps when tasks get several cores"))
    tokenize_partitions: int = field(default=0, metadata=flag(
        "--tokenize-partitions", type=int, help="output partitions; 0 = one per 64 MiB of input"))

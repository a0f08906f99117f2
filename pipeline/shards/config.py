"""ShardsConfig: the flags of `pipeline shards` / `spark-submit jobs/shards_job.py`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from pipeline.config import JobConfig, flag
from pipeline.shards.plan import DEFAULT_SHARD_TOKENS, DEFAULT_VAL_FRACTION


@dataclass(frozen=True)
class ShardsConfig(JobConfig):
    """llm.c .bin token shards (val shard first, then fixed-size train shards) -> DIR/shards"""
    input: str = field(metadata=flag("--input", required=True, help="tokens parquet (DIR/tokens)"))
    output: str = field(metadata=flag("--output", required=True, help="run directory; writes DIR/shards"))
    name: str = field(default="crawl", metadata=flag("--name", help="shard file prefix: NAME_train_000001.bin"))
    shard_tokens: int = field(default=DEFAULT_SHARD_TOKENS, metadata=flag(
        "--shard-tokens", type=int, help="tokens per train shard (the last is shorter; max 1073741311 = 2 GiB)"))
    val_fraction: float = field(default=DEFAULT_VAL_FRACTION, metadata=flag(
        "--val-fraction", type=float, help="val shard size as a fraction of all tokens, whole documents"))
    val_tokens: Optional[int] = field(default=None, metadata=flag(
        "--val-tokens", type=int, help="val shard size in tokens (overrides --val-fraction; 0 = no val shard)"))

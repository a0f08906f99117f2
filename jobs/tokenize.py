"""Tokenize: DIR/dedup/kept (id, text) -> DIR/tokens (id, n_tokens, tokens), GPT-2 BPE, EOT first.

    pipeline tokenize --input out/dedup/kept --output out [--tiktoken-cache D | --bpe-file F]
    spark-submit jobs/tokenize.py --input s3://b/out/dedup/kept --output s3://b/out --bpe-file s3://b/r50k_base.tiktoken

Rows are hash-partitioned by id (Spark's Murmur3, stable across runs and machines) into a number of
partitions derived from the input size, and sorted by id within each: the same input gives the same
files. A row whose id or text is null is dropped as `bad_record`.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a file by spark-submit
    # Python put jobs/ first on sys.path, where this very file would shadow the standard library's
    # `tokenize` module (dataclasses -> inspect imports it); use the repository root instead.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))

import math  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Optional  # noqa: E402

from pipeline import storage  # noqa: E402
from pipeline.config import JobConfig, flag, save_config  # noqa: E402
from pipeline.spark import get_spark  # noqa: E402
from pipeline.bpe import BpeError, load_bpe_bytes  # noqa: E402
from pipeline.tokenize import DEFAULT_BATCH_SIZE, tokenize_arrow_batches  # noqa: E402

TOKENS_SCHEMA = "id string, n_tokens int, tokens array<int>"
INPUT_BYTES_PER_PARTITION = 64 * 2 ** 20  # ~100 MB of token parquet per output file


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


Config = TokenizeConfig


def input_bytes(spark, path: str) -> int:
    """Total size of the input files via Hadoop (local, HDFS, S3 alike): one listing, no reads."""
    jvm = spark.sparkContext._jvm
    jpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = jpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return int(fs.getContentSummary(jpath).getLength())


def run(spark, cfg: TokenizeConfig) -> dict:
    from pyspark.sql import functions as F

    t0 = time.time()
    out_dir = storage.join(cfg.output, "tokens")
    bpe_data = spark.sparkContext.broadcast(load_bpe_bytes(cfg.tiktoken_cache, cfg.bpe_file))
    in_path = storage.to_spark_path(cfg.input)
    docs = spark.read.parquet(in_path).select("id", "text")
    n_parts = cfg.tokenize_partitions or max(1, math.ceil(input_bytes(spark, in_path) / INPUT_BYTES_PER_PARTITION))

    batch_size, threads = cfg.encode_batch_size, cfg.encode_threads  # plain values for the closure

    def encode(batches):
        return tokenize_arrow_batches(batches, bpe_data.value, batch_size, threads)

    tokens = (docs.filter(F.col("text").isNotNull() & F.col("id").isNotNull())
              .repartition(n_parts, "id")
              .mapInArrow(encode, TOKENS_SCHEMA)
              .sortWithinPartitions("id", "tokens"))  # tokens only break ties (ids are unique)
    tokens.write.mode("overwrite").option("compression", "snappy").parquet(storage.to_spark_path(out_dir))

    # Count from the written output (small columns) rather than scanning the texts a second time.
    records_in = docs.count()
    row = spark.read.parquet(storage.to_spark_path(out_dir)).agg(
        F.count("*").alias("docs"), F.sum("n_tokens").alias("tokens")).first()
    records_out, n_tokens = int(row["docs"]), int(row["tokens"] or 0)
    dropped = {"bad_record": records_in - records_out} if records_in != records_out else {}
    return {"stage": "tokenize", "records_in": records_in, "records_out": records_out,
            "dropped": dropped, "tokens": n_tokens, "partitions": n_parts,
            "seconds": round(time.time() - t0, 3)}


def main(argv=None) -> int:
    cfg = TokenizeConfig.from_argv(argv, prog="pipeline tokenize")
    spark = get_spark("pipeline-tokenize")
    try:
        stats = run(spark, cfg)
    except BpeError as e:  # missing/wrong BPE ranks: say which flag fixes it, no traceback
        print("pipeline tokenize: error: %s" % e, file=sys.stderr)
        return 2
    save_config(cfg, storage.join(cfg.output, "tokens"))
    print("tokenize: %d docs -> %d tokens in %s (%.1fs)" % (
        stats["records_out"], stats["tokens"], storage.join(cfg.output, "tokens"), stats["seconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

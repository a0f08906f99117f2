"""The tokenize stage on Spark: DIR/dedup/kept (id, text) -> DIR/tokens (id, n_tokens, tokens).

Rows are hash-partitioned by id (Spark's Murmur3, stable across runs and machines) into a number of
partitions derived from the input size, and sorted by id within each: the same input gives the same
files. A row whose id or text is null is dropped as `bad_record`. The BPE ranks are read once on the
driver and broadcast, so executors need neither internet access nor a tiktoken cache.
"""
from __future__ import annotations

import math
import time
from typing import Dict

from pyspark.sql import functions as F

from pipeline import storage
from pipeline.bpe import load_bpe_bytes
from pipeline.spark import input_bytes
from pipeline.tokenize.config import TokenizeConfig
from pipeline.tokenize.encode import tokenize_arrow_batches

TOKENS_SCHEMA = "id string, n_tokens int, tokens array<int>"
INPUT_BYTES_PER_PARTITION = 64 * 2 ** 20  # ~100 MB of token parquet per output file


def output_dirs(cfg: TokenizeConfig) -> Dict[str, str]:
    return {"tokens": storage.join(cfg.output, "tokens")}


def run(spark, cfg: TokenizeConfig) -> dict:
    t0 = time.time()
    out_dir = output_dirs(cfg)["tokens"]
    bpe_data = spark.sparkContext.broadcast(load_bpe_bytes(cfg.tiktoken_cache, cfg.bpe_file))
    in_path = storage.to_spark_path(cfg.input)
    docs = spark.read.parquet(in_path).select("id", "text")
    n_parts = cfg.tokenize_partitions or max(1, math.ceil(input_bytes(spark, [cfg.input]) / INPUT_BYTES_PER_PARTITION))

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

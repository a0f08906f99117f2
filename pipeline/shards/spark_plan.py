"""The shards stage on Spark: DIR/tokens -> DIR/shards/{name}_val_000000.bin, {name}_train_000001.bin,
... (llm.c format) + _manifest.json.

Layout and order: see pipeline/shards/plan.py. How it runs without collecting tokens to the driver:
 1. sort (id, n_tokens) only, by id, into range partitions; collect one (docs, tokens) pair per
    partition and prefix-sum them on the driver into each partition's global token offset;
 2. give every document its global start offset and join it back to its tokens;
 3. cut each document into per-shard pieces (usually one) tagged with their position in the shard;
 4. shuffle pieces by shard index, one shard per task; each task writes its shard in place by
    position (local path directly, s3:// via a local temp file + upload) and returns its manifest entry.
The output bytes depend only on the input rows, never on partitioning or task order.
"""
from __future__ import annotations

import json
import time
from typing import Dict

from pipeline import storage
from pipeline.shards.config import ShardsConfig
from pipeline.shards.llmc import MANIFEST, write_shard_pieces
from pipeline.shards.plan import (ShardPlan, arrow_pieces, block_stats, check_shard_tokens, locate, with_starts,
                                  val_end_from_docs, val_target)

PIECES_SCHEMA = "shard int, pos long, first boolean, data binary"  # see plan.arrow_pieces
DOCS_PER_SORT_PARTITION = 2_000_000  # (id, n_tokens) pairs: ~150 MB of Python objects to sort


def output_dirs(cfg: ShardsConfig) -> Dict[str, str]:
    return {"shards": storage.join(cfg.output, "shards")}


def _write_shards(plan: ShardPlan, out_dir: str):
    files = {index: (split, name, ntok) for index, split, name, ntok in plan.shards()}

    def f(index, pieces):
        if index not in files:  # partition 0 when there is no val shard
            if next(iter(pieces), None) is not None:
                raise ValueError("pieces for shard %d, which the plan does not have" % index)
            return
        split, name, ntok = files[index]
        entry = write_shard_pieces(storage.join(out_dir, name), ntok, (v for _, v in pieces))
        entry.update(split=split, index=index)
        yield entry
    return f


def run(spark, cfg: ShardsConfig) -> dict:
    t0 = time.time()
    check_shard_tokens(cfg.shard_tokens)  # fail on bad sizes before any Spark work
    val_target(0, cfg.val_fraction, cfg.val_tokens)
    sc = spark.sparkContext
    out_dir = output_dirs(cfg)["shards"]
    tokens = spark.read.parquet(storage.to_spark_path(cfg.input))

    # 1. id order and per-partition totals. sortByKey fixes its range bounds once, in this RDD object,
    #    so every later use (and any recomputation) sees the same partitions.
    n_parts = max(1, sc.defaultParallelism, -(-tokens.count() // DOCS_PER_SORT_PARTITION))
    meta = tokens.select("id", "n_tokens").rdd.map(tuple).sortByKey(numPartitions=n_parts).persist()
    blocks = meta.mapPartitions(block_stats).collect()
    cum_starts, total = [], 0
    for _, n in blocks:
        cum_starts.append(total)
        total += n
    n_docs = sum(d for d, _ in blocks)

    # 2. the val boundary: end of the last document starting before the target (a one-partition job).
    starts_rdd = meta.mapPartitionsWithIndex(lambda i, rows: with_starts(cum_starts[i], rows),
                                             preservesPartitioning=True)
    target = min(val_target(total, cfg.val_fraction, cfg.val_tokens), total)
    val_end = 0
    if target > 0:
        p = locate(cum_starts, target - 1)
        val_end = sc.runJob(starts_rdd, lambda rows: [val_end_from_docs(((s, n) for _, s, n in rows), target)],
                            [p])[0]
    plan = ShardPlan(cfg.name, total, val_end, cfg.shard_tokens)

    # 3-4. pieces -> one task per shard -> files + manifest entries.
    starts = spark.createDataFrame(starts_rdd.map(lambda r: (r[0], r[1])), "id string, start long")
    pieces = (tokens.join(starts, "id").select("id", "start", "n_tokens", "tokens")
              .mapInArrow(lambda batches: arrow_pieces(batches, plan), PIECES_SCHEMA))
    storage.remove_tree(out_dir)  # a rerun with fewer shards must not leave stale ones for llm.c's glob
    entries = (pieces.rdd.map(lambda r: (r[0], (r[1], r[2], bytes(r[3]))))
               .partitionBy(plan.n_shards, lambda shard: shard)
               .mapPartitionsWithIndex(_write_shards(plan, out_dir))
               .collect())
    meta.unpersist()
    entries.sort(key=lambda e: e["index"])
    if [e["index"] for e in entries] != [s[0] for s in plan.shards()]:
        raise RuntimeError("shard writers returned %s, expected shards %s"
                           % ([e["index"] for e in entries], [s[0] for s in plan.shards()]))
    docs_out = sum(e["n_docs"] for e in entries)
    if docs_out != n_docs or sum(e["n_tokens"] for e in entries) != total:
        raise RuntimeError("shards hold %d docs / %d tokens, expected %d / %d"
                           % (docs_out, sum(e["n_tokens"] for e in entries), n_docs, total))
    manifest = {
        "format": "llm.c token shards: 256 x int32 header [20240520, 1, n_tokens, 0...], uint16 tokens",
        "order": "documents sorted by id, each starting with <|endoftext|> (50256)",
        "total_tokens": total, "total_docs": n_docs, "val_tokens": val_end, "shard_tokens": cfg.shard_tokens,
        "shards": [{k: e[k] for k in ("name", "split", "n_tokens", "n_docs", "sha256")} for e in entries],
    }
    storage.write_text(storage.join(out_dir, MANIFEST), json.dumps(manifest, indent=2) + "\n")
    return {"stage": "shards", "records_in": n_docs, "records_out": docs_out, "dropped": {},
            "tokens": total, "shards": len(entries), "val_tokens": val_end,
            "seconds": round(time.time() - t0, 3)}

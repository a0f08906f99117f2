"""Shards: DIR/tokens -> DIR/shards/{name}_val_000000.bin, {name}_train_000001.bin, ... (llm.c format)

    pipeline shards --input out/tokens --output out [--name crawl] [--shard-tokens 100000000] [--val-fraction 0.01]
    spark-submit jobs/shards.py --input s3://b/out/tokens --output s3://b/out

Layout and order: see pipeline/shard_plan.py. How it runs without collecting tokens to the driver:
 1. sort (id, n_tokens) only, by id, into range partitions; collect one (docs, tokens) pair per
    partition and prefix-sum them on the driver into each partition's global token offset;
 2. give every document its global start offset and join it back to its tokens;
 3. cut each document into per-shard pieces (usually one) tagged with their position in the shard;
 4. shuffle pieces by shard index, one shard per task; each task writes its shard in place by
    position (local path directly, s3:// via a local temp file + upload) and returns its manifest entry.
The output bytes depend only on the input rows, never on partitioning or task order.
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

import json  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Optional  # noqa: E402

from pipeline import storage  # noqa: E402
from pipeline.config import JobConfig, flag, save_config  # noqa: E402
from pipeline.shard_plan import (DEFAULT_SHARD_TOKENS, DEFAULT_VAL_FRACTION, PlanError, ShardPlan,  # noqa: E402
                                 arrow_pieces, block_stats, check_shard_tokens, locate, with_starts,
                                 val_end_from_docs, val_target)
from pipeline.shards import MANIFEST, write_shard_pieces  # noqa: E402
from pipeline.spark import get_spark  # noqa: E402

PIECES_SCHEMA = "shard int, pos long, first boolean, data binary"  # see shard_plan.arrow_pieces
DOCS_PER_SORT_PARTITION = 2_000_000  # (id, n_tokens) pairs: ~150 MB of Python objects to sort


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


Config = ShardsConfig


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
    out_dir = storage.join(cfg.output, "shards")
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


def main(argv=None) -> int:
    cfg = ShardsConfig.from_argv(argv, prog="pipeline shards")
    spark = get_spark("pipeline-shards")
    try:
        stats = run(spark, cfg)
    except PlanError as e:  # a layout problem the user can fix with flags: no traceback
        print("pipeline shards: error: %s" % e, file=sys.stderr)
        return 2
    save_config(cfg, storage.join(cfg.output, "shards"))
    print("shards: %d docs, %d tokens (val %d) -> %d shard(s) in %s (%.1fs)" % (
        stats["records_out"], stats["tokens"], stats["val_tokens"], stats["shards"],
        storage.join(cfg.output, "shards"), stats["seconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

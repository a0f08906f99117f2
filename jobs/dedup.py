"""Dedup job: DIR/docs -> DIR/dedup/kept (surviving documents) + DIR/dedup/report (one row per doc).

  signatures  mapInArrow: text -> shingle hashes, MinHash signature, LSH band keys   (persisted)
  candidates  explode bands; per bucket: edge to the bucket min + chain to the next `window` by size
  verify      join both ends' shingle hashes, keep pairs with exact Jaccard >= threshold
  components  large-star/small-star on the verified edges -> cluster_id = smallest id
  keep        per cluster the longest text (ties -> smallest id); everything else is removed

    spark-submit jobs/dedup.py --input DIR/docs --output DIR
    pipeline dedup --input DIR/docs --output DIR
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a file by spark-submit
    # Python put jobs/ first on sys.path, where jobs/tokenize.py would shadow the standard library's
    # `tokenize` (dataclasses -> inspect imports it); use the repository root instead.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))

import time  # noqa: E402
from typing import Dict, Optional, Sequence  # noqa: E402

from pipeline import storage  # noqa: E402
from pipeline.config import save_config  # noqa: E402
from pipeline.dedup.batches import SIGNATURE_SCHEMA, VERIFY_SCHEMA, signature_batches, verify_batches  # noqa: E402
from pipeline.dedup.components import connected_components  # noqa: E402
from pipeline.dedup.config import DedupConfig  # noqa: E402
from pipeline.dedup.keep import keep_key_column  # noqa: E402
from pipeline.dedup.lsh import candidate_edges, resolve_bands_rows  # noqa: E402
from pipeline.spark import get_spark  # noqa: E402

REQUIRED_COLUMNS = ("id", "text")


def output_dirs(cfg: DedupConfig) -> Dict[str, str]:
    return {"kept": storage.join(cfg.output, "dedup", "kept"),
            "report": storage.join(cfg.output, "dedup", "report")}


def _write_sorted(df, path: str, partitions: int) -> None:
    # Hash partitioning on id + sort within partitions: the same input gives the same file contents.
    (df.repartition(partitions, "id").sortWithinPartitions("id")
     .write.mode("overwrite").parquet(storage.to_spark_path(path)))


def run(spark, cfg: DedupConfig) -> Dict:
    from functools import partial

    from pyspark import StorageLevel
    from pyspark.sql import Window, functions as F

    t0 = time.time()
    bands, rows = resolve_bands_rows(cfg.threshold, cfg.num_perm, cfg.bands, cfg.rows,
                                     cfg.fp_weight, cfg.fn_weight)
    docs = spark.read.parquet(storage.to_spark_path(cfg.input))
    missing = [c for c in REQUIRED_COLUMNS if c not in docs.columns]
    if missing:
        raise ValueError("%s: missing column(s) %s (have %s)" % (cfg.input, missing, docs.columns))
    partitions = cfg.partitions or max(1, docs.rdd.getNumPartitions())
    if cfg.checkpoint_dir:
        spark.sparkContext.setCheckpointDir(cfg.checkpoint_dir)

    def cut(df):
        # Cut lineage between phases; reliable checkpoints survive executors lost to dynamic allocation.
        return df.checkpoint(eager=True) if cfg.checkpoint_dir else df.localCheckpoint(eager=True)

    sig = (docs.select("id", "text")
           .mapInArrow(partial(signature_batches, num_perm=cfg.num_perm, seed=cfg.seed, ngram=cfg.ngram,
                               bands=bands, rows=rows, normalize=cfg.normalize), SIGNATURE_SCHEMA)
           .persist(StorageLevel.MEMORY_AND_DISK))
    # One action fills the cache and gives both counts (each Spark action costs scheduling time).
    head = sig.agg(F.count("*").alias("n"), F.sum(F.col("bands").isNull().cast("int")).alias("empty")).first()
    records_in, empty_docs = int(head["n"]), int(head["empty"] or 0)
    phases = {"signatures": time.time() - t0}

    # Candidates are not materialised on their own: they stream into the verification joins, and the
    # one checkpoint after verification (all candidate pairs with their Jaccard: small) gives both counts.
    buckets = sig.where(F.col("bands").isNotNull()).select("id", "n", F.posexplode("bands").alias("band", "key"))
    candidates = candidate_edges(buckets, cfg.window)
    shingles = sig.select("id", "shingles")
    pairs = (candidates
             .join(shingles.withColumnRenamed("id", "src").withColumnRenamed("shingles", "a"), "src")
             .join(shingles.withColumnRenamed("id", "dst").withColumnRenamed("shingles", "b"), "dst")
             .select("src", "dst", "a", "b"))
    scored = cut(pairs.mapInArrow(verify_batches, VERIFY_SCHEMA))
    ok = F.col("jaccard") >= cfg.threshold
    counts = scored.agg(F.count("*").alias("candidates"), F.sum(ok.cast("int")).alias("verified")).first()
    candidate_pairs, verified_pairs = int(counts["candidates"]), int(counts["verified"] or 0)
    verified = scored.where(ok).select("src", "dst")
    phases["candidates+verify"] = time.time() - t0 - sum(phases.values())

    labels, cc_rounds = connected_components(verified, cfg.max_iterations, cfg.checkpoint_dir or None, clean=True,
                                             edge_count=verified_pairs,
                                             single_task_max_edges=cfg.single_task_max_edges)
    # Every document gets its row here (singletons: cluster of itself), hash-partitioned and sorted by
    # id as written, and cached: the kept/ write and the summary reuse it without recomputing clusters.
    cluster = Window.partitionBy("cluster_id")
    report = (sig.select("id", "length").join(labels, "id", "left")
              .withColumn("cluster_id", F.coalesce("cluster_id", "id"))
              .select("id", "cluster_id", F.count("*").over(cluster).cast("long").alias("cluster_size"),
                      (F.min(keep_key_column()).over(cluster)["id"] == F.col("id")).alias("kept"))
              .repartition(partitions, "id").sortWithinPartitions("id")
              .persist(StorageLevel.MEMORY_AND_DISK))
    dirs = output_dirs(cfg)
    report.write.mode("overwrite").parquet(storage.to_spark_path(dirs["report"]))
    phases["components+report"] = time.time() - t0 - sum(phases.values())

    removed = report.where(~F.col("kept")).select("id")
    _write_sorted(docs.join(removed, "id", "left_anti").select(*docs.columns), dirs["kept"], partitions)
    phases["write kept"] = time.time() - t0 - sum(phases.values())
    summary = (report.where(F.col("cluster_size") > 1)
               .agg(F.count("*").alias("in_clusters"),
                    F.sum(F.when(F.col("kept"), 0).otherwise(1)).alias("removed"),
                    F.sum(F.col("kept").cast("int")).alias("clusters"),
                    F.max("cluster_size").alias("largest"))
               .first())
    report.unpersist()
    scored.unpersist()
    sig.unpersist()
    duplicates_removed = int(summary["removed"] or 0)
    return {
        "stage": "dedup",
        "seconds": round(time.time() - t0, 3),
        "records_in": int(records_in),
        "records_out": int(records_in) - duplicates_removed,
        "duplicates_removed": duplicates_removed,
        "dropped": {},
        "clusters": int(summary["clusters"] or 0),
        "docs_in_clusters": int(summary["in_clusters"] or 0),
        "largest_cluster": int(summary["largest"] or 1),
        "candidate_pairs": int(candidate_pairs),
        "verified_pairs": int(verified_pairs),
        "cc_rounds": int(cc_rounds),
        "docs_without_shingles": int(empty_docs),
        "threshold": cfg.threshold,
        "num_perm": cfg.num_perm,
        "bands": bands,
        "rows": rows,
        "phase_seconds": {k: round(v, 3) for k, v in phases.items()},
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg = DedupConfig.from_argv(argv, prog="pipeline dedup")
    bands, rows = resolve_bands_rows(cfg.threshold, cfg.num_perm, cfg.bands, cfg.rows,
                                     cfg.fp_weight, cfg.fn_weight)
    print("dedup: threshold %.3f, %d permutations -> %d bands x %d rows" % (cfg.threshold, cfg.num_perm, bands, rows))
    spark = get_spark("dedup")
    stats = run(spark, cfg)
    for d in output_dirs(cfg).values():
        save_config(cfg, d)
    print("dedup: %(records_in)d docs -> %(records_out)d kept, %(duplicates_removed)d duplicates removed "
          "in %(clusters)d clusters (largest %(largest_cluster)d); %(candidate_pairs)d candidate pairs, "
          "%(verified_pairs)d verified, %(cc_rounds)d component rounds, %(seconds).1fs" % stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())

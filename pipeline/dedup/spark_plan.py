"""The dedup stage on Spark: DIR/docs -> DIR/dedup/kept (surviving documents) + DIR/dedup/report
(one row per document).

  signatures  mapInArrow: text -> shingle hashes, MinHash signature, LSH band keys; hash-partitioned
              and sorted by (id_hash, id), stored by a local checkpoint that keeps that layout (the
              one shuffle of the ~2 KB of shingle hashes per document)
  candidates  bucket rows routed to their partition in Python and shuffled as one Arrow stream per
              partition and batch; per partition one numpy pass (mapInArrow): edge to the bucket min +
              chain to the next `window` by size; distinct edges, partitioned by src
  verify      join the src side's shingle hashes in place, shuffle by dst, join the dst side's in place;
              one mapInArrow pass: exact Jaccard, keep pairs >= threshold
  components  union-find in one task (few edges) or large-star/small-star -> cluster_id = smallest id
  keep        per cluster one document by the `--keep` rule (pipeline/dedup/keep.py); window over the
              clustered documents only, every other document is its own cluster, kept; the report
              is written, then read back for the summary and the removed ids
  kept/       the input's documents where they were read, less the removed ids (broadcast, at most
              REMOVED_IDS_BROADCAST_MAX); above that bound, or with --partitions other than the
              input's, both sides hash-partitioned by id (one shuffle of the text)

The per-row work is plain Python over Arrow batches (`pipeline.dedup.batches`); the same algorithm
runs without Spark in `pipeline.dedup.local`. Where the CPU goes, stage by stage, and what was measured
against it: docs/benchmarks/dedup.md (`python bench/bench_dedup.py --docs 100000`).
"""
from __future__ import annotations

import time
from functools import partial
from typing import Dict, Sequence

from pyspark import StorageLevel
from pyspark.sql import Window
from pyspark.sql import functions as F

from pipeline import storage
from pipeline.dedup.batches import (EDGE_SCHEMA, ROUTED_BUCKETS_SCHEMA, SIGNATURE_SCHEMA, VERIFY_SCHEMA,
                                    routed_bucket_batches, routed_candidate_batches, signature_batches,
                                    verify_batches)
from pipeline.dedup.config import DedupConfig
from pipeline.dedup.keep import COLUMNS_NEEDED
from pipeline.dedup.lsh import resolve_bands_rows
from pipeline.dedup.spark_components import connected_components
from pipeline.spark import release


def output_dirs(cfg: DedupConfig) -> Dict[str, str]:
    return {"kept": storage.join(cfg.output, "dedup", "kept"),
            "report": storage.join(cfg.output, "dedup", "report")}


def check_columns(columns: Sequence[str], cfg: DedupConfig) -> None:
    missing = [c for c in ("id", "text") + COLUMNS_NEEDED[cfg.keep] if c not in columns]
    if missing:
        why = " (--keep %s reads the input order that `pipeline ingest` writes)" % cfg.keep \
            if cfg.keep == "first" else ""
        raise ValueError("%s: missing column(s) %s%s (have %s)" % (cfg.input, missing, why, list(columns)))


def keep_key_column(rule: str):
    """pipeline.dedup.keep.keep_key as a Spark struct: min(struct) over a cluster picks the kept
    member. Struct fields compare in order, nulls first, strings by UTF-8 bytes (= code points)."""
    if rule == "longest":
        return F.struct((-F.col("length")).alias("neg_length"), F.col("id").alias("id"))
    if rule == "first":
        return F.struct(F.col("source").isNull().alias("no_source"), F.col("source").alias("source"),
                        F.col("pos").isNull().alias("no_pos"), F.col("pos").alias("pos"),
                        F.col("id").alias("id"))
    if rule == "smallest-id":
        return F.struct(F.col("id").alias("id"))
    raise ValueError("unknown keep rule %r" % rule)


# Bucket rows per candidate task at most (on average): candidate_batches holds its partition in numpy
# arrays, about 100 bytes a row, so a task stays near 100 MB whatever the corpus size.
BUCKET_ROWS_PER_TASK = 1000000


def hash_partition_values(spark, partitions: int):
    """[v_0, .., v_{partitions-1}]: longs that `repartition(partitions, col)` sends to partitions 0, 1, ..
    (Spark's Murmur3 `hash`, pmod the partition count), asked of Spark itself: a few thousand rows
    at most, P rows back to the driver."""
    found, size = {}, 16 * partitions
    while len(found) < partitions:
        found = {r["p"]: r["v"] for r in spark.range(size)
                 .select("id", F.expr("pmod(hash(id), %d)" % partitions).alias("p"))
                 .groupBy("p").agg(F.min("id").alias("v")).collect()}
        size *= 4
    return [int(found[p]) for p in range(partitions)]


def candidate_edges(docs, window: int = 4, partitions: int = 8, edge_partitions: int = 8):
    """Spark: rows (id, n, bands) of documents with shingles -> distinct undirected edges (src < dst,
    src_hash = id_hash(src)) with bounded work, hash-partitioned by (src_hash, src) into
    `edge_partitions` (where a join on the signatures' (id_hash, id) meets them without a shuffle).

    `n` is the document's shingle count. Only members of buckets with >= 2 documents produce edges.
    Python routes each bucket row (id, n, band, key) to its partition and Spark shuffles one Arrow
    stream per partition and input batch (`batches.routed_bucket_batches`): exploding 18 rows per
    document and shuffling them row by row cost the JVM more than the bytes moved (at 1M documents,
    bucket stages of 17.7 + 8.4 task CPU-s against 8.2 + 7.5 routed). Each partition is one numpy
    pass (`batches.candidate_batches`), not a window sort over string ids.
    """
    part_values = hash_partition_values(docs.sparkSession, partitions)
    return (docs.mapInArrow(partial(routed_bucket_batches, part_values=part_values), ROUTED_BUCKETS_SCHEMA)
            .repartition(partitions, "part")
            .mapInArrow(partial(routed_candidate_batches, window=window), EDGE_SCHEMA)
            .select("src", "dst", id_hash("src").alias("src_hash"))
            .repartition(edge_partitions, "src_hash", "src").distinct())


def id_hash(column: str):
    """A 64-bit hash of a document id, joined on together with the id itself (never instead of it).
    Spark sorts rows by an 8-byte prefix of the first sort key and compares whole rows only when
    prefixes tie. WARC ids all begin with `<urn:uuid:`, so a sort by id alone reads both ~2 KB rows
    of every comparison from memory (the sort of the verification join's dst side held most of the
    JVM's sort samples in a profile); led by this key, the prefix decides."""
    return F.xxhash64(column)


def candidate_shingles(candidates, sig):
    """Edges (src, dst, src_hash) as candidate_edges gives them, joined with the shingle hashes of
    both ends: (src, dst, a, b). `sig` is hash-partitioned and sorted by (id_hash, id), so the src
    side joins it in place and only the edges with one end's shingles move, by (dst_hash, dst)."""
    shingles = sig.select("id_hash", "id", "shingles")
    a, b = shingles.alias("a"), shingles.alias("b")
    return (candidates
            .join(a, (F.col("src_hash") == F.col("a.id_hash")) & (F.col("src") == F.col("a.id")))
            .select("src", "dst", id_hash("dst").alias("dst_hash"), F.col("a.shingles").alias("a"))
            .join(b, (F.col("dst_hash") == F.col("b.id_hash")) & (F.col("dst") == F.col("b.id")))
            .select("src", "dst", "a", F.col("b.shingles").alias("b")))


# Removed documents' ids sent to every task of the kept/ write at most (a hash table of ~100 bytes an
# id, built on the driver): a fixed bound, so the driver never holds a data-sized set. Above it the
# documents are shuffled by id to meet the ids instead.
REMOVED_IDS_BROADCAST_MAX = 1000000


# Columns whose values (almost) never repeat: parquet's dictionary encoding of them only builds a hash
# table of every value until the dictionary page overflows and then re-encodes the page plain (the
# kept/ write spent most of its encoding CPU there). Plain encoding from the start, same values.
UNIQUE_COLUMNS = ("id", "url", "text")


def write_parquet(df, path: str, plain_columns: Sequence[str] = ()) -> None:
    """df as parquet files under `path` (replacing them), `plain_columns` without dictionary encoding."""
    writer = df.write.mode("overwrite")
    for column in plain_columns:
        if column in df.columns:
            writer = writer.option("parquet.enable.dictionary#" + column, "false")
    writer.parquet(storage.to_spark_path(path))


def local_checkpoint_keeping_layout(spark, df):
    """df.localCheckpoint(eager=True) that keeps df's hash partitioning and sort order for later
    joins. Spark 3.5 records them only from a plan it knows before running; under adaptive execution
    the checkpoint's plan is unknown until it has run, so joins would shuffle and sort it again. The
    checkpoint's own plan is one exchange with an explicit partition count, which adaptive execution
    would not change anyway."""
    key = "spark.sql.adaptive.enabled"
    before = spark.conf.get(key)
    spark.conf.set(key, "false")
    try:
        return df.localCheckpoint(eager=True)
    finally:
        spark.conf.set(key, before)


def run(spark, cfg: DedupConfig) -> Dict:
    t0 = time.time()
    bands, rows = resolve_bands_rows(cfg.threshold, cfg.num_perm, cfg.bands, cfg.rows,
                                     cfg.fp_weight, cfg.fn_weight)
    docs = spark.read.parquet(storage.to_spark_path(cfg.input))
    check_columns(docs.columns, cfg)
    input_partitions = max(1, docs.rdd.getNumPartitions())
    partitions = cfg.partitions or input_partitions
    if cfg.checkpoint_dir:
        spark.sparkContext.setCheckpointDir(cfg.checkpoint_dir)

    def cut(df):
        # Cut lineage between phases; reliable checkpoints survive executors lost to dynamic allocation.
        return df.checkpoint(eager=True) if cfg.checkpoint_dir else df.localCheckpoint(eager=True)

    def store(df):
        # A local checkpoint keeps the rows as Spark made them: no columnar cache to build and decode.
        # With --checkpoint-dir (dynamic allocation) a persisted copy instead, which Spark recomputes
        # for a lost executor (a reliable checkpoint would write every shingle to HDFS).
        if cfg.checkpoint_dir:
            return df.persist(StorageLevel.MEMORY_AND_DISK)
        return local_checkpoint_keeping_layout(spark, df)

    # Hash-partitioned and sorted by (id_hash, id), stored as rows: both verification joins and the
    # report's joins find the shingle side already in place, so its ~2 KB per document is shuffled
    # once, here.
    shuffle_partitions = int(spark.conf.get("spark.sql.shuffle.partitions"))
    sig = store(docs.select("id", "text")
                .mapInArrow(partial(signature_batches, num_perm=cfg.num_perm, seed=cfg.seed, ngram=cfg.ngram,
                                    bands=bands, rows=rows, normalize=cfg.normalize), SIGNATURE_SCHEMA)
                .withColumn("id_hash", id_hash("id"))
                .repartition(shuffle_partitions, "id_hash", "id").sortWithinPartitions("id_hash", "id"))
    head = sig.agg(F.count("*").alias("n"), F.sum(F.col("bands").isNull().cast("int")).alias("empty")).first()
    records_in, empty_docs = int(head["n"]), int(head["empty"] or 0)
    phases = {"signatures": time.time() - t0}

    # Candidates are not materialised on their own: they stream into the verification joins, and the
    # one checkpoint after verification (all candidate pairs with their Jaccard: small) gives both counts.
    with_shingles = sig.where(F.col("bands").isNotNull()).select("id", "n", "bands")
    candidate_tasks = max(shuffle_partitions, -(-(records_in - empty_docs) * bands // BUCKET_ROWS_PER_TASK))
    candidates = candidate_edges(with_shingles, cfg.window, candidate_tasks, shuffle_partitions)
    scored = cut(candidate_shingles(candidates, sig).mapInArrow(verify_batches, VERIFY_SCHEMA))
    ok = F.col("jaccard") >= cfg.threshold
    counts = scored.agg(F.count("*").alias("candidates"), F.sum(ok.cast("int")).alias("verified")).first()
    candidate_pairs, verified_pairs = int(counts["candidates"]), int(counts["verified"] or 0)
    verified = scored.where(ok).select("src", "dst")
    phases["candidates+verify"] = time.time() - t0 - sum(phases.values())

    labels, cc_rounds = connected_components(verified, cfg.max_iterations, cfg.checkpoint_dir or None, clean=True,
                                             edge_count=verified_pairs,
                                             single_task_max_edges=cfg.single_task_max_edges)
    # Only documents of a verified edge (labelled) share a cluster: the window over clusters runs over
    # them alone. Every other document is its own cluster of size 1, kept. The report has every
    # document's row, hash-partitioned and sorted by id as written.
    cluster = Window.partitionBy("cluster_id")
    members = (labels.withColumn("id_hash", id_hash("id"))
               .join(sig.select("id_hash", "id", "length"), ["id_hash", "id"]))
    if cfg.keep == "first":  # the input order comes from ingest's columns, not from the signatures
        members = members.join(docs.select("id", "source", F.col("pos").cast("long").alias("pos")), "id")
    clustered = members.select(
        "id_hash", "id", "cluster_id", F.count("*").over(cluster).cast("long").alias("cluster_size"),
        (F.min(keep_key_column(cfg.keep)).over(cluster)["id"] == F.col("id")).alias("kept"))
    report = (sig.select("id_hash", "id").join(clustered, ["id_hash", "id"], "left")
              .select("id", F.coalesce("cluster_id", "id").alias("cluster_id"),
                      F.coalesce("cluster_size", F.lit(1).cast("long")).alias("cluster_size"),
                      F.coalesce("kept", F.lit(True)).alias("kept"))
              .repartition(partitions, "id").sortWithinPartitions("id"))
    dirs = output_dirs(cfg)
    write_parquet(report, dirs["report"], UNIQUE_COLUMNS)
    # The summary and the removed ids come from the report as written: reading back ~20 bytes a
    # document of parquet costs far less than caching it (Spark's columnar cache builder spent
    # about 9% of the JVM's CPU of a 100k-document run on these 4 columns).
    report = spark.read.parquet(storage.to_spark_path(dirs["report"]))
    phases["components+report"] = time.time() - t0 - sum(phases.values())

    summary = (report.where(F.col("cluster_size") > 1)
               .agg(F.count("*").alias("in_clusters"),
                    F.sum(F.when(F.col("kept"), 0).otherwise(1)).alias("removed"),
                    F.sum(F.col("kept").cast("int")).alias("clusters"),
                    F.max("cluster_size").alias("largest"))
               .first())
    duplicates_removed = int(summary["removed"] or 0)
    removed = report.where(~F.col("kept")).select("id")
    kept = docs
    if duplicates_removed <= REMOVED_IDS_BROADCAST_MAX and partitions == input_partitions:
        # The removed ids go to every task, the documents stay where they were read: no shuffle of text.
        kept = kept.join(F.broadcast(removed), "id", "left_anti").sortWithinPartitions("id")
    else:
        # Both sides hash-partitioned by id into the output's partitions: one shuffle of the text.
        kept = (kept.repartition(partitions, "id").join(removed.repartition(partitions, "id"), "id", "left_anti")
                .sortWithinPartitions("id"))
    # (the join puts id first: the input's column order back)
    write_parquet(kept.select(*docs.columns), dirs["kept"], UNIQUE_COLUMNS)
    phases["write kept"] = time.time() - t0 - sum(phases.values())
    for df in (scored, sig):
        release(df)
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
        "keep": cfg.keep,
        "threshold": cfg.threshold,
        "num_perm": cfg.num_perm,
        "bands": bands,
        "rows": rows,
        "phase_seconds": {k: round(v, 3) for k, v in phases.items()},
    }

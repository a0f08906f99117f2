"""The ingest stage on Spark: WARC / parquet / JSON lines -> DIR/docs + DIR/ingest/dropped.

WARC and JSON-lines files are streamed by the plain-Python core (`pipeline.ingest.core`), one task
per file, so a file is never loaded whole and a broken file costs a counted drop row rather than the
job. Parquet is mapped by Spark (`pipeline.ingest.spark_parquet`). The per-record result is cached
once; both outputs and the counts come from it, and every input record ends up in exactly one of
DIR/docs (id, url, text, source, warc_date, pos) and DIR/ingest/dropped (source, record_id, reason,
detail).
"""
from __future__ import annotations

import math
import sys
import time
from typing import Dict, List, Tuple

from pyspark import StorageLevel
from pyspark.sql import Window
from pyspark.sql import functions as F

from pipeline import accounting, storage
from pipeline.ingest import core, tabular, warc
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.extract import resolve_extractor
from pipeline.ingest.records import RECORD_DDL, IngestOptions
from pipeline.ingest.spark_parquet import parquet_records

TEXT_BYTES_PER_PARTITION = 128 << 20  # ~50 MB snappy parquet files
DROPPED_ROWS_PER_PARTITION = 2000000
MAX_ERRORS_LISTED = 50
DOCS_COLUMNS = ("id", "url", "text", "source", "warc_date", "pos")


class IngestError(RuntimeError):
    """The input as a whole cannot be ingested (all files unreadable, no files, missing text column)."""


def output_dirs(cfg: IngestConfig) -> Dict[str, str]:
    return {"docs": storage.join(cfg.output, "docs"),
            "dropped": storage.join(cfg.output, "ingest", "dropped")}


def resolve_tools(cfg: IngestConfig) -> Tuple[IngestOptions, Dict[str, str], List[str]]:
    """The executors' options with `--extractor auto` resolved to the extractor this machine has, the
    tools that will run ({"extractor", "warc_reader"}: recorded in the stats and _config.json) and a
    note per fallback. An explicitly chosen tool that is not installed raises here, before Spark."""
    extractor, extractor_note = resolve_extractor(cfg.extractor)
    reader, reader_note = warc.resolve_reader(cfg.warc_reader)
    notes = [n for n in (extractor_note, reader_note) if n]
    resolved = {"extractor": extractor, "warc_reader": reader}
    return IngestOptions.from_config(cfg, extractor, reader), resolved, notes


def read_records(spark, plan: Dict[str, List[str]], opts: IngestOptions):
    frames = []
    streamed = [(path, fmt) for fmt in core.STREAMED_FORMATS for path in plan[fmt]]
    if streamed:
        # One partition per file: executors open and stream the files themselves.
        rdd = spark.sparkContext.parallelize(streamed, len(streamed)).flatMap(
            lambda pf: core.process_file(pf[0], pf[1], opts))
        frames.append(spark.createDataFrame(rdd, RECORD_DDL))
    if plan["parquet"]:
        frames.append(parquet_records(spark, plan["parquet"], opts))
    records = frames[0]
    for f in frames[1:]:
        records = records.unionByName(f)
    return records


def mark_duplicate_ids(records):
    """Among records that would be kept, the first per id by (source, pos) stays; the rest become
    `duplicate_id` drop rows that name the record kept instead.

    One window over all records (not a union of kept and dropped branches, which would run the
    extraction twice): kept records are grouped by id, every drop row is a group of its own.
    """
    ok = F.col("reason").isNull()
    group = F.when(ok, F.col("id")).otherwise(F.concat_ws("#", "source", F.col("pos").cast("string")))
    w = Window.partitionBy(ok, group).orderBy("source", "pos")
    dup = ok & (F.row_number().over(w) > 1)
    return records.select(
        "source", "pos", "id", "url",
        F.when(~dup, F.col("text")).alias("text"), "warc_date",
        F.when(dup, F.lit("duplicate_id")).otherwise(F.col("reason")).alias("reason"),
        F.when(dup, F.format_string("same id as %s at position %d", F.first("source").over(w),
                                    F.first("pos").over(w))).otherwise(F.col("detail")).alias("detail"))


def _missing_text_column(records, jsonl_files: List[str], text_col: str) -> None:
    """Raise if some JSON-lines file has no record with the text field at all (wrong --text-col)."""
    if not jsonl_files:
        return
    missing = F.col("detail").startswith(tabular.MISSING_FIELD)
    has_field = F.col("reason").isNull() | F.col("reason").isin("empty_text", "too_short", "duplicate_id")
    rows = (records.filter(F.col("source").isin(jsonl_files))
            .groupBy("source")
            .agg(F.sum(missing.cast("int")).alias("m"), F.sum(has_field.cast("int")).alias("k"),
                 F.min(F.when(missing, F.col("detail"))).alias("example"))
            .filter("m > 0 AND k = 0").orderBy("source").limit(MAX_ERRORS_LISTED).collect())
    if rows:
        raise tabular.MissingColumnError(
            "text field %r not found in %d JSON-lines file(s) (use --text-col):\n%s" % (
                text_col, len(rows), "\n".join("  %s: %s" % (r.source, r.example) for r in rows)))


def run(spark, cfg: IngestConfig) -> dict:
    t0 = time.time()
    opts, resolved, fallbacks = resolve_tools(cfg)  # fails now, not in every task, if a library is missing
    for note in fallbacks:
        print("ingest: WARNING: %s" % note, file=sys.stderr)
    plan, skipped = core.plan_inputs(cfg.input, cfg.format)
    for path in skipped:
        print("ingest: skipping %s (unknown extension; use --format)" % path, file=sys.stderr)
    n_files = sum(len(v) for v in plan.values())
    if n_files == 0:
        raise IngestError("no WARC/parquet/JSON-lines files among the inputs %s" % ", ".join(cfg.input))
    dirs = output_dirs(cfg)

    records = mark_duplicate_ids(read_records(spark, plan, opts)).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        by_reason = {r.reason: (int(r.n), int(r.text_bytes or 0)) for r in records.groupBy("reason").agg(
            F.count("*").alias("n"), F.sum(F.octet_length("text")).alias("text_bytes")).collect()}
        records_in = sum(n for n, _ in by_reason.values())
        expected_out, text_bytes = by_reason.get(None, (0, 0))
        problems = (records.filter(F.col("reason").isin("unreadable_file", "bad_record"))
                    .orderBy("source", "pos").limit(MAX_ERRORS_LISTED)
                    .select("source", "reason", "detail").collect())
        errors = ["%s: %s: %s" % (r.source, r.reason, r.detail) for r in problems]
        n_streamed = len(plan["warc"]) + len(plan["jsonl"])
        if n_streamed and not plan["parquet"] and by_reason.get("unreadable_file", (0, 0))[0] >= n_streamed:
            raise IngestError("every input file is unreadable:\n  " + "\n  ".join(errors))
        _missing_text_column(records, plan["jsonl"], cfg.text_col)
        for e in errors:
            print("ingest: %s" % e, file=sys.stderr)

        n_parts = cfg.num_partitions or max(1, math.ceil(text_bytes / TEXT_BYTES_PER_PARTITION))
        # Hash-partition by id (Spark's Murmur3, stable across runs) and sort: identical files on rerun.
        (records.filter(F.col("reason").isNull())
         .select(*DOCS_COLUMNS)
         .repartition(n_parts, "id").sortWithinPartitions("id")
         .write.mode("overwrite").parquet(storage.to_spark_path(dirs["docs"])))
        n_dropped = records_in - expected_out
        (records.filter(F.col("reason").isNotNull())
         .repartition(max(1, math.ceil(n_dropped / DROPPED_ROWS_PER_PARTITION)), "source")
         .sortWithinPartitions("source", "pos", "reason", "id")
         .select("source", F.col("id").alias("record_id"), "reason", "detail")
         .write.mode("overwrite").parquet(storage.to_spark_path(dirs["dropped"])))
    finally:
        records.unpersist()

    # Counts come back from what was written, so the identity below checks the outputs themselves.
    records_out = spark.read.parquet(storage.to_spark_path(dirs["docs"])).count()
    rows_by_reason = {r.reason: int(r["count"]) for r in
                      spark.read.parquet(storage.to_spark_path(dirs["dropped"])).groupBy("reason").count().collect()}
    not_documents, dropped = accounting.split_reasons(rows_by_reason)
    stats = {
        "stage": "ingest",
        "seconds": round(time.time() - t0, 3),
        "records_in": records_in,
        "records_out": records_out,
        "not_documents": not_documents,
        "dropped": dropped,
        "errors": errors,
        "files": n_files,
        "files_by_format": {f: len(v) for f, v in plan.items() if v},
        "skipped_files": skipped,
        "text_bytes": text_bytes,
        "output_partitions": n_parts,
        "output": dirs["docs"],
        "resolved": resolved,  # the extractor and WARC reader that ran
        "fallbacks": fallbacks,
    }
    accounting.check_stage(stats)
    return stats

"""Ingest: WARC / parquet / JSON lines -> DIR/docs (one row per document) + DIR/ingest/dropped (one row
per record that is not a document, with its reason).

    pipeline ingest --input s3://bucket/crawl/*.warc.gz --output s3://bucket/run1
    spark-submit jobs/ingest_job.py --input data/ --output out/

The stage itself is pipeline/ingest/spark_plan.py; this file only wires it to a SparkSession.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from pipeline import storage
from pipeline.accounting import NOT_DOCUMENT_REASONS
from pipeline.config import save_config
from pipeline.ingest import spark_plan
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.extract import ExtractorUnavailable
from pipeline.ingest.tabular import MissingColumnError
from pipeline.ingest.warc import ReaderUnavailable
from pipeline.spark import get_spark, parse_job_args, set_shuffle_partitions


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg, spark_opts = parse_job_args(IngestConfig, argv, prog="pipeline ingest")
    try:
        spark = get_spark("ingest", spark_opts)
        set_shuffle_partitions(spark, spark_opts, cfg.input)
        stats = spark_plan.run(spark, cfg)
    except (storage.InputError, MissingColumnError, spark_plan.IngestError, ExtractorUnavailable,
            ReaderUnavailable) as e:
        print("ingest: error: %s" % e, file=sys.stderr)
        return 2
    dirs = spark_plan.output_dirs(cfg)
    for d in dirs.values():
        save_config(cfg, d, stats["resolved"], spark=spark_opts)
    print("ingest: %d records in, %d documents out -> %s (%.1f s; extractor %s, WARC reader %s)" % (
        stats["records_in"], stats["records_out"], dirs["docs"], stats["seconds"],
        stats["resolved"]["extractor"], stats["resolved"]["warc_reader"]))
    for note in stats["fallbacks"]:
        print("  WARNING: %s" % note)
    for reason, n in stats["not_documents"].items():
        print("  not a document  %-15s %d  (%s)" % (reason, n, NOT_DOCUMENT_REASONS[reason]))
    for reason, n in stats["dropped"].items():
        print("  dropped         %-15s %d" % (reason, n))
    if stats["errors"]:
        print("  %s%d unreadable files / bad records listed on stderr; every drop is a row in %s" % (
            "the first " if len(stats["errors"]) >= spark_plan.MAX_ERRORS_LISTED else "",
            len(stats["errors"]), dirs["dropped"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

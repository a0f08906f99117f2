"""Dedup: DIR/docs -> DIR/dedup/kept (surviving documents) + DIR/dedup/report (one row per document).

    pipeline dedup --input DIR/docs --output DIR [--keep longest|first|smallest-id]
    spark-submit jobs/dedup_job.py --input DIR/docs --output DIR

The stage itself is pipeline/dedup/spark_plan.py; this file only wires it to a SparkSession.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from pipeline.config import save_config
from pipeline.dedup import spark_plan
from pipeline.dedup.config import DedupConfig
from pipeline.dedup.lsh import resolve_bands_rows
from pipeline.spark import get_spark, parse_job_args, set_shuffle_partitions


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg, spark_opts = parse_job_args(DedupConfig, argv, prog="pipeline dedup")
    bands, rows = resolve_bands_rows(cfg.threshold, cfg.num_perm, cfg.bands, cfg.rows,
                                     cfg.fp_weight, cfg.fn_weight)
    print("dedup: threshold %.3f, %d permutations -> %d bands x %d rows; keep %s" % (
        cfg.threshold, cfg.num_perm, bands, rows, cfg.keep))
    spark = get_spark("dedup", spark_opts)
    set_shuffle_partitions(spark, spark_opts, [cfg.input])
    stats = spark_plan.run(spark, cfg)
    for d in spark_plan.output_dirs(cfg).values():
        save_config(cfg, d, spark=spark_opts)
    print("dedup: %(records_in)d docs -> %(records_out)d kept, %(duplicates_removed)d duplicates removed "
          "in %(clusters)d clusters (largest %(largest_cluster)d); %(candidate_pairs)d candidate pairs, "
          "%(verified_pairs)d verified, %(cc_rounds)d component rounds, %(seconds).1fs" % stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())

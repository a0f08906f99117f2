"""Shards: DIR/tokens -> DIR/shards/{name}_val_000000.bin, {name}_train_000001.bin, ... (llm.c format)

    pipeline shards --input out/tokens --output out [--name crawl] [--shard-tokens 100000000] [--val-fraction 0.01]
    spark-submit jobs/shards_job.py --input s3://b/out/tokens --output s3://b/out

The stage itself is pipeline/shards/spark_plan.py; this file only wires it to a SparkSession.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from pipeline.config import save_config
from pipeline.shards import spark_plan
from pipeline.shards.config import ShardsConfig
from pipeline.shards.plan import PlanError
from pipeline.spark import get_spark, parse_job_args, set_shuffle_partitions


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg, spark_opts = parse_job_args(ShardsConfig, argv, prog="pipeline shards")
    spark = get_spark("pipeline-shards", spark_opts)
    set_shuffle_partitions(spark, spark_opts, [cfg.input])
    try:
        stats = spark_plan.run(spark, cfg)
    except PlanError as e:  # a layout problem the user can fix with flags: no traceback
        print("pipeline shards: error: %s" % e, file=sys.stderr)
        return 2
    dirs = spark_plan.output_dirs(cfg)
    for d in dirs.values():
        save_config(cfg, d, spark=spark_opts)
    print("shards: %d docs, %d tokens (val %d) -> %d shard(s) in %s (%.1fs)" % (
        stats["records_out"], stats["tokens"], stats["val_tokens"], stats["shards"], dirs["shards"],
        stats["seconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

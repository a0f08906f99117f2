"""Tokenize: DIR/dedup/kept (id, text) -> DIR/tokens (id, n_tokens, tokens), GPT-2 BPE, EOT first.

    pipeline tokenize --input out/dedup/kept --output out [--tiktoken-cache D | --bpe-file F]
    spark-submit jobs/tokenize_job.py --input s3://b/out/dedup/kept --output s3://b/out --bpe-file s3://b/r50k_base.tiktoken

The stage itself is pipeline/tokenize/spark_plan.py; this file only wires it to a SparkSession.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from pipeline.bpe import BpeError
from pipeline.config import save_config
from pipeline.spark import get_spark, parse_job_args, set_shuffle_partitions
from pipeline.tokenize import spark_plan
from pipeline.tokenize.config import TokenizeConfig


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg, spark_opts = parse_job_args(TokenizeConfig, argv, prog="pipeline tokenize")
    try:
        spark = get_spark("pipeline-tokenize", spark_opts)
        set_shuffle_partitions(spark, spark_opts, [cfg.input])
        stats = spark_plan.run(spark, cfg)
    except BpeError as e:  # missing/wrong BPE ranks: say which flag fixes it, no traceback
        print("pipeline tokenize: error: %s" % e, file=sys.stderr)
        return 2
    dirs = spark_plan.output_dirs(cfg)
    for d in dirs.values():
        save_config(cfg, d, spark=spark_opts)
    print("tokenize: %d docs -> %d tokens in %s (%.1fs)" % (
        stats["records_out"], stats["tokens"], dirs["tokens"], stats["seconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

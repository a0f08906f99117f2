"""All stages in one Spark application: ingest -> dedup -> tokenize -> shards -> summary.

    pipeline run --input data/sample-1k/warc --output out/1k            # local[*]
    spark-submit jobs/run_pipeline.py --input s3://b/warc/ --output s3://b/out/   # EMR

The stages and their order are pipeline/stages.py; this file only wires them to a SparkSession.
"""
from __future__ import annotations

import sys
from typing import List, Optional

from pipeline import accounting, storage, stages
from pipeline.spark import SparkOptions, get_spark


def main(argv: Optional[List[str]] = None) -> int:
    ns = stages.build_parser().parse_args(argv)
    try:
        summary = stages.run_stages(get_spark("pipeline-run", SparkOptions.from_args(ns)), ns)
    except stages.StageStopped as e:  # a problem the user can act on: no traceback
        if e.summary:
            print(accounting.format_table(e.summary))
            print("summary: %s" % storage.join(ns.output, "summary.json"))
        print("pipeline run: error: %s" % e, file=sys.stderr)
        return 2
    print(accounting.format_table(summary))
    print("summary: %s" % storage.join(ns.output, "summary.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

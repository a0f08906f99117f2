"""The pipeline's stages in order, and running several of them in one Spark application
(`pipeline run`, `spark-submit jobs/run_pipeline.py`).

Each stage's Spark plan module exposes `run(spark, cfg) -> stats` (see pipeline/accounting.py) and
`output_dirs(cfg) -> {name: dir}`, the directories that get the stage's `_config.json`. Each stage
reads the previous stage's output directory, exactly as when the stages are run one by one.
"""
from __future__ import annotations

import argparse
import time
from collections import namedtuple
from typing import List, Sequence

from pipeline import accounting, storage
from pipeline.config import save_config
from pipeline.dedup import spark_plan as dedup_plan
from pipeline.dedup.config import DedupConfig
from pipeline.ingest import spark_plan as ingest_plan
from pipeline.ingest.config import IngestConfig
from pipeline.shards import spark_plan as shards_plan
from pipeline.shards.config import ShardsConfig
from pipeline.shards.plan import PlanError
from pipeline.spark import SparkOptions, set_shuffle_partitions
from pipeline.tokenize import spark_plan as tokenize_plan
from pipeline.tokenize.config import TokenizeConfig

# source: where the stage's --input comes from, relative to --output (None = the run's --input)
Stage = namedtuple("Stage", ["name", "config_class", "plan", "source"])
STAGES = (
    Stage("ingest", IngestConfig, ingest_plan, None),
    Stage("dedup", DedupConfig, dedup_plan, "docs"),
    Stage("tokenize", TokenizeConfig, tokenize_plan, "dedup/kept"),
    Stage("shards", ShardsConfig, shards_plan, "tokens"),
)

DESCRIPTION = """All stages in one Spark application: ingest -> dedup -> tokenize -> shards -> summary.

    pipeline run --input data/sample-1k/warc --output out/1k            # local[*]
    spark-submit jobs/run_pipeline.py --input s3://b/warc/ --output s3://b/out/   # EMR

Every stage's own flags are accepted here too (listed below by stage); each stage reads the previous
stage's output directory, exactly as when the stages are run one by one.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline run", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True,
                        help="WARC/parquet/jsonl files, directories or globs (local or s3://)")
    parser.add_argument("--output", required=True, help="output directory (local or s3://)")
    parser.add_argument("--stages", default=",".join(s.name for s in STAGES),
                        help="comma-separated subset of stages to run, in order (default: all)")
    for stage in STAGES:
        group = parser.add_argument_group("%s options" % stage.name)
        stage.config_class.add_arguments(group, skip=("input", "output"))
    SparkOptions.add_arguments(parser.add_argument_group("Spark options"))
    return parser


def stage_configs(ns: argparse.Namespace) -> List[tuple]:
    """(stage, its frozen config) for every stage `--stages` names, in pipeline order."""
    wanted = [s.strip() for s in ns.stages.split(",") if s.strip()]
    unknown = set(wanted) - {s.name for s in STAGES}
    if unknown:
        raise SystemExit("unknown stage(s): %s" % ", ".join(sorted(unknown)))
    out = []
    for stage in STAGES:
        if stage.name in wanted:
            inp = tuple(ns.input) if stage.source is None else storage.join(ns.output, stage.source)
            out.append((stage, stage.config_class.from_args(ns, input=inp, output=ns.output)))
    return out


def run_stage(spark, stage: Stage, cfg, spark_opts: SparkOptions) -> dict:
    """Run one stage under the Spark job group of its name (the Spark UI and its REST API show which
    stage a Spark job belongs to); write its configs; return its stats."""
    t0 = time.time()
    print("[%s] reading %s" % (stage.name, _describe(cfg.input)), flush=True)
    sc = spark.sparkContext
    sc.setJobGroup(stage.name, "pipeline stage %s" % stage.name)
    try:
        set_shuffle_partitions(spark, spark_opts, cfg.input)
        stats = dict(stage.plan.run(spark, cfg))
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
        sc.setLocalProperty("spark.job.description", None)
    for d in stage.plan.output_dirs(cfg).values():
        save_config(cfg, d, stats.get("resolved"), spark=spark_opts)
    stats.setdefault("stage", stage.name)
    stats.setdefault("seconds", round(time.time() - t0, 3))
    stats["shuffle_partitions"] = int(spark.conf.get("spark.sql.shuffle.partitions"))
    print("[%s] %d -> %d records in %.1fs" % (stage.name, stats["records_in"], stats["records_out"],
                                               stats["seconds"]), flush=True)
    return stats


class StageStopped(Exception):
    """A stage refused its input with a problem the user can act on (no tokens to shard, a
    validation split too large). `summary` is the checked summary of the stages before it, already
    written to summary.json."""

    def __init__(self, stage: str, message: str, summary: dict):
        super().__init__("%s: %s" % (stage, message))
        self.summary = summary


def run_stages(spark, ns: argparse.Namespace) -> dict:
    """Run the chosen stages one after the other; write and return the checked run summary.

    A stage that stops on a planning problem (pipeline.shards.plan.PlanError: e.g. a crawl whose
    every record was dropped leaves no tokens) still leaves summary.json, with every record of the
    stages that ran accounted for and `stopped_at` naming the stage; StageStopped carries it."""
    spark_opts = SparkOptions.from_args(ns)
    previous = spark.conf.get("spark.sql.shuffle.partitions")
    all_stats: List[dict] = []
    extra = {"input": list(ns.input), "output": ns.output}
    try:
        for stage, cfg in stage_configs(ns):
            try:
                all_stats.append(run_stage(spark, stage, cfg, spark_opts))
            except PlanError as e:
                summary = {}
                if all_stats:
                    summary = accounting.build_summary(
                        all_stats, extra=dict(extra, stopped_at={"stage": stage.name, "error": str(e)}))
                    accounting.write_summary(summary, ns.output)
                raise StageStopped(stage.name, str(e), summary) from e
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", previous)
    summary = accounting.build_summary(all_stats, extra=extra)
    accounting.write_summary(summary, ns.output)
    return summary


def _describe(paths) -> str:
    paths: Sequence[str] = [paths] if isinstance(paths, str) else list(paths)
    return paths[0] + (" and %d more" % (len(paths) - 1) if len(paths) > 1 else "")

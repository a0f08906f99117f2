"""All stages in one Spark application: ingest -> dedup -> tokenize -> shards -> summary.

    pipeline run --input data/sample-1k/warc --output out/1k            # local[*]
    spark-submit jobs/run_pipeline.py --input s3://b/warc/ --output s3://b/out/   # EMR

Every stage's own flags are accepted here too (`pipeline run --help` lists them by stage); each stage
reads the previous stage's output directory, exactly as when the stages are run one by one.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a file by spark-submit
    # Python put jobs/ first on sys.path, where jobs/tokenize.py would shadow the standard library's
    # tokenize module; replace it with the repository root so that `jobs` and `pipeline` import.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))

import argparse  # noqa: E402
import time  # noqa: E402
from typing import List, Optional  # noqa: E402

from jobs import dedup, ingest, shards, tokenize  # noqa: E402
from pipeline import accounting, storage  # noqa: E402
from pipeline.config import save_config  # noqa: E402
from pipeline.spark import get_spark  # noqa: E402

# stage name, job module, its config class, where its input comes from (None = the run's --input)
STAGES = [
    ("ingest", ingest, ingest.IngestConfig, None),
    ("dedup", dedup, dedup.DedupConfig, "docs"),
    ("tokenize", tokenize, tokenize.TokenizeConfig, "dedup/kept"),
    ("shards", shards, shards.ShardsConfig, "tokens"),
]
# where each stage's `_config.json` goes (the directories it writes), relative to --output
CONFIG_DIRS = {"ingest": ["docs", "ingest/dropped"], "dedup": ["dedup/kept", "dedup/report"], "tokenize": ["tokens"],
               "shards": ["shards"]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True,
                        help="WARC/parquet/jsonl files, directories or globs (local or s3://)")
    parser.add_argument("--output", required=True, help="output directory (local or s3://)")
    parser.add_argument("--stages", default=",".join(s[0] for s in STAGES),
                        help="comma-separated subset of stages to run, in order (default: all)")
    for name, _, config_class, _ in STAGES:
        group = parser.add_argument_group("%s options" % name)
        config_class.add_arguments(group, skip=("input", "output"))
    return parser


def stage_configs(ns: argparse.Namespace) -> List[tuple]:
    out = []
    wanted = [s.strip() for s in ns.stages.split(",") if s.strip()]
    unknown = set(wanted) - {s[0] for s in STAGES}
    if unknown:
        raise SystemExit("unknown stage(s): %s" % ", ".join(sorted(unknown)))
    for name, module, config_class, source in STAGES:
        if name not in wanted:
            continue
        inp = tuple(ns.input) if source is None else storage.join(ns.output, source)
        cfg = config_class.from_args(ns, input=inp, output=ns.output)
        out.append((name, module, cfg))
    return out


def run(spark, ns: argparse.Namespace) -> dict:
    all_stats = []
    for name, module, cfg in stage_configs(ns):
        t0 = time.time()
        stats = dict(module.run(spark, cfg))
        for rel in CONFIG_DIRS[name]:
            save_config(cfg, storage.join(ns.output, rel))
        stats.setdefault("stage", name)
        stats.setdefault("seconds", round(time.time() - t0, 3))
        all_stats.append(stats)
        print("[%s] %d -> %d records in %.1fs" % (name, stats["records_in"], stats["records_out"],
                                                   stats["seconds"]), flush=True)
    summary = accounting.build_summary(all_stats, extra={"input": list(ns.input), "output": ns.output})
    accounting.write_summary(summary, ns.output)
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    ns = build_parser().parse_args(argv)
    spark = get_spark("pipeline-run")
    summary = run(spark, ns)
    print(accounting.format_table(summary))
    print("summary: %s" % storage.join(ns.output, "summary.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

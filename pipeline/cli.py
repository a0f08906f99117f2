"""`pipeline <command> ...`: one entry point for every stage and tool.

Each command lives in its own module exposing `main(argv) -> int`; modules are imported only when
their command runs, so `pipeline dedup` never imports torch and `pipeline train` never starts Spark.
"""
from __future__ import annotations

import importlib
import sys
from typing import List, Optional

# command -> (module, one-line help)
COMMANDS = {
    "sample": ("pipeline.sample", "generate a labelled synthetic corpus (WARC + parquet + truth)"),
    "run": ("jobs.run_pipeline", "all stages: ingest -> dedup -> tokenize -> shards -> summary"),
    "ingest": ("jobs.ingest_job", "WARC/parquet/jsonl -> DIR/docs (id, url, text)"),
    "dedup": ("jobs.dedup_job", "MinHash-LSH near-duplicate removal -> DIR/dedup/{kept,report}"),
    "tokenize": ("jobs.tokenize_job", "GPT-2 BPE tokens -> DIR/tokens"),
    "shards": ("jobs.shards_job", "llm.c .bin shards -> DIR/shards"),
    "check-shards": ("pipeline.shards.check", "validate llm.c .bin shards the way llm.c's loader does"),
    "evaluate": ("pipeline.evaluate", "score a dedup report against ground truth"),
    "train": ("pipeline.gpt.train", "pretrain GPT-2 on llm.c shards (train_gpt2cu flags)"),
    "generate": ("pipeline.gpt.generate", "sample text from a checkpoint (KV cache)"),
    "tune": ("pipeline.tune.command", "tune the peak LR under a dollar budget (plan, price, trials, fit)"),
    "plot": ("pipeline.gpt.plot", "plot train/val loss and HellaSwag from log dirs (local or s3://)"),
    "upload-logs": ("pipeline.gpt.sync", "copy a training log dir to s3://BUCKET/RUN_CLUSTER/<dir name>/"),
    "emr": ("emr.launch", "EMR cluster: bundle/upload/create-cluster/submit/wait/logs/terminate"),
}


def usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: pipeline <command> [options]   (pipeline <command> --help for its options)", "",
             "commands:"]
    lines += ["  %s  %s" % (c.ljust(width), h) for c, (_, h) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print("pipeline: unknown command %r\n\n%s" % (command, usage()), file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

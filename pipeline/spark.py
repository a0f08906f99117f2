"""One place that builds the SparkSession, so local mode and EMR get the same settings.

Under `spark-submit` on EMR the master, executors and memory come from the cluster; we only add the
settings the jobs rely on (UTC, snappy parquet, no broadcast surprises). Run from a plain `python`
process (tests, `pipeline run` on a laptop) we start `local[*]` and point the Python workers at the
running interpreter: otherwise Spark launches whatever `python3` is on PATH, without our packages.

Progress: in local mode Spark's console progress bar (`[Stage 3:====>   (5 + 2) / 8]`, on stderr,
erased when each job ends) is on when stderr is a terminal, so long stages visibly move, and off
otherwise, so test logs and redirected output stay clean. On a cluster it stays as the cluster sets
it (off by default): a step's log file is no terminal.
"""
from __future__ import annotations

import os
import sys
from typing import Dict, Optional

DEFAULT_LOCAL_MASTER = "local[*]"


def _under_spark_submit() -> bool:
    # spark-submit launches the driver with these set; a plain python process has neither.
    return "SPARK_SUBMIT_OPTS" in os.environ or "PYSPARK_GATEWAY_PORT" in os.environ or \
        "SPARK_ENV_LOADED" in os.environ


def get_spark(app_name: str = "pipeline", master: Optional[str] = None,
              extra_conf: Optional[Dict[str, str]] = None, progress: Optional[bool] = None):
    """The active SparkSession, or a new one. `progress`: show Spark's console progress bar in local
    mode (None: when stderr is a terminal)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active

    builder = SparkSession.builder.appName(app_name)
    if master is None and not _under_spark_submit():
        master = os.environ.get("PIPELINE_SPARK_MASTER", DEFAULT_LOCAL_MASTER)
    if master is not None:
        builder = builder.master(master)
    if master is not None and master.startswith("local"):
        if progress is None:
            progress = sys.stderr.isatty()
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        builder = (builder
                   .config("spark.driver.memory", os.environ.get("PIPELINE_DRIVER_MEMORY", "4g"))
                   .config("spark.ui.enabled", "false")
                   .config("spark.ui.showConsoleProgress", "true" if progress else "false")
                   # A laptop has few cores: 200 shuffle partitions of a few KB each only add overhead.
                   .config("spark.sql.shuffle.partitions", os.environ.get("PIPELINE_SHUFFLE_PARTITIONS", "8"))
                   # A local JVM lives for one run: the C2 compiler's CPU (17 of the JVM's 52 CPU-s in
                   # a 100k-document dedup) never pays off there, while C1-compiled task code is only
                   # ~7% slower (docs/benchmarks/dedup.md). Cluster JVMs keep the default.
                   .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1"))
    conf = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.parquet.compression.codec": "snappy",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Adaptive execution may coalesce partitions differently from run to run; our outputs are
        # ordered explicitly, so AQE stays on for speed.
        "spark.sql.adaptive.enabled": "true",
        "spark.python.worker.reuse": "true",
    }
    conf.update(extra_conf or {})
    for k, v in conf.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("PIPELINE_SPARK_LOG_LEVEL", "WARN"))
    return spark

"""One place that builds the SparkSession, so local mode and EMR get the same settings.

Under `spark-submit` on EMR the master, executors and memory come from the cluster; we only add the
settings the jobs rely on (UTC, snappy parquet, no broadcast surprises). Run from a plain `python`
process (tests, `pipeline run` on a laptop) we start `--master` (default `local[*]`) with
`--driver-memory`, and point the Python workers at the running interpreter: otherwise Spark launches
whatever `python3` is on PATH, without our packages.

These settings are flags of every job (`SparkOptions`), saved under "spark" in each output's
`_config.json`, like the stage's own config: no environment variable steers a run.

Shuffle partitions: `--shuffle-partitions 0` (the default) sizes them per stage from the bytes the
stage reads (`auto_shuffle_partitions`), so 10k documents do not pay for hundreds of empty tasks and
a million do not run in a handful of huge ones that spill; adaptive execution then merges what turns
out small.

Progress: in local mode Spark's console progress bar (`[Stage 3:====>   (5 + 2) / 8]`, on stderr,
erased when each job ends) is on when stderr is a terminal, so long stages visibly move, and off
otherwise, so test logs and redirected output stay clean. On a cluster it stays as the cluster sets
it (off by default): a step's log file is no terminal.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple, Type, TypeVar, Union

from pipeline.config import JobConfig, flag

DEFAULT_LOCAL_MASTER = "local[*]"
# Bytes a stage reads per shuffle partition (auto). The shuffles of a stage together move about 1x
# its input bytes (ingest, tokenize) to 6x (dedup: shingle hashes for the buckets and for both ends of
# every candidate pair, over several exchanges; docs/SCALE.md), so 32 MiB of input keeps each task's
# share of one exchange near 100 MB: inside a 2-core local run's execution memory, and a few waves
# of tasks per core on a cluster.
INPUT_BYTES_PER_SHUFFLE_PARTITION = 32 << 20
# At least this many shuffle tasks per core, so one slow task does not leave the other cores idle.
MIN_SHUFFLE_TASKS_PER_CORE = 2

# HotSpot flags of a local launch's JVM (driver and executor in one), which lives for one run; cluster
# JVMs keep their defaults. Measured on the 100k-document dedup (docs/benchmarks/dedup.md):
# - C1 only: the C2 compiler spent 17 of the JVM's 52 CPU-s compiling code that then ran for
#   seconds, while C1-compiled task code is only ~7% slower.
# - G1 starts concurrent marking at a fixed 80% heap occupancy instead of its adaptive estimate. The
#   heap holds short-lived rows and one stored copy of the signatures; the adaptive start ran 0.5-4.6
#   CPU-s of marking per job, varying from run to run, the fixed start 0-0.2 (at 1M: 0.2 against
#   3.6-9.3), with no full collection.
LOCAL_JVM_OPTIONS = ("-XX:TieredStopAtLevel=1", "-XX:-G1UseAdaptiveIHOP", "-XX:InitiatingHeapOccupancyPercent=80")

C = TypeVar("C", bound=JobConfig)


@dataclass(frozen=True)
class SparkOptions(JobConfig):
    """How the job's SparkSession is started (flags shared by every job and `pipeline run`)."""
    master: Optional[str] = field(default=None, metadata=flag(
        "--master", help="Spark master for a plain `python` launch, e.g. local[2] (default: local[*]; "
        "under spark-submit the cluster's, and this flag is ignored)"))
    driver_memory: str = field(default="auto", metadata=flag(
        "--driver-memory", help="spark.driver.memory of a local launch, e.g. 8g; auto = half this "
        "machine's memory, 1g to 32g (under spark-submit use its own --driver-memory)"))
    shuffle_partitions: int = field(default=0, metadata=flag(
        "--shuffle-partitions", type=int, help="spark.sql.shuffle.partitions; 0 = per stage from the "
        "bytes it reads and the cores"))
    spark_log_level: str = field(default="WARN", metadata=flag(
        "--spark-log-level", choices=("ERROR", "WARN", "INFO", "DEBUG"), help="Spark's log level"))


def parse_job_args(config_class: Type[C], argv: Optional[Sequence[str]] = None,
                   prog: Optional[str] = None) -> Tuple[C, SparkOptions]:
    """A job's frozen config and its SparkOptions from one command line."""
    parser = argparse.ArgumentParser(prog=prog, description=config_class.__doc__)
    config_class.add_arguments(parser)
    SparkOptions.add_arguments(parser.add_argument_group("Spark"))
    ns = parser.parse_args(argv)
    return config_class.from_args(ns), SparkOptions.from_args(ns)


def _under_spark_submit() -> bool:
    # spark-submit launches the driver with these set; a plain python process has neither.
    return "SPARK_SUBMIT_OPTS" in os.environ or "PYSPARK_GATEWAY_PORT" in os.environ or \
        "SPARK_ENV_LOADED" in os.environ


def get_spark(app_name: str = "pipeline", options: Optional[SparkOptions] = None, master: Optional[str] = None,
              extra_conf: Optional[Dict[str, str]] = None, progress: Optional[bool] = None):
    """The active SparkSession, or a new one started with `options` (`master` overrides
    options.master). `progress`: show Spark's console progress bar in local mode (None: when stderr
    is a terminal)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active

    options = options or SparkOptions()
    master = master or options.master
    builder = SparkSession.builder.appName(app_name)
    if master is None and not _under_spark_submit():
        master = DEFAULT_LOCAL_MASTER
    if master is not None:
        builder = builder.master(master)
    if master is not None and master.startswith("local"):
        if progress is None:
            progress = sys.stderr.isatty()
        # Launch plumbing, not behaviour: the workers must run this interpreter, with our packages.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        builder = (builder
                   .config("spark.driver.memory", local_driver_memory(options.driver_memory))
                   .config("spark.ui.enabled", "false")
                   .config("spark.ui.showConsoleProgress", "true" if progress else "false")
                   .config("spark.driver.extraJavaOptions", " ".join(LOCAL_JVM_OPTIONS))
                   # pyspark's daemon, less the per-task re-read of archives, with the Arrow modules preloaded
                   .config("spark.python.daemon.module", "pipeline.spark_daemon"))
    conf = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.parquet.compression.codec": "snappy",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Adaptive execution may coalesce partitions differently from run to run; our outputs are
        # ordered explicitly, so AQE stays on for speed.
        "spark.sql.adaptive.enabled": "true",
        "spark.python.worker.reuse": "true",
    }
    if options.shuffle_partitions > 0:
        conf["spark.sql.shuffle.partitions"] = str(options.shuffle_partitions)
    conf.update(extra_conf or {})
    for k, v in conf.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(options.spark_log_level)
    return spark


def release(df) -> None:
    """Free a persisted or locally checkpointed DataFrame's blocks now. DataFrame.unpersist does not
    reach a local checkpoint's blocks, which Spark drops only once the driver has garbage-collected
    its RDD; the stages after it in one application (`pipeline run`) would share memory with them."""
    df.unpersist()
    plan = df._jdf.queryExecution().logical()
    if plan.nodeName() == "LogicalRDD":
        plan.rdd().unpersist(False)


def local_driver_memory(setting: str, physical_bytes: Optional[int] = None) -> str:
    """spark.driver.memory for a local launch. In local mode the driver JVM is also the only
    executor, so a fixed small heap is what limits corpus size on one machine: a million documents
    ran out of a 4g heap in dedup's cached signatures on a 24 GB machine. `auto` takes half the
    physical memory (the other half is left to the Python workers and the page cache), 1g to 32g."""
    if setting != "auto":
        return setting
    if physical_bytes is None:
        physical_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return "%dg" % min(32, max(1, physical_bytes // 2 // (1 << 30)))


def auto_shuffle_partitions(input_bytes: int, cores: int) -> int:
    """Shuffle partitions for a stage reading `input_bytes` on `cores` task slots: one per
    INPUT_BYTES_PER_SHUFFLE_PARTITION, at least MIN_SHUFFLE_TASKS_PER_CORE per core, rounded up to
    a multiple of the cores so the last wave of tasks fills every core."""
    cores = max(1, cores)
    n = max(MIN_SHUFFLE_TASKS_PER_CORE * cores, math.ceil(max(0, input_bytes) / INPUT_BYTES_PER_SHUFFLE_PARTITION))
    return int(math.ceil(n / cores) * cores)


def input_bytes(spark, paths: Union[str, Sequence[str]]) -> int:
    """Total size of the files under `paths` (files, directories or globs; local or s3://), through
    Hadoop's file system, so S3 costs one listing per path rather than a request per file."""
    from pipeline import storage

    jvm = spark.sparkContext._jvm
    hconf = spark.sparkContext._jsc.hadoopConfiguration()
    total = 0
    for p in ([paths] if isinstance(paths, str) else paths):
        path = jvm.org.apache.hadoop.fs.Path(storage.to_spark_path(p))
        fs = path.getFileSystem(hconf)
        for status in (fs.globStatus(path) or []):
            total += fs.getContentSummary(status.getPath()).getLength() if status.isDirectory() else status.getLen()
    return int(total)


def set_shuffle_partitions(spark, options: SparkOptions, paths: Union[str, Sequence[str]]) -> int:
    """Set spark.sql.shuffle.partitions for a stage reading `paths`: --shuffle-partitions if given,
    else auto_shuffle_partitions. Returns the number set."""
    n = options.shuffle_partitions or auto_shuffle_partitions(input_bytes(spark, paths),
                                                              spark.sparkContext.defaultParallelism)
    spark.conf.set("spark.sql.shuffle.partitions", str(n))
    return n

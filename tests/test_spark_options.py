"""The Spark flags every job takes (pipeline.spark.SparkOptions) and the per-stage shuffle sizing,
against sizes measured independently (os.path.getsize) and on a real SparkSession."""
import os

from pipeline.dedup.config import DedupConfig
from pipeline.spark import (INPUT_BYTES_PER_SHUFFLE_PARTITION, SparkOptions, auto_shuffle_partitions, input_bytes,
                            local_driver_memory, parse_job_args, set_shuffle_partitions)


def test_job_flags_give_the_stage_config_and_spark_options():
    cfg, opts = parse_job_args(DedupConfig, ["--input", "in/docs", "--output", "out", "--master", "local[3]",
                                             "--driver-memory", "6g", "--shuffle-partitions", "12"])
    assert cfg.input == "in/docs" and cfg.output == "out"
    assert opts == SparkOptions(master="local[3]", driver_memory="6g", shuffle_partitions=12)
    _, default = parse_job_args(DedupConfig, ["--input", "in/docs", "--output", "out"])
    assert default.master is None and default.shuffle_partitions == 0 and default.driver_memory == "auto"


def test_local_driver_memory_auto_is_half_the_machine(spark):
    gib = 1 << 30
    assert local_driver_memory("auto", 24 * gib) == "12g"
    assert local_driver_memory("auto", 25 * gib) == "12g"  # whole GiB, rounded down
    assert local_driver_memory("auto", 1 * gib) == "1g"  # never below 1g
    assert local_driver_memory("auto", 256 * gib) == "32g"  # nor above 32g
    assert local_driver_memory("6g", 24 * gib) == "6g"  # an explicit size is used as given
    # the test session was started with the default options: its heap is half of this machine
    with open("/proc/meminfo") as f:
        total_kib = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
    assert spark.conf.get("spark.driver.memory") == "%dg" % min(32, max(1, total_kib * 1024 // 2 // gib))


def test_local_jvm_runs_c1_and_starts_g1_marking_at_a_fixed_occupancy(spark):
    # What the running JVM reports through its own management interface, not the conf we passed.
    jvm = spark.sparkContext._jvm
    bean = jvm.java.lang.management.ManagementFactory.getPlatformMXBean(
        jvm.java.lang.Class.forName("com.sun.management.HotSpotDiagnosticMXBean"))
    option = {name: bean.getVMOption(name).getValue()
              for name in ("UseG1GC", "TieredStopAtLevel", "G1UseAdaptiveIHOP", "InitiatingHeapOccupancyPercent")}
    assert option == {"UseG1GC": "true", "TieredStopAtLevel": "1", "G1UseAdaptiveIHOP": "false",
                      "InitiatingHeapOccupancyPercent": "80"}


def test_auto_shuffle_partitions():
    mib = 1 << 20
    assert auto_shuffle_partitions(0, 2) == 4  # at least 2 per core
    assert auto_shuffle_partitions(10 * mib, 28) == 56
    # 1 GiB on 2 cores: 32 partitions of 32 MiB; 1 byte more needs a 33rd, rounded up to 34 for 2 cores
    assert INPUT_BYTES_PER_SHUFFLE_PARTITION == 32 * mib
    assert auto_shuffle_partitions(1024 * mib, 2) == 32
    assert auto_shuffle_partitions(1024 * mib + 1, 2) == 34
    assert auto_shuffle_partitions(10 * 1024 * mib, 28) == 336  # 320 -> the next multiple of 28


def test_input_bytes_and_setting_partitions(spark, tmp_path):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    sizes = {"a.parquet": 1000, "b.parquet": 2500, "sub/c.warc.gz": 70000}
    for name, n in sizes.items():
        (d / name).write_bytes(os.urandom(n))
    expected = sum(os.path.getsize(str(d / n)) for n in sizes)
    assert input_bytes(spark, [str(d)]) == expected
    assert input_bytes(spark, [str(d / "*.parquet")]) == 3500  # globs
    assert input_bytes(spark, [str(d / "a.parquet"), str(d / "sub")]) == 71000
    assert input_bytes(spark, [str(d / "missing-*")]) == 0

    before = spark.conf.get("spark.sql.shuffle.partitions")
    try:
        assert set_shuffle_partitions(spark, SparkOptions(shuffle_partitions=7), [str(d)]) == 7
        assert spark.conf.get("spark.sql.shuffle.partitions") == "7"
        # 73,500 bytes, far under one partition's 32 MiB: the floor of 2 per core, and the session has 4
        assert spark.sparkContext.defaultParallelism == 4
        assert set_shuffle_partitions(spark, SparkOptions(), [str(d)]) == 8
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", before)

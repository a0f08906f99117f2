"""What moving bytes costs the JVM in Spark local mode: CPU seconds per GB for each way the dedup job
moves data, measured on rows shaped like its signature rows (a 47-character id and ~2 KB of random,
incompressible binary, like packed shingle hashes).

    python bench/bench_spark_bytes.py                  # writes docs/benchmarks/results/spark_bytes.json
    python bench/bench_spark_bytes.py --rows 200000 --repeats 5

Each operation runs on `--rows` rows and on a tenth of them in the same warm Spark application
(`local[2]`, the JVM flags `pipeline dedup` uses); the difference of the JVM's CPU seconds (driver and
executor threads together, from /proc) over the difference of payload bytes is the cost per byte, so
the fixed cost of planning, scheduling and tiny tasks cancels out. Median of `--repeats` runs.

  scan          read the stored rows, sum the payload lengths (the base every other operation pays)
  to_python     stored rows -> Arrow -> a Python worker (mapInArrow), which counts them
  from_python   a Python worker makes the rows (mapInArrow) -> Arrow -> the JVM, which sums lengths
  shuffle       stored rows -> hash repartition by id (lz4-compressed shuffle files) -> sum lengths
  store         stored rows -> local checkpoint (rows in the block store) -> sum lengths
  parquet_write stored rows -> snappy parquet, payload without dictionary encoding
  parquet_read  that parquet -> sum lengths

docs/benchmarks/dedup.md multiplies these costs by the bytes each stage of the dedup job moves, to
give the CPU that the job's data flow costs before any per-row work.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile

import numpy as np
import pyarrow as pa

from bench_dedup import spark_cpu_s  # bench/ is sys.path[0] when a bench script runs
from runinfo import run_info

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PAYLOAD_BYTES = 2040  # 255 shingle hashes of 8 bytes: the median sample document's
OPERATIONS = ("scan", "to_python", "from_python", "shuffle", "store", "parquet_write", "parquet_read")


def make_rows(batches):
    """spark.range batches -> (id, payload): WARC-like ids and random bytes seeded by the first id."""
    for batch in batches:
        ids = batch.column("id").to_numpy()
        if not len(ids):
            continue
        rng = np.random.default_rng(int(ids[0]))
        payload = rng.integers(0, 256, size=len(ids) * PAYLOAD_BYTES, dtype=np.uint8)
        offsets = np.arange(0, len(ids) * PAYLOAD_BYTES + 1, PAYLOAD_BYTES, dtype=np.int32)
        yield pa.RecordBatch.from_arrays(
            [pa.array(["<urn:uuid:%08x-0000-4000-8000-%012x>" % (i % 2**32, i) for i in ids]),
             pa.BinaryArray.from_buffers(pa.binary(), len(ids), [None, pa.py_buffer(offsets),
                                                                 pa.py_buffer(payload)])],
            names=["id", "payload"])


def count_rows(batches):
    total = 0
    for batch in batches:
        total += batch.num_rows
    yield pa.RecordBatch.from_arrays([pa.array([total], pa.int64())], names=["rows"])


ROWS_SCHEMA = "id string, payload binary"


def run_operation(spark, name: str, rows: int, stored, work_dir: str) -> None:
    from pyspark.sql import functions as F

    from pipeline.dedup.spark_plan import release, write_parquet

    payload_sum = F.sum(F.length("payload"))
    if name == "scan":
        stored.agg(payload_sum).first()
    elif name == "to_python":
        stored.mapInArrow(count_rows, "rows long").agg(F.sum("rows")).first()
    elif name == "from_python":
        spark.range(0, rows, numPartitions=2).mapInArrow(make_rows, ROWS_SCHEMA).agg(payload_sum).first()
    elif name == "shuffle":
        stored.repartition(4, "id").agg(payload_sum).first()
    elif name == "store":
        checkpoint = stored.select("id", "payload").localCheckpoint(eager=True)
        checkpoint.agg(payload_sum).first()
        release(checkpoint)
    elif name == "parquet_write":
        write_parquet(stored, os.path.join(work_dir, "p%d" % rows), ["id", "payload"])
    elif name == "parquet_read":
        spark.read.parquet(os.path.join(work_dir, "p%d" % rows)).agg(payload_sum).first()
    else:
        raise ValueError(name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=100000, help="rows of the large run (the small run has a tenth)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results", "spark_bytes.json"))
    args = p.parse_args(argv)

    from pipeline.spark import get_spark

    spark = get_spark("bench-spark-bytes", master=args.master)
    jvm = spark.sparkContext._gateway.proc.pid
    work_dir = tempfile.mkdtemp(prefix="spark-bytes-")
    sizes = (args.rows // 10, args.rows)
    stored = {n: spark.range(0, n, numPartitions=2).mapInArrow(make_rows, ROWS_SCHEMA).localCheckpoint(eager=True)
              for n in sizes}
    row_bytes = 47 + PAYLOAD_BYTES
    cpu = {name: {n: [] for n in sizes} for name in OPERATIONS}
    try:
        for name in OPERATIONS:  # one warm-up of each at the small size: class loading, C1
            run_operation(spark, name, sizes[0], stored[sizes[0]], work_dir)
        for _ in range(args.repeats):
            for name in OPERATIONS:
                for n in sizes:
                    before = spark_cpu_s(jvm)["jvm"]
                    run_operation(spark, name, n, stored[n], work_dir)
                    cpu[name][n].append(spark_cpu_s(jvm)["jvm"] - before)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    moved_gb = (sizes[1] - sizes[0]) * row_bytes / 1e9
    results = []
    print("JVM CPU to move rows of a %d-byte id + %d-byte payload, %s, median of %d" %
          (47, PAYLOAD_BYTES, args.master, args.repeats))
    print("%-14s %12s %12s %26s" % ("operation", "CPU-s small", "CPU-s large", "CPU-s per GB (= ns/byte)"))
    for name in OPERATIONS:
        small, large = (statistics.median(cpu[name][n]) for n in sizes)
        per_gb = (large - small) / moved_gb
        results.append({"operation": name, "rows": list(sizes), "jvm_cpu_s_small": small,
                        "jvm_cpu_s_large": large, "runs": {str(n): cpu[name][n] for n in sizes},
                        "jvm_cpu_s_per_gb": round(per_gb, 3)})
        print("%-14s %12.2f %12.2f %26.2f" % (name, small, large, per_gb))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"run": run_info(), "master": args.master, "row_bytes": row_bytes,
                   "results": results}, f, indent=1)
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

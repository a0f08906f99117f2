"""End-to-end local throughput: docs/s per stage at several corpus sizes, and how cost scales.

    python bench/bench_pipeline.py --sizes 10000 100000 [--master local[2]] [--extractor bs4]

For each size: generate a labelled sample (cached under bench/data/), run all stages through the same
code as `pipeline run`, and record each stage's wall time from the run summary, the whole run's CPU
seconds (driver, JVM and Python workers: the fair number on a shared machine) and dedup quality
against the exact-Jaccard truth. Prints a table and writes JSON to --out (default
bench/results/pipeline.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from runinfo import proc_tree_cpu_s, run_info, self_cpu_s  # bench/ is sys.path[0] when a bench script runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--master", default="local[*]")
    ap.add_argument("--extractor", default="bs4")
    ap.add_argument("--data", default=os.path.join(REPO, "bench", "data"))
    ap.add_argument("--out", "--json", dest="json", default=os.path.join(REPO, "bench", "results", "pipeline.json"),
                    help="where to write the JSON results")
    args = ap.parse_args()

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    from pipeline import stages
    from pipeline import evaluate
    from pipeline.sample import write_sample
    from pipeline.spark import get_spark

    spark = get_spark("bench-pipeline", master=args.master)
    cores = spark.sparkContext.defaultParallelism
    rows = []
    for n in args.sizes:
        sample_dir = os.path.join(args.data, "sample-%d" % n)
        if not os.path.exists(os.path.join(sample_dir, "truth.parquet")):
            t0 = time.time()
            write_sample(sample_dir, n, seed=0)
            print("generated %d docs in %.1fs" % (n, time.time() - t0), flush=True)
        out = os.path.join(args.data, "out-%d" % n)
        shutil.rmtree(out, ignore_errors=True)
        ns = stages.build_parser().parse_args(
            ["--input", os.path.join(sample_dir, "warc"), "--output", out, "--extractor", args.extractor])
        jvm = spark.sparkContext._gateway.proc.pid
        t0, c0 = time.time(), proc_tree_cpu_s(jvm) + self_cpu_s()
        summary = stages.run_stages(spark, ns)
        wall, cpu = time.time() - t0, proc_tree_cpu_s(jvm) + self_cpu_s() - c0
        import pyarrow.parquet as pq
        scores = evaluate.score(pq.read_table(os.path.join(out, "dedup", "report")).to_pandas(),
                                pq.read_table(os.path.join(sample_dir, "truth.parquet")).to_pandas())
        row = {"docs": n, "records_in": summary["records_in"], "wall_s": round(wall, 2),
               "cpu_s": round(cpu, 1), "docs_per_cpu_s": round(n / cpu, 1), "cores": cores,
               "has_dup_f1": scores["has_dup"]["f1"], "pair_f1": scores["pairs"]["f1"], "stages": {}}
        for st in summary["stages"]:
            row["stages"][st["stage"]] = {"seconds": st["seconds"], "records_in": st["records_in"],
                                          "docs_per_s": round(st["records_in"] / max(st["seconds"], 1e-9), 1)}
        rows.append(row)

    print()
    stages = ["ingest", "dedup", "tokenize", "shards"]
    print("%8s %8s %8s " % ("docs", "wall s", "CPU s") + " ".join("%18s" % ("%s docs/s" % s) for s in stages)
          + "  %8s %8s" % ("dupF1", "pairF1"))
    for r in rows:
        print("%8d %8.1f %8.1f " % (r["docs"], r["wall_s"], r["cpu_s"])
              + " ".join("%18.1f" % r["stages"][s]["docs_per_s"] for s in stages)
              + "  %8.4f %8.4f" % (r["has_dup_f1"], r["pair_f1"]))
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        print("scaling %d -> %d docs (x%.1f): wall time x%.2f, CPU time x%.2f" % (
            a["docs"], b["docs"], b["docs"] / a["docs"], b["wall_s"] / a["wall_s"], b["cpu_s"] / a["cpu_s"]))
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"run": run_info(), "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                               "master": args.master, "extractor": args.extractor},
                   "runs": rows}, f, indent=2)
    print("wrote", args.json)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

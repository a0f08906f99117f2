"""Dedup speed: our stage vs single-process datasketch MinHash + MinHashLSH, side by side, same corpus.

    python bench/bench_dedup.py                       # 10k and 100k docs, Spark local[2]
    python bench/bench_dedup.py --sizes 10000 --master local[1]

For each size it times, on the same documents (the `pipeline sample` corpus, generated if missing):
  datasketch   per doc: shingle_strings -> MinHash(128).update_batch -> MinHashLSH.insert; then query
               every doc (threshold as ours; datasketch picks its own bands x rows); one process
  core         pipeline.dedup.local.dedup_local: our signatures + LSH + verification + components,
               one process, no Spark
  spark        pipeline.dedup.spark_plan.run: the whole stage on Spark (read parquet .. write kept + report)

Times are wall seconds and CPU seconds. For Spark the CPU seconds are those of the JVM and every
Python worker (the /proc process tree under the JVM), so "docs per CPU-second" compares work per core
fairly even on a shared, noisy machine; wall x cores is printed too. Results: bench/results/dedup.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from runinfo import proc_tree_cpu_s, run_info, self_cpu_s  # bench/ is sys.path[0] when a bench script runs


def corpus(size: int, data_dir: str, seed: int):
    import pandas as pd

    out = os.path.join(data_dir, "sample-%d-seed%d" % (size, seed))
    if not os.path.exists(os.path.join(out, "truth.parquet")):
        from pipeline.sample import write_sample

        print("generating %d-doc sample in %s ..." % (size, out), flush=True)
        write_sample(out, size, seed)
    return out, pd.read_parquet(os.path.join(out, "parquet"))


def bench_datasketch(ids, texts, threshold: float, num_perm: int):
    from datasketch import MinHash, MinHashLSH

    from pipeline.dedup.shingles import shingle_strings

    t0, c0 = time.time(), self_cpu_s()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    sketches = []
    for doc_id, text in zip(ids, texts):
        m = MinHash(num_perm=num_perm)
        m.update_batch([s.encode("utf-8") for s in shingle_strings(text or "")])
        lsh.insert(doc_id, m)
        sketches.append(m)
    pairs = 0
    for doc_id, m in zip(ids, sketches):
        pairs += sum(1 for other in lsh.query(m) if other != doc_id)
    return {"wall_s": time.time() - t0, "cpu_s": self_cpu_s() - c0, "cores": 1,
            "candidate_pairs": pairs // 2, "bands_rows": [lsh.b, lsh.r]}


def bench_core(ids, texts, threshold: float, num_perm: int):
    from pipeline.dedup.local import dedup_local

    t0, c0 = time.time(), self_cpu_s()
    _, stats = dedup_local(ids, texts, threshold=threshold, num_perm=num_perm)
    return {"wall_s": time.time() - t0, "cpu_s": self_cpu_s() - c0, "cores": 1,
            "candidate_pairs": stats["candidate_pairs"], "verified_pairs": stats["verified_pairs"],
            "duplicates_removed": stats["duplicates_removed"]}


def bench_spark(spark, cores: int, sample_dir: str, out_dir: str, threshold: float, num_perm: int):
    from pipeline.dedup.spark_plan import run
    from pipeline.dedup.config import DedupConfig
    from pipeline.evaluate import score

    import pandas as pd

    import pyarrow.parquet as pq

    # The sample is one parquet file with one row group, which Spark reads as ONE task; ingest output
    # is many part files. Give Spark 4 row groups per core so every core gets work, as it would.
    table = pq.read_table(os.path.join(sample_dir, "parquet"))
    os.makedirs(os.path.join(out_dir, "in"))
    pq.write_table(table, os.path.join(out_dir, "in", "docs.parquet"),
                   row_group_size=max(1, -(-table.num_rows // (4 * cores))))
    cfg = DedupConfig(input=os.path.join(out_dir, "in"), output=out_dir, threshold=threshold,
                      num_perm=num_perm)
    jvm = spark.sparkContext._gateway.proc.pid
    t0, c0 = time.time(), proc_tree_cpu_s(jvm) + self_cpu_s()
    stats = run(spark, cfg)
    wall, cpu = time.time() - t0, proc_tree_cpu_s(jvm) + self_cpu_s() - c0
    report = pd.read_parquet(os.path.join(out_dir, "dedup", "report"))
    truth = pd.read_parquet(os.path.join(sample_dir, "truth.parquet"))
    s = score(report, truth)
    return {"wall_s": wall, "cpu_s": cpu, "cores": cores, "candidate_pairs": stats["candidate_pairs"],
            "verified_pairs": stats["verified_pairs"], "duplicates_removed": stats["duplicates_removed"],
            "cc_rounds": stats["cc_rounds"], "phase_seconds": stats["phase_seconds"],
            "bands_rows": [stats["bands"], stats["rows"]], "scores": s}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    p.add_argument("--master", default="local[2]")
    p.add_argument("--threshold", type=float, default=0.8)
    p.add_argument("--num-perm", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "pipeline-bench-data"),
                   help="where generated sample corpora are cached")
    p.add_argument("--warmup-docs", type=int, default=2000,
                   help="run the Spark job once on this many docs first (JVM JIT, codegen cache, "
                        "Python workers), as a long-running job would be; 0 = cold")
    p.add_argument("--sweep", nargs="*", default=[], metavar="BxRwW",
                   help="also score the single-process core with these bands x rows / windows on the "
                        "first size, e.g. 9x13w4 16x8w2 18x7w4 25x5w4")
    p.add_argument("--spark-conf", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra Spark settings for the session, e.g. spark.shuffle.compress=false")
    p.add_argument("--skip", nargs="*", default=[], choices=["datasketch", "core", "spark"])
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results", "dedup.json"))
    args = p.parse_args(argv)

    from pipeline.spark import get_spark

    cores = int(args.master[6:-1]) if args.master.startswith("local[") and args.master[6:-1].isdigit() \
        else os.cpu_count()
    spark = None
    if "spark" not in args.skip:
        spark = get_spark("bench-dedup", master=args.master,
                          extra_conf=dict(kv.split("=", 1) for kv in args.spark_conf))
        spark.range(1000).selectExpr("sum(id)").collect()  # start the JVM and Python workers first
    results = []
    if spark is not None and args.warmup_docs:
        sample_dir, docs = corpus(args.sizes[0], args.data_dir, args.seed)
        with tempfile.TemporaryDirectory(prefix="bench-dedup-warmup-") as tmp:
            os.makedirs(os.path.join(tmp, "sample", "parquet"))
            docs.head(args.warmup_docs).to_parquet(os.path.join(tmp, "sample", "parquet", "docs.parquet"))
            docs.head(args.warmup_docs)[["id"]].assign(cluster=docs["id"]).to_parquet(
                os.path.join(tmp, "sample", "truth.parquet"))
            w = bench_spark(spark, cores, os.path.join(tmp, "sample"), os.path.join(tmp, "out"),
                            args.threshold, args.num_perm)
            print("warm-up on %d docs: %.1f s wall, %.1f cpu-s" % (args.warmup_docs, w["wall_s"], w["cpu_s"]))
    for size in args.sizes:
        sample_dir, docs = corpus(size, args.data_dir, args.seed)
        ids, texts = docs["id"].tolist(), docs["text"].tolist()
        row = {"docs": size, "corpus": sample_dir}
        if "datasketch" not in args.skip:
            row["datasketch"] = bench_datasketch(ids, texts, args.threshold, args.num_perm)
        if "core" not in args.skip:
            row["core"] = bench_core(ids, texts, args.threshold, args.num_perm)
        if spark is not None:
            with tempfile.TemporaryDirectory(prefix="bench-dedup-") as tmp:
                row["spark"] = bench_spark(spark, cores, sample_dir, tmp, args.threshold, args.num_perm)
        for name in ("datasketch", "core", "spark"):
            if name in row:
                r = row[name]
                r["docs_per_cpu_s"] = size / r["cpu_s"]
                r["docs_per_core_s"] = size / (r["wall_s"] * r["cores"])
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "corpus"}, default=str)[:400], flush=True)

    head = "%-7s %-11s %9s %9s %7s %14s %15s %10s" % ("docs", "method", "wall s", "cpu s", "cores",
                                                      "docs/cpu-s", "docs/core-s", "vs dsketch")
    print("\n" + head + "\n" + "-" * len(head))
    for row in results:
        base = row.get("datasketch")
        for name in ("datasketch", "core", "spark"):
            if name not in row:
                continue
            r = row[name]
            speed = "%.2fx" % (r["docs_per_cpu_s"] / base["docs_per_cpu_s"]) if base else "-"
            print("%-7d %-11s %9.2f %9.2f %7d %14.0f %15.0f %10s" % (
                row["docs"], name if name != "spark" else "spark " + args.master, r["wall_s"], r["cpu_s"],
                r["cores"], r["docs_per_cpu_s"], r["docs_per_core_s"], speed))
    if len(results) >= 2:
        a, b = results[0], results[-1]
        for name in ("datasketch", "core", "spark"):
            if name in a and name in b:
                print("scaling %-10s %dk -> %dk docs: cpu x%.1f for x%.1f docs" % (
                    name, a["docs"] // 1000, b["docs"] // 1000, b[name]["cpu_s"] / a[name]["cpu_s"],
                    b["docs"] / a["docs"]))
    for row in results:
        if "spark" in row:
            pf = row["spark"]["scores"]
            print("quality %dk (spark vs truth.parquet): %s" % (row["docs"] // 1000, json.dumps(
                {k: pf[k] for k in ("pairs", "has_dup")}, default=str)))
    sweep = []
    if args.sweep:
        import pandas as pd

        from pipeline.dedup.local import dedup_local
        from pipeline.evaluate import score

        sample_dir, docs = corpus(args.sizes[0], args.data_dir, args.seed)
        truth = pd.read_parquet(os.path.join(sample_dir, "truth.parquet"))
        print("\n%-10s %7s %11s %9s %9s %9s %8s" % ("bands", "window", "candidates", "verified",
                                                    "pairs P", "pairs R", "F1"))
        for spec in args.sweep:
            br, window = spec.split("w")
            bands, rows = (int(x) for x in br.split("x"))
            report, stats = dedup_local(docs["id"].tolist(), docs["text"].tolist(), args.threshold,
                                        num_perm=args.num_perm, bands=bands, rows=rows, window=int(window))
            pf = score(pd.DataFrame(report), truth)["pairs"]
            sweep.append({"bands": bands, "rows": rows, "window": int(window), "stats": stats, "pairs": pf})
            print("%-10s %7s %11d %9d %9.4f %9.4f %8.4f" % (br, window, stats["candidate_pairs"],
                                                         stats["verified_pairs"], pf["precision"],
                                                         pf["recall"], pf["f1"]))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"run": run_info(), "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                               "warmup_docs": args.warmup_docs,
                               "load_avg_at_end": os.getloadavg()},
                   "master": args.master, "spark_conf": args.spark_conf, "threshold": args.threshold, "num_perm": args.num_perm,
                   "results": results, "sweep": sweep}, f, indent=2, sort_keys=True, default=str)
    print("wrote", args.out)
    if spark is not None:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

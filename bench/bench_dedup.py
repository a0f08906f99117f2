"""Dedup speed side by side, one run, same corpus: datasketch vs our single-process core vs the Spark job.

    python bench/bench_dedup.py --docs 10000                 # writes docs/benchmarks/results/dedup_side_by_side_10000.json
    python bench/bench_dedup.py --docs 100000 --data-dir ~/bench-data
    python bench/bench_dedup.py --docs 1000000 --skip datasketch --no-rerun-check --data-dir ~/bench-data
    python bench/bench_dedup.py --docs 10000 --sweep 9x13w4 16x8w2 18x7w4 25x5w4   # banding vs recall

Corpus: that of bench/bench_scale.py (`ensure_corpus`): `pipeline sample --docs N --seed 0` up to
`--part-docs` (100k) documents, above that N / part-docs samples with seeds 0, 1, ... read together,
cached in `--data-dir` as sample-<docs>-s<seed> and generated when missing. On these documents it
times, one after another in this process:
  datasketch   MinHash(num_perm) + MinHashLSH with OUR bands x rows (`params=`), one process, shingles
               from our duplicate definition (`shingle_strings`); insert every doc, then query every
               doc. Candidate pairs only: no verification, no clusters, nothing written. Hours at 1M
               documents: `--skip datasketch` leaves it out.
  core         pipeline.dedup.local.dedup_local: signatures, buckets, exact verification, union-find,
               keep rule; one process, no Spark.
  job          pipeline.dedup.spark_plan.run with the shuffle partitions `pipeline dedup` picks: read
               parquet .. write dedup/kept + dedup/report, Spark `--master` (local[2]) right after a
               warm-up run on the corpus's first `--warmup-docs` docs in the same application, as a
               long-running job would be.
Then the job runs a second time into another directory and the two outputs must be byte-identical
(`--no-rerun-check` skips that), and the job's report must equal the core's (same algorithm).

CPU seconds: resource.getrusage for datasketch and the core; for the job the JVM (driver and executor
threads, JIT and GC included), every Python worker under it (live and reaped), and the driver's Python,
each reported apart; the JVM's CPU also by thread name (/proc/<pid>/task), and every Spark stage's
task metrics (tasks, task-thread CPU, GC, shuffle bytes) and the Arrow bytes of every Python operator
(SQL metrics) from the status REST API on loopback. On a
shared machine CPU seconds, not wall seconds, are the fair measure of work.
Quality: pairs/dup-doc precision, recall and F1 of the core's and the job's reports against the
corpus's truth.parquet (exact all-pairs Jaccard, `pipeline.exact_jaccard`, independent of MinHash/LSH).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# bench/ is sys.path[0] when a bench script runs
from bench_scale import SparkRest, ensure_corpus, status_api_conf
from runinfo import descendants, proc_stat, run_info, self_cpu_s, thread_cpu_s


def spark_cpu_s(jvm_pid: int) -> dict:
    """CPU seconds so far of the JVM itself, of the Python workers (every process under the JVM, live
    ones from /proc and reaped ones from the JVM's cutime/cstime) and of this driver process."""
    tick, table = os.sysconf("SC_CLK_TCK"), proc_stat()
    jvm_times = [int(x) / tick for x in table[jvm_pid][11:15]] if jvm_pid in table else [0.0] * 4
    workers = sum(jvm_times[2:]) + sum(sum(int(x) for x in table[p][11:15]) / tick
                                       for p in descendants(table, jvm_pid))
    return {"jvm": sum(jvm_times[:2]), "python_workers": workers, "driver_python": self_cpu_s()}


def read_docs(sample_dirs):
    """The samples' documents as one Arrow table (read once: the benchmark's systems and the job's
    input copy all take them from here)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(os.path.join(d, "parquet")) for d in sample_dirs])


def corpus(size: int, data_dir: str, part_docs: int):
    """(sample directories, their documents in one Arrow table, their truth in one DataFrame): the
    corpus of bench_scale, one `pipeline sample --seed 0` up to `part_docs` documents, above that
    size / part_docs samples of part_docs documents with seeds 0, 1, ... (generated when missing).
    Near-duplicates stay within a sample; ids are unique across samples, so truths concatenate."""
    import pandas as pd

    dirs = ensure_corpus(data_dir, size, part_docs)
    truth = pd.concat([pd.read_parquet(os.path.join(d, "truth.parquet")) for d in dirs], ignore_index=True)
    return dirs, read_docs(dirs), truth


def bench_datasketch(ids, texts, threshold: float, num_perm: int, bands: int, rows: int):
    from datasketch import MinHash, MinHashLSH

    from pipeline.dedup.shingles import shingle_strings

    t0, c0 = time.time(), self_cpu_s()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=(bands, rows))
    sketches = []
    for doc_id, text in zip(ids, texts):
        m = MinHash(num_perm=num_perm)
        m.update_batch([s.encode("utf-8") for s in shingle_strings(text or "")])
        lsh.insert(doc_id, m)
        sketches.append(m)
    pairs = 0
    for doc_id, m in zip(ids, sketches):
        pairs += sum(1 for other in lsh.query(m) if other != doc_id)
    return {"wall_s": time.time() - t0, "cpu_s": self_cpu_s() - c0, "candidate_pairs": pairs // 2,
            "bands_rows": [lsh.b, lsh.r]}


def bench_core(ids, texts, threshold: float, num_perm: int):
    from pipeline.dedup.local import dedup_local

    t0, c0 = time.time(), self_cpu_s()
    report, stats = dedup_local(ids, texts, threshold=threshold, num_perm=num_perm)
    return {"wall_s": time.time() - t0, "cpu_s": self_cpu_s() - c0,
            "candidate_pairs": stats["candidate_pairs"], "verified_pairs": stats["verified_pairs"],
            "duplicates_removed": stats["duplicates_removed"]}, report


def jvm_threads_delta(before: dict, after: dict, jvm_total_s: float) -> dict:
    """JVM CPU seconds between two thread_cpu_s snapshots, by thread name with its number stripped
    ("GC Thread#3" -> "GC Thread"); threads that ended in between (Spark's per-task Python writer
    threads, among others) are only in the process total, so they show as "(ended threads)"."""
    out = {}
    for tid, (name, cpu) in after.items():
        key = re.sub(r"[\s#\-]*\d+$", "", name) or name
        out[key] = out.get(key, 0.0) + cpu - before.get(tid, (name, 0.0))[1]
    out["(ended threads)"] = jvm_total_s - sum(out.values())
    return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if abs(v) >= 0.05}


STAGE_FIELDS = ("numTasks", "executorCpuTime", "executorRunTime", "jvmGcTime", "inputBytes", "outputBytes",
                "shuffleReadBytes", "shuffleWriteBytes", "memoryBytesSpilled", "diskBytesSpilled")


def spark_stages(rest, group: str) -> dict:
    """Per Spark stage of job group `group` (status REST API): tasks, task-thread CPU and run time,
    GC, bytes; plus the Spark job count. Times in seconds."""
    jobs, ran = rest.group_stages(group)
    stages = []
    for st in ran:
        row = {"stage": st["stageId"], "name": st["name"], "description": st.get("description", "")}
        for k in STAGE_FIELDS:
            v = int(st.get(k) or 0)
            row[k] = round(v / 1e9, 3) if k == "executorCpuTime" else round(v / 1e3, 3) if k in (
                "executorRunTime", "jvmGcTime") else v
        stages.append(row)
    return {"spark_jobs": len(jobs), "stages": stages,
            "executor_cpu_s": round(sum(r["executorCpuTime"] for r in stages), 2),
            "gc_s": round(sum(r["jvmGcTime"] for r in stages), 2)}


SIZE = re.compile(r"([\d.]+) (B|KiB|MiB|GiB|TiB)\b")
UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def sql_executions(rest, details: bool = True) -> list:
    return rest._get("/applications/%s/sql?details=%s&length=100000" % (rest.app, str(details).lower()))


def python_bytes(rest, after_execution: int) -> dict:
    """Arrow bytes between the JVM and the Python workers, per Python operator (Spark's SQL metrics
    "data sent to / returned from Python workers"), over the SQL executions with an id above
    `after_execution`. The UI shows them rounded to 3 significant digits."""
    operators = []
    for execution in sql_executions(rest):
        if execution["id"] <= after_execution:
            continue
        for node in execution.get("nodes", []):
            sizes = {}
            for metric in node.get("metrics", []):
                for key, label in (("sent", "data sent to Python workers"),
                                   ("returned", "data returned from Python workers")):
                    found = SIZE.search(metric["value"]) if metric["name"] == label else None
                    if found:
                        sizes[key] = int(float(found.group(1)) * UNITS[found.group(2)])
            if sizes:
                operators.append(dict(execution=execution["id"], operator=node["nodeName"], **sizes))
    return {"sent": sum(o.get("sent", 0) for o in operators),
            "returned": sum(o.get("returned", 0) for o in operators), "operators": operators}


def bench_job(spark, rest, label: str, input_dir: str, out_dir: str, threshold: float, num_perm: int,
              shuffle_partitions: int = 0):
    """One run of the dedup job as `pipeline dedup` runs it (shuffle partitions set from the input's
    bytes unless given), under Spark job group `label`, measured from /proc and the REST API."""
    from pipeline.dedup.config import DedupConfig
    from pipeline.dedup.spark_plan import run
    from pipeline.spark import SparkOptions, set_shuffle_partitions

    cfg = DedupConfig(input=input_dir, output=out_dir, threshold=threshold, num_perm=num_perm)
    jvm = spark.sparkContext._gateway.proc.pid
    sc = spark.sparkContext
    partitions = set_shuffle_partitions(spark, SparkOptions(shuffle_partitions=shuffle_partitions), [input_dir])
    last_execution = max((e["id"] for e in sql_executions(rest, details=False)), default=-1) \
        if rest is not None else -1
    sc.setLocalProperty("spark.jobGroup.id", label)
    threads0 = thread_cpu_s(jvm)
    t0, c0 = time.time(), spark_cpu_s(jvm)
    try:
        stats = run(spark, cfg)
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    wall, c1 = time.time() - t0, spark_cpu_s(jvm)
    cpu = {k: c1[k] - c0[k] for k in c0}
    out = {"wall_s": wall, "cpu_s": sum(cpu.values()), "cpu_s_parts": cpu, "shuffle_partitions": partitions,
           "jvm_threads_cpu_s": jvm_threads_delta(threads0, thread_cpu_s(jvm), cpu["jvm"]),
           "candidate_pairs": stats["candidate_pairs"], "verified_pairs": stats["verified_pairs"],
           "duplicates_removed": stats["duplicates_removed"], "records_in": stats["records_in"],
           "records_out": stats["records_out"], "cc_rounds": stats["cc_rounds"],
           "phase_seconds": stats["phase_seconds"], "bands_rows": [stats["bands"], stats["rows"]]}
    if rest is not None:
        out["spark"] = spark_stages(rest, label)
        out["python_bytes"] = python_bytes(rest, last_execution)
    return out


def job_input(table, dest: str, cores: int, limit: int = 0) -> str:
    """The documents (an Arrow table) as ONE parquet file with many row groups. A sample is one
    parquet file with one row group, which Spark would read as one task; ingest output is many part
    files. At least 4 row groups per core so every core gets signature work, and at most ~25k
    documents each."""
    import pyarrow.parquet as pq

    if limit:
        table = table.slice(0, limit)
    os.makedirs(dest)
    groups = max(4 * cores, -(-table.num_rows // 25000))
    pq.write_table(table, os.path.join(dest, "docs.parquet"), row_group_size=max(1, -(-table.num_rows // groups)))
    return dest


def output_bytes(out_dir: str) -> dict:
    """{'kept/part-00000': bytes, ...}: the data files of the job's two outputs (names without the
    per-write uuid)."""
    files = {}
    for d in ("kept", "report"):
        for p in glob.glob(os.path.join(out_dir, "dedup", d, "part-*.parquet")):
            with open(p, "rb") as f:
                files["%s/%s" % (d, os.path.basename(p)[:10])] = f.read()
    return files


def quality(report, truth) -> dict:
    from pipeline.evaluate import score

    s = score(report, truth)
    return {k: s[k] for k in ("pairs", "has_dup")}


def warm_up(spark, src: str, out_dir: str, args) -> None:
    """Run the job once on the warm-up input `src`, right before a timed job: a warm-up at the start
    would be undone while datasketch and the core run (Spark stops Python workers left idle for a
    minute)."""
    try:
        w = bench_job(spark, None, "warmup", src, out_dir, args.threshold, args.num_perm, args.shuffle_partitions)
        print("warm-up on %d docs: %.1f s wall, %.1f cpu-s" % (args.warmup_docs, w["wall_s"], w["cpu_s"]), flush=True)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def bench_size(spark, rest, size: int, args, cores: int) -> dict:
    import pandas as pd

    from pipeline.dedup.lsh import resolve_bands_rows

    sample_dirs, docs, truth = corpus(size, args.data_dir, args.part_docs)
    tmp = src = warmup_src = None
    if spark is not None:  # the job's input copies, written before the documents are let go
        tmp = tempfile.mkdtemp(prefix="bench-dedup-", dir=args.work_dir)
        src = job_input(docs, os.path.join(tmp, "in"), cores)
        if args.warmup_docs:  # the corpus's first documents
            warmup_src = job_input(docs, os.path.join(tmp, "warmup-in"), cores, limit=args.warmup_docs)
    ids, texts = docs.column("id").to_pylist(), docs.column("text").to_pylist()
    del docs
    bands, rows = resolve_bands_rows(args.threshold, args.num_perm)
    row = {"docs": size, "corpus": sample_dirs}
    core_report = None
    if "datasketch" not in args.skip:
        row["datasketch"] = bench_datasketch(ids, texts, args.threshold, args.num_perm, bands, rows)
        print("datasketch: %(wall_s).1f s wall, %(cpu_s).1f cpu-s" % row["datasketch"], flush=True)
    if "core" not in args.skip:
        row["core"], core_report = bench_core(ids, texts, args.threshold, args.num_perm)
        row["core"]["quality"] = quality(pd.DataFrame(core_report), truth)
        print("core: %(wall_s).1f s wall, %(cpu_s).1f cpu-s" % row["core"], flush=True)
    del ids, texts
    if spark is not None:
        try:
            if warmup_src is not None:
                warm_up(spark, warmup_src, os.path.join(tmp, "warmup-out"), args)
            row["job"] = bench_job(spark, rest, "job", src, os.path.join(tmp, "a"), args.threshold, args.num_perm,
                                   args.shuffle_partitions)
            report = pd.read_parquet(os.path.join(tmp, "a", "dedup", "report"))
            row["job"]["quality"] = quality(report, truth)
            if core_report is not None:
                core_labels = {r["id"]: (r["cluster_id"], r["kept"]) for r in core_report}
                row["job"]["report_equals_core"] = core_labels == dict(
                    zip(report["id"], zip(report["cluster_id"], report["kept"])))
            del report
            print("job: %(wall_s).1f s wall, %(cpu_s).1f cpu-s %(cpu_s_parts)s" % row["job"], flush=True)
            if args.rerun_check:
                again = bench_job(spark, rest, "job_rerun", src, os.path.join(tmp, "b"), args.threshold,
                                  args.num_perm, args.shuffle_partitions)
                row["job_rerun"] = again
                a, b = output_bytes(os.path.join(tmp, "a")), output_bytes(os.path.join(tmp, "b"))
                row["job"]["rerun_byte_identical"] = bool(a) and a == b
                row["job"]["output_files"] = len(a)
                print("job again: %(wall_s).1f s wall, %(cpu_s).1f cpu-s" % again, flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    for name in ("datasketch", "core", "job", "job_rerun"):
        if name in row:
            row[name]["docs_per_cpu_s"] = size / row[name]["cpu_s"]
    if "job" in row:
        job = row["job"]
        if "datasketch" in row:
            job["per_cpu_s_vs_datasketch"] = job["docs_per_cpu_s"] / row["datasketch"]["docs_per_cpu_s"]
        if "core" in row:
            job["cpu_s_vs_core"] = job["cpu_s"] / row["core"]["cpu_s"]
    return row


def print_table(row: dict, master: str) -> None:
    head = "%-8s %-22s %8s %8s %8s %8s %8s %11s %10s %9s" % (
        "docs", "system", "wall s", "CPU s", "JVM s", "Py wrk s", "docs/CPU", "vs dsketch", "CPU/core", "pair F1")
    print("\n" + head + "\n" + "-" * len(head))
    base = row.get("datasketch")
    core = row.get("core")
    for name, label in (("datasketch", "datasketch (1 proc)"), ("core", "core (1 proc)"),
                        ("job", "job " + master), ("job_rerun", "job again " + master)):
        if name not in row:
            continue
        r = row[name]
        parts = r.get("cpu_s_parts", {})
        f1 = r.get("quality", {}).get("pairs") or {}
        print("%-8d %-22s %8.1f %8.1f %8s %8s %8.0f %11s %10s %9s" % (
            row["docs"], label, r["wall_s"], r["cpu_s"],
            "%.1f" % parts["jvm"] if parts else "-", "%.1f" % parts["python_workers"] if parts else "-",
            r["docs_per_cpu_s"], "%.2fx" % (r["docs_per_cpu_s"] / base["docs_per_cpu_s"]) if base else "-",
            "%.2fx" % (r["cpu_s"] / core["cpu_s"]) if core else "-",
            "%.4f" % f1["f1"] if f1 else "-"))
    for name in ("job", "job_rerun"):
        if name in row:
            print_stages(name, row[name])
    job = row.get("job", {})
    for key in ("report_equals_core", "rerun_byte_identical"):
        if key in job:
            print("%s: %s" % (key, job[key]))


def print_stages(name: str, job: dict) -> None:
    """The job's Spark stages (task-thread CPU, GC, shuffle) and its JVM CPU by thread."""
    spark = job.get("spark")
    if not spark:
        return
    print("\n%s: %d Spark jobs, %d stages, task-thread CPU %.1f s, GC %.1f s, %d shuffle partitions" % (
        name, spark["spark_jobs"], len(spark["stages"]), spark["executor_cpu_s"], spark["gc_s"],
        job["shuffle_partitions"]))
    print("%6s %6s %8s %8s %6s %9s %9s  %s" % ("stage", "tasks", "CPU s", "run s", "GC s", "shuf r MB",
                                             "shuf w MB", "name"))
    for st in spark["stages"]:
        print("%6d %6d %8.2f %8.2f %6.2f %9.1f %9.1f  %s" % (
            st["stage"], st["numTasks"], st["executorCpuTime"], st["executorRunTime"], st["jvmGcTime"],
            st["shuffleReadBytes"] / 1e6, st["shuffleWriteBytes"] / 1e6, st["description"] or st["name"]))
    print("JVM CPU by thread: " + ", ".join("%s %.1f" % kv for kv in job["jvm_threads_cpu_s"].items()))
    moved = job.get("python_bytes")
    if moved:
        print("Arrow to Python %.1f MB, from Python %.1f MB: " % (moved["sent"] / 1e6, moved["returned"] / 1e6)
              + ", ".join("%.1f/%.1f" % (o.get("sent", 0) / 1e6, o.get("returned", 0) / 1e6)
                          for o in moved["operators"]))


def sweep(size: int, args, specs) -> list:
    """The single-process core with other bands x rows / windows (`--sweep 18x7w4 25x5w4 ...`),
    scored against the truth: the recall each banding buys, and its candidate count."""
    import pandas as pd

    from pipeline.dedup.local import dedup_local

    _, docs, truth = corpus(size, args.data_dir, args.part_docs)
    ids, texts = docs.column("id").to_pylist(), docs.column("text").to_pylist()
    del docs
    out = []
    print("\n%-10s %7s %11s %9s %9s %9s %8s" % ("bands", "window", "candidates", "verified", "pairs P",
                                                "pairs R", "F1"))
    for spec in specs:
        br, window = spec.split("w")
        bands, rows = (int(x) for x in br.split("x"))
        report, stats = dedup_local(ids, texts, args.threshold,
                                    num_perm=args.num_perm, bands=bands, rows=rows, window=int(window))
        pf = quality(pd.DataFrame(report), truth)["pairs"]
        out.append({"bands": bands, "rows": rows, "window": int(window), "stats": stats, "pairs": pf})
        print("%-10s %7s %11d %9d %9.4f %9.4f %8.4f" % (br, window, stats["candidate_pairs"],
                                                     stats["verified_pairs"], pf["precision"], pf["recall"], pf["f1"]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, nargs="+", default=[10000], help="corpus sizes, one JSON each")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--threshold", type=float, default=0.8)
    p.add_argument("--num-perm", type=int, default=128)
    p.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "pipeline-bench-data"),
                   help="where the sample corpora are cached (sample-<docs>-s<seed>, as bench_scale.py "
                        "names them; generated when missing)")
    p.add_argument("--part-docs", type=int, default=100000,
                   help="documents per generated sample; larger --docs read docs / part-docs samples together")
    p.add_argument("--shuffle-partitions", type=int, default=0,
                   help="the job's --shuffle-partitions; 0 = from the input's bytes, as `pipeline dedup` picks")
    p.add_argument("--work-dir", default=None, help="where the job's input copy and outputs go (temporary)")
    p.add_argument("--warmup-docs", type=int, default=2000,
                   help="run the Spark job once on the corpus's first this many docs right before "
                        "each timed job (JVM JIT, codegen cache, Python workers), as a long-running "
                        "job would be; 0 = cold")
    p.add_argument("--no-rerun-check", dest="rerun_check", action="store_false",
                   help="skip the second job run and the byte-identical comparison")
    p.add_argument("--spark-conf", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra Spark settings for the session, e.g. spark.shuffle.compress=false")
    p.add_argument("--skip", nargs="*", default=[], choices=["datasketch", "core", "job"])
    p.add_argument("--sweep", nargs="*", default=[], metavar="BxRwW",
                   help="instead of the speed runs: score the core with these bands x rows / windows on "
                        "each --docs corpus (e.g. 9x13w4 16x8w2 18x7w4 25x5w4); JSON to "
                        "OUT_DIR/dedup_banding_<docs>.json")
    p.add_argument("--out-dir", default=os.path.join(REPO, "bench", "results"),
                   help="JSON goes to OUT_DIR/dedup_side_by_side_<docs>.json")
    args = p.parse_args(argv)

    os.makedirs(args.out_dir, exist_ok=True)
    if args.sweep:
        for size in args.docs:
            rows = sweep(size, args, args.sweep)
            with open(os.path.join(args.out_dir, "dedup_banding_%d.json" % size), "w") as f:
                json.dump({"run": run_info(), "threshold": args.threshold, "num_perm": args.num_perm,
                           "docs": size, "sweep": rows}, f, indent=2, sort_keys=True, default=str)
        return 0

    from pipeline.spark import get_spark

    cores = int(args.master[6:-1]) if args.master.startswith("local[") and args.master[6:-1].isdigit() \
        else os.cpu_count()
    spark = rest = None
    if "job" not in args.skip:
        conf = status_api_conf()  # per-stage task metrics from the status REST API
        conf.update(kv.split("=", 1) for kv in args.spark_conf)
        spark = get_spark("bench-dedup", master=args.master, progress=False, extra_conf=conf)
        rest = SparkRest(spark.sparkContext.uiWebUrl)
        spark.range(1000).selectExpr("sum(id)").collect()  # start the JVM and Python workers first
    os.makedirs(args.out_dir, exist_ok=True)
    for size in args.docs:
        row = bench_size(spark, rest, size, args, cores)
        print_table(row, args.master)
        out = os.path.join(args.out_dir, "dedup_side_by_side_%d.json" % size)
        with open(out, "w") as f:
            json.dump({"run": run_info(), "master": args.master, "spark_conf": args.spark_conf,
                       "warmup_docs": args.warmup_docs, "threshold": args.threshold, "num_perm": args.num_perm,
                       "peak_rss_mb_bench_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                       "result": row}, f, indent=2, sort_keys=True, default=str)
        print("wrote", out, flush=True)
    if spark is not None:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

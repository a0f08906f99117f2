"""How the whole pipeline's cost grows with the corpus: per stage CPU seconds, CPU-s per document,
peak memory, shuffle and spill, at 10k, 100k and 1M documents, in Spark local mode.

    python bench/bench_scale.py --sizes 10000 100000 1000000 --master "local[2]" \\
        --data ~/bench-data --out docs/benchmarks/results/scale.json

Corpus: `pipeline sample --docs N --seed 0` up to --part-docs documents; above that, N / part-docs
samples of part-docs documents with seeds 0, 1, ... read together (one `pipeline sample` holds its
whole corpus in memory to compute the exact-Jaccard truth, which 1M pages would not fit in 24 GB).
Near-duplicates then stay within a part; LSH buckets and the joins still see the whole corpus.
Samples are cached under --data and reused.

Each (size, input format) runs in its own process, a fresh Spark application with the status UI on
a loopback port: the WARC run goes through every stage (ingest -> dedup -> tokenize -> shards, the
code of `pipeline run`, each stage under its own Spark job group), the parquet run through
--parquet-stages (default: ingest; the later stages read the same documents either way). Per stage:

  wall s       time between the stage's start and end
  CPU s        from /proc: the driver's Python process + the JVM + every Python worker under it (the
               fair measure on a shared machine; Spark's own executorCpuTime counts JVM task threads
               only and is recorded beside it)
  peak MB      highest RSS seen (sampled every 0.5 s) of the driver Python, the JVM (driver and
               executor in local mode) and the Python workers together
  shuffle, spill  summed over the stage's Spark stages from the status REST API

Linearity: for every stage, CPU-s per document at the largest size must be within --max-ratio
(1.2) of the next size down; PASS/FAIL per stage. Prints a table and merges the runs into the JSON
(--out), keyed by size and format, so sizes can be measured in separate invocations.

Projection (`project`, also alone with --project-only): the measured CPU-s per document at the
largest size, carried to --project-docs (5M) on the course's EMR cluster (CLUSTER: 28 executor vCPUs
of 7 r5.xlarge) with the assumptions written beside CLUSTER; docs/SCALE.md explains them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from runinfo import proc_stat, run_info, self_cpu_s  # bench/ is sys.path[0] when a bench script runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE_NAMES = ("ingest", "dedup", "tokenize", "shards")
REST_SUMS = ("executorCpuTime", "executorRunTime", "jvmGcTime", "inputBytes", "outputBytes",
             "shuffleReadBytes", "shuffleWriteBytes", "memoryBytesSpilled", "diskBytesSpilled", "numTasks")
PEAK_METRICS = ("JVMHeapMemory", "JVMOffHeapMemory", "ProcessTreeJVMRSSMemory", "ProcessTreePythonRSSMemory")


# ---------------------------------------------------------------- corpus

def corpus_parts(docs: int, part_docs: int):
    """[(docs, seed)] of the samples that together make a corpus of `docs` documents."""
    if docs <= part_docs:
        return [(docs, 0)]
    if docs % part_docs:
        raise SystemExit("--sizes above --part-docs must be multiples of it (%d)" % part_docs)
    return [(part_docs, seed) for seed in range(docs // part_docs)]


def ensure_corpus(data_dir: str, docs: int, part_docs: int):
    """Generate the missing samples; return their directories."""
    dirs = []
    for n, seed in corpus_parts(docs, part_docs):
        d = os.path.join(data_dir, "sample-%d-s%d" % (n, seed))
        if not os.path.exists(os.path.join(d, "_sample.json")):
            t0 = time.time()
            subprocess.run([sys.executable, "-m", "pipeline", "sample", "--docs", str(n), "--seed", str(seed),
                            "--out", d], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
            print("generated %s in %.0f s" % (d, time.time() - t0), flush=True)
        dirs.append(d)
    return dirs


def tree_bytes(paths) -> int:
    total = 0
    for p in paths:
        for dirpath, _, files in os.walk(p):
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total


# ---------------------------------------------------------------- /proc

def _proc_table():
    """pid -> (ppid, start time, own CPU s (utime + stime), rss bytes) for every readable process."""
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    return {pid: (int(f[1]), int(f[19]), (int(f[11]) + int(f[12])) / tick, int(f[21]) * page)
            for pid, f in proc_stat().items()}


def _descendants(table, pid):
    children = {}
    for p, row in table.items():
        children.setdefault(row[0], []).append(p)
    found, stack = [], list(children.get(pid, []))
    while stack:
        p = stack.pop()
        found.append(p)
        stack.extend(children.get(p, []))
    return found


class ProcessTreeMeter(threading.Thread):
    """CPU seconds and peak RSS of the Spark application's processes, sampled every `period_s`.

    CPU: the sum, over every process ever seen (keyed by pid and start time), of its own utime +
    stime when last seen. Counting the JVM's reaped-children times instead loses the Python workers
    that outlive a pyspark daemon (they are re-parented away from the JVM when it stops a daemon);
    sampling loses at most the last `period_s` of a process that exits, and Python workers are
    reused, long-lived processes. Peak RSS: per label (the stage running), of the driver Python, the
    JVM (driver and executor in local mode) and the Python workers together. The meter's own CPU
    (walking /proc) is left out of the driver's.
    """

    def __init__(self, jvm_pid: int, period_s: float = 0.5):
        super().__init__(daemon=True)
        self.jvm_pid, self.period_s = jvm_pid, period_s
        self.label, self.peaks = None, {}
        self._cpu = {}  # (pid, start) -> (kind, own CPU s)
        self.own_cpu_s = 0.0  # the meter's own CPU: driver process time that is not the pipeline's
        self._lock = threading.Lock()
        self._stop_event = threading.Event()

    def sample(self) -> dict:
        """Update the CPU totals and the current label's peaks; return CPU s so far by kind."""
        with self._lock:
            started = time.thread_time()
            table = _proc_table()
            rss = {"driver_python": table.get(os.getpid(), (0, 0, 0.0, 0))[3], "jvm": 0, "python_workers": 0}
            pids = [(self.jvm_pid, "jvm")] + [(p, "python_workers") for p in _descendants(table, self.jvm_pid)]
            for pid, kind in pids:
                row = table.get(pid)
                if row is None:
                    continue
                self._cpu[(pid, row[1])] = (kind, row[2])
                rss[kind] += row[3]
            if self.label is not None:
                rss["total"] = sum(rss.values())
                peak = self.peaks.setdefault(self.label, {k: 0 for k in rss})
                for k, v in rss.items():
                    peak[k] = max(peak[k], v)
            totals = {"jvm": 0.0, "python_workers": 0.0}
            for kind, cpu in self._cpu.values():
                totals[kind] += cpu
            self.own_cpu_s += time.thread_time() - started
            totals["driver_python"] = self_cpu_s() - self.own_cpu_s
            return totals

    def run(self):
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.period_s)

    def stop(self):
        self._stop_event.set()
        self.join()


# ---------------------------------------------------------------- Spark status REST API

class SparkRest:
    def __init__(self, ui_url: str):
        self.base = ui_url.rstrip("/") + "/api/v1"
        self.app = self._get("/applications")[0]["id"]

    def _get(self, path: str):
        with urllib.request.urlopen(self.base + path, timeout=60) as r:
            return json.loads(r.read().decode("utf-8"))

    def group_stages(self, group: str) -> tuple:
        """(Spark jobs, Spark stages that ran) of job group `group`, as the REST API gives them, once
        the status store has seen every job finish (its listener runs a little behind the jobs)."""
        for _ in range(120):
            jobs = [j for j in self._get("/applications/%s/jobs" % self.app) if j.get("jobGroup") == group]
            if all(j["status"] not in ("RUNNING", "UNKNOWN") for j in jobs):
                break
            time.sleep(0.5)
        stage_ids = {s for j in jobs for s in j["stageIds"]}
        ran = [st for st in self._get("/applications/%s/stages" % self.app)
               if st["stageId"] in stage_ids and st["status"] not in ("SKIPPED", "PENDING")]
        return jobs, sorted(ran, key=lambda st: (st["stageId"], st.get("attemptId", 0)))

    def group_totals(self, group: str) -> dict:
        """Sums of REST_SUMS over the Spark stages of the jobs in job group `group`."""
        jobs, ran = self.group_stages(group)
        totals = {k: sum(int(st.get(k) or 0) for st in ran) for k in REST_SUMS}
        totals["spark_jobs"], totals["spark_stages"] = len(jobs), len(ran)
        return totals

    def executor_peaks(self) -> dict:
        """Peak memory metrics per executor (in local mode one: the driver), over the application."""
        out = {}
        for ex in self._get("/applications/%s/allexecutors" % self.app):
            peaks = ex.get("peakMemoryMetrics") or {}
            out[ex["id"]] = {k: int(peaks.get(k, 0)) for k in PEAK_METRICS}
            out[ex["id"]]["maxMemory"] = int(ex.get("maxMemory") or 0)
        return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_api_conf() -> dict:
    """Spark settings for a local application whose status REST API a benchmark reads: the UI on a
    free loopback port, every job and stage retained, process-tree memory metrics on."""
    return {"spark.ui.enabled": "true", "spark.ui.port": str(_free_port()), "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1", "spark.port.maxRetries": "64",
            "spark.executor.processTreeMetrics.enabled": "true",
            "spark.ui.retainedJobs": "100000", "spark.ui.retainedStages": "100000",
            "spark.sql.ui.retainedExecutions": "100000"}


# ---------------------------------------------------------------- one measured run (child process)

def measure_run(inputs, out_dir: str, stage_list, master: str, docs: int, stage_flags=()) -> dict:
    """Run `stage_list` of the pipeline over `inputs` in a fresh SparkSession; measure every stage."""
    from pipeline import accounting, stages
    from pipeline.spark import SparkOptions, get_spark, input_bytes

    spark = get_spark("bench-scale", SparkOptions(master=master), progress=False, extra_conf=status_api_conf())
    rest = SparkRest(spark.sparkContext.uiWebUrl)
    jvm_pid = spark.sparkContext._gateway.proc.pid
    ns = stages.build_parser().parse_args(["--input", *inputs, "--output", out_dir, "--stages", ",".join(stage_list),
                                           "--master", master, *stage_flags])
    spark_opts = SparkOptions.from_args(ns)
    meter = ProcessTreeMeter(jvm_pid)
    meter.start()
    results, all_stats = {}, []
    try:
        for stage, cfg in stages.stage_configs(ns):
            meter.label = stage.name
            stage_input_bytes = input_bytes(spark, [cfg.input] if isinstance(cfg.input, str) else cfg.input)
            c0, t0 = meter.sample(), time.time()
            stats = stages.run_stage(spark, stage, cfg, spark_opts)
            wall, c1 = time.time() - t0, meter.sample()
            cpu = {k: round(c1[k] - c0[k], 2) for k in c0}
            cpu_total = sum(cpu.values())
            all_stats.append(stats)
            results[stage.name] = {
                "records_in": stats["records_in"], "records_out": stats["records_out"],
                "input_bytes": stage_input_bytes, "wall_s": round(wall, 2), "cpu_s": round(cpu_total, 2),
                "cpu_s_by_process": cpu,
                "cpu_ms_per_doc": round(1000.0 * cpu_total / docs, 4),
                "shuffle_partitions": stats["shuffle_partitions"],
                "spark": rest.group_totals(stage.name),
                "peak_rss_bytes": dict(meter.peaks.get(stage.name, {})),
                "stats": {k: v for k, v in stats.items() if k not in ("errors", "output")},
            }
    finally:
        meter.stop()
    summary = accounting.build_summary(all_stats, extra={"input": list(inputs), "output": out_dir})
    peaks = rest.executor_peaks()
    spark.stop()
    return {"stages": results, "summary": {k: summary[k] for k in ("records_in", "documents_in", "kept",
                                                                   "duplicates_removed", "not_documents", "dropped")},
            "executor_peaks": peaks}


# ---------------------------------------------------------------- driver

def _child(args) -> int:
    t0 = time.time()
    flags = ["--extractor", args.extractor] if args.extractor else []
    res = measure_run(args.child_inputs, args.child_output, args.child_stages.split(","), args.master,
                      args.child_docs, flags)
    res["wall_s"] = round(time.time() - t0, 2)
    with open(args.child_json, "w") as f:
        json.dump(res, f, indent=2)
    return 0


def run_one(args, docs: int, fmt: str, dirs) -> dict:
    inputs = [os.path.join(d, fmt) for d in dirs]
    stage_list = (args.warc_stages if fmt == "warc" else args.parquet_stages).split(",")
    out = os.path.join(args.data, "out-%d-%s" % (docs, fmt))
    if "ingest" in stage_list:  # later stages alone re-measure over a kept output (--keep-outputs)
        shutil.rmtree(out, ignore_errors=True)
    child_json = out + ".json"
    cmd = [sys.executable, os.path.abspath(__file__), "--master", args.master, "--child-json", child_json,
           "--extractor", args.extractor,
           "--child-output", out, "--child-stages", ",".join(stage_list), "--child-docs", str(docs),
           "--child-inputs", *inputs]
    print("[%d %s] %s" % (docs, fmt, " ".join(stage_list)), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=REPO)
    with open(child_json) as f:
        res = json.load(f)
    res.update({"docs": docs, "format": fmt, "extractor": args.extractor or "(pipeline default)",
                "input_bytes": tree_bytes(inputs), "input_dirs": inputs,
                "process_wall_s": round(time.time() - t0, 2), "loadavg_1m_after": round(os.getloadavg()[0], 2)})
    if not args.keep_outputs:
        shutil.rmtree(out, ignore_errors=True)
    return res


def linearity(runs, max_ratio: float):
    """Per (format, stage): CPU-s per document at the largest size vs the next size down."""
    checks = []
    for fmt in sorted({r["format"] for r in runs}):
        by_size = sorted((r for r in runs if r["format"] == fmt), key=lambda r: r["docs"])
        if len(by_size) < 2:
            continue
        small, big = by_size[-2], by_size[-1]
        for name in STAGE_NAMES:
            if name in small["stages"] and name in big["stages"]:
                a, b = small["stages"][name]["cpu_ms_per_doc"], big["stages"][name]["cpu_ms_per_doc"]
                ratio = b / a if a else float("inf")
                checks.append({"format": fmt, "stage": name, "small_docs": small["docs"], "big_docs": big["docs"],
                               "cpu_ms_per_doc_small": a, "cpu_ms_per_doc_big": b, "ratio": round(ratio, 3),
                               "max_ratio": max_ratio, "pass": ratio <= max_ratio})
    return checks


# ---------------------------------------------------------------- projection to a cluster

# The cluster of the projection (EMR emr-7.7.0, Spark 3.5.3): 7 r5.xlarge core nodes of 4 vCPUs, 32 GiB.
CLUSTER = {
    "name": "1 + 7 r5.xlarge (EMR 7.7, Spark 3.5.3)",
    "executor_vcpus": 28,
    # An r5.xlarge vCPU is a hyperthread: with all 4 busy, each gives ~65% of a full core's work (an
    # assumption, not measured here); this machine's CPU-seconds are full-core seconds.
    "vcpu_speed": 0.65,
    # Share of executor-core time doing task work during a stage (waves, stragglers, the driver between
    # Spark jobs). Assumed.
    "utilisation": 0.8,
    # Scheduling per Spark job on YARN (task launch over the network, result round trips). Assumed.
    "seconds_per_spark_job": 1.0,
    # Connected components past --single-task-max-edges (1M verified edges): rounds of large-star +
    # small-star, each a few Spark jobs; "a handful of rounds in practice" (spark_components.py). Assumed.
    "component_rounds": 6,
    "spark_jobs_per_component_round": 4,
    # S3 throughput the 7 nodes reach together (about 200 MB/s each); every stage reads its input from
    # and writes its output to S3. Assumed.
    "s3_bytes_per_s": 7 * 200e6,
}


def _stage_input_bytes(run, name):
    s = run["stages"][name]
    if "input_bytes" in s:
        return s["input_bytes"]
    if name == "ingest":
        return run["input_bytes"]
    rel = {"dedup": "docs", "tokenize": "dedup/kept", "shards": "tokens"}[name]
    out = os.path.join(os.path.dirname(run["input_dirs"][0]), "..", "out-%d-%s" % (run["docs"], run["format"]), rel)
    return tree_bytes([out]) if os.path.isdir(out) else 0


def _fit(points):
    """Least-squares line CPU = fixed + marginal * docs through [(docs, cpu)]."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    marginal = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - marginal * mx, marginal


def project(runs, docs: int, cluster=CLUSTER):
    """Per stage, on the cluster:

        wall = spark jobs * seconds_per_spark_job + per_doc * docs / (vcpus * vcpu_speed * utilisation)
               + S3 bytes / s3_bytes_per_s

    per_doc is the stage's CPU-s per document at the largest size measured, everything included:
    the fixed start-up and per-job costs are counted as if they grew with the corpus, so for a
    stage whose cost is linear (the check above) this over-estimates. The least-squares line through
    every size (fixed + marginal * N) is reported beside it. Shuffle partitions: what the pipeline's
    automatic rule picks for the stage's projected input bytes on the cluster's vCPUs."""
    from pipeline.spark import auto_shuffle_partitions

    warc = sorted((r for r in runs if r["format"] == "warc" and set(STAGE_NAMES) <= set(r["stages"])),
                  key=lambda r: r["docs"])
    if len(warc) < 2:
        return None
    big = warc[-1]
    scale = docs / big["docs"]
    rows, total = [], 0.0
    for name in STAGE_NAMES:
        b = big["stages"][name]
        fixed, marginal = _fit([(r["docs"], r["stages"][name]["cpu_s"]) for r in warc])
        per_doc = b["cpu_s"] / big["docs"]
        work_s = per_doc * docs / (cluster["executor_vcpus"] * cluster["vcpu_speed"] * cluster["utilisation"])
        jobs = b["spark"]["spark_jobs"]
        if name == "dedup" and b["stats"]["verified_pairs"] * scale > b["stats"].get("single_task_max_edges", 1000000):
            # too many edges for the one-task union-find: distributed large-star/small-star rounds
            jobs += cluster["component_rounds"] * cluster["spark_jobs_per_component_round"]
        jobs_s = jobs * cluster["seconds_per_spark_job"]
        in_bytes = _stage_input_bytes(big, name) * scale
        # shards are written by the tasks themselves (2 bytes a token), not by a Spark writer
        out_bytes = (2 * b["stats"]["tokens"] if name == "shards" else b["spark"]["outputBytes"]) * scale
        io_s = (in_bytes + out_bytes) / cluster["s3_bytes_per_s"]
        wall = jobs_s + work_s + io_s
        total += wall
        rows.append({"stage": name, "cpu_ms_per_doc": round(1000 * per_doc, 4),
                     "fit_fixed_cpu_s": round(fixed, 1), "fit_marginal_cpu_ms_per_doc": round(1000 * marginal, 4),
                     "cluster_vcpu_s": round(per_doc * docs / cluster["vcpu_speed"], 0),
                     "input_gb": round(in_bytes / 1e9, 2), "output_gb": round(out_bytes / 1e9, 2),
                     "shuffle_write_gb": round(b["spark"]["shuffleWriteBytes"] * scale / 1e9, 2),
                     "shuffle_partitions": auto_shuffle_partitions(int(in_bytes), cluster["executor_vcpus"]),
                     "spark_jobs": jobs, "spark_jobs_s": round(jobs_s, 0), "work_s": round(work_s, 0),
                     "s3_s": round(io_s, 0), "wall_s": round(wall, 0)})
    return {"docs": docs, "cluster": cluster, "from_docs": big["docs"], "fit_sizes": [r["docs"] for r in warc],
            "stages": rows, "total_wall_s": round(total, 0),
            "dedup_wall_s": next(r["wall_s"] for r in rows if r["stage"] == "dedup")}


def print_projection(p) -> None:
    print()
    print("projection: %d docs on %s, from CPU-s per document at %d docs (least-squares line over %s)" % (
        p["docs"], p["cluster"]["name"], p["from_docs"], ", ".join(str(d) for d in p["fit_sizes"])))
    print("%-9s %10s %11s %9s %10s %7s %7s %8s %6s %6s %7s %6s %7s" % (
        "stage", "CPU ms/doc", "fit ms/doc", "fit fix s", "vCPU-s", "in GB", "out GB", "shuf GB", "parts",
        "jobs s", "work s", "S3 s", "wall s"))
    for r in p["stages"]:
        print("%-9s %10.4f %11.4f %9.1f %10.0f %7.2f %7.2f %8.2f %6d %6.0f %7.0f %6.0f %7.0f" % (
            r["stage"], r["cpu_ms_per_doc"], r["fit_marginal_cpu_ms_per_doc"], r["fit_fixed_cpu_s"],
            r["cluster_vcpu_s"], r["input_gb"], r["output_gb"], r["shuffle_write_gb"], r["shuffle_partitions"],
            r["spark_jobs_s"], r["work_s"], r["s3_s"], r["wall_s"]))
    print("whole pipeline %.0f s (goal 900 s: %s, margin %.2fx); dedup %.0f s (goal 300 s: %s, margin %.2fx)" % (
        p["total_wall_s"], "met" if p["total_wall_s"] < 900 else "NOT met", 900 / max(p["total_wall_s"], 1),
        p["dedup_wall_s"], "met" if p["dedup_wall_s"] < 300 else "NOT met", 300 / max(p["dedup_wall_s"], 1)))


def print_table(runs, checks) -> None:
    mb = 1 << 20
    print()
    print("%9s %7s %-9s %9s %8s %8s %9s %7s %9s %9s %9s %9s" % (
        "docs", "format", "stage", "records", "wall s", "CPU s", "CPU ms/doc", "parts", "peak MB",
        "shuf w MB", "spill MB", "disk MB"))
    for r in sorted(runs, key=lambda r: (r["format"] != "warc", r["format"], r["docs"])):
        for name in STAGE_NAMES:
            s = r["stages"].get(name)
            if s is None:
                continue
            sp = s["spark"]
            print("%9d %7s %-9s %9d %8.1f %8.1f %9.4f %7d %9.0f %9.1f %9.1f %9.1f" % (
                r["docs"], r["format"], name, s["records_in"], s["wall_s"], s["cpu_s"], s["cpu_ms_per_doc"],
                s["shuffle_partitions"], s["peak_rss_bytes"].get("total", 0) / mb, sp["shuffleWriteBytes"] / mb,
                sp["memoryBytesSpilled"] / mb, sp["diskBytesSpilled"] / mb))
        total_cpu = sum(s["cpu_s"] for s in r["stages"].values())
        print("%9d %7s %-9s %9s %8.1f %8.1f %9.4f" % (r["docs"], r["format"], "total", "", r["wall_s"], total_cpu,
                                                      1000.0 * total_cpu / r["docs"]))
    if checks:
        print()
        for c in checks:
            print("linearity %-7s %-9s %7d -> %7d docs: %.4f -> %.4f CPU ms/doc, x%.2f (max %.2f)  %s" % (
                c["format"], c["stage"], c["small_docs"], c["big_docs"], c["cpu_ms_per_doc_small"],
                c["cpu_ms_per_doc_big"], c["ratio"], c["max_ratio"], "PASS" if c["pass"] else "FAIL"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000, 1000000])
    ap.add_argument("--formats", nargs="+", default=["warc", "parquet"], choices=("warc", "parquet"))
    ap.add_argument("--warc-stages", default=",".join(STAGE_NAMES),
                    help="stages run from the WARC input (default: all; without ingest they re-run over "
                    "the output a --keep-outputs run left, and replace only those stages' numbers)")
    ap.add_argument("--extractor", default="", help="pipeline --extractor (default: the pipeline's)")
    ap.add_argument("--parquet-stages", default="ingest",
                    help="stages run from the parquet input (comma-separated; default: ingest)")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--part-docs", type=int, default=100000, help="documents per generated sample")
    ap.add_argument("--data", default=os.path.join(REPO, "bench", "data", "scale"),
                    help="sample cache and run outputs")
    ap.add_argument("--keep-outputs", action="store_true", help="keep each run's output directory")
    ap.add_argument("--max-ratio", type=float, default=1.2)
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "scale.json"))
    ap.add_argument("--fresh", action="store_true", help="do not merge with the runs already in --out")
    ap.add_argument("--project-docs", type=int, default=5000000,
                    help="project the measured costs to this many documents on the course cluster")
    ap.add_argument("--project-only", action="store_true", help="measure nothing: print the table and the "
                    "projection of the runs already in --out")
    for name in ("json", "output", "stages", "docs"):
        ap.add_argument("--child-" + name, help=argparse.SUPPRESS)
    ap.add_argument("--child-inputs", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_json:
        args.child_docs = int(args.child_docs)
        return _child(args)

    os.makedirs(args.data, exist_ok=True)
    previous = []
    if os.path.exists(args.out) and not args.fresh:
        with open(args.out) as f:
            previous = json.load(f).get("runs", [])
    new = []
    for docs in ([] if args.project_only else args.sizes):
        dirs = ensure_corpus(args.data, docs, args.part_docs)
        for fmt in args.formats:
            new.append(run_one(args, docs, fmt, dirs))
            new[-1]["run"] = run_info()
    runs = {(r["docs"], r["format"]): r for r in previous}
    for r in new:
        old = runs.get((r["docs"], r["format"]))
        if old is not None and set(r["stages"]) < set(old["stages"]):
            # a re-measurement of some stages over the same documents: replace those stages only
            old["stages"].update(r["stages"])
            old.setdefault("remeasured", []).append({"stages": list(r["stages"]), "run": r["run"]})
        else:
            runs[(r["docs"], r["format"])] = r
    runs = sorted(runs.values(), key=lambda r: (r["format"], r["docs"]))
    checks = linearity(runs, args.max_ratio)
    print_table(runs, checks)
    projection = project(runs, args.project_docs)
    if projection:
        print_projection(projection)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"run": run_info(), "master": args.master, "part_docs": args.part_docs, "runs": runs,
                   "linearity": checks, "projection": projection}, f, indent=2)
        f.write("\n")
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

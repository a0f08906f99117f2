"""Tokenize core throughput (no Spark): tiktoken per-document `encode_ordinary` vs
`encode_ordinary_batch` (1, 2, 4 threads), and `pipeline.tokenize.encode.tokenize_arrow_batches`, the body of
the Spark task (Arrow record batch of texts in -> record batch of token lists out), which uses the plain
loop with one thread and the batch API with more.

    python bench/bench_tokenize.py [--docs 2000] [--repeat 3] [--bpe-file F | --tiktoken-cache D]
                                   [--spark-docs 20000]   # also time the Spark jobs, local[2]

Texts come from the sample generator (`pipeline.sample.generate_documents`, English-like web pages).
Prints a table and writes bench/results/tokenize.json. Every method's tokens are checked to be equal.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from runinfo import proc_tree_cpu_s, run_info, self_cpu_s  # bench/ is sys.path[0] when a bench script runs

from pipeline import bpe
from pipeline.bpe import EOT_TOKEN
from pipeline.sample import generate_documents
from pipeline.tokenize import encode as tk

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "tokenize.json")


def best_seconds(fn, repeat: int):
    """Best wall seconds and best CPU seconds (all of this process's threads) over `repeat` calls.
    On a shared machine the CPU seconds are the fair number; with several threads they add up."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        best_wall = min(best_wall, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best_wall, best_cpu


def spark_jobs(ns) -> list:
    """Wall time of the tokenize and shards stages (their Spark plans) on generated docs in Spark local[2]."""
    import shutil
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.shards import spark_plan as shards
    from pipeline.shards.config import ShardsConfig
    from pipeline.tokenize import spark_plan as tokenize
    from pipeline.tokenize.config import TokenizeConfig
    from pipeline.spark import get_spark

    work = tempfile.mkdtemp(prefix="bench-tokenize-")
    try:
        docs = generate_documents(ns.spark_docs, seed=2)
        os.makedirs(os.path.join(work, "kept"))
        pq.write_table(pa.table({"id": [d["id"] for d in docs], "text": [d["text"] for d in docs]}),
                       os.path.join(work, "kept", "part-0.parquet"))
        spark = get_spark("bench-tokenize", master="local[2]")
        rows = []
        for stage, job, cfg in [
                ("tokenize", tokenize, TokenizeConfig(input=os.path.join(work, "kept"), output=work,
                                                      tiktoken_cache=ns.tiktoken_cache,
                                                      bpe_file=ns.bpe_file, tokenize_partitions=4)),
                ("shards", shards, ShardsConfig(input=os.path.join(work, "tokens"), output=work,
                                                shard_tokens=1_000_000))]:
            jvm = spark.sparkContext._gateway.proc.pid
            t0, c0 = time.perf_counter(), proc_tree_cpu_s(jvm) + self_cpu_s()
            stats = job.run(spark, cfg)
            secs, cpu = time.perf_counter() - t0, proc_tree_cpu_s(jvm) + self_cpu_s() - c0
            rows.append({"stage": stage, "docs": stats["records_out"], "tokens": stats["tokens"],
                         "seconds": round(secs, 2), "tokens_per_s": round(stats["tokens"] / secs),
                         "cpu_seconds": round(cpu, 2), "tokens_per_cpu_s": round(stats["tokens"] / cpu)})
        spark.stop()
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=tk.DEFAULT_BATCH_SIZE)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--bpe-file")
    p.add_argument("--tiktoken-cache")
    p.add_argument("--spark-docs", type=int, default=0,
                   help="also run the tokenize and shards jobs (local[2]) on this many generated docs")
    p.add_argument("--out", default=RESULTS)
    ns = p.parse_args(argv)

    import pyarrow as pa

    data = bpe.load_bpe_bytes(ns.tiktoken_cache, ns.bpe_file)
    enc = bpe.encoding_from_bytes(data)
    texts = [d["text"] for d in generate_documents(ns.docs, seed=1)]
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    reference = tk.encode_docs_one_by_one(enc, texts)
    n_tokens = sum(len(t) for t in reference)

    def batched(threads):  # tiktoken's batch API over chunks, EOT added as the job does
        out = []
        for lo in range(0, len(texts), ns.batch_size):
            chunk = enc.encode_ordinary_batch(texts[lo:lo + ns.batch_size], num_threads=threads)
            out.extend([EOT_TOKEN] + toks for toks in chunk)
        return out

    ids = pa.array([str(i) for i in range(len(texts))])
    batches = [pa.RecordBatch.from_arrays([ids.slice(lo, 10000), pa.array(texts[lo:lo + 10000])], ["id", "text"])
               for lo in range(0, len(texts), 10000)]  # Spark's default maxRecordsPerBatch

    def arrow(threads):
        return [b for b in tk.tokenize_arrow_batches(iter(batches), data, ns.batch_size, threads)]

    methods = [("per-doc encode_ordinary", lambda: tk.encode_docs_one_by_one(enc, texts), 1)]
    methods += [("encode_ordinary_batch", lambda t=t: batched(t), t) for t in ns.threads]
    methods += [("tokenize_arrow_batches", lambda t=t: arrow(t), t) for t in ns.threads[:2]]

    # all methods produce the same tokens
    assert batched(ns.threads[-1]) == reference
    assert [t for b in arrow(1) for t in b.column(2).to_pylist()] == reference

    rows = []
    for name, fn, threads in methods:
        secs, cpu = best_seconds(fn, ns.repeat)
        rows.append({"method": name, "threads": threads, "seconds": round(secs, 4),
                     "tokens_per_s": round(n_tokens / secs), "docs_per_s": round(len(texts) / secs, 1),
                     "mb_per_s": round(mb / secs, 2), "cpu_seconds": round(cpu, 4),
                     "tokens_per_cpu_s": round(n_tokens / cpu)})
    base = rows[0]["tokens_per_s"]
    header = "%-28s %7s %9s %12s %8s %8s %9s %14s" % ("method", "threads", "seconds", "tokens/s", "MB/s",
                                                      "speedup", "CPU s", "tokens/CPU-s")
    print("%d docs, %.1f MB text, %d tokens (%.2f bytes/token), batch size %d, best of %d"
          % (len(texts), mb, n_tokens, mb * 1e6 / n_tokens, ns.batch_size, ns.repeat))
    print(header)
    print("-" * len(header))
    for r in rows:
        print("%-28s %7d %9.3f %12d %8.2f %7.2fx %9.3f %14d" % (
            r["method"], r["threads"], r["seconds"], r["tokens_per_s"], r["mb_per_s"], r["tokens_per_s"] / base,
            r["cpu_seconds"], r["tokens_per_cpu_s"]))
    spark_rows = spark_jobs(ns) if ns.spark_docs else []
    for r in spark_rows:
        print("spark %-9s %6d docs %10d tokens %8.1f s %10d tokens/s %8.1f CPU s %10d tokens/CPU-s" % (
            r["stage"], r["docs"], r["tokens"], r["seconds"], r["tokens_per_s"], r["cpu_seconds"],
            r["tokens_per_cpu_s"]))
    result = {"run": run_info(), "bench": "tokenize", "docs": len(texts), "text_mb": round(mb, 3), "tokens": n_tokens,
              "batch_size": ns.batch_size, "repeat": ns.repeat, "rows": rows, "spark": spark_rows,
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "platform": platform.platform(), "loadavg_1m": os.getloadavg()[0]},
              "command": "python bench/bench_tokenize.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    os.makedirs(os.path.dirname(ns.out), exist_ok=True)
    with open(ns.out, "w") as f:
        json.dump(result, f, indent=2)
    print("wrote %s" % ns.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

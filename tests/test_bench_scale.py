"""bench/bench_scale.py's measurement path on a tiny corpus: a real `pipeline sample`, real Spark
applications (one per input format) with the status REST API on loopback, and the JSON it writes.
Timings are not asserted (they live in the benchmark); the structure and the record counts are, the
counts against the generator's own record of what it wrote (`_sample.json`)."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = 200


def test_bench_scale_measures_every_stage(tmp_path):
    out = tmp_path / "scale.json"
    cmd = [sys.executable, os.path.join(REPO, "bench", "bench_scale.py"), "--sizes", str(DOCS),
           "--formats", "warc", "parquet", "--master", "local[2]", "--data", str(tmp_path / "data"),
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    with open(tmp_path / "data" / ("sample-%d-s0" % DOCS) / "_sample.json") as f:
        sample = json.load(f)
    warc_records = sum(v for k, v in sample["warc_records"].items() if k != "doc_responses")
    runs = {r["format"]: r for r in doc["runs"]}
    assert set(runs) == {"warc", "parquet"}

    warc = runs["warc"]
    assert list(warc["stages"]) == ["ingest", "dedup", "tokenize", "shards"]
    for name, s in warc["stages"].items():
        assert s["cpu_s"] >= 0 and all(v >= 0 for v in s["cpu_s_by_process"].values()), name
        assert s["spark"]["numTasks"] > 0 and s["spark"]["spark_jobs"] > 0, name  # the REST API saw its jobs
        assert s["spark"]["executorCpuTime"] > 0, name
        for k in ("shuffleWriteBytes", "shuffleReadBytes", "memoryBytesSpilled", "diskBytesSpilled"):
            assert s["spark"][k] >= 0, (name, k)
        assert s["peak_rss_bytes"]["jvm"] > 0, name
        assert s["shuffle_partitions"] >= 2, name
    # every WARC record the generator wrote is read, every document comes out of ingest
    st = warc["stages"]
    assert st["ingest"]["records_in"] == warc_records
    assert st["ingest"]["records_out"] == sample["n_docs"] == DOCS
    # each stage reads what the one before wrote, and the run's counts add up
    for a, b in [("ingest", "dedup"), ("dedup", "tokenize"), ("tokenize", "shards")]:
        assert st[a]["records_out"] == st[b]["records_in"], (a, b)
    summ = warc["summary"]
    assert summ["records_in"] == (sum(summ["not_documents"].values()) + summ["kept"] + summ["duplicates_removed"]
                                  + sum(summ["dropped"].values()))
    assert st["dedup"]["records_in"] - st["dedup"]["records_out"] == summ["duplicates_removed"] > 0

    parquet = runs["parquet"]
    assert list(parquet["stages"]) == ["ingest"]
    assert parquet["stages"]["ingest"]["records_in"] == parquet["stages"]["ingest"]["records_out"] == DOCS
    assert doc["linearity"] == []  # one size: nothing to compare

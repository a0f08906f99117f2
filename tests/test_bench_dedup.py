"""bench/bench_dedup.py and bench/bench_spark_bytes.py on tiny inputs: real Spark applications with the
status REST API on loopback, and the JSON they write. Timings are not asserted (they live in the
benchmarks); what is measured is, against the corpus itself read with pyarrow."""
import json
import os
import subprocess
import sys

import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = 300


def run_bench(script, *args):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", script)] + list(args),
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_bench_dedup_counts_the_arrow_bytes_of_every_python_operator(tmp_path):
    run_bench("bench_dedup.py", "--docs", str(DOCS), "--skip", "datasketch", "--warmup-docs", "0",
              "--data-dir", str(tmp_path / "data"), "--out-dir", str(tmp_path / "out"))
    with open(tmp_path / "out" / ("dedup_side_by_side_%d.json" % DOCS)) as f:
        result = json.load(f)["result"]
    job = result["job"]
    assert job["report_equals_core"] and job["rerun_byte_identical"]

    moved = job["python_bytes"]
    # signatures, bucket routing, candidates, verification, union-find: one mapInArrow each, in order
    assert len(moved["operators"]) == 5
    assert moved["sent"] == sum(o["sent"] for o in moved["operators"])
    assert moved["returned"] == sum(o["returned"] for o in moved["operators"])
    # the signature pass receives every document's id and text as Arrow: at least their bytes, and
    # little more (offsets, batch framing; the UI rounds to 3 significant digits)
    docs = pq.read_table(tmp_path / "data" / ("sample-%d-s0" % DOCS) / "parquet" / "docs.parquet",
                         columns=["id", "text"])
    id_text_bytes = sum(pc.sum(pc.binary_length(docs.column(c))).as_py() for c in ("id", "text"))
    signatures = moved["operators"][0]
    assert 0.99 * id_text_bytes <= signatures["sent"] <= 1.05 * id_text_bytes + 65536
    # it returns 8 bytes per shingle hash of every document, at least
    assert signatures["returned"] > 8 * 100 * DOCS


def test_bench_spark_bytes_measures_every_operation(tmp_path):
    out = tmp_path / "spark_bytes.json"
    stdout = run_bench("bench_spark_bytes.py", "--rows", "2000", "--repeats", "1", "--out", str(out))
    with open(out) as f:
        doc = json.load(f)
    names = [r["operation"] for r in doc["results"]]
    assert names == ["scan", "to_python", "from_python", "shuffle", "store", "parquet_write", "parquet_read"]
    for r in doc["results"]:
        assert r["rows"] == [200, 2000]
        assert r["jvm_cpu_s_small"] >= 0 and r["jvm_cpu_s_large"] >= 0
        assert r["operation"] in stdout

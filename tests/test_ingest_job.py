"""The ingest Spark job end to end on real files in a real local SparkSession."""
import glob
import hashlib
import json
import os
import sys

import pytest

from ingest_inputs import WarcBuilder, junk_bytes, page_bytes, write_jsonl, write_parquet
from jobs import ingest_job
from pipeline.accounting import DROP_REASONS, NOT_DOCUMENT_REASONS
from pipeline.ingest import spark_plan
from pipeline.ingest import extract
from pipeline.ingest.config import IngestConfig
from pipeline.ingest.extract import ExtractorUnavailable
from pipeline.ingest.tabular import MissingColumnError, content_id
from pipeline.ingest.warc import ReaderUnavailable

DUP_ID = "<urn:uuid:00000000-0000-0000-0000-00000000d0d0>"


def build_inputs(d):
    """A directory of every kind of input, good and bad; returns the number of records in it."""
    n = 0
    a = WarcBuilder(gzip=True)
    a.warcinfo()
    for i in range(12):
        a.response("http://a.example/%d" % i, page_bytes(i))
    a.response("http://a.example/404", b"<p>gone</p>", status="404 Not Found")
    a.response("http://a.example/img", b"\x89PNG" + bytes(200), content_type="image/png")
    a.response("http://a.example/bin", junk_bytes(5000, seed=105))
    a.response("http://a.example/empty", b"<html><body></body></html>")
    a.response("http://a.example/dup", page_bytes(50), record_id=DUP_ID)
    a.write(os.path.join(d, "a.warc.gz"))
    n += len(a.ids)
    b = WarcBuilder(gzip=False)
    b.response("http://b.example/dup-again", page_bytes(51), record_id=DUP_ID)
    for i in range(5):
        b.response("http://b.example/%d" % i, page_bytes(100 + i), content_type="text/html; charset=iso-8859-1")
    b.write(os.path.join(d, "b.warc"))
    n += len(b.ids)
    t = WarcBuilder(gzip=True)
    for i in range(6):
        t.response("http://t.example/%d" % i, page_bytes(200 + i, words=300))
    with open(os.path.join(d, "trunc.warc.gz"), "wb") as f:
        f.write(t.bytes()[:(t.offsets[3] + t.offsets[4]) // 2])  # cut inside the 4th record
    n += 4  # 3 complete records + one bad tail
    with open(os.path.join(d, "junk.warc.gz"), "wb") as f:
        f.write(junk_bytes(4000, seed=106))
    n += 1
    write_jsonl(os.path.join(d, "c.jsonl.gz"), [
        {"id": "j1", "text": "a json document", "url": "http://c.example/1"},
        {"text": "no id, so a content id", "url": "http://c.example/2"},
        {"text": None}, b"{broken json", b"",
    ], compress=True)
    n += 4
    write_parquet(os.path.join(d, "d.parquet"), {"text": ["parquet one", None, " ", "parquet four"],
                                                 "url": ["http://d.example/1", None, None, None]})
    n += 4
    with open(os.path.join(d, "README.txt"), "w") as f:
        f.write("not an input")
    return n


@pytest.fixture(scope="module")
def ingested(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("ingest")
    inp = root / "in"
    inp.mkdir()
    n = build_inputs(str(inp))
    cfg = IngestConfig(input=(str(inp),), output=str(root / "out"))
    stats = spark_plan.run(spark, cfg)
    return {"root": root, "inp": str(inp), "n": n, "cfg": cfg, "stats": stats,
            "docs": str(root / "out" / "docs"), "dropped": str(root / "out" / "ingest" / "dropped")}


def test_every_record_is_accounted_for(ingested):
    s = ingested["stats"]
    assert s["records_in"] == ingested["n"]
    assert s["records_in"] == s["records_out"] + sum(s["not_documents"].values()) + sum(s["dropped"].values())
    assert set(s["dropped"]) <= set(DROP_REASONS) and set(s["not_documents"]) <= set(NOT_DOCUMENT_REASONS)
    assert s["dropped"] == {"bad_record": 4, "decode_error": 1, "duplicate_id": 1, "empty_text": 2,
                            "http_status": 1, "not_html": 1, "unreadable_file": 1}
    assert s["not_documents"] == {"not_response": 1}  # the warcinfo record
    assert s["records_out"] == 12 + 1 + 5 + 3 + 2 + 2
    assert s["files"] == 6 and s["skipped_files"] == [os.path.join(ingested["inp"], "README.txt")]
    # the defaults, where both libraries are installed (the test environment has them)
    assert s["resolved"] == {"extractor": "resiliparse", "warc_reader": "warcio"} and s["fallbacks"] == []


def test_outputs_agree_with_stats_and_schema(spark, ingested):
    docs = spark.read.parquet(ingested["docs"])
    dropped = spark.read.parquet(ingested["dropped"])
    assert [(f.name, f.dataType.simpleString()) for f in docs.schema] == [
        ("id", "string"), ("url", "string"), ("text", "string"), ("source", "string"), ("warc_date", "string"),
        ("pos", "bigint")]
    assert [(f.name, f.dataType.simpleString()) for f in dropped.schema] == [
        ("source", "string"), ("record_id", "string"), ("reason", "string"), ("detail", "string")]
    assert docs.count() == ingested["stats"]["records_out"]
    by_reason = {r.reason: r["count"] for r in dropped.groupBy("reason").count().collect()}
    assert by_reason == dict(ingested["stats"]["dropped"], **ingested["stats"]["not_documents"])
    rows = docs.collect()
    assert len({r.id for r in rows}) == len(rows)
    assert all(r.text and r.text == r.text.strip() for r in rows)
    assert os.path.exists(os.path.join(ingested["docs"], "_config.json")) is False  # run() leaves it to main()
    files = glob.glob(os.path.join(ingested["docs"], "*.parquet"))
    assert files and all(f.endswith(".snappy.parquet") for f in files)


def test_bad_files_are_named_in_errors_and_drops(spark, ingested):
    errors = ingested["stats"]["errors"]
    junk = os.path.join(ingested["inp"], "junk.warc.gz")
    trunc = os.path.join(ingested["inp"], "trunc.warc.gz")
    assert any(e.startswith(junk + ": unreadable_file") for e in errors)
    assert any(e.startswith(trunc + ": bad_record: truncated") for e in errors)
    d = {(r.source, r.reason) for r in spark.read.parquet(ingested["dropped"]).collect()}
    assert (junk, "unreadable_file") in d and (trunc, "bad_record") in d


def test_duplicate_ids_keep_the_first_by_source_order(spark, ingested):
    docs = spark.read.parquet(ingested["docs"]).filter("id = '%s'" % DUP_ID).collect()
    assert len(docs) == 1 and docs[0].url == "http://a.example/dup"
    assert docs[0].source == os.path.join(ingested["inp"], "a.warc.gz")
    dup = spark.read.parquet(ingested["dropped"]).filter("reason = 'duplicate_id'").collect()
    assert [(r.record_id, r.source) for r in dup] == [(DUP_ID, os.path.join(ingested["inp"], "b.warc"))]
    assert "a.warc.gz" in dup[0].detail


def test_docs_carry_their_input_position(spark, tmp_path):
    """`source` + `pos` of every document: the WARC record's byte offset, the JSON line number (from 1,
    counting blank lines), the parquet row index -- the input order dedup's --keep first relies on."""
    w = WarcBuilder(gzip=True)
    w.warcinfo()
    for i in range(4):
        w.response("http://p.example/%d" % i, page_bytes(300 + i))
    w.write(str(tmp_path / "p.warc.gz"))
    write_jsonl(str(tmp_path / "q.jsonl"), [{"id": "q1", "text": "first"}, b"", {"id": "q3", "text": "third"}])
    write_parquet(str(tmp_path / "r.parquet"), {"id": ["r0", "r1", "r2"], "text": ["zero", None, "two"]})
    spark_plan.run(spark, IngestConfig(input=(str(tmp_path / "*.*"),), output=str(tmp_path / "out")))
    got = {r.id: (os.path.basename(r.source), r.pos)
           for r in spark.read.parquet(str(tmp_path / "out" / "docs")).collect()}
    expected = {rid: ("p.warc.gz", off) for rid, off in zip(w.ids[1:], w.offsets[1:])}
    expected.update({"q1": ("q.jsonl", 1), "q3": ("q.jsonl", 3), "r0": ("r.parquet", 0), "r2": ("r.parquet", 2)})
    assert got == expected


def test_tabular_ids_and_fields(spark, ingested):
    docs = {r.text: r for r in spark.read.parquet(ingested["docs"]).collect()}
    assert docs["a json document"].id == "j1"
    assert docs["no id, so a content id"].id == content_id("http://c.example/2", "no id, so a content id")
    assert docs["parquet one"].id == content_id("http://d.example/1", "parquet one")
    assert docs["parquet four"].id == content_id(None, "parquet four")
    assert docs["parquet four"].source == os.path.join(ingested["inp"], "d.parquet")
    assert docs["parquet four"].warc_date is None and docs["a json document"].url == "http://c.example/1"
    warc_doc = next(r for r in docs.values() if r.url == "http://b.example/0")
    assert warc_doc.id.startswith("<urn:uuid:") and warc_doc.warc_date.endswith("Z")
    assert "café" in warc_doc.text  # declared iso-8859-1, really UTF-8


def _file_digests(d):
    return sorted(hashlib.sha256(open(p, "rb").read()).hexdigest()
                  for p in glob.glob(os.path.join(d, "*.parquet")))


def test_rerun_gives_identical_files(spark, ingested):
    out2 = str(ingested["root"] / "out2")
    stats = spark_plan.run(spark, IngestConfig(input=(ingested["inp"],), output=out2))
    assert {k: v for k, v in stats.items() if k not in ("seconds", "output")} == \
        {k: v for k, v in ingested["stats"].items() if k not in ("seconds", "output")}
    assert _file_digests(ingested["docs"]) == _file_digests(os.path.join(out2, "docs"))
    assert _file_digests(ingested["dropped"]) == _file_digests(os.path.join(out2, "ingest", "dropped"))


def test_fastwarc_reader_gives_identical_outputs(spark, ingested):
    """The same inputs (a truncated file and a non-WARC file among them) read with FastWARC instead of
    warcio: the same counts and byte-identical docs and drop rows."""
    out2 = str(ingested["root"] / "out-fastwarc")
    stats = spark_plan.run(spark, IngestConfig(input=(ingested["inp"],), output=out2, warc_reader="fastwarc"))
    assert stats["resolved"]["warc_reader"] == "fastwarc" and ingested["stats"]["resolved"]["warc_reader"] == "warcio"
    same = ("seconds", "output", "resolved")
    assert {k: v for k, v in stats.items() if k not in same} == \
        {k: v for k, v in ingested["stats"].items() if k not in same}
    assert _file_digests(ingested["docs"]) == _file_digests(os.path.join(out2, "docs"))
    assert _file_digests(ingested["dropped"]) == _file_digests(os.path.join(out2, "ingest", "dropped"))


def _uninstall(monkeypatch, *modules):
    """Make `import <module>` fail in this process, as on a machine without the package."""
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)
    monkeypatch.setattr(extract, "_loaded", {})  # extractors this process already built


def test_without_the_fast_libraries_ingest_falls_back_loudly(spark, tmp_path, capsys, monkeypatch):
    w = WarcBuilder()
    for i in range(3):
        w.response("http://f.example/%d" % i, page_bytes(i))
    warc_path = w.write(str(tmp_path / "f.warc.gz"))
    _uninstall(monkeypatch, "resiliparse", "resiliparse.extract", "resiliparse.extract.html2text",
               "fastwarc", "fastwarc.warc")
    out = str(tmp_path / "out")
    assert ingest_job.main(["--input", warc_path, "--output", out]) == 0
    printed = capsys.readouterr()
    assert "3 records in, 3 documents out" in printed.out and "extractor bs4, WARC reader warcio" in printed.out
    assert "WARNING: extractor 'resiliparse' needs the resiliparse package" in printed.err
    for d in ("docs", os.path.join("ingest", "dropped")):
        saved = json.load(open(os.path.join(out, d, "_config.json")))
        assert saved["config"]["extractor"] == "auto" and saved["config"]["warc_reader"] == "warcio"
        assert saved["resolved"] == {"extractor": "bs4", "warc_reader": "warcio"}
    texts = sorted(r.text for r in spark.read.parquet(os.path.join(out, "docs")).collect())
    assert texts == sorted(extract.extract_bs4(page_bytes(i).decode()) for i in range(3))

    # A tool chosen by name that is not installed is an error at once, before Spark is asked anything.
    for flag, package in (("--extractor", "resiliparse"), ("--warc-reader", "fastwarc")):
        with pytest.raises(SystemExit) as e:
            ingest_job.main(["--input", warc_path, "--output", str(tmp_path / "o2"), flag, package])
        assert e.value.code == 2 and "pip install %s" % package in capsys.readouterr().err
    with pytest.raises(ExtractorUnavailable):
        spark_plan.run(spark, IngestConfig(input=(warc_path,), output=str(tmp_path / "o3"), extractor="resiliparse"))
    with pytest.raises(ReaderUnavailable):
        spark_plan.run(spark, IngestConfig(input=(warc_path,), output=str(tmp_path / "o3"), warc_reader="fastwarc"))
    assert not os.path.exists(str(tmp_path / "o2")) and not os.path.exists(str(tmp_path / "o3"))


def test_missing_text_column_is_a_clear_error(spark, tmp_path):
    pq = write_parquet(str(tmp_path / "x.parquet"), {"content": ["a"], "url": ["u"]})
    with pytest.raises(MissingColumnError, match=r"'text' not found in .*x\.parquet.*content, url"):
        spark_plan.run(spark, IngestConfig(input=(pq,), output=str(tmp_path / "o1")))
    good = write_jsonl(str(tmp_path / "good.jsonl"), [{"text": "fine"}])
    bad = write_jsonl(str(tmp_path / "bad.jsonl"), [{"body": "x", "lang": "en"}] * 3)
    with pytest.raises(MissingColumnError, match=r"(?s)bad\.jsonl.*body, lang") as e:
        spark_plan.run(spark, IngestConfig(input=(good, bad), output=str(tmp_path / "o2")))
    assert "good.jsonl" not in str(e.value)
    assert not os.path.exists(str(tmp_path / "o2" / "docs"))


def test_all_inputs_unreadable_fails_naming_them(spark, tmp_path):
    for name in ("x.warc.gz", "y.warc"):
        (tmp_path / name).write_bytes(junk_bytes(2000, seed=107))
    with pytest.raises(spark_plan.IngestError, match=r"(?s)every input file is unreadable.*x\.warc\.gz.*y\.warc"):
        spark_plan.run(spark, IngestConfig(input=(str(tmp_path / "*.warc*"),), output=str(tmp_path / "out")))


def test_cli_main_with_resiliparse_and_non_string_text_column(spark, tmp_path, capsys):
    w = WarcBuilder()
    for i in range(3):
        w.response("http://e.example/%d" % i, page_bytes(i))
    w.write(str(tmp_path / "e.warc.gz"))
    write_parquet(str(tmp_path / "n.parquet"), {"text": [1, 2]})
    out = str(tmp_path / "out")
    assert ingest_job.main(["--input", str(tmp_path / "e.warc.gz"), str(tmp_path / "n.parquet"), "--output", out,
                            "--extractor", "resiliparse", "--num-partitions", "2"]) == 0
    printed = capsys.readouterr().out
    assert "5 records in, 3 documents out" in printed and "bad_record" in printed
    saved = json.load(open(os.path.join(out, "docs", "_config.json")))
    assert saved["job"] == "IngestConfig" and saved["config"]["extractor"] == "resiliparse"
    assert saved["resolved"] == {"extractor": "resiliparse", "warc_reader": "warcio"}
    assert os.path.exists(os.path.join(out, "ingest", "dropped", "_config.json"))
    texts = [r.text for r in spark.read.parquet(os.path.join(out, "docs")).collect()]
    assert len(texts) == 3 and all(t.startswith("Page ") for t in texts)
    assert ingest_job.main(["--input", str(tmp_path / "nothing-here*.warc"), "--output", out]) == 2
    assert "no input files match" in capsys.readouterr().err


def test_corrupt_parquet_is_a_clear_error(spark, tmp_path):
    from pipeline.storage import InputError

    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1" + junk_bytes(500, seed=108))
    with pytest.raises(InputError, match=r"cannot read parquet input \(.*broken\.parquet\)"):
        spark_plan.run(spark, IngestConfig(input=(str(bad),), output=str(tmp_path / "out")))


def test_job_file_runs_as_a_script(tmp_path):
    # spark-submit runs jobs/ingest_job.py as a file, with jobs/ first on sys.path.
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jobs", "ingest_job.py")
    res = subprocess.run([sys.executable, script, "--help"], cwd=str(tmp_path), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "--max-record-bytes" in res.stdout


def test_each_input_is_read_and_extracted_once(spark, ingested):
    # Duplicate marking must not split the records into branches that each rerun the extraction.
    from pipeline.ingest import core
    from pipeline.ingest.records import IngestOptions

    plan, _ = core.plan_inputs([ingested["inp"]])
    records = spark_plan.mark_duplicate_ids(spark_plan.read_records(spark, plan, IngestOptions()))
    physical = records._jdf.queryExecution().executedPlan().toString()
    assert physical.count("Scan ExistingRDD") == 1 and physical.count("FileScan parquet") == 1

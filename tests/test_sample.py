"""The labelled sample generator: determinism, WARC contents, extraction, truth = exact Jaccard."""
import glob
import hashlib
import json
import os

import pandas as pd
import pytest
from warcio.archiveiterator import ArchiveIterator

from pipeline import sample

import near_dup_reference as reference

N = 400


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sample") / "s")
    res = sample.write_sample(out, N, seed=7, workers=2)
    return out, res


def _digests(out):
    files = sorted(glob.glob(os.path.join(out, "**", "*"), recursive=True))
    return {os.path.relpath(f, out): hashlib.sha256(open(f, "rb").read()).hexdigest()
            for f in files if os.path.isfile(f)}


def test_generate_documents_deterministic():
    a, b = sample.generate_documents(150, seed=3), sample.generate_documents(150, seed=3, workers=2)
    assert a == b
    c = sample.generate_documents(150, seed=4)
    assert [d["id"] for d in a] != [d["id"] for d in c]
    assert {d["text"] for d in a}.isdisjoint({d["text"] for d in c})
    assert len({d["id"] for d in a}) == 150 and all(d["id"].startswith("<urn:uuid:") for d in a)


def test_same_seed_identical_files_different_seed_differs(sample_dir, tmp_path):
    out, _ = sample_dir
    again = str(tmp_path / "again")
    sample.main(["--docs", str(N), "--out", again, "--seed", "7", "--workers", "1"])  # fixture: one per CPU
    first, second = _digests(out), _digests(again)
    second.pop("_config.json")  # records the output path; the data files must match byte for byte
    assert {k: first[k] for k in second} == second
    assert any(k.endswith(".warc.gz") for k in second) and "truth.parquet" in second
    other = str(tmp_path / "other")
    sample.write_sample(other, N, seed=8)
    third = _digests(other)
    assert all(third[k] != second[k] for k in ("parquet/docs.parquet", "truth.parquet", "warc/sample-00000.warc.gz"))


def test_warc_records(sample_dir):
    out, res = sample_dir
    docs = pd.read_parquet(os.path.join(out, "parquet", "docs.parquet"))
    assert list(docs.columns) == ["id", "url", "text"] and len(docs) == N
    assert docs["id"].is_monotonic_increasing and docs["id"].is_unique
    paths = sorted(glob.glob(os.path.join(out, "warc", "*.warc.gz")))
    assert len(paths) >= 2 and paths == res["warc"]
    html_ids, other, types, prev = {}, 0, {}, None
    for path in paths:
        with open(path, "rb") as f:
            for rec in ArchiveIterator(f):
                types[rec.rec_type] = types.get(rec.rec_type, 0) + 1
                rid = rec.rec_headers.get_header("WARC-Record-ID")
                if rec.rec_type == "response":
                    # every response directly follows its request, and they point at each other
                    assert prev is not None and prev.rec_type == "request"
                    assert prev.rec_headers.get_header("WARC-Concurrent-To") == rid
                    assert prev.rec_headers.get_header("WARC-Target-URI") == rec.rec_headers.get_header(
                        "WARC-Target-URI")
                    status = rec.http_headers.get_statuscode()
                    ctype = rec.http_headers.get_header("Content-Type")
                    body = rec.content_stream().read()
                    if status == "200" and ctype.startswith("text/html"):
                        html_ids[rid] = (rec.rec_headers.get_header("WARC-Target-URI"), body.decode("utf-8"))
                    else:
                        other += 1
                prev = rec
    assert types["warcinfo"] == len(paths)
    assert types["request"] == types["response"] == N + other
    assert other >= len(paths) * 2  # non-HTML / non-200 responses for ingest to drop
    assert res["warc_records"]["doc_responses"] == N
    assert set(html_ids) == set(docs["id"])
    assert dict(zip(docs["id"], docs["url"])) == {k: v[0] for k, v in html_ids.items()}


def test_ingest_extractors_yield_document_text(sample_dir):
    """The truth is computed on `text`; ingest must extract exactly that text from the HTML."""
    from pipeline.ingest.extract import get_extractor

    docs = sample.generate_documents(120, seed=11)
    for name in ("bs4", "resiliparse"):
        try:
            extract = get_extractor(name)
        except Exception:  # resiliparse is an optional extra
            continue
        for d in docs:
            assert extract(d["html"]) == d["text"], (name, d["id"])


@pytest.mark.parametrize("reader", ["fastwarc", "warcio"])
def test_ingest_reads_the_warc_files(sample_dir, reader):
    """pipeline.ingest's WARC readers keep exactly the HTML documents, with the parquet's ids and text."""
    from pipeline.ingest.records import IngestOptions
    from pipeline.ingest.warc import iter_warc

    out, res = sample_dir
    docs = pd.read_parquet(os.path.join(out, "parquet", "docs.parquet"))
    got, reasons = {}, {}
    for path in res["warc"]:
        with open(path, "rb") as f:
            for rec in iter_warc(f, path, IngestOptions(warc_reader=reader)):
                if rec.reason is None:
                    got[rec.id] = rec.text
                else:
                    reasons[rec.reason] = reasons.get(rec.reason, 0) + 1
    assert got == dict(zip(docs["id"], docs["text"]))
    assert set(reasons) <= {"not_response", "http_status", "not_html"} and reasons["http_status"] > 0


def test_truth_is_exact_jaccard(sample_dir):
    """truth.parquet equals the plain-Python reference (all pairs, default `word` preset)."""
    out, res = sample_dir
    docs = pd.read_parquet(os.path.join(out, "parquet", "docs.parquet"))
    truth = pd.read_parquet(os.path.join(out, "truth.parquet"))
    assert truth["id"].tolist() == docs["id"].tolist()
    ids, texts = docs["id"].tolist(), docs["text"].tolist()
    expected = reference.clusters(ids, texts, "word")
    assert truth["cluster"].tolist() == [expected[i] for i in ids]
    sizes = pd.Series(list(expected.values())).value_counts()
    assert truth["has_dup"].tolist() == [sizes[expected[i]] > 1 for i in ids]
    n_pairs = len(reference.similar_pairs(texts, "word"))
    assert res["similar_pairs"] == n_pairs and res["dup_docs"] == int(truth["has_dup"].sum())
    assert 0.15 * N < res["dup_docs"] < 0.7 * N


def test_families_span_both_sides_of_threshold(sample_dir):
    out, _ = sample_dir
    fam = pd.read_parquet(os.path.join(out, "families.parquet"))
    derived = fam[fam["parent_id"].notna()]
    j = derived["parent_jaccard"]
    assert (j == 1.0).sum() >= 5  # exact copies
    assert ((j >= 0.8) & (j < 1.0)).sum() >= 20
    assert ((j >= 0.5) & (j < 0.8)).sum() >= 20  # edited copies that are NOT near-duplicates
    assert ((j >= 0.7) & (j < 0.8)).sum() >= 5 and ((j >= 0.8) & (j < 0.9)).sum() >= 5  # close to it
    assert {"exact_copy", "word_edits", "reorder", "comments", "redesign", "syndicated", "excerpt"} <= set(
        derived["edit"])
    truth = pd.read_parquet(os.path.join(out, "truth.parquet")).set_index("id")["cluster"]
    # some family members end up in another truth cluster than their parent (the edit went too far)
    apart = [truth[i] != truth[p] for i, p in zip(derived["id"], derived["parent_id"])]
    assert 0.2 * len(apart) < sum(apart) < 0.8 * len(apart)


def test_variety(sample_dir):
    out, _ = sample_dir
    docs = pd.read_parquet(os.path.join(out, "parquet", "docs.parquet"))
    words = docs["text"].str.split().str.len()
    assert words.min() < 60 and words.max() > 1000  # very short pages and long reads
    hosts = docs["url"].str.split("/").str[2]
    assert hosts.nunique() >= 8
    meta = json.load(open(os.path.join(out, "_sample.json")))
    assert meta["n_docs"] == N and "seconds" not in meta


def test_cli(tmp_path, capsys):
    assert sample.main(["--docs", "30", "--out", str(tmp_path / "s"), "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 30 documents" in printed
    cfg = json.load(open(str(tmp_path / "s" / "_config.json")))
    assert cfg["config"]["docs"] == 30 and cfg["config"]["seed"] == 1 and cfg["config"]["normalize"] == "word"
    assert sample.main(["--docs", "30", "--out", str(tmp_path / "a"), "--seed", "1", "--normalize", "alnum"]) == 0
    assert json.load(open(str(tmp_path / "a" / "_config.json")))["config"]["normalize"] == "alnum"
    with pytest.raises(SystemExit):
        sample.main(["--docs", "0", "--out", str(tmp_path / "z")])

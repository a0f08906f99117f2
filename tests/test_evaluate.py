"""The dedup evaluator (hand-computed scores) and the exact Jaccard join (against brute force)."""
import itertools
import json
import os
import random

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import evaluate
from pipeline.dedup.shingles import shingle_hashes
from pipeline.evaluate import score
from pipeline.exact_jaccard import components, exact_clusters, similar_pairs

import near_dup_reference as reference

# Truth: A = {a1, a2, a3}, B = {b1, b2}, F = {f1, f2}, singletons c, d, e.
TRUTH = pd.DataFrame({
    "id": ["a1", "a2", "a3", "b1", "b2", "c", "d", "e", "f1", "f2"],
    "cluster": ["a1", "a1", "a1", "b1", "b1", "c", "d", "e", "f1", "f1"],
})
# Report: {a1, a2}, {a3, c}, {b1, b2, d}, and e, f1, f2 alone.
REPORT = pd.DataFrame({
    "id": ["a1", "a2", "a3", "c", "b1", "b2", "d", "e", "f1", "f2"],
    "cluster_id": ["a1", "a1", "a3", "a3", "b1", "b1", "b1", "e", "f1", "f2"],
    "cluster_size": [2, 2, 2, 2, 3, 3, 3, 1, 1, 1],
    "kept": [True, False, True, False, True, False, False, True, True, True],
})


def test_hand_computed_scores():
    s = score(REPORT, TRUTH)
    # Per document: true positives a1 a2 a3 b1 b2; c and d are false positives; f1 f2 are missed.
    assert (s["has_dup"]["tp"], s["has_dup"]["fp"], s["has_dup"]["fn"]) == (5, 2, 2)
    assert s["has_dup"]["precision"] == pytest.approx(5 / 7)
    assert s["has_dup"]["recall"] == pytest.approx(5 / 7)
    assert s["has_dup"]["f1"] == pytest.approx(10 / 14)
    # Pairs: true = 3 (A) + 1 (B) + 1 (F) = 5; predicted = 1 + 1 + 3 = 5; shared = a1a2 + b1b2 = 2.
    p = s["pairs"]
    assert (p["tp"], p["fp"], p["fn"]) == (2, 3, 3)
    assert (p["predicted_pairs"], p["true_pairs"]) == (5, 5)
    assert p["precision"] == pytest.approx(2 / 5) and p["recall"] == pytest.approx(2 / 5)
    assert p["f1"] == pytest.approx(2 * 2 / (2 * 2 + 3 + 3))
    c = s["clusters"]
    assert (c["true"], c["true_with_dups"], c["predicted"], c["predicted_with_dups"]) == (6, 3, 6, 3)
    assert (c["true_largest"], c["predicted_largest"]) == (3, 3)
    assert s["docs"]["scored"] == 10 and s["docs"]["missing"] == 0 and s["docs"]["extra"] == 0
    # One kept per predicted cluster (6); a perfect dedup also keeps 6 (one per true cluster).
    assert s["kept"] == {"kept": 6, "expected": 6, "clusters_keeping_none": 0, "clusters_keeping_several": 0}


def test_has_dup_only_truth():
    truth = pd.DataFrame({"id": TRUTH["id"], "has_dup": [True] * 5 + [False] * 3 + [True] * 2})
    s = score(REPORT, truth)
    assert (s["has_dup"]["tp"], s["has_dup"]["fp"], s["has_dup"]["fn"]) == (5, 2, 2)
    assert s["pairs"] is None
    assert "true" not in s["clusters"] and s["kept"]["expected"] is None
    assert "pairwise scores need truth" in evaluate.format_scores(s)


def test_missing_and_extra_ids_are_reported_and_sizes_recomputed():
    report = pd.concat([REPORT[REPORT["id"] != "f2"],
                        pd.DataFrame({"id": ["x"], "cluster_id": ["x"], "cluster_size": [1], "kept": [True]})])
    s = score(report, TRUTH)
    d = s["docs"]
    assert (d["truth"], d["report"], d["scored"], d["missing"], d["extra"]) == (10, 10, 9, 1, 1)
    assert d["missing_ids"] == ["f2"] and d["extra_ids"] == ["x"]
    # Without f2, f1 has no duplicate left among the scored ids: neither f is a false negative now.
    assert (s["has_dup"]["tp"], s["has_dup"]["fp"], s["has_dup"]["fn"]) == (5, 2, 0)
    assert (s["pairs"]["tp"], s["pairs"]["fp"], s["pairs"]["fn"]) == (2, 3, 2)
    text = evaluate.format_scores(s)
    assert "1 ids in truth but not in the report" in text and "x" in text


def test_perfect_and_empty_predictions():
    perfect = pd.DataFrame({"id": TRUTH["id"], "cluster_id": TRUTH["cluster"]})
    s = score(perfect, TRUTH)
    assert s["has_dup"]["f1"] == 1.0 and s["pairs"]["f1"] == 1.0 and s["pairs"]["fp"] == 0
    nothing = pd.DataFrame({"id": TRUTH["id"], "cluster_id": TRUTH["id"]})
    s = score(nothing, TRUTH)
    assert s["has_dup"]["precision"] is None  # no predicted positives: undefined, not 0 or 1
    assert s["has_dup"]["recall"] == 0.0 and s["has_dup"]["f1"] == 0.0
    assert s["pairs"]["precision"] is None and s["pairs"]["fn"] == 5


def test_null_labels_are_singletons_and_size_mismatches_reported():
    report = REPORT.copy()
    report.loc[report["id"] == "c", "cluster_id"] = None  # c leaves {a3, c}: a3 is alone now
    s = score(report, TRUTH)
    assert (s["has_dup"]["tp"], s["has_dup"]["fp"], s["has_dup"]["fn"]) == (4, 1, 3)
    # the report still says cluster_size 2 for a3 and for c
    assert s["clusters"]["report_size_mismatches"] == 2
    assert "2 report rows have a cluster_size" in evaluate.format_scores(s)
    assert score(REPORT, TRUTH)["clusters"]["report_size_mismatches"] == 0


def test_duplicate_report_rows_counted():
    s = score(pd.concat([REPORT, REPORT.iloc[:2]]), TRUTH)
    assert s["docs"]["duplicate_report_ids"] == 2 and s["docs"]["scored"] == 10
    assert s["pairs"]["tp"] == 2


def test_bad_columns_rejected():
    with pytest.raises(ValueError, match="cluster_id"):
        score(REPORT.drop(columns=["cluster_id"]), TRUTH)
    with pytest.raises(ValueError, match="truth needs"):
        score(REPORT, TRUTH.drop(columns=["cluster"]))


def _write_parts(directory, df, parts=2):
    """A Spark-style output directory: part files plus _SUCCESS and .crc files the reader must skip."""
    os.makedirs(directory)
    for i, chunk in enumerate(np.array_split(np.arange(len(df)), parts)):
        pq.write_table(pa.Table.from_pandas(df.iloc[chunk], preserve_index=False),
                       os.path.join(directory, "part-%05d.snappy.parquet" % i))
        open(os.path.join(directory, ".part-%05d.snappy.parquet.crc" % i), "wb").write(b"\0crc")
    open(os.path.join(directory, "_SUCCESS"), "w").close()


def test_cli_reads_part_directories_and_writes_json(tmp_path, capsys):
    _write_parts(str(tmp_path / "report"), REPORT)
    pq.write_table(pa.Table.from_pandas(TRUTH, preserve_index=False), str(tmp_path / "truth.parquet"))
    out = tmp_path / "scores.json"
    rc = evaluate.main(["--report", str(tmp_path / "report"), "--truth", str(tmp_path / "truth.parquet"),
                        "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "same cluster (pairs)" in printed and "0.4000" in printed
    saved = json.loads(out.read_text())
    assert saved["pairs"]["tp"] == 2 and saved["has_dup"]["fn"] == 2 and saved["docs"]["scored"] == 10
    # a `pipeline sample` output directory stands for its truth.parquet
    os.makedirs(str(tmp_path / "sample" / "parquet"))
    os.rename(str(tmp_path / "truth.parquet"), str(tmp_path / "sample" / "truth.parquet"))
    pq.write_table(pa.table({"id": ["a1"], "url": ["u"], "text": ["t"]}),
                   str(tmp_path / "sample" / "parquet" / "docs.parquet"))
    assert evaluate.main(["--report", str(tmp_path / "report"), "--truth", str(tmp_path / "sample"),
                          "--json", str(out)]) == 0
    assert json.loads(out.read_text())["pairs"]["tp"] == 2


def test_cli_exact_truth_from_docs(tmp_path, capsys):
    base = " ".join("word%d" % i for i in range(40))
    docs = pd.DataFrame({
        "id": ["d1", "d2", "d3", "d4"],
        "text": [base, base.replace("word20", "changed"),  # J = 31/41 (< 0.8) with d1
                 base + " tail", "something else entirely here"],  # d3: J = 36/37 with d1
    })
    _write_parts(str(tmp_path / "docs"), docs, parts=2)
    report = pd.DataFrame({"id": ["d1", "d2", "d3", "d4"], "cluster_id": ["d1", "d1", "d1", "d4"]})
    pq.write_table(pa.Table.from_pandas(report, preserve_index=False), str(tmp_path / "report.parquet"))
    assert evaluate.main(["--report", str(tmp_path / "report.parquet"), "--truth", "exact", "--docs",
                          str(tmp_path / "docs"), "--json", str(tmp_path / "s.json")]) == 0
    s = json.loads((tmp_path / "s.json").read_text())
    assert (s["has_dup"]["tp"], s["has_dup"]["fp"], s["has_dup"]["fn"]) == (2, 1, 0)
    assert (s["pairs"]["tp"], s["pairs"]["fp"], s["pairs"]["fn"]) == (1, 2, 0)
    # A lower threshold makes d2 a true duplicate too.
    assert evaluate.main(["--report", str(tmp_path / "report.parquet"), "--truth", "exact", "--docs",
                          str(tmp_path / "docs"), "--threshold", "0.7", "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["pairs"]["f1"] == 1.0


def test_cli_exact_truth_follows_normalize(tmp_path, capsys):
    """--truth exact under each preset equals the reference's clusters for that preset; the two
    presets disagree on pages whose identifiers were re-rendered without underscores."""
    prose = " ".join("step%d" % i for i in range(30))
    code = " ".join("call into_iter then as_ref and to_owned on item%d" % i for i in range(4))
    texts = {"c0": code + " " + prose, "c1": code.replace("_", " ") + " " + prose,
             "c2": code.replace("_", "-") + " " + prose, "p0": prose + " Привет мир_1 東京_都",
             "p1": prose.upper() + " привет МИР_1 東京_都", "s0": "a_b", "s1": "A b"}
    ids = sorted(texts)
    docs = pd.DataFrame({"id": ids, "text": [texts[i] for i in ids]})
    _write_parts(str(tmp_path / "docs"), docs, parts=2)
    truths = {p: reference.clusters(ids, docs["text"].tolist(), p) for p in ("word", "alnum")}
    assert truths["word"] != truths["alnum"]
    assert truths["alnum"]["c1"] == "c0" != truths["word"]["c1"] and truths["word"]["p1"] == "p0"
    for report_preset, truth in truths.items():
        report = pd.DataFrame({"id": ids, "cluster_id": [truth[i] for i in ids]})
        pq.write_table(pa.Table.from_pandas(report, preserve_index=False), str(tmp_path / "report.parquet"))
        for preset in truths:
            assert evaluate.main(["--report", str(tmp_path / "report.parquet"), "--truth", "exact", "--docs",
                                  str(tmp_path / "docs"), "--normalize", preset,
                                  "--json", str(tmp_path / "s.json")]) == 0
            s = json.loads((tmp_path / "s.json").read_text())
            assert s["inputs"]["normalize"] == preset
            assert (s["pairs"]["f1"] == 1.0) == (preset == report_preset)
        got = evaluate.exact_truth(str(tmp_path / "docs"), normalize=report_preset)
        assert dict(zip(got["id"], got["cluster"])) == truth
    # a report directory whose _config.json names another definition gets a warning
    _write_parts(str(tmp_path / "rdir"), pd.DataFrame({"id": ids, "cluster_id": ids}))
    (tmp_path / "rdir" / "_config.json").write_text(json.dumps(
        {"config": {"threshold": 0.8, "ngram": 5, "normalize": "alnum"}}))
    capsys.readouterr()
    assert evaluate.main(["--report", str(tmp_path / "rdir"), "--truth", "exact", "--docs", str(tmp_path / "docs")]) == 0
    assert "normalize: report alnum, truth word" in capsys.readouterr().err
    assert evaluate.definition_mismatches(str(tmp_path / "rdir"), 0.8, 5, "alnum") == []


# ---------------------------------------------------------------- exact Jaccard vs brute force

def _random_corpus(n, seed):
    """Small texts over a small vocabulary, many derived from earlier ones by a few word edits."""
    rng = random.Random(seed)
    words = ["w%d" % i for i in range(50)] + ["u_%d" % i for i in range(10)]
    texts = []
    for _ in range(n):
        if texts and rng.random() < 0.6:
            t = rng.choice(texts).split()
            for _ in range(rng.randint(0, 4)):
                op = rng.randrange(3)
                if op == 0 and t:
                    t[rng.randrange(len(t))] = rng.choice(words)
                elif op == 1:
                    t.insert(rng.randint(0, len(t)), rng.choice(words))
                elif t:
                    del t[rng.randrange(len(t))]
        else:
            t = [rng.choice(words) for _ in range(rng.choice([0, 2, 4, 5, 8, 20, 40]))]
        texts.append(" ".join(t))
    return texts


def _brute_components(n, edges):
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x
    for a, b in edges:
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
    return [min(j for j in range(n) if find(j) == find(i)) for i in range(n)]


@pytest.mark.parametrize("threshold,ngram,normalize", [(0.8, 5, "word"), (0.8, 5, "alnum"), (0.5, 3, "word"),
                                                       (0.9, 1, "alnum"), (1.0, 5, "word")])
def test_exact_jaccard_matches_brute_force(threshold, ngram, normalize):
    texts = _random_corpus(300, seed=int(threshold * 100) + ngram)
    sets = [shingle_hashes(t, ngram, normalize) for t in texts]
    a, b, sims = similar_pairs(sets, threshold)
    ref_sets = [reference.shingles(t, normalize, ngram) for t in texts]
    brute = {(i, j): reference.jaccard(ref_sets[i], ref_sets[j])
             for i, j in itertools.combinations(range(len(texts)), 2)}
    expected = sorted(p for p, j in brute.items() if j >= threshold)
    assert list(zip(a.tolist(), b.tolist())) == expected
    assert len(expected) > 20  # the corpus really has near-duplicates at this threshold
    assert np.allclose(sims, [brute[p] for p in expected])
    assert components(len(sets), a, b).tolist() == _brute_components(len(sets), expected)


def test_exact_clusters_match_brute_force_with_many_identical_copies():
    texts = _random_corpus(200, seed=5)
    texts += [texts[7]] * 40 + [texts[7] + " w1"] * 3  # a big group of copies plus near-copies
    ids = ["d%04d" % i for i in range(len(texts))]
    brute = sorted(reference.similar_pairs(texts, "word", 0.8, n=3))
    expected = [ids[c] for c in _brute_components(len(ids), brute)]
    truth, pairs = exact_clusters(ids, texts, 0.8, ngram=3)
    assert truth["cluster"].tolist() == expected
    assert list(zip(pairs["id_a"], pairs["id_b"])) == [(ids[i], ids[j]) for i, j in brute]
    truth2, none = exact_clusters(ids, texts, 0.8, ngram=3, with_pairs=False)
    assert none is None and truth2.equals(truth)


def test_exact_clusters_ids_and_empty_texts():
    base = " ".join("t%d" % i for i in range(30))
    ids = ["z", "m", "a", "q", "e1", "e2"]
    texts = [base, base + " x", "unrelated words only here now", base + " x y", "", None]
    truth, pairs = exact_clusters(ids, texts)
    assert truth["id"].tolist() == sorted(ids)
    got = dict(zip(truth["id"], truth["cluster"]))
    assert got["z"] == got["m"] == got["q"] == "m"  # smallest id of the component
    assert got["a"] == "a" and got["e1"] == "e1" and got["e2"] == "e2"  # empty texts match nothing
    assert truth.set_index("id")["has_dup"].to_dict() == {"a": False, "e1": False, "e2": False, "m": True,
                                                          "q": True, "z": True}
    assert (pairs["id_a"] < pairs["id_b"]).all() and len(pairs) == 3
    with pytest.raises(ValueError, match="duplicate ids"):
        exact_clusters(["a", "a"], ["x", "y"])

"""The dedup job on the real local SparkSession, on hand-built corpora whose clusters are known."""
import glob
import json
import os
import random

import pandas as pd
import pyarrow.parquet as pq
import pytest

from jobs import dedup_job
from pipeline.accounting import check_stage
from pipeline.dedup.config import DedupConfig
from pipeline.dedup.local import dedup_local
from pipeline.dedup.spark_components import connected_components
from pipeline.dedup.spark_plan import run

import near_dup_reference as reference

VOCAB = ["w%d" % i for i in range(5000)]


def _mutate(rng, words, k):
    """Replace k words at positions >= 5 apart: changes exactly 5k of the shingles."""
    out = list(words)
    for pos in range(10, 10 + 10 * k, 10):
        out[pos] = "x%d" % rng.randrange(10 ** 9)
    return out


def build_corpus():
    rng = random.Random(11)
    docs = {}

    def text(ws):
        return " ".join(ws)

    a = [rng.choice(VOCAB) for _ in range(150)]
    docs["a0"] = text(a)
    docs["a1"] = text(a)
    docs["a2"] = text(w.upper() for w in a)                 # same words after normalisation
    docs["a3"] = text(a) + " " + text(a[:2])                 # J ~ 0.99, longest -> kept

    b = [rng.choice(VOCAB) for _ in range(300)]
    docs["b0"] = text(b)
    docs["b1"] = text(_mutate(rng, b, 3))                    # J = 281/311 = 0.90 -> duplicate
    c = [rng.choice(VOCAB) for _ in range(300)]
    docs["c0"] = text(c)
    docs["c1"] = text(_mutate(rng, c, 8))                    # J = 256/336 = 0.76 -> not

    # chain: d0 ~ d1 ~ d2 (J ~ 0.87 each) but J(d0, d2) ~ 0.76: still one component
    d = [rng.choice(VOCAB) for _ in range(300)]
    d1 = _mutate(rng, d, 4)
    d2 = list(d1)
    for pos in range(15, 55, 10):
        d2[pos] = "y%d" % rng.randrange(10 ** 9)
    docs["d0"], docs["d1"], docs["d2"] = text(d), text(d1), text(d2)

    # boilerplate: 10 pages share 300 words of template + 60 own words (pairwise J ~ 0.7, so they
    # collide in LSH buckets a lot) and p0 has a true near-copy q0; nothing else may join them.
    template = [rng.choice(VOCAB) for _ in range(300)]
    for i in range(10):
        own = [rng.choice(VOCAB) for _ in range(60)]
        docs["p%d" % i] = text(template + own)
        if i == 0:
            docs["q0"] = text(_mutate(rng, template + own, 1))

    docs["s0"] = "Hello world"
    docs["s1"] = "hello, WORLD!"
    docs["s2"] = "hello there"
    docs["s3"] = "hello world " + text(a[:10])
    docs["e0"] = ""
    docs["e1"] = "  ...  "
    docs["e2"] = None
    return docs


def exact_clusters(docs, threshold=0.8, normalize="word"):
    """{id: cluster id} from the plain-Python reference (all pairs, Python sets of word tuples)."""
    ids = sorted(docs)
    return reference.clusters(ids, [docs[i] for i in ids], normalize, threshold)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    docs = build_corpus()
    root = tmp_path_factory.mktemp("dedup")
    frame = pd.DataFrame({"id": list(docs), "url": ["http://x/%s" % i for i in docs],
                          "text": list(docs.values()), "source": "test", "warc_date": "2024-01-01"})
    # two input files, rows not in id order: the output must not depend on input order
    frame = frame.sample(frac=1.0, random_state=1)
    os.makedirs(str(root / "docs"))
    frame.iloc[:20].to_parquet(str(root / "docs" / "part-0.parquet"), index=False)
    frame.iloc[20:].to_parquet(str(root / "docs" / "part-1.parquet"), index=False)
    return docs, root


@pytest.fixture(scope="module")
def result(spark, corpus):
    docs, root = corpus
    assert dedup_job.main(["--input", str(root / "docs"), "--output", str(root / "out")]) == 0
    report = pd.read_parquet(str(root / "out" / "dedup" / "report"))
    kept = pd.read_parquet(str(root / "out" / "dedup" / "kept"))
    return report, kept


def test_corpus_is_what_it_claims():
    docs = build_corpus()
    h = {i: reference.shingles(t, "word") for i, t in docs.items()}
    jaccard = reference.jaccard
    assert jaccard(h["b0"], h["b1"]) == pytest.approx(281 / 311)
    assert jaccard(h["c0"], h["c1"]) < 0.8
    assert jaccard(h["d0"], h["d1"]) >= 0.8 and jaccard(h["d1"], h["d2"]) >= 0.8
    assert jaccard(h["d0"], h["d2"]) < 0.8
    assert 0.6 < jaccard(h["p1"], h["p2"]) < 0.8 and jaccard(h["p0"], h["q0"]) > 0.9


def test_clusters_match_exact_jaccard_truth(result, corpus):
    docs, _ = corpus
    report, _ = result
    got = dict(zip(report["id"], report["cluster_id"]))
    assert got == exact_clusters(docs)
    assert got["a1"] == got["a2"] == got["a3"] == "a0"
    assert got["b1"] == "b0" and got["c1"] == "c1"
    assert got["d0"] == got["d1"] == got["d2"] == "d0"           # chain through d1
    assert got["q0"] == "p0" and all(got["p%d" % i] == "p%d" % i for i in range(1, 10))
    assert got["s1"] == "s0" and got["s2"] == "s2" and got["s3"] == "s3"
    assert all(got[e] == e for e in ("e0", "e1", "e2"))           # empty docs never match


def test_report_schema_one_row_per_doc_one_kept_per_cluster(result, corpus):
    docs, root = corpus
    report, kept = result
    schema = pq.read_schema(glob.glob(str(root / "out" / "dedup" / "report" / "*.parquet"))[0])
    assert [(f.name, str(f.type)) for f in schema] == [
        ("id", "string"), ("cluster_id", "string"), ("cluster_size", "int64"), ("kept", "bool")]
    assert sorted(report["id"]) == sorted(docs)
    sizes = report.groupby("cluster_id")["id"].count()
    assert (report["cluster_size"] == report["cluster_id"].map(sizes)).all()
    assert (report.groupby("cluster_id")["kept"].sum() == 1).all()
    for cid, members in report.groupby("cluster_id"):
        assert cid == min(members["id"])
        best = min(members["id"], key=lambda i: (-len(docs[i] or ""), i))
        assert members.set_index("id")["kept"][best]
    assert report.set_index("id")["kept"]["a3"]                   # longest copy survives
    # kept/ holds exactly the kept documents, all input columns, unchanged text
    assert list(kept.columns) == ["id", "url", "text", "source", "warc_date"]
    assert sorted(kept["id"]) == sorted(report.loc[report["kept"], "id"])
    assert all(kept.set_index("id")["text"][i] == docs[i] for i in kept["id"] if docs[i] is not None)
    for d in ("kept", "report"):
        cfg = json.load(open(str(root / "out" / "dedup" / d / "_config.json")))
        assert cfg["job"] == "DedupConfig" and cfg["config"]["threshold"] == 0.8
        assert cfg["config"]["normalize"] == "word"  # the default near-duplicate definition


def test_stats_and_determinism(spark, corpus, result):
    docs, root = corpus
    report, _ = result
    cfg = DedupConfig(input=str(root / "docs"), output=str(root / "again"))
    stats = run(spark, cfg)
    check_stage(stats)
    assert stats["records_in"] == len(docs)
    assert stats["records_out"] == int(report["kept"].sum())
    assert stats["duplicates_removed"] == len(docs) - stats["records_out"]
    assert (stats["bands"], stats["rows"]) == (18, 7)
    assert stats["verified_pairs"] < stats["candidate_pairs"]    # boilerplate pairs were rejected
    assert stats["clusters"] == 5 and stats["docs_without_shingles"] == 3
    for d in ("report", "kept"):
        def contents(out):
            files = sorted(glob.glob(str(root / out / "dedup" / d / "part-*.parquet")),
                           key=lambda p: os.path.basename(p)[:10])
            return [open(p, "rb").read() for p in files]
        assert contents("out") == contents("again")
    # and the single-process reference core agrees
    ref, _ = dedup_local(list(docs), list(docs.values()))
    assert {r["id"]: (r["cluster_id"], r["kept"]) for r in ref} == \
        {i: (c, k) for i, c, k in zip(report["id"], report["cluster_id"], report["kept"])}


def test_kept_in_the_input_layout_or_shuffled_by_id(spark, corpus, result):
    """kept/ stays in the input's partitions when few ids are removed (broadcast), and is hash-partitioned
    by id into --partitions files otherwise; either way it holds exactly the kept documents, each file
    sorted by id, the same bytes on every rerun."""
    docs, root = corpus
    report, kept = result
    want = sorted(report.loc[report["kept"], "id"])

    def files(out):
        return sorted(glob.glob(str(root / out / "dedup" / "kept" / "part-*.parquet")),
                      key=lambda p: os.path.basename(p)[:10])

    for out in ("out", "three-a", "three-b"):
        if out != "out":
            run(spark, DedupConfig(input=str(root / "docs"), output=str(root / out), partitions=3))
        ids = [pd.read_parquet(f)["id"].tolist() for f in files(out)]
        assert sorted(i for part in ids for i in part) == want
        assert all(part == sorted(part) for part in ids)
    assert len(files("out")) == 2                     # the two input files, no shuffle
    assert len(files("three-a")) == 3
    # the shuffled layout is as deterministic as the input one
    assert [open(f, "rb").read() for f in files("three-a")] == [open(f, "rb").read() for f in files("three-b")]
    report3 = pd.read_parquet(str(root / "three-a" / "dedup" / "report"))
    assert sorted(report3.loc[report3["kept"], "id"]) == want


def test_reliable_checkpoints_give_the_same_outputs(spark, corpus, result, tmp_path):
    """--checkpoint-dir (dynamic allocation on EMR): signatures persisted instead of locally
    checkpointed, scored pairs checkpointed to the directory; the same report and kept/ bytes."""
    docs, root = corpus
    out = tmp_path / "reliable"
    stats = run(spark, DedupConfig(input=str(root / "docs"), output=str(out), checkpoint_dir=str(tmp_path / "ckpt")))
    assert os.listdir(str(tmp_path / "ckpt"))                  # the scored pairs went there
    report, _ = result
    assert stats["records_out"] == int(report["kept"].sum())
    for d in ("report", "kept"):
        def contents(base):
            files = sorted(glob.glob(str(base / "dedup" / d / "part-*.parquet")), key=lambda p: os.path.basename(p)[:10])
            return [open(p, "rb").read() for p in files]
        assert contents(out) == contents(root / "out")


IDENTIFIERS = ["into_iter", "as_ref", "to_owned", "unwrap_or_default", "split_whitespace", "is_empty",
               "push_str", "with_capacity", "extend_from_slice", "sort_unstable_by_key"]
PROSE = ("the method returns an iterator over the items of a vector and each call moves the value out "
         "so that the original collection cannot be used again after this point in safe code").split()


def code_corpus():
    """Pages about code whose near-duplicate status depends on whether `_` is a word character."""
    rng = random.Random(21)
    docs = {}
    # a0: Rust docs with an identifier every fourth word; a1/a2: the same page rendered with the
    # identifiers' underscores as spaces / hyphens. Same words for `alnum`, nearly no shared 5-gram for `word`.
    a = [rng.choice(IDENTIFIERS) if i % 4 == 0 else rng.choice(PROSE) for i in range(120)]
    docs["a0"] = "Rust: " + " ".join(a)
    docs["a1"] = "Rust: " + " ".join(a).replace("_", " ")
    docs["a2"] = "RUST: " + " ".join(a).replace("_", "-")
    # b0/b1: one long identifier renamed. One changed word for `word`; three for `alnum`, which also
    # has more shingles: near-duplicates only under `word`.
    b = [rng.choice(PROSE) for _ in range(70)]
    docs["b0"] = " ".join(b[:35] + ["read_the_first_line_of_the_file()"] + b[35:])
    docs["b1"] = " ".join(b[:35] + ["read_the_last_line_in_the_buffer()"] + b[35:])
    # short pages (< 5 words): one shingle of all their words
    docs["s0"], docs["s1"], docs["s2"] = "see into_iter", "See into iter.", "see INTO_ITER!"
    # Cyrillic with an identifier and digits, a case-changed copy; Japanese and Arabic with punctuation
    ru = ("Москва столица России в 2024 году население_города выросло на 1,5 процента и метро "
          "перевезло 2 миллиарда пассажиров а новые станции открылись на юге и западе города").split()
    docs["r0"] = " ".join(ru)
    docs["r1"] = " ".join(ru).upper().replace("ГОДУ", "году") + " Конец."
    docs["j0"] = "東京都は日本の首都です。人口は約1400万人です。 参考_資料 第3章"
    docs["j1"] = "東京都は日本の首都です、人口は約1400万人です 参考_資料 第3章!"
    docs["k0"] = "مرحبا بالعالم، هذا نص عربي مع أرقام ٣١٢ و 42 وكلمة_مركبة في النهاية."
    docs["k1"] = "مرحبا بالعالم هذا نص عربي مع أرقام ٣١٢ و 42 وكلمة مركبة في النهاية"
    return docs


def test_normalize_presets_on_code_pages(spark, tmp_path):
    """The dedup job under both presets gives the clusters of the plain-Python reference, and the
    presets really disagree on this corpus (in both directions)."""
    docs = code_corpus()
    frame = pd.DataFrame({"id": list(docs), "url": ["http://x/%s" % i for i in docs],
                          "text": list(docs.values()), "source": "test", "warc_date": "2024-01-01"})
    os.makedirs(str(tmp_path / "docs"))
    frame.to_parquet(str(tmp_path / "docs" / "part-0.parquet"), index=False)
    got = {}
    for preset in ("word", "alnum"):
        out = tmp_path / preset
        assert dedup_job.main(["--input", str(tmp_path / "docs"), "--output", str(out), "--normalize", preset]) == 0
        report = pd.read_parquet(str(out / "dedup" / "report"))
        got[preset] = dict(zip(report["id"], report["cluster_id"]))
        assert got[preset] == exact_clusters(docs, normalize=preset), preset
        saved = json.load(open(str(out / "dedup" / "report" / "_config.json")))
        assert saved["config"]["normalize"] == preset
    word, alnum = got["word"], got["alnum"]
    assert word["a0"] == "a0" and word["a1"] == word["a2"] == "a1"
    assert alnum["a0"] == alnum["a1"] == alnum["a2"] == "a0"
    assert word["b1"] == "b0" and alnum["b1"] == "b1"
    assert word["s2"] == "s0" and word["s1"] == "s1" and alnum["s1"] == alnum["s2"] == "s0"
    assert word["k1"] == "k1" and alnum["k1"] == "k0"
    for g in (word, alnum):  # case, punctuation and digits never matter
        assert g["r1"] == "r0" and g["j1"] == "j0"


def test_code_corpus_is_what_it_claims():
    docs = code_corpus()

    def j(x, y, preset):
        return reference.jaccard(reference.shingles(docs[x], preset), reference.shingles(docs[y], preset))
    assert j("a0", "a1", "alnum") == 1.0 and j("a0", "a1", "word") < 0.2
    assert 0.8 <= j("b0", "b1", "word") < 0.9 and 0.7 < j("b0", "b1", "alnum") < 0.8
    assert len(reference.shingles(docs["s0"], "word")) == 1


def test_connected_components_long_path(spark):
    rng = random.Random(7)
    nodes = ["n%04d" % i for i in range(400)]
    path = list(nodes)
    rng.shuffle(path)                                              # minimum somewhere in the middle
    edges = [(path[i], path[i + 1]) for i in range(len(path) - 1)]
    edges += [("m2", "m1"), ("m3", "m2"), ("m1", "m3"), ("z1", "z0"), ("z0", "z1"), ("z1", "z1")]
    df = spark.createDataFrame(edges, "src string, dst string")
    stored_before = set(spark.sparkContext._jsc.getPersistentRDDs().keySet())
    labels, rounds = connected_components(df)
    got = {r["id"]: r["cluster_id"] for r in labels.collect()}
    assert len(got) == labels.count() == 400 + 5
    assert all(got[n] == "n0000" for n in nodes)
    assert got["m3"] == got["m2"] == "m1" and got["z1"] == "z0" == got["z0"]
    assert 2 <= rounds <= 30                                       # log-ish, not the path length
    # Each round's local checkpoint is freed when the next one is taken: only the last stays stored.
    assert len(set(spark.sparkContext._jsc.getPersistentRDDs().keySet()) - stored_before) == 1


def test_single_task_components_match_distributed(spark):
    # same graph through both paths: the bounded single-task union-find must give the distributed labels
    rng = random.Random(3)
    nodes = ["v%03d" % i for i in range(300)]
    edges = [(rng.choice(nodes), rng.choice(nodes)) for _ in range(220)] + [("v999", "v998"), ("a", "a")]
    df = spark.createDataFrame(edges, "src string, dst string")
    dist, rounds = connected_components(df)
    fast, fast_rounds = connected_components(df, single_task_max_edges=len(edges))
    assert rounds >= 1 and fast_rounds == 0
    got = {r["id"]: r["cluster_id"] for r in fast.collect()}
    assert got == {r["id"]: r["cluster_id"] for r in dist.collect()}
    assert got["v999"] == got["v998"] == "v998" and "a" not in got   # self-loops are not edges
    # over the bound, the distributed path runs
    assert connected_components(df, single_task_max_edges=len(edges) - 1)[1] == rounds


# --- which member of a cluster is kept (--keep) ------------------------------------------------------

# (source, pos) per document for --keep first; unlisted documents get a random place in "f2"/"f3".
# a1 and a2 share the earliest place (tie -> smaller id a1); a missing source sorts after every
# source, a missing pos after every pos of the same source.
ORDER = {"a0": ("f1", 2), "a1": ("f0", 5), "a2": ("f0", 5), "a3": ("f0", 9),
         "b0": ("f1", 40), "b1": ("f1", 4),
         "d0": ("f1", 10), "d1": ("f1", 3), "d2": (None, 0),
         "s0": (None, None), "s1": ("f0", 1),
         "p0": ("f0", 7), "q0": ("f0", None)}


def expected_kept(docs, clusters, rule, order):
    """The kept id of every cluster, straight from the rule's definition (README, Deduplication)."""
    members = {}
    for i, c in clusters.items():
        members.setdefault(c, []).append(i)
    kept = set()
    for ids in members.values():
        if rule == "longest":
            kept.add(sorted(ids, key=lambda i: (-len(docs[i] or ""), i))[0])
        elif rule == "smallest-id":
            kept.add(sorted(ids)[0])
        else:  # by source file (missing last), then position in it (missing last), then id
            kept.add(sorted(ids, key=lambda i: (order[i][0] is None, order[i][0] or "",
                                                order[i][1] is None, order[i][1] or 0, i))[0])
    return kept


@pytest.fixture(scope="module")
def ordered_corpus(corpus):
    """The same documents with ingest's `source` and `pos` columns (nullable)."""
    import pyarrow as pa

    docs, root = corpus
    rng = random.Random(5)
    order = {i: ORDER.get(i, ("f%d" % rng.randrange(2, 4), rng.randrange(10 ** 6))) for i in docs}
    ids = sorted(docs)
    rng.shuffle(ids)
    path = root / "ordered"
    os.makedirs(str(path))
    for k, part in enumerate((ids[:15], ids[15:])):
        pq.write_table(pa.table({"id": part, "text": [docs[i] for i in part],
                                 "source": pa.array([order[i][0] for i in part], pa.string()),
                                 "pos": pa.array([order[i][1] for i in part], pa.int64())}),
                       str(path / ("part-%d.parquet" % k)))
    return docs, order, path


@pytest.mark.parametrize("rule", ["first", "smallest-id"])
def test_keep_rules(spark, ordered_corpus, result, rule):
    docs, order, path = ordered_corpus
    out = path.parent / ("keep-" + rule)
    assert dedup_job.main(["--input", str(path), "--output", str(out), "--keep", rule]) == 0
    report = pd.read_parquet(str(out / "dedup" / "report"))
    kept = pd.read_parquet(str(out / "dedup" / "kept"))
    clusters = exact_clusters(docs)
    assert dict(zip(report["id"], report["cluster_id"])) == clusters     # the rule never moves clusters
    want = expected_kept(docs, clusters, rule, order)
    assert set(report.loc[report["kept"], "id"]) == want == set(kept["id"])
    assert want != expected_kept(docs, clusters, "longest", order)        # the rules really differ here
    in_clusters = {"a0", "a1", "a2", "a3", "b0", "b1", "d0", "d1", "d2", "p0", "q0", "s0", "s1"}
    assert want == {"first": {"a1", "b1", "d1", "s1", "p0"},
                    "smallest-id": {"a0", "b0", "d0", "s0", "p0"}}[rule] | (set(docs) - in_clusters)
    cfg = json.load(open(str(out / "dedup" / "kept" / "_config.json")))
    assert cfg["config"]["keep"] == rule
    # the default run above (no --keep) kept the longest
    default, _ = result
    assert set(default.loc[default["kept"], "id"]) == expected_kept(docs, clusters, "longest", order)
    # the single-process core applies the same rule
    ref, _ = dedup_local(list(docs), list(docs.values()), keep=rule,
                         sources=[order[i][0] for i in docs], positions=[order[i][1] for i in docs])
    assert {r["id"] for r in ref if r["kept"]} == want


def test_keep_first_needs_the_input_order(spark, corpus):
    _, root = corpus
    with pytest.raises(ValueError, match=r"missing column\(s\) \['pos'\].*--keep first"):
        run(spark, DedupConfig(input=str(root / "docs"), output=str(root / "nopos"), keep="first"))
    with pytest.raises(ValueError, match="keep rule"):
        DedupConfig(input="x", output="y", keep="last")


def test_job_equals_core_on_generated_web_pages(spark, tmp_path):
    # Real data path: `pipeline sample` pages (templates, near-copies, boilerplate-sharing buckets),
    # spread over three parquet files with rows out of id order; the job's report must be the
    # single-process core's, every document accounted for, and the pair F1 against the exact truth
    # as high as the core's.
    from pipeline.evaluate import score
    from pipeline.sample import write_sample

    write_sample(str(tmp_path / "sample"), 1200, seed=3, workers=1)
    docs = pd.read_parquet(str(tmp_path / "sample" / "parquet"))
    shuffled = docs.sample(frac=1.0, random_state=2)
    os.makedirs(str(tmp_path / "docs"))
    for i, part in enumerate((shuffled.iloc[:500], shuffled.iloc[500:900], shuffled.iloc[900:])):
        part.to_parquet(str(tmp_path / "docs" / ("part-%d.parquet" % i)), index=False)
    stats = run(spark, DedupConfig(input=str(tmp_path / "docs"), output=str(tmp_path / "out")))
    check_stage(stats)
    report = pd.read_parquet(str(tmp_path / "out" / "dedup" / "report"))
    ref, ref_stats = dedup_local(docs["id"].tolist(), docs["text"].tolist())
    assert {r["id"]: (r["cluster_id"], r["kept"]) for r in ref} == \
        {i: (c, k) for i, c, k in zip(report["id"], report["cluster_id"], report["kept"])}
    assert (stats["candidate_pairs"], stats["verified_pairs"], stats["duplicates_removed"]) == \
        (ref_stats["candidate_pairs"], ref_stats["verified_pairs"], ref_stats["duplicates_removed"])
    assert stats["duplicates_removed"] > 100
    kept = pd.read_parquet(str(tmp_path / "out" / "dedup" / "kept"))
    assert sorted(kept["id"]) == sorted(report.loc[report["kept"], "id"])
    truth = pd.read_parquet(str(tmp_path / "sample" / "truth.parquet"))
    assert score(report, truth)["pairs"]["f1"] == score(pd.DataFrame(ref), truth)["pairs"]["f1"] > 0.97


def test_unique_columns_are_written_without_dictionaries(result, corpus):
    """id, url and text never repeat: kept/ and report/ write them plain (no dictionary built and then
    dropped); columns with repeated values keep their dictionaries."""
    _, root = corpus
    for d, plain, dictionary in (("kept", {"id", "url", "text"}, {"source"}), ("report", {"id"}, {"cluster_size"})):
        for path in glob.glob(str(root / "out" / "dedup" / d / "part-*.parquet")):
            meta = pq.ParquetFile(path).metadata
            for g in range(meta.num_row_groups):
                encodings = {meta.schema.column(i).name: set(meta.row_group(g).column(i).encodings)
                             for i in range(meta.num_columns)}
                for name in plain:
                    assert not {"PLAIN_DICTIONARY", "RLE_DICTIONARY"} & encodings[name], (d, name, encodings)
                for name in dictionary:
                    assert {"PLAIN_DICTIONARY", "RLE_DICTIONARY"} & encodings[name], (d, name, encodings)


def _plan_nodes(plan: str):
    """(name, parent name) of every node of a physical plan's tree string."""
    lines = [line for line in plan.splitlines() if line.strip()]

    def depth(line):
        return len(line) - len(line.lstrip(" :+-"))

    out = []
    for i, line in enumerate(lines):
        parents = [p for p in lines[:i] if depth(p) < depth(line)]
        out.append((line.lstrip(" :+-"), parents[-1].lstrip(" :+-") if parents else ""))
    return out


def test_verification_joins_find_the_signatures_in_place(spark, corpus):
    """The stored signatures (hash-partitioned and sorted by (id_hash, id)) meet both verification
    joins without a shuffle: the plan's only exchanges move bucket rows and edges. The pairs are the
    core's candidate pairs, each with both ends' shingle hashes."""
    from functools import partial

    import numpy as np

    from pipeline.dedup.batches import SIGNATURE_SCHEMA, signature_batches
    from pipeline.dedup.lsh import resolve_bands_rows
    from pipeline.dedup.minhash import MinHasher
    from pipeline.dedup.shingles import jaccard
    from pipeline.dedup.spark_plan import (candidate_edges, candidate_shingles, id_hash,
                                           local_checkpoint_keeping_layout)
    from pyspark.sql import functions as F

    docs, root = corpus
    cfg = DedupConfig(input=str(root / "docs"), output=str(root / "unused"))
    bands, rows = resolve_bands_rows(cfg.threshold, cfg.num_perm)
    sig = local_checkpoint_keeping_layout(spark, spark.read.parquet(cfg.input).select("id", "text").mapInArrow(
        partial(signature_batches, num_perm=cfg.num_perm, seed=cfg.seed, ngram=cfg.ngram, bands=bands, rows=rows,
                normalize=cfg.normalize), SIGNATURE_SCHEMA)
        .withColumn("id_hash", id_hash("id")).repartition(4, "id_hash", "id").sortWithinPartitions("id_hash", "id"))
    with_shingles = sig.where(F.col("bands").isNotNull()).select("id", "n", "bands")
    pairs = candidate_shingles(candidate_edges(with_shingles, cfg.window, 4, 4), sig)

    # (a corpus this small would be broadcast whole; the layout under test is that of corpora that are not)
    spark.conf.set("spark.sql.autoBroadcastJoinThreshold", "-1")
    try:
        plan = pairs._jdf.queryExecution().executedPlan().toString()
        collected = pairs.collect()
    finally:
        spark.conf.unset("spark.sql.autoBroadcastJoinThreshold")
    nodes = _plan_nodes(plan)
    exchanges = [name for name, _ in nodes if name.startswith("Exchange hashpartitioning")]
    assert len(exchanges) == 3, plan                  # routed bucket rows by part, edges by src, edges by dst
    assert [e for e in exchanges if "(src_hash" in e] and [e for e in exchanges if "(dst_hash" in e], plan
    # both ends' shingle hashes go from the stored signatures straight into a merge join: no exchange, no sort
    sides = [parent for name, parent in nodes if name.startswith("Project [id_hash") and "shingles" in name]
    assert len(sides) == 2 and all(p.startswith("SortMergeJoin") for p in sides), plan

    got = {(r["src"], r["dst"]): (np.frombuffer(r["a"], dtype=np.uint64), np.frombuffer(r["b"], dtype=np.uint64))
           for r in collected}
    _, stats = dedup_local(list(docs), list(docs.values()))
    assert len(got) == stats["candidate_pairs"]
    assert sum(jaccard(a, b) >= cfg.threshold for a, b in got.values()) == stats["verified_pairs"]
    hasher = MinHasher(cfg.num_perm, cfg.seed, cfg.ngram, cfg.normalize)
    flat, offsets, _ = hasher.signatures([docs[i] for i in sorted(docs)])
    own = {i: flat[offsets[k]:offsets[k + 1]] for k, i in enumerate(sorted(docs))}
    for (src, dst), (a, b) in got.items():
        assert src < dst and np.array_equal(a, own[src]) and np.array_equal(b, own[dst])


def test_partition_values_land_in_their_partitions(spark):
    """hash_partition_values(P)[p] is a value that repartition(P, col) sends to partition p, so the
    routed bucket rows of candidate partition p all arrive in one task."""
    from pipeline.dedup.spark_plan import hash_partition_values
    from pyspark.sql import functions as F

    for partitions in (1, 4, 7, 28):
        values = hash_partition_values(spark, partitions)
        assert len(values) == partitions == len(set(values))
        df = spark.createDataFrame([(v, p) for p, v in enumerate(values)], "part long, expected int")
        landed = (df.repartition(partitions, "part").select("expected", F.spark_partition_id().alias("landed"))
                  .collect())
        assert sorted((r["expected"], r["landed"]) for r in landed) == [(p, p) for p in range(partitions)]


def test_every_algorithm_flag_reaches_the_job(spark, tmp_path):
    """Non-default --threshold, --ngram, --num-perm, --bands/--rows, --window, --seed and the
    distributed components (--single-task-max-edges 0, --max-iterations) through the CLI: the report
    and the counts are the core's with the same settings, and differ from the defaults' (so a flag
    that did not reach the job would show)."""
    from pipeline.sample import write_sample

    write_sample(str(tmp_path / "sample"), 400, seed=11, workers=1)
    docs = pd.read_parquet(str(tmp_path / "sample" / "parquet"))
    out = tmp_path / "out"
    flags = {"threshold": 0.6, "ngram": 3, "num_perm": 64, "bands": 16, "rows": 4, "window": 2, "seed": 5}
    argv = ["--input", str(tmp_path / "sample" / "parquet"), "--output", str(out),
            "--single-task-max-edges", "0", "--max-iterations", "50"]
    for name, value in flags.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    assert dedup_job.main(argv) == 0
    report = pd.read_parquet(str(out / "dedup" / "report"))
    ref, ref_stats = dedup_local(docs["id"].tolist(), docs["text"].tolist(), **flags)
    assert {r["id"]: (r["cluster_id"], r["kept"]) for r in ref} == \
        {i: (c, k) for i, c, k in zip(report["id"], report["cluster_id"], report["kept"])}
    _, default_stats = dedup_local(docs["id"].tolist(), docs["text"].tolist())
    assert ref_stats["candidate_pairs"] != default_stats["candidate_pairs"]
    assert ref_stats["duplicates_removed"] != default_stats["duplicates_removed"]
    with open(str(out / "dedup" / "report" / "_config.json")) as f:
        saved = json.load(f)
    assert {k: saved["config"][k] for k in flags} == flags

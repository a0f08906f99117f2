"""Shards stage and check-shards: llm.c bytes, val/train layout, round trip to the texts, determinism."""
import glob
import hashlib
import json
import os
import random
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import cli, storage
from pipeline.bpe import EOT_TOKEN, get_encoding
from pipeline.shards import check, llmc
from pipeline.shards.config import ShardsConfig
from pipeline.shards.plan import (PlanError, ShardPlan, arrow_pieces, block_stats, val_end_from_docs,
                                  val_target, with_starts)
from pipeline.shards.spark_plan import run

WORDS = ("the crawl data model token shard straddle Köln naïve 日本語 🙂 <|endoftext|> "
         "München ευχαριστώ 12345 , . ! ?").split()


def _texts(n, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.choice([1, 5, 40, 200, 900])
        out.append(" ".join(rng.choice(WORDS) for _ in range(length)) + " (doc %d)" % i)
    return out


def _write_tokens(path, docs, n_files):
    """Tokens parquet as the tokenize stage writes it, rows spread over n_files in a given order."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)
    rows = list(docs.items())
    for k in range(n_files):
        part = rows[k::n_files]
        pq.write_table(pa.table({
            "id": pa.array([i for i, _ in part], pa.string()),
            "n_tokens": pa.array([len(t) for _, t in part], pa.int32()),
            "tokens": pa.array([t for _, t in part], pa.list_(pa.int32())),
        }), os.path.join(path, "part-%05d.parquet" % k))


def _read_all(out_dir):
    files = sorted(glob.glob(os.path.join(out_dir, "shards", "*.bin")),
                   key=lambda p: int(p[-10:-4]))  # 000000 = val, then train in order
    return files, [np.asarray(llmc.load_tokens(f, mmap=False)) for f in files]


@pytest.fixture(scope="module")
def corpus(spark, tmp_path_factory):
    """80 documents tokenized with GPT-2's BPE, sharded with small shards so that documents straddle."""
    enc = get_encoding()
    texts = _texts(80)
    ids = [hashlib.sha1(t.encode()).hexdigest() for t in texts]
    docs = {i: [EOT_TOKEN] + enc.encode_ordinary(t) for i, t in zip(ids, texts)}
    base = tmp_path_factory.mktemp("shards")
    _write_tokens(str(base / "tokens"), docs, n_files=3)
    total = sum(len(t) for t in docs.values())
    shard_tokens = total // 4 + 7
    cfg = ShardsConfig(input=str(base / "tokens"), output=str(base / "out"), name="test",
                       shard_tokens=shard_tokens, val_fraction=0.1)
    stats = run(spark, cfg)
    return {"enc": enc, "texts": dict(zip(ids, texts)), "docs": docs, "base": base, "cfg": cfg,
            "stats": stats, "total": total, "shard_tokens": shard_tokens}


def test_header_size_and_names(corpus):
    files, _ = _read_all(str(corpus["base"] / "out"))
    names = [os.path.basename(f) for f in files]
    assert names[0] == "test_val_000000.bin"
    assert names[1:] == ["test_train_%06d.bin" % i for i in range(1, len(names))]
    for f in files:
        header = np.fromfile(f, dtype="<i4", count=256)
        assert header[0] == 20240520 and header[1] == 1 and not header[3:].any()
        assert os.path.getsize(f) == 1024 + 2 * int(header[2])


def test_round_trip_eot_positions_and_split_sizes(corpus):
    files, toks = _read_all(str(corpus["base"] / "out"))
    ids = sorted(corpus["docs"])  # documents in id order
    stream = np.concatenate(toks)
    expected = np.concatenate([corpus["docs"][i] for i in ids])
    assert np.array_equal(stream, expected)

    starts = np.cumsum([0] + [len(corpus["docs"][i]) for i in ids[:-1]])
    assert np.array_equal(np.flatnonzero(stream == EOT_TOKEN), starts)
    pieces = np.split(stream, starts[1:])
    assert [corpus["enc"].decode(p[1:].tolist()) for p in pieces] == [corpus["texts"][i] for i in ids]

    # val: whole documents, the fewest reaching 10% of all tokens
    total, val = corpus["total"], len(toks[0])
    target = -(-total // 10)
    assert val >= target and val in starts.tolist()
    assert val - len(corpus["docs"][ids[starts.tolist().index(val) - 1]]) < target
    assert toks[0][0] == EOT_TOKEN
    # train: fixed size except the last, and some document straddles a train boundary
    train = [len(t) for t in toks[1:]]
    assert train[:-1] == [corpus["shard_tokens"]] * (len(train) - 1) and 0 < train[-1] <= corpus["shard_tokens"]
    assert len(train) >= 3
    assert any(t[0] != EOT_TOKEN for t in toks[2:])


def test_manifest_and_stats(corpus):
    out = corpus["base"] / "out" / "shards"
    manifest = json.loads((out / "_manifest.json").read_text())
    files, toks = _read_all(str(corpus["base"] / "out"))
    assert [e["name"] for e in manifest["shards"]] == [os.path.basename(f) for f in files]
    assert [e["split"] for e in manifest["shards"]] == ["val"] + ["train"] * (len(files) - 1)
    for e, f, t in zip(manifest["shards"], files, toks):
        assert e["n_tokens"] == len(t)
        assert e["n_docs"] == int(np.count_nonzero(t == EOT_TOKEN))
        assert e["sha256"] == hashlib.sha256(open(f, "rb").read()).hexdigest()
    s = corpus["stats"]
    assert s["stage"] == "shards" and s["dropped"] == {}
    assert s["records_in"] == s["records_out"] == len(corpus["docs"])
    assert s["tokens"] == corpus["total"] and s["shards"] == len(files)
    assert not [p for p in os.listdir(str(out)) if p.endswith(".tmp")]
    assert cli.main(["check-shards", str(out / "*.bin")]) == 0


def test_deterministic_across_input_layout(spark, corpus):
    """Same rows, different files/order/partitioning, run through the CLI -> byte-identical shards."""
    base = corpus["base"]
    docs = dict(sorted(corpus["docs"].items(), reverse=True))
    _write_tokens(str(base / "tokens2"), docs, n_files=7)
    assert cli.main(["shards", "--input", str(base / "tokens2"), "--output", str(base / "out2"), "--name", "test",
                     "--shard-tokens", str(corpus["shard_tokens"]), "--val-fraction", "0.1"]) == 0
    saved = json.loads((base / "out2" / "shards" / "_config.json").read_text())
    assert saved["config"]["shard_tokens"] == corpus["shard_tokens"] and saved["config"]["val_tokens"] is None
    a = {os.path.basename(f): open(f, "rb").read() for f in glob.glob(str(base / "out" / "shards" / "*.bin"))}
    b = {os.path.basename(f): open(f, "rb").read() for f in glob.glob(str(base / "out2" / "shards" / "*.bin"))}
    assert a == b
    assert (base / "out" / "shards" / "_manifest.json").read_bytes() == \
        (base / "out2" / "shards" / "_manifest.json").read_bytes()


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def s3_server(spark, monkeypatch):
    """A loopback moto S3 server that this process and Spark's Python workers both reach."""
    moto_server = pytest.importorskip("moto.server")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    env = dict(S3_ENV, AWS_ENDPOINT_URL="http://%s:%d" % server.get_host_and_port())
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    sc = spark.sparkContext
    saved = dict(sc.environment)
    sc.environment.update(env)
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket="shard-bucket")
    yield client
    sc.environment.clear()
    sc.environment.update(saved)
    server.stop()


def test_s3_output_no_val_and_stale_shards_removed(spark, corpus, s3_server, tmp_path):
    """Executors write shards to S3 (temp file + upload); a rerun's stale shards disappear."""
    s3_server.put_object(Bucket="shard-bucket", Key="out/shards/old_train_000099.bin", Body=b"stale")
    cfg = ShardsConfig(input=str(corpus["base"] / "tokens"), output="s3://shard-bucket/out", name="nv",
                       shard_tokens=corpus["total"] // 2, val_tokens=0)
    stats = run(spark, cfg)
    keys = sorted(o["Key"] for o in s3_server.list_objects_v2(Bucket="shard-bucket")["Contents"])
    assert keys == ["out/shards/_manifest.json"] + ["out/shards/nv_train_%06d.bin" % i for i in (1, 2, 3)]
    assert stats["val_tokens"] == 0 and stats["shards"] == 3
    toks = []
    for key in keys[1:]:
        local = tmp_path / key.rsplit("/", 1)[1]
        s3_server.download_file("shard-bucket", key, str(local))
        toks.append(np.asarray(llmc.load_tokens(str(local), mmap=False)))
    assert np.array_equal(np.concatenate(toks), np.concatenate([corpus["docs"][i] for i in sorted(corpus["docs"])]))
    assert check.main(["s3://shard-bucket/out/shards/"]) == 0


def test_rejects_shards_over_2gib(spark, corpus):
    cfg = ShardsConfig(input=str(corpus["base"] / "tokens"), output=str(corpus["base"] / "out4"),
                       shard_tokens=2 ** 30)
    with pytest.raises(PlanError, match="2 GiB"):
        run(spark, cfg)


# --- plan (no Spark) ------------------------------------------------------------------------------

def test_plan_pieces_straddle_and_val():
    plan = ShardPlan("x", total=100, val_end=12, shard_tokens=30)
    assert plan.shards() == [(0, "val", "x_val_000000.bin", 12), (1, "train", "x_train_000001.bin", 30),
                             (2, "train", "x_train_000002.bin", 30), (3, "train", "x_train_000003.bin", 28)]
    assert list(plan.pieces(5, 7)) == [(0, 5, 0, 7)]
    assert list(plan.pieces(12, 5)) == [(1, 0, 0, 5)]
    # a document from 35 to 100 spans the end of train shard 1, all of shard 2 and the start of shard 3
    assert list(plan.pieces(35, 65)) == [(1, 23, 0, 7), (2, 0, 7, 37), (3, 0, 37, 65)]
    with pytest.raises(PlanError):
        list(plan.pieces(10, 5))  # straddles the val boundary: the plan must never produce this
    assert val_end_from_docs([(0, 5), (5, 4), (9, 10)], target=7) == 9
    assert val_end_from_docs([(0, 5), (5, 4)], target=5) == 5
    assert val_target(1000, 0.01, None) == 10 and val_target(1000, 0.5, 7) == 7


def test_plan_errors():
    with pytest.raises(PlanError, match="2 GiB"):
        ShardPlan("x", total=10, val_end=0, shard_tokens=llmc.MAX_TOKENS_PER_SHARD + 1)
    with pytest.raises(PlanError, match="nothing to train"):
        ShardPlan("x", total=10, val_end=10, shard_tokens=5)
    with pytest.raises(PlanError):
        val_target(10, 1.0, None)


def test_partition_bodies_and_bad_token_input():
    assert list(block_stats([("a", 3), ("b", 2)])) == [(2, 5)]
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        list(block_stats([("a", 3), ("a", 2)]))
    with pytest.raises(ValueError, match="n_tokens=0"):
        list(block_stats([("a", 0)]))
    assert list(with_starts(10, [("a", 3), ("b", 2)])) == [("a", 10, 3), ("b", 13, 2)]

    plan = ShardPlan("x", total=9, val_end=3, shard_tokens=4)

    def batch(rows):
        return pa.RecordBatch.from_arrays(
            [pa.array([r[0] for r in rows]), pa.array([r[1] for r in rows], pa.int64()),
             pa.array([len(r[2]) for r in rows], pa.int32()), pa.array([r[2] for r in rows], pa.list_(pa.int32()))],
            names=["id", "start", "n_tokens", "tokens"])

    out = pa.Table.from_batches(list(arrow_pieces(iter([batch([("a", 0, [EOT_TOKEN, 1, 2]),
                                                              ("b", 3, [EOT_TOKEN, 3, 4, 5, 6, 7])])]), plan)))
    assert out.column("shard").to_pylist() == [0, 1, 2]
    assert out.column("pos").to_pylist() == [0, 0, 0]
    assert out.column("first").to_pylist() == [True, True, False]
    assert np.frombuffer(out.column("data")[2].as_py(), "<u2").tolist() == [6, 7]
    with pytest.raises(ValueError, match="must start with <|endoftext|>"):
        list(arrow_pieces(iter([batch([("a", 0, [1, 2, 3])])]), plan))
    with pytest.raises(ValueError, match="outside the GPT-2 vocabulary"):
        list(arrow_pieces(iter([batch([("a", 0, [EOT_TOKEN, 50257, 1])])]), plan))


# --- writing from pieces, check-shards ------------------------------------------------------------

def test_write_shard_pieces_any_order(tmp_path):
    toks = np.arange(1000, dtype="<u2")
    cuts = [0, 10, 300, 301, 1000]
    pieces = [(a, a in (0, 300), toks[a:b].tobytes()) for a, b in zip(cuts, cuts[1:])]
    e1 = llmc.write_shard_pieces(str(tmp_path / "a.bin"), 1000, pieces)
    e2 = llmc.write_shard_pieces(str(tmp_path / "b.bin"), 1000, reversed(pieces))
    assert np.array_equal(llmc.load_tokens(str(tmp_path / "a.bin")), toks)
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()
    assert e1["n_docs"] == 2 and e1["sha256"] == e2["sha256"]
    with pytest.raises(llmc.ShardError, match="gap or overlap"):
        llmc.write_shard_pieces(str(tmp_path / "c.bin"), 1000, pieces[:1] + pieces[2:])
    assert sorted(os.listdir(str(tmp_path))) == ["a.bin", "b.bin"]


def test_check_shards_detects_problems(tmp_path, capsys):
    good = tmp_path / "good.bin"
    llmc.write_shard(str(good), np.array([EOT_TOKEN, 1, 2, EOT_TOKEN, 3], dtype=np.uint16))
    assert check.main([str(good)]) == 0
    out = capsys.readouterr().out
    assert "good.bin" in out and "5" in out and " 2 " in out.split("good.bin")[1]

    raw = good.read_bytes()
    (tmp_path / "trunc.bin").write_bytes(raw[:-2])
    bad_magic = bytearray(raw)
    bad_magic[0:4] = np.array([12345], dtype="<i4").tobytes()
    (tmp_path / "magic.bin").write_bytes(bytes(bad_magic))
    big_id = bytearray(raw)
    big_id[1024 + 2:1024 + 4] = np.array([60000], dtype="<u2").tobytes()
    (tmp_path / "vocab.bin").write_bytes(bytes(big_id))
    (tmp_path / "short.bin").write_bytes(raw[:100])
    for name, message in [("trunc.bin", "header promises 5 tokens"), ("magic.bin", "bad magic"),
                          ("vocab.bin", "outside the GPT-2 vocabulary"), ("short.bin", "too short")]:
        assert check.main([str(good), str(tmp_path / name)]) == 1, name
        err = capsys.readouterr().err
        assert name in err and message in err, err
    assert cli.main(["check-shards", str(tmp_path / "nothing*.bin")]) == 1
    assert "no input files match" in capsys.readouterr().err


def test_check_shards_compares_with_manifest(tmp_path, capsys):
    a = tmp_path / "d_train_000001.bin"
    llmc.write_shard(str(a), np.array([EOT_TOKEN, 5, 6], dtype=np.uint16))
    entry = {"name": a.name, "split": "train", "n_tokens": 3, "n_docs": 1,
             "sha256": hashlib.sha256(a.read_bytes()).hexdigest()}
    (tmp_path / "_manifest.json").write_text(json.dumps({"shards": [entry]}))
    assert check.main([str(tmp_path)]) == 0
    assert "ok (manifest)" in capsys.readouterr().out
    llmc.write_shard(str(a), np.array([EOT_TOKEN, 5, 7], dtype=np.uint16))  # valid, but not what was written
    assert check.main([str(tmp_path)]) == 1
    assert "differ from _manifest.json" in capsys.readouterr().err


def test_s3_shard_write_and_check(tmp_path, monkeypatch, capsys):
    """s3:// destination: written to a local temp file, uploaded, then checked by streaming it back."""
    moto = pytest.importorskip("moto")
    import boto3

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("SPARK_LOCAL_DIRS", str(tmp_path))
    with moto.mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="shard-bucket")
        toks = np.array([EOT_TOKEN, 1, 2, 3, EOT_TOKEN, 4], dtype="<u2")
        entry = llmc.write_shard_pieces("s3://shard-bucket/out/shards/s_train_000001.bin", 6,
                                          [(4, True, toks[4:].tobytes()), (0, True, toks[:4].tobytes())])
        assert entry["n_docs"] == 2 and os.listdir(str(tmp_path)) == []  # temp file cleaned up
        storage.write_text("s3://shard-bucket/out/shards/_manifest.json", json.dumps({"shards": [entry]}))
        assert llmc.check_shard("s3://shard-bucket/out/shards/s_train_000001.bin")["n_eot"] == 2
        assert check.main(["s3://shard-bucket/out/shards/"]) == 0
        assert "ok (manifest)" in capsys.readouterr().out

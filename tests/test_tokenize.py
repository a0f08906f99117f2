"""Tokenize stage: GPT-2 tokens identical to tiktoken's, EOT first, offline BPE flags, deterministic output."""
import glob
import hashlib
import json
import os
import shutil

import pandas as pd
import pyarrow.parquet as pq
import pytest
import tiktoken

from pipeline import cli
from pipeline import bpe
from pipeline.bpe import EOT_TOKEN
from pipeline.tokenize import encode as tk
from pipeline.tokenize.config import TokenizeConfig
from pipeline.tokenize.spark_plan import run

SHARED_CACHE = os.environ.get("TIKTOKEN_CACHE_DIR")
R50K_CACHE_NAME = hashlib.sha1(bpe.R50K_URL.encode()).hexdigest()

TEXTS = [
    "Hello world.",
    "The literal text <|endoftext|> must stay ordinary text, not the special token.",
    "<|endoftext|>",
    "Grüße aus Köln — naïve café, 日本語のテキスト, emoji 🙂🚀, Ελληνικά, русский.",
    "   leading and trailing whitespace\n\n\ttabs\r\n",
    "x" * 5000,
    "",
]


@pytest.fixture(scope="module")
def enc():
    return tiktoken.get_encoding("r50k_base")


@pytest.fixture(scope="module")
def bpe_data():
    return bpe.load_bpe_bytes()


def test_encode_docs_matches_tiktoken_with_eot_first(enc, bpe_data):
    mine = bpe.encoding_from_bytes(bpe_data)
    got = tk.encode_docs(mine, TEXTS)
    assert got == [[EOT_TOKEN] + enc.encode_ordinary(t) for t in TEXTS]
    # the literal special-token text is several ordinary tokens, never 50256
    assert got[2][0] == EOT_TOKEN and EOT_TOKEN not in got[2][1:] and len(got[2]) > 2
    assert all(EOT_TOKEN not in toks[1:] for toks in got)
    assert enc.decode(got[3][1:]) == TEXTS[3]
    assert got[-1] == [EOT_TOKEN]
    assert tk.encode_docs(mine, TEXTS, num_threads=4) == got == tk.encode_docs_one_by_one(mine, TEXTS)


def test_tokenize_records_batches_across_chunks(enc, bpe_data):
    recs = [{"id": str(i), "text": TEXTS[i % len(TEXTS)]} for i in range(17)]
    out = list(tk.tokenize_records(recs, bpe_data, batch_size=4))
    assert [i for i, _ in out] == [r["id"] for r in recs]
    assert [t for _, t in out] == [[EOT_TOKEN] + enc.encode_ordinary(r["text"]) for r in recs]


def test_bpe_file_flag_works_offline(tmp_path, monkeypatch, bpe_data):
    rank_file = tmp_path / "r50k_base.tiktoken"
    rank_file.write_bytes(bpe_data)
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(empty))  # no cache to fall back on
    assert bpe.load_bpe_bytes(bpe_file=str(rank_file)) == bpe_data
    assert not os.listdir(empty)
    with pytest.raises(bpe.BpeError, match="r50k_base"):
        bpe.load_bpe_bytes(cache_dir=str(empty))


def test_cache_dir_flag_and_wrong_files(tmp_path, bpe_data):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / R50K_CACHE_NAME).write_bytes(bpe_data)
    assert bpe.load_bpe_bytes(cache_dir=str(cache)) == bpe_data
    bad = tmp_path / "other.tiktoken"
    bad.write_bytes(bpe_data[:-20])
    with pytest.raises(bpe.BpeError, match="not tiktoken's r50k_base"):
        bpe.load_bpe_bytes(bpe_file=str(bad))
    with pytest.raises(bpe.BpeError, match="missing.tiktoken"):
        bpe.load_bpe_bytes(bpe_file=str(tmp_path / "missing.tiktoken"))


def _write_docs(path, texts, n_files=2):
    os.makedirs(path, exist_ok=True)
    ids = [hashlib.sha1(("doc%d" % i).encode()).hexdigest() for i in range(len(texts))]
    df = pd.DataFrame({"id": ids, "url": ["http://e.com/%d" % i for i in range(len(texts))],
                       "text": texts, "source": "test", "warc_date": "2024-01-01"})
    for k in range(n_files):
        df.iloc[k::n_files].to_parquet(os.path.join(path, "part-%d.parquet" % k), index=False)
    return dict(zip(ids, texts))


def _part_bytes(out_dir):
    """Output files' bytes keyed by Spark's part number (file names also carry a random job UUID)."""
    return {os.path.basename(p)[:10]: open(p, "rb").read()
            for p in glob.glob(os.path.join(out_dir, "tokens", "part-*.parquet"))}


def test_tokenize_job(spark, tmp_path, enc, bpe_data):
    texts = TEXTS * 4 + ["document number %d with some words" % i for i in range(30)]
    docs = _write_docs(str(tmp_path / "kept"), texts + [None])  # one null text -> bad_record
    rank_file = tmp_path / "r50k_base.tiktoken"
    rank_file.write_bytes(bpe_data)
    cfg = TokenizeConfig(input=str(tmp_path / "kept"), output=str(tmp_path / "out"),
                         bpe_file=str(rank_file), tokenize_partitions=3, encode_batch_size=7)
    stats = run(spark, cfg)

    table = pq.read_table(str(tmp_path / "out" / "tokens"))
    assert table.schema.field("id").type == "string"
    assert str(table.schema.field("n_tokens").type) == "int32"
    assert str(table.schema.field("tokens").type.value_type) == "int32"
    rows = table.to_pylist()
    assert len(rows) == len(texts)
    for r in rows:
        assert r["tokens"] == [EOT_TOKEN] + enc.encode_ordinary(docs[r["id"]])
        assert r["n_tokens"] == len(r["tokens"])
    assert stats["records_in"] == len(texts) + 1
    assert stats["records_out"] == len(texts)
    assert stats["dropped"] == {"bad_record": 1}
    assert stats["tokens"] == sum(r["n_tokens"] for r in rows)
    assert stats["partitions"] == 3

    files = sorted(glob.glob(str(tmp_path / "out" / "tokens" / "part-*.parquet")))
    assert len(files) == 3
    for f in files:  # sorted by id within each file
        ids = pq.read_table(f, columns=["id"]).column("id").to_pylist()
        assert ids == sorted(ids)

    # Rerun through the CLI, from differently split input files and with the cache-dir flag instead
    # of the rank file: byte-identical output files, and the config saved next to them.
    first = _part_bytes(str(tmp_path / "out"))
    shutil.rmtree(str(tmp_path / "kept"))
    _write_docs(str(tmp_path / "kept"), texts + [None], n_files=5)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / R50K_CACHE_NAME).write_bytes(bpe_data)
    assert cli.main(["tokenize", "--input", str(tmp_path / "kept"), "--output", str(tmp_path / "out"),
                     "--tiktoken-cache", str(cache), "--tokenize-partitions", "3",
                     "--encode-batch-size", "7"]) == 0
    assert _part_bytes(str(tmp_path / "out")) == first
    saved = json.loads((tmp_path / "out" / "tokens" / "_config.json").read_text())
    assert saved["config"]["tiktoken_cache"] == str(cache) and saved["config"]["tokenize_partitions"] == 3

"""Tokenize stage: GPT-2 tokens identical to tiktoken's, EOT first, offline BPE flags, deterministic output."""
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile

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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tiktoken's own cache of r50k_base, beside the checkout (see ../shared/README.md)
SHARED_CACHE = os.path.join(os.path.dirname(REPO), "shared", "tiktoken")
R50K_CACHE_NAME = hashlib.sha1(bpe.R50K_URL.encode()).hexdigest()
PY39 = os.path.expanduser("~/.pyenv/versions/3.9.18/bin/python")

TEXTS = [
    "Hello world.",
    "The literal text <|endoftext|> must stay ordinary text, not the special token.",
    "<|endoftext|>",
    "Grüße aus Köln — naïve café, 日本語のテキスト, emoji 🙂🚀, Ελληνικά, русский.",
    "   leading and trailing whitespace\n\n\ttabs\r\n",
    "x" * 5000,
    "",
]
# More text for comparing the encoding with tiktoken's: contractions, numbers, code, scripts whose
# letters are several bytes, combining marks, lone surrogates' neighbours, long whitespace runs.
VARIED = TEXTS + [
    "I'll say we've done it; they're sure it's John's, isn't it? DON'T SHOUT. 'quoted' y'all",
    "Prices: $1,234.56, 3.14159, 1e-9, 0x1F, 2024-01-01T12:00:00Z, +44 20 7946 0958, 100%",
    "def f(x):\n    return [i ** 2 for i in range(x) if i % 2 == 0]  # comment\n\tpass\n",
    "fn main() { let v: Vec<u8> = vec![1, 2]; v.into_iter().map(|x| x + 1).collect::<Vec<_>>(); }",
    "<html><body><a href=\"https://example.com/a?b=c&d=e\">link</a></body></html>",
    "مرحبا بالعالم، هذا نص عربي. हिन्दी में पाठ। 한국어 텍스트입니다. ภาษาไทย ไม่มีช่องว่าง",
    "e\u0301 vs \u00e9, \ufb01 ligature, \u200b zero width, \u00a0nbsp, \u2028line sep",
    "     many     spaces\n\n\n\n   and\t\t\ttabs   \n",
    "👩‍👩‍👧‍👦 family, 🇬🇧 flag, 1️⃣ keycap, 🏳️‍🌈",
    "ALL CAPS SENTENCE AND MiXeD cAsE and snake_case_name and CamelCaseName",
    "a" * 300 + " " + "ab" * 300 + " " + "😀" * 50,
    " ".join(str(i) for i in range(500)),
]


@pytest.fixture(scope="module")
def enc():
    """tiktoken's own r50k_base (from the shared tiktoken cache when there is one): the independent
    truth the pipeline's encoding, built from the shipped ranks, is compared with."""
    with pytest.MonkeyPatch.context() as mp:
        if os.path.isdir(SHARED_CACHE):
            mp.setenv("TIKTOKEN_CACHE_DIR", SHARED_CACHE)
        return tiktoken.get_encoding("r50k_base")


@pytest.fixture(scope="module")
def bpe_data():
    return bpe.load_bpe_bytes()


@pytest.fixture
def no_tiktoken_env(monkeypatch):
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)


def test_shipped_ranks_load_without_environment(no_tiktoken_env, bpe_data):
    data = bpe.load_bpe_bytes()
    assert data == bpe.shipped_bpe_bytes() == bpe_data
    assert hashlib.sha256(data).hexdigest() == bpe.R50K_SHA256
    if os.path.isdir(SHARED_CACHE):
        with open(os.path.join(SHARED_CACHE, R50K_CACHE_NAME), "rb") as f:
            assert f.read() == data


def test_encoding_from_shipped_ranks_equals_tiktoken(no_tiktoken_env, enc):
    mine = bpe.get_encoding()
    assert mine is not enc and mine.n_vocab == enc.n_vocab == 50257 and mine.eot_token == enc.eot_token == EOT_TOKEN
    assert mine.special_tokens_set == enc.special_tokens_set == {"<|endoftext|>"}
    for text in VARIED:
        ids = enc.encode_ordinary(text)
        assert mine.encode_ordinary(text) == ids, text[:60]
        assert mine.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")
        assert mine.decode(ids) == text
    assert mine.encode("<|endoftext|>", allowed_special="all") == [EOT_TOKEN]
    assert mine.decode_single_token_bytes(31373) == enc.decode_single_token_bytes(31373) == b"hello"


def test_ranks_load_from_a_zip_bundle(tmp_path):
    """What `spark-submit --py-files bundle.zip` does: import `pipeline` from the zip (no checkout on
    the path, no TIKTOKEN_CACHE_DIR) and tokenize from the ranks inside it; without them, a clear error."""
    from emr import package

    full, stripped = tmp_path / "bundle.zip", tmp_path / "no-ranks.zip"
    package.build_bundle(str(full))
    with zipfile.ZipFile(str(full)) as src, zipfile.ZipFile(str(stripped), "w") as dst:
        assert "pipeline/" + bpe.SHIPPED_RANKS in src.namelist()
        for info in src.infolist():
            if not info.filename.endswith(".tiktoken"):
                dst.writestr(info, src.read(info.filename))
    script = ("import sys, hashlib\n"
              "import pipeline.bpe as b\n"
              "assert b.__file__.startswith(sys.argv[1]), b.__file__\n"
              "try:\n"
              "    data = b.load_bpe_bytes()\n"
              "except b.BpeError as e:\n"
              "    print('BpeError', e); sys.exit(3)\n"
              "print(hashlib.sha256(data).hexdigest())\n"
              "if len(sys.argv) > 2: print(b.cached_encoding(data).encode_ordinary('hello world'))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TIKTOKEN_CACHE_DIR", "PYTHONPATH")}

    def run_in(python, zpath, *extra):
        return subprocess.run([python, "-c", script, str(zpath)] + list(extra), capture_output=True, text=True,
                              cwd=str(tmp_path), env=dict(env, PYTHONPATH=str(zpath)), timeout=120)

    res = run_in(sys.executable, full, "encode")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == [bpe.R50K_SHA256, "[31373, 995]"]
    if os.path.exists(PY39):  # EMR's Python: zipimport's get_data, no tiktoken needed to load the bytes
        res = run_in(PY39, full)
        assert res.returncode == 0 and res.stdout.strip() == bpe.R50K_SHA256, res.stderr
    res = run_in(sys.executable, stripped)
    assert res.returncode == 3 and "pass --bpe-file" in res.stdout, res.stdout + res.stderr


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


def test_cache_dir_flag_and_wrong_files(tmp_path, monkeypatch, bpe_data):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / R50K_CACHE_NAME).write_bytes(bpe_data)
    assert bpe.load_bpe_bytes(cache_dir=str(cache)) == bpe_data
    # TIKTOKEN_CACHE_DIR overrides the shipped copy when it holds r50k_base, and is checked like any file
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    assert bpe.load_bpe_bytes() == bpe_data
    (cache / R50K_CACHE_NAME).write_bytes(bpe_data[:-20])
    with pytest.raises(bpe.BpeError, match="TIKTOKEN_CACHE_DIR=.*not tiktoken's r50k_base"):
        bpe.load_bpe_bytes()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # one without r50k_base is passed over
    assert bpe.load_bpe_bytes() == bpe_data
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

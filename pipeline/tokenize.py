"""Documents -> GPT-2 token ids, the way llm.c's `fineweb.py` tokenizes: `<|endoftext|>` (50256)
first, then the document's text encoded with tiktoken's GPT-2 BPE (`r50k_base`).

Special-token text that happens to occur inside a crawled page (someone writing "<|endoftext|>" on a
web page) is encoded as ordinary text; only the delimiter we add is token 50256. So the token stream
never contains a document boundary the pipeline did not put there.

The BPE ranks are loaded once on the driver (from `--bpe-file`, local or s3://, from a tiktoken cache
directory, or from tiktoken's own cache/download) and their bytes are shipped to executors, which
build the encoder from them once per Python worker. Executors therefore need neither internet access
nor a cache directory: this is what makes the stage work on air-gapped clusters.

Nothing here imports Spark; `jobs/tokenize.py` wires it up.
"""
from __future__ import annotations

import base64
import hashlib
import os
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from pipeline import bpe, storage

# Where tiktoken downloads r50k_base from, and the SHA-256 it expects (tiktoken_ext/openai_public.py).
# A tiktoken cache directory stores the file under sha1(URL).
R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"

DEFAULT_BATCH_SIZE = 512  # documents per encode_ordinary_batch call


class BpeError(ValueError):
    """The GPT-2 BPE ranks could not be found, or are not GPT-2's."""


def load_bpe_bytes(cache_dir: Optional[str] = None, bpe_file: Optional[str] = None) -> bytes:
    """The raw `r50k_base.tiktoken` rank file, checked against tiktoken's published SHA-256.

    Same precedence as `pipeline.bpe.get_encoding`: `bpe_file`, then `cache_dir`, then
    `TIKTOKEN_CACHE_DIR` / tiktoken's default cache / download.
    """
    if bpe_file:
        try:
            with storage.open_read(bpe_file) as f:
                data = f.read()
        except storage.InputError as e:
            raise BpeError("--bpe-file: %s" % e) from e
        where = bpe_file
    elif cache_dir:
        where = os.path.join(cache_dir, hashlib.sha1(R50K_URL.encode()).hexdigest())
        if not os.path.isfile(where):
            raise BpeError("tiktoken cache %s has no r50k_base ranks (expected the file %s)"
                           % (cache_dir, where))
        with open(where, "rb") as f:
            data = f.read()
    else:
        from tiktoken.load import read_file_cached

        where = os.environ.get("TIKTOKEN_CACHE_DIR") or R50K_URL
        try:
            data = read_file_cached(R50K_URL, R50K_SHA256)
        except Exception as e:  # no cache and no internet: say how to fix it
            raise BpeError("cannot load GPT-2 BPE ranks (%s); pass --tiktoken-cache DIR or "
                           "--bpe-file r50k_base.tiktoken" % e) from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != R50K_SHA256:
        raise BpeError("%s is not tiktoken's r50k_base (GPT-2) rank file: sha256 %s, expected %s"
                       % (where, digest, R50K_SHA256))
    return data


def encoding_from_bytes(data: bytes):
    """A tiktoken Encoding identical to `r50k_base`, built from the rank file's bytes.

    Mirrors `pipeline.bpe.get_encoding(bpe_file=...)` without touching the file system, so executors
    never write tiktoken cache files.
    """
    import tiktoken

    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(name=bpe.ENCODING_NAME, pat_str=bpe.R50K_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": bpe.EOT_TOKEN},
                             explicit_n_vocab=bpe.GPT2_VOCAB_SIZE)


# One encoder per Python worker process (Spark reuses workers across tasks), keyed by the ranks' hash.
_ENCODERS: Dict[str, object] = {}


def cached_encoding(data: bytes):
    key = hashlib.sha256(data).hexdigest()
    if key not in _ENCODERS:
        _ENCODERS[key] = encoding_from_bytes(data)
    return _ENCODERS[key]


def encode_docs(enc, texts: Sequence[str], num_threads: int = 1) -> List[List[int]]:
    """Token lists for `texts`, each starting with <|endoftext|>; special-token text is ordinary text.

    With num_threads > 1 this is tiktoken's `encode_ordinary_batch`, which runs the Rust encoder on a
    thread pool (it releases the GIL). With one thread the pool only adds a hand-off per document
    (~35% slower than a plain loop in bench/bench_tokenize.py), and Spark already runs one task per
    core, so the job's default is the plain loop over the same encoder.
    """
    if num_threads > 1:
        out = enc.encode_ordinary_batch(list(texts), num_threads=num_threads)
    else:
        out = [enc.encode_ordinary(t) for t in texts]
    for toks in out:
        toks.insert(0, bpe.EOT_TOKEN)
    return out


def encode_docs_one_by_one(enc, texts: Iterable[str]) -> List[List[int]]:
    """The per-document baseline the benchmark compares batch encoding against."""
    return [[bpe.EOT_TOKEN] + enc.encode_ordinary(t) for t in texts]


def tokenize_arrow_batches(batches: Iterator, bpe_data: bytes, batch_size: int = DEFAULT_BATCH_SIZE,
                           num_threads: int = 1) -> Iterator:
    """Spark `mapInArrow` body: record batches of (id, text) -> (id, n_tokens, tokens).

    The encoder is built once per worker and texts are encoded `batch_size` documents at a time. Rows with a null text never reach here (the job filters and counts them).
    """
    enc = cached_encoding(bpe_data)
    for batch in batches:
        ids = batch.column(batch.schema.get_field_index("id"))
        texts = batch.column(batch.schema.get_field_index("text")).to_pylist()
        for lo in range(0, len(texts), batch_size):
            chunk = encode_docs(enc, texts[lo:lo + batch_size], num_threads)
            yield tokens_record_batch(ids.slice(lo, len(chunk)), chunk)


def tokens_record_batch(ids, token_lists: List[List[int]]):
    """Arrow batch `id string, n_tokens int32, tokens list<int32>` from Python token lists."""
    import pyarrow as pa

    lengths = pa.array([len(t) for t in token_lists], type=pa.int32())
    tokens = pa.array(token_lists, type=pa.list_(pa.int32()))
    return pa.RecordBatch.from_arrays([ids, lengths, tokens], names=["id", "n_tokens", "tokens"])


def tokenize_records(records: Iterable[dict], bpe_data: bytes,
                     batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[Tuple[str, List[int]]]:
    """Plain-Python form (no Arrow): (id, tokens) per record dict with `id` and `text`."""
    enc = cached_encoding(bpe_data)
    buf: List[dict] = []
    for rec in records:
        buf.append(rec)
        if len(buf) >= batch_size:
            for r, toks in zip(buf, encode_docs(enc, [b["text"] for b in buf])):
                yield r["id"], toks
            buf = []
    if buf:
        for r, toks in zip(buf, encode_docs(enc, [b["text"] for b in buf])):
            yield r["id"], toks

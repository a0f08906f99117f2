"""Documents -> GPT-2 token ids, the way llm.c's `fineweb.py` tokenizes: `<|endoftext|>` (50256)
first, then the document's text encoded with tiktoken's GPT-2 BPE (`r50k_base`).

Special-token text that happens to occur inside a crawled page (someone writing "<|endoftext|>" on a
web page) is encoded as ordinary text; only the delimiter we add is token 50256. So the token stream
never contains a document boundary the pipeline did not put there.

The BPE ranks are loaded once on the driver by `pipeline.bpe.load_bpe_bytes` (the copy shipped in the
package, or `--bpe-file` / a tiktoken cache directory when given) and their bytes are shipped to
executors, which build the encoder from them once per Python worker. Nothing is downloaded, so the stage
works the same on a laptop without internet and on a cluster in a private subnet.

Nothing here imports Spark; `pipeline.tokenize.spark_plan` runs it in `mapInArrow`.
"""
from __future__ import annotations

from typing import Iterable, Iterator, List, Sequence, Tuple

from pipeline.bpe import EOT_TOKEN, cached_encoding

DEFAULT_BATCH_SIZE = 512  # documents per encode_ordinary_batch call


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
        toks.insert(0, EOT_TOKEN)
    return out


def encode_docs_one_by_one(enc, texts: Iterable[str]) -> List[List[int]]:
    """The per-document baseline the benchmark compares batch encoding against."""
    return [[EOT_TOKEN] + enc.encode_ordinary(t) for t in texts]


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

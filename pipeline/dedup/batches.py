"""The per-partition work of the dedup job, on Arrow record batches (Spark's mapInArrow).

Arrow batches avoid pandas entirely: texts arrive as one Arrow string column, signatures and band keys
leave as numpy-backed Arrow arrays, so Python touches each document once.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from pipeline.dedup.minhash import MinHasher, band_keys
from pipeline.dedup.shingles import DEFAULT_NORMALIZE, jaccard

SIGNATURE_SCHEMA = "id string, n int, length long, shingles binary, bands array<long>"
VERIFY_SCHEMA = "src string, dst string, jaccard double"


# Text characters per piece of an Arrow batch: bounds the uint64 shingle buffer (at most ~8 bytes per
# character) far below the 2 GiB that Arrow's 32-bit binary offsets allow, whatever the batch holds.
MAX_CHARS_PER_PIECE = 32 * 1024 * 1024


def _bounded(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        lengths = pa.compute.utf8_length(batch.column("text")).fill_null(0).to_numpy(zero_copy_only=False)
        ends = np.cumsum(lengths)
        start = 0
        while start < len(lengths):
            base = ends[start - 1] if start else 0
            stop = max(start + 1, int(np.searchsorted(ends, base + MAX_CHARS_PER_PIECE, side="right")))
            yield batch.slice(start, stop - start)
            start = stop


def signature_batches(batches: Iterator[pa.RecordBatch], num_perm: int, seed: int, ngram: int,
                      bands: int, rows: int, normalize: str = DEFAULT_NORMALIZE) -> Iterator[pa.RecordBatch]:
    """(id, text) -> (id, n = shingle count, length = characters, shingles = sorted uint64 bytes,
    bands = band keys, or null when the document has no shingles)."""
    hasher = MinHasher(num_perm, seed, ngram, normalize)
    for batch in _bounded(batches):
        texts = batch.column("text").to_pylist()
        flat, offsets, sigs = hasher.signatures(texts)
        sizes = np.diff(offsets)
        keys = band_keys(sigs, bands, rows)
        band_col = pa.ListArray.from_arrays(
            pa.array(np.arange(0, len(texts) * bands + 1, bands, dtype=np.int32)),
            pa.array(keys.reshape(-1), type=pa.int64()),
            mask=pa.array(sizes == 0))
        # shingles as one binary value per document, sliced straight out of the flat uint64 buffer
        shingle_col = pa.BinaryArray.from_buffers(
            pa.binary(), len(texts), [None, pa.py_buffer((offsets * 8).astype(np.int32)), pa.py_buffer(flat)])
        yield pa.RecordBatch.from_arrays(
            [batch.column("id"),
             pa.array(sizes.astype(np.int32)),
             pa.array([len(t) if t is not None else 0 for t in texts], type=pa.int64()),
             shingle_col,
             band_col],
            names=["id", "n", "length", "shingles", "bands"])


def verify_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """(src, dst, a, b) shingle-hash bytes -> (src, dst, exact Jaccard)."""
    for batch in batches:
        a = batch.column("a").to_pylist()
        b = batch.column("b").to_pylist()
        sims = [jaccard(np.frombuffer(x, dtype=np.uint64), np.frombuffer(y, dtype=np.uint64))
                for x, y in zip(a, b)]
        yield pa.RecordBatch.from_arrays(
            [batch.column("src"), batch.column("dst"), pa.array(sims, type=pa.float64())],
            names=["src", "dst", "jaccard"])

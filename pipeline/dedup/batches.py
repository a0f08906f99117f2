"""The per-partition work of the dedup job, on Arrow record batches (Spark's mapInArrow).

Arrow batches avoid pandas entirely: texts arrive as one Arrow string column, signatures and band keys
leave as numpy-backed Arrow arrays, so Python touches each document once.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.dedup.minhash import MinHasher, band_keys
from pipeline.dedup.shingles import DEFAULT_NORMALIZE, jaccard

SIGNATURE_SCHEMA = "id string, n int, length long, shingles binary, bands array<long>"
VERIFY_SCHEMA = "src string, dst string, jaccard double"
EDGE_SCHEMA = "src string, dst string"
ROUTED_BUCKETS_SCHEMA = "part long, rows binary"
EDGE_BATCH_ROWS = 65536


# Text characters per piece of an Arrow batch: bounds the uint64 shingle buffer (at most ~8 bytes per
# character) far below the 2 GiB that Arrow's 32-bit binary offsets allow, whatever the batch holds.
MAX_CHARS_PER_PIECE = 32 * 1024 * 1024


def _bounded(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        lengths = pc.utf8_length(batch.column("text")).fill_null(0).to_numpy(zero_copy_only=False)
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


def bucket_partition(keys: np.ndarray, bands: np.ndarray, partitions: int) -> np.ndarray:
    """The candidate partition of each bucket (band, key), 0 <= p < partitions: the same for every
    member of a bucket, in every process (no Python hash()). Band keys are already hashes of MinHash
    values, so mixing in the band and taking the remainder spreads buckets evenly."""
    mixed = keys.astype(np.int64).view(np.uint64) ^ (bands.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    return (mixed % np.uint64(partitions)).astype(np.int64)


def routed_bucket_batches(batches: Iterator[pa.RecordBatch], part_values) -> Iterator[pa.RecordBatch]:
    """(id, n, bands) of documents with shingles -> per input batch, one row per candidate partition
    p: (part_values[p], an Arrow IPC stream of p's bucket rows (id, n, band, key)).

    Spark then shuffles a few large rows per batch by `part` instead of one small row per document and
    band (18 per document): at 1M documents that row-by-row explode and shuffle cost the JVM more than
    the bytes it moved. `part_values[p]` is a value that Spark's hash partitioning sends to partition
    p (spark_plan.hash_partition_values), so every bucket arrives whole in one task, as
    candidate_batches needs."""
    partitions = len(part_values)
    for batch in batches:
        if not batch.num_rows:
            continue
        bands = batch.column("bands")
        offsets = bands.offsets.to_numpy()
        offsets = offsets - offsets[0]  # a sliced batch's list offsets start where the slice does
        keys = bands.flatten().to_numpy()
        per_doc = np.diff(offsets)
        doc = np.repeat(np.arange(batch.num_rows), per_doc)
        band = (np.arange(len(keys)) - np.repeat(offsets[:-1], per_doc)).astype(np.int32)
        part = bucket_partition(keys, band, partitions)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(partitions + 1))
        parts, streams = [], []
        for p in range(partitions):
            rows = order[bounds[p]:bounds[p + 1]]
            if not len(rows):
                continue
            members = pa.array(doc[rows])
            routed = pa.RecordBatch.from_arrays(
                [batch.column("id").take(members), batch.column("n").take(members), pa.array(band[rows]),
                 pa.array(keys[rows], type=pa.int64())], names=["id", "n", "band", "key"])
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, routed.schema) as writer:
                writer.write_batch(routed)
            parts.append(int(part_values[p]))
            streams.append(sink.getvalue().to_pybytes())
        yield pa.RecordBatch.from_arrays([pa.array(parts, pa.int64()), pa.array(streams, pa.binary())],
                                         names=["part", "rows"])


def routed_candidate_batches(batches: Iterator[pa.RecordBatch], window: int) -> Iterator[pa.RecordBatch]:
    """ALL routed rows (part, rows) of one partition -> its candidate edges (candidate_batches)."""
    def bucket_rows():
        for batch in batches:
            for stream in batch.column("rows"):
                yield from pa.ipc.open_stream(stream.as_buffer())
    yield from candidate_batches(bucket_rows(), window)


def candidate_batches(batches: Iterator[pa.RecordBatch], window: int) -> Iterator[pa.RecordBatch]:
    """ALL bucket rows (id, n, band, key) of one partition, whole buckets only -> the
    partition's distinct candidate edges (src < dst): pipeline.dedup.lsh's rule, with numpy.

    Every member of a bucket with >= 2 members gets an edge to the bucket's smallest id and to its
    next `window` members in (n, id) order. The partition's rows are held as a few numpy arrays (about
    100 bytes a row); the plan sizes partitions so that they hold a bounded number of rows. Ids are
    compared through their dense rank in the partition, which orders them as strings compare (code
    points, the same as Spark's UTF-8 byte order), so every comparison is the string one.
    """
    parts = [batch for batch in batches if batch.num_rows]
    if not parts:
        return
    table = pa.Table.from_batches(parts)
    # Dense rank of the ids by Arrow's C++ sort (binary order of UTF-8 = code-point order), no Python
    # string objects: names[rank] is the id again.
    ids = table.column("id").combine_chunks()
    by_id = pc.sort_indices(ids).to_numpy()
    sorted_ids = ids.take(pa.array(by_id))
    first_of_run = np.ones(len(ids), dtype=bool)
    if len(ids) > 1:
        first_of_run[1:] = pc.not_equal(sorted_ids.slice(1), sorted_ids.slice(0, len(ids) - 1)).to_numpy(
            zero_copy_only=False)
    rank = np.empty(len(ids), dtype=np.int64)
    rank[by_id] = np.cumsum(first_of_run) - 1
    names = sorted_ids.filter(pa.array(first_of_run))
    n = table.column("n").to_numpy()
    band = table.column("band").to_numpy()
    key = table.column("key").to_numpy()
    order = np.lexsort((rank, n, band, key))
    r, b, k = rank[order], band[order], key[order]
    starts = np.flatnonzero(np.r_[True, (k[1:] != k[:-1]) | (b[1:] != b[:-1])])
    bucket = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(r)]))
    first = np.minimum.reduceat(r, starts)[bucket]   # the bucket's smallest id, as a rank
    lo, hi = [np.minimum(r, first)], [np.maximum(r, first)]
    for step in range(1, window + 1):
        same = bucket[step:] == bucket[:-step]
        lo.append(np.minimum(r[:-step], r[step:])[same])
        hi.append(np.maximum(r[:-step], r[step:])[same])
    lo, hi = np.concatenate(lo), np.concatenate(hi)
    pairs = np.unique(lo[lo != hi] * len(names) + hi[lo != hi])
    src, dst = np.divmod(pairs, len(names))
    for i in range(0, len(pairs), EDGE_BATCH_ROWS):
        yield pa.RecordBatch.from_arrays([names.take(pa.array(src[i:i + EDGE_BATCH_ROWS])),
                                          names.take(pa.array(dst[i:i + EDGE_BATCH_ROWS]))], names=["src", "dst"])


def _uint64_views(column: pa.Array):
    """The values of a binary column of packed uint64s, as numpy views into Arrow's data buffer (no
    per-row bytes objects: the two shingle columns are most of what verification receives)."""
    _, offsets_buf, data_buf = column.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[column.offset:column.offset + len(column) + 1]
    if data_buf is None or offsets[-1] == offsets[0]:
        return [np.empty(0, dtype=np.uint64)] * len(column)
    data = np.frombuffer(data_buf, dtype=np.uint8)
    return [data[lo:hi].view(np.uint64) for lo, hi in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def verify_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """(src, dst, a, b) shingle-hash bytes -> (src, dst, exact Jaccard)."""
    for batch in batches:
        sims = [jaccard(x, y) for x, y in zip(_uint64_views(batch.column("a")), _uint64_views(batch.column("b")))]
        yield pa.RecordBatch.from_arrays(
            [batch.column("src"), batch.column("dst"), pa.array(sims, type=pa.float64())],
            names=["src", "dst", "jaccard"])

"""MinHash signatures and LSH band keys, vectorised with numpy.

Permutation i maps a 64-bit shingle hash x to `(a_i * x + b_i) mod 2**64` with a_i odd: a bijection of
the 64-bit space whose high bits form a (multiply-add-shift) universal hash family. A document's
signature value for permutation i is the minimum over its shingles, and we keep the high 32 bits
(orders by the high bits first, so `min(...) >> 32` is the min of the shifted values). numpy does the
whole (permutations x shingles) product in three passes over a block that fits in cache; datasketch
does the same job per document with a Mersenne-prime modulo, which is several times slower.

The a_i, b_i come from xxh3 of ("minhash", seed, i): the same parameters on every executor, Python
version and numpy version (numpy's RNG streams are not promised to stay stable across releases).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import xxhash

from pipeline.dedup.shingles import DEFAULT_NGRAM, DEFAULT_NORMALIZE, check_normalize, shingle_hashes_batch

# Shingles per block of the (shingles x permutations) product: 4096 x 128 x 8 bytes = 4 MiB. Measured
# on the sample corpus, 4096 into one reused buffer takes ~40% less CPU than 2048 into fresh arrays
# (fewer numpy calls per document group, no new 2-4 MiB allocation per block).
_BLOCK = 4096
_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xC2B2AE3D27D4EB4F)


def permutation_params(num_perm: int, seed: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    a = np.array([xxhash.xxh3_64_intdigest(b"minhash-a:%d:%d" % (seed, i)) | 1 for i in range(num_perm)],
                 dtype=np.uint64)
    b = np.array([xxhash.xxh3_64_intdigest(b"minhash-b:%d:%d" % (seed, i)) for i in range(num_perm)],
                 dtype=np.uint64)
    return a, b


class MinHasher:
    def __init__(self, num_perm: int = 128, seed: int = 1, ngram: int = DEFAULT_NGRAM,
                 normalize: str = DEFAULT_NORMALIZE):
        self.num_perm = num_perm
        self.ngram = ngram
        self.normalize = check_normalize(normalize)
        self.a, self.b = permutation_params(num_perm, seed)

    def signature(self, hashes: np.ndarray) -> np.ndarray:
        """uint32[num_perm] signature of one sorted-unique shingle-hash array (must be non-empty)."""
        sig = None
        for start in range(0, len(hashes), _BLOCK):
            block = np.multiply.outer(self.a, hashes[start:start + _BLOCK])
            block += self.b[:, None]
            m = block.min(axis=1)
            sig = m if sig is None else np.minimum(sig, m, out=sig)
        return (sig >> np.uint64(32)).astype(np.uint32)

    def signatures(self, texts: Sequence[Optional[str]]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For a batch of texts: (flat, offsets, sigs) -- document i's sorted unique shingle hashes are
        flat[offsets[i]:offsets[i+1]] and its uint32 signature is sigs[i].

        Documents without words get an all-zero signature row; callers must not put them into LSH
        buckets (an empty set is nobody's duplicate).
        """
        flat, offsets = shingle_hashes_batch(texts, self.ngram, self.normalize)
        sizes = np.diff(offsets)
        sigs = np.zeros((len(sizes), self.num_perm), dtype=np.uint32)
        # Consecutive documents are grouped into blocks of ~_BLOCK shingles; one outer product per
        # block and a segmented min (reduceat) give all their signatures at once. A document larger
        # than a block is done alone, block by block.
        docs = np.flatnonzero(sizes > 0)
        a, b = self.a[:, None], self.b[:, None]
        buf = np.empty((self.num_perm, _BLOCK), dtype=np.uint64)
        i = 0
        while i < len(docs):
            j, total = i, 0
            while j < len(docs) and (j == i or total + sizes[docs[j]] <= _BLOCK):
                total += sizes[docs[j]]
                j += 1
            group = docs[i:j]
            if j - i == 1:
                d = group[0]
                sigs[d] = self.signature(flat[offsets[d]:offsets[d + 1]])
            else:
                lo, hi = offsets[group[0]], offsets[group[-1] + 1]
                block = buf[:, :hi - lo]
                np.multiply(a, flat[lo:hi], out=block)
                block += b
                # group members are consecutive non-empty docs, but empty docs in between own no rows
                mins = np.minimum.reduceat(block, offsets[group] - lo, axis=1)
                sigs[group] = (mins.T >> np.uint64(32)).astype(np.uint32)
            i = j
        return flat, offsets, sigs


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """int64[docs x bands]: a 64-bit hash of each band's `rows` signature values.

    Two documents share bucket (band j, key) when their band-j keys are equal. A collision between
    different row tuples only adds a candidate pair, which exact verification then rejects.
    """
    if bands * rows > sigs.shape[1]:
        raise ValueError("bands*rows=%d exceeds num_perm=%d" % (bands * rows, sigs.shape[1]))
    s = sigs[:, :bands * rows].astype(np.uint64).reshape(len(sigs), bands, rows)
    key = np.full((len(sigs), bands), np.uint64(bands * rows), dtype=np.uint64)
    for r in range(rows):
        key ^= s[:, :, r]
        key *= _K1
        key ^= key >> np.uint64(32)
    key *= _K2
    key ^= key >> np.uint64(29)
    return key.view(np.int64)


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    return float(np.mean(sig_a == sig_b))

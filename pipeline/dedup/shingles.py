"""Text -> word n-gram shingles: the one definition of "near-duplicate" that dedup, evaluation and the
sample generator's ground truth share.

Normalisation: lowercase, every run of non-alphanumeric characters (Unicode-aware; `_` counts as
punctuation) becomes one space, then split on whitespace. Shingles are the word n-grams (default 5).
A document with fewer than n words gets one shingle made of all its words, so two short documents
match only when identical, instead of every short document landing in one empty-set cluster.
A document with no words has no shingles and is never anyone's duplicate.

Shingles are hashed to 64-bit integers with xxh3 (stable across processes and machines, unlike
Python's salted `hash()`); the chance that two distinct shingles of one pair collide is negligible.
"""
from __future__ import annotations

import re
from typing import List, Set

import numpy as np
import xxhash

DEFAULT_NGRAM = 5
_NON_ALNUM = re.compile(r"[\W_]+", re.UNICODE)


def normalize_words(text: str) -> List[str]:
    return _NON_ALNUM.sub(" ", text.lower()).split()


def shingle_strings(text: str, n: int = DEFAULT_NGRAM) -> Set[str]:
    words = normalize_words(text)
    if not words:
        return set()
    if len(words) < n:
        return {" ".join(words)}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def shingle_hashes(text: str, n: int = DEFAULT_NGRAM) -> np.ndarray:
    """Sorted unique uint64 hashes of the document's shingles."""
    hashes = [xxhash.xxh3_64_intdigest(s.encode("utf-8")) for s in shingle_strings(text, n)]
    return np.unique(np.array(hashes, dtype=np.uint64))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard of two sorted-unique hash arrays (0.0 when both are empty)."""
    if len(a) == 0 and len(b) == 0:
        return 0.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / float(len(a) + len(b) - inter)

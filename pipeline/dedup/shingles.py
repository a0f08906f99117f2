r"""Text -> word n-gram shingles: the one definition of "near-duplicate" that dedup, evaluation and the
sample generator's ground truth share.

Words come from one of the `NORMALIZATIONS` presets (`--normalize`):

- `word` (default): Python's `\w` words, the idiom most hand-written ground truth uses:
  `re.sub(r"[^\w\s]", " ", text.lower()).split()`. Letters and digits of any script and the
  underscore are word characters, so `into_iter` is one word (as in text-dedup's tokenizer).
- `alnum`: letters and digits only; the underscore is punctuation too, so `into_iter` is the two
  words `into iter` (`re.sub(r"[\W_]+", " ", text.lower()).split()`).

Shingles are the word n-grams (default 5). A document with fewer than n words gets one shingle made
of all its words, so two short documents match only when identical, instead of every short document
landing in one empty-set cluster. A document with no words has no shingles and is never anyone's
duplicate.

Shingles are hashed to 64-bit integers (stable across processes and machines, unlike Python's salted
`hash()`); the chance that two distinct shingles of one pair collide is negligible. For speed, each
word is hashed once with xxh3 and an n-gram's hash is a position-dependent mix of its n word hashes,
computed for all n-grams of a document at once with numpy; the set of hashes is in one-to-one
correspondence with `shingle_strings` (up to 64-bit collisions), so Jaccard values are the same.
"""
from __future__ import annotations

import re
from itertools import chain
from typing import List, Optional, Sequence, Set, Tuple

import numpy as np
import xxhash

DEFAULT_NGRAM = 5

# preset name -> (what counts as a word, the regex that turns every non-word run into a space)
NORMALIZATIONS = {
    "word": ("Python \\w words: letters and digits of any script, and the underscore",
             re.compile(r"[^\w\s]+")),
    "alnum": ("letters and digits of any script; the underscore is punctuation",
              re.compile(r"[\W_]+")),
}
DEFAULT_NORMALIZE = "word"

# Fast path, same words as normalize_words at a fraction of the cost: first every non-ASCII character
# that is not a word character becomes a space (one C-level regex pass that rarely matches, no
# callback), then one bytes.translate pass over the utf-8 text turns every ASCII byte that cannot be
# part of a word into a space and lowercases ASCII letters; bytes >= 0x80 pass through, and utf-8
# continuation bytes are never ASCII, so splitting on spaces never cuts a character. Only the ASCII
# table differs between the presets: `word` keeps the underscore.
_TABLES = {
    "alnum": bytes((c if c >= 128 or chr(c).isalnum() else 32) for c in range(256)).lower(),
    "word": bytes((c if c >= 128 or chr(c).isalnum() or c == ord("_") else 32) for c in range(256)).lower(),
}
_NON_ASCII_NON_WORD = re.compile(r"[^\x00-\x7f\w]")

_MIX = np.uint64(0x9E3779B97F4A7C15)
_FIN1 = np.uint64(0xBF58476D1CE4E5B9)
_FIN2 = np.uint64(0x94D049BB133111EB)
_EMPTY = np.empty(0, dtype=np.uint64)


def check_normalize(normalize: str) -> str:
    """`normalize` if it names a preset, else ValueError listing them."""
    if normalize not in NORMALIZATIONS:
        raise ValueError("unknown normalization %r; presets: %s" % (normalize, ", ".join(sorted(NORMALIZATIONS))))
    return normalize


def normalize_words(text: str, normalize: str = DEFAULT_NORMALIZE) -> List[str]:
    """The document's words under preset `normalize` (the readable definition; see module doc)."""
    return NORMALIZATIONS[check_normalize(normalize)][1].sub(" ", text.lower()).split()


def _word_bytes(text: str, normalize: str = DEFAULT_NORMALIZE) -> List[bytes]:
    """normalize_words(text, normalize), utf-8 encoded (what the hashes are computed over)."""
    low = text.lower()
    if not low.isascii():
        low = _NON_ASCII_NON_WORD.sub(" ", low)
    return low.encode("utf-8").translate(_TABLES[normalize]).split()


def shingle_strings(text: str, n: int = DEFAULT_NGRAM, normalize: str = DEFAULT_NORMALIZE) -> Set[str]:
    words = normalize_words(text, normalize)
    if not words:
        return set()
    if len(words) < n:
        return {" ".join(words)}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def shingle_hashes(text: str, n: int = DEFAULT_NGRAM, normalize: str = DEFAULT_NORMALIZE) -> np.ndarray:
    """Sorted unique uint64 hashes of the document's shingles (one per element of shingle_strings)."""
    flat, offsets = shingle_hashes_batch([text], n, normalize)
    return flat


def shingle_hashes_batch(texts: Sequence[Optional[str]], n: int = DEFAULT_NGRAM,
                         normalize: str = DEFAULT_NORMALIZE) -> Tuple[np.ndarray, np.ndarray]:
    """shingle_hashes of many documents at once: (flat, offsets) with document i's sorted unique
    hashes in flat[offsets[i]:offsets[i+1]] (None counts as empty text).

    One numpy pass over the whole batch instead of ~20 small numpy calls per document.
    """
    check_normalize(normalize)
    words = [_word_bytes(t, normalize) if t else [] for t in texts]
    nwords = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
    starts = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum(nwords, out=starts[1:])
    total = int(starts[-1])
    wh = np.fromiter(map(xxhash.xxh3_64_intdigest, chain.from_iterable(words)), dtype=np.uint64, count=total)
    # One n-gram hash per word position (padding past the end; those are discarded below).
    wh = np.concatenate([wh, np.zeros(n - 1, dtype=np.uint64)])
    h = wh[:total].copy()
    # Order-dependent fold of the n word hashes, then a splitmix64 finaliser so that every output bit
    # depends on every input word (numpy uint64 arithmetic wraps mod 2**64, which is intended).
    for j in range(1, n):
        h *= _MIX
        h ^= h >> np.uint64(29)
        h ^= wh[j:j + total]
    h ^= h >> np.uint64(30)
    h *= _FIN1
    h ^= h >> np.uint64(27)
    h *= _FIN2
    h ^= h >> np.uint64(31)
    # n-gram at position p of document d is valid when it ends inside d.
    doc_of = np.repeat(np.arange(len(words), dtype=np.int64), nwords)
    valid = np.arange(total, dtype=np.int64) + (n - 1) < starts[1:][doc_of]
    # Documents with 1..n-1 words: one shingle of all their words (hashed as the joined string),
    # stored at the document's first position.
    short = np.flatnonzero((nwords > 0) & (nwords < n))
    if len(short):
        h[starts[short]] = np.array([xxhash.xxh3_64_intdigest(b" ".join(words[i])) for i in short],
                                    dtype=np.uint64)
        valid[starts[short]] = True
    h, doc_of = h[valid], doc_of[valid]
    offsets = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum(np.bincount(doc_of, minlength=len(words)), out=offsets[1:])
    # Sort each document's segment in place (a per-document loop of in-place sorts is ~10x faster
    # than one lexsort over (document, hash)), then drop repeats within a document.
    for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        if b - a > 1:
            h[a:b].sort()
    keep = np.ones(len(h), dtype=bool)
    keep[1:] = (h[1:] != h[:-1]) | (doc_of[1:] != doc_of[:-1])
    h, doc_of = h[keep], doc_of[keep]
    np.cumsum(np.bincount(doc_of, minlength=len(words)), out=offsets[1:])
    return h, offsets


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard of two sorted-unique hash arrays (0.0 when both are empty)."""
    if len(a) == 0 and len(b) == 0:
        return 0.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / float(len(a) + len(b) - inter)

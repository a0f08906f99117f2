"""Exact all-pairs Jaccard similarity join over shingle sets: the ground truth for dedup evaluation.

MinHash-LSH (the dedup stage) is approximate; this module is not. It finds every pair of documents
whose shingle sets (`pipeline.dedup.shingles.shingle_hashes`) have Jaccard >= t, without comparing
all n^2 pairs, using *prefix filtering*:

1. Give every distinct shingle a global rank, rarest first, and sort each document's set by rank.
2. If J(x, y) >= t then |x & y| >= t * max(|x|, |y|), so x and y must share at least one shingle among
   the first `|x| - ceil(t|x|) + 1` of x's (and likewise of y's). Any two sets that share no shingle
   in those "prefixes" cannot reach t. Prefixes hold the rarest shingles, so their inverted lists are
   short: a candidate is almost always a real near-duplicate, not a pair sharing boilerplate.
3. Drop candidates whose sizes alone rule them out (|small| < t * |large|), then compute the exact
   Jaccard of the rest.

Nothing is approximated: the filters only skip pairs that provably cannot reach the threshold, so the
result equals a brute-force all-pairs comparison (tests check this). Clusters are the connected
components of the "J >= t" graph, named by their smallest document id, as in docs/DESIGN.md.

Intended for evaluation-sized corpora (~20k documents in seconds on one core; 100k in about a
minute when near-duplicates are a minority); it runs in one process, in memory.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from pipeline.dedup.shingles import DEFAULT_NGRAM, shingle_hashes

DEFAULT_THRESHOLD = 0.8
# Float slack when turning t * |x| into an integer overlap bound: 0.8 * 5 is 4.000000000000001 in
# floating point, and ceil() of it must be 4, not 5. Erring low only lengthens prefixes (safe).
_EPS = 1e-9


def _min_overlap(size: np.ndarray, threshold: float) -> np.ndarray:
    """Smallest overlap a set of this size needs with any set it is >= threshold similar to."""
    return np.maximum(np.ceil(size * threshold - _EPS), 1).astype(np.int64)


def _ranked_sets(sets: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """Flattened per-document shingle ranks (rarest shingle first) and CSR offsets into them."""
    lens = np.array([len(s) for s in sets], dtype=np.int64)
    indptr = np.zeros(len(sets) + 1, dtype=np.int64)
    np.cumsum(lens, out=indptr[1:])
    if indptr[-1] == 0:
        return np.zeros(0, dtype=np.int64), indptr
    flat = np.concatenate([np.asarray(s, dtype=np.uint64) for s in sets])
    _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    del flat
    # Rarest first; ties broken by hash value (np.unique sorted them), so the order is deterministic.
    order = np.argsort(counts, kind="stable")
    rank_of = np.empty(len(order), dtype=np.int64)
    rank_of[order] = np.arange(len(order), dtype=np.int64)
    ranks = rank_of[inverse.ravel()]
    del inverse
    # Sort each document's segment by rank: one sort of doc * R + rank (no overflow below ~10^18).
    doc = np.repeat(np.arange(len(sets), dtype=np.int64), lens)
    key = doc * len(order) + ranks
    key.sort()
    return key - doc * len(order), indptr


def _candidate_pairs(ranks: np.ndarray, indptr: np.ndarray, threshold: float) -> Tuple[np.ndarray, np.ndarray]:
    """Unique (a, b), a < b, of documents whose prefixes share a shingle and whose sizes are compatible."""
    n = len(indptr) - 1
    lens = np.diff(indptr)
    prefix = np.where(lens > 0, lens - _min_overlap(lens, threshold) + 1, 0)
    doc = np.repeat(np.arange(n, dtype=np.int64), lens)
    pos = np.arange(len(ranks), dtype=np.int64) - indptr[doc]
    keep = pos < prefix[doc]
    tok, pdoc = ranks[keep], doc[keep]
    order = np.lexsort((pdoc, tok))
    tok, pdoc = tok[order], pdoc[order]
    # Inverted lists: runs of equal tokens; every pair inside a run is a candidate.
    starts = np.flatnonzero(np.r_[True, tok[1:] != tok[:-1]]) if len(tok) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, len(tok)])
    a_parts: List[np.ndarray] = []
    b_parts: List[np.ndarray] = []
    # Vectorise by run length: all runs of length s form a (runs, s) matrix of doc ids.
    for s in np.unique(sizes[sizes > 1]):
        run_starts = starts[sizes == s]
        docs = pdoc[run_starts[:, None] + np.arange(s)]
        iu, ju = np.triu_indices(int(s), 1)
        a_parts.append(docs[:, iu].ravel())
        b_parts.append(docs[:, ju].ravel())
    if not a_parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    a, b = np.concatenate(a_parts), np.concatenate(b_parts)  # a < b: runs are sorted by doc
    keys = np.unique(a * n + b)
    a, b = keys // n, keys % n
    small, large = np.minimum(lens[a], lens[b]), np.maximum(lens[a], lens[b])
    ok = small >= large * threshold - _EPS
    return a[ok], b[ok]


def similar_pairs(sets: Sequence[np.ndarray], threshold: float = DEFAULT_THRESHOLD
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i, j, J), i < j, of sets with exact Jaccard J >= threshold (0 < threshold <= 1).

    `sets` are sorted-unique uint64 arrays as made by `shingle_hashes`. Empty sets match nothing.
    Pairs come sorted by (i, j).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError("threshold must be in (0, 1], got %r" % threshold)
    ranks, indptr = _ranked_sets(sets)
    a, b = _candidate_pairs(ranks, indptr, threshold)
    lens = np.diff(indptr)
    sims = np.empty(len(a), dtype=np.float64)
    for k in range(len(a)):
        x = ranks[indptr[a[k]]:indptr[a[k] + 1]]
        y = ranks[indptr[b[k]]:indptr[b[k] + 1]]
        inter = len(np.intersect1d(x, y, assume_unique=True))
        sims[k] = inter / float(lens[a[k]] + lens[b[k]] - inter)
    ok = sims >= threshold
    return a[ok], b[ok], sims[ok]


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected-component label of each of n nodes: the smallest node index in its component."""
    labels = np.arange(n, dtype=np.int64)
    if len(a) == 0:
        return labels
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    while True:
        # Min-label propagation along edges, then pointer jumping to shortcut long chains.
        m = np.minimum(labels[a], labels[b])
        before = labels.copy()
        np.minimum.at(labels, a, m)
        np.minimum.at(labels, b, m)
        while True:
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
        if np.array_equal(labels, before):
            return labels


def exact_clusters(ids: Sequence[str], texts: Iterable[Optional[str]], threshold: float = DEFAULT_THRESHOLD,
                   ngram: int = DEFAULT_NGRAM):
    """Ground truth for a corpus: (truth DataFrame `id, cluster, has_dup`, pairs DataFrame).

    `cluster` is the smallest id of the document's connected component (the id itself for a
    singleton); `has_dup` is True when the component has more than one document. Pairs have columns
    `id_a, id_b, jaccard` with id_a < id_b. Output rows are sorted by id. Ids must be unique.
    """
    return clusters_from_sets(ids, [shingle_hashes(t or "", ngram) for t in texts], threshold)


def clusters_from_sets(ids: Sequence[str], sets: Sequence[np.ndarray], threshold: float = DEFAULT_THRESHOLD):
    """`exact_clusters` for precomputed shingle sets (`shingle_hashes` output), one per id."""
    import pandas as pd

    ids = np.asarray(list(ids), dtype=object)
    if len(ids) != len(sets):
        raise ValueError("ids and shingle sets differ in length")
    order = np.argsort(ids, kind="stable")  # index order == id order, so min index == min id
    ids = ids[order]
    if len(ids) > 1 and (ids[1:] == ids[:-1]).any():
        raise ValueError("duplicate ids, e.g. %r" % ids[1:][ids[1:] == ids[:-1]][0])
    a, b, sims = similar_pairs([sets[i] for i in order], threshold)
    labels = components(len(ids), a, b)
    sizes = np.bincount(labels, minlength=len(ids))
    truth = pd.DataFrame({"id": ids.astype(str), "cluster": ids[labels].astype(str),
                          "has_dup": sizes[labels] > 1})
    pairs = pd.DataFrame({"id_a": ids[a].astype(str), "id_b": ids[b].astype(str), "jaccard": sims})
    return truth, pairs


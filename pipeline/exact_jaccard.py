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

Identical sets (exact copies, common in crawls) are joined once, through one representative per
group, and expanded afterwards, so a page copied 5,000 times costs one document, not 12.5M pairs.

Nothing is approximated: the filters only skip pairs that provably cannot reach the threshold, so the
result equals a brute-force all-pairs comparison (tests check this). Clusters are the connected
components of the "J >= t" graph, named by their smallest document id, as in docs/DESIGN.md.

Intended for evaluation-sized corpora: 20k generated documents take ~2 s of CPU for the join plus
~4 s to shingle (docs/benchmarks/quality.md); it runs in one process, in memory.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from pipeline.dedup.shingles import DEFAULT_NGRAM, DEFAULT_NORMALIZE, shingle_hashes

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


def _join(sets: Sequence[np.ndarray], threshold: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prefix-filtered join: pairs (i, j, J), i < j, J >= threshold, sorted by (i, j)."""
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


def _identical(sets: Sequence[np.ndarray]) -> np.ndarray:
    """For each set, the index of the first set equal to it (itself if none); -1 for empty sets.

    Crawls hold many byte-identical pages (error pages, mirrors); joining one representative per
    group keeps a 5,000-copy page from turning into 12.5 million candidate pairs to verify.
    """
    import xxhash

    rep = np.full(len(sets), -1, dtype=np.int64)
    first: Dict[bytes, int] = {}
    for i, s in enumerate(sets):
        if len(s) == 0:
            continue
        j = first.setdefault(xxhash.xxh3_128_digest(np.asarray(s, dtype=np.uint64).tobytes()), i)
        rep[i] = j if j == i or np.array_equal(s, sets[j]) else i  # a digest collision stays apart
    return rep


def _representative_pairs(sets: Sequence[np.ndarray], threshold: float):
    """(rep, a, b, J): `rep` from `_identical`, and the similar pairs among representatives only."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError("threshold must be in (0, 1], got %r" % threshold)
    rep = _identical(sets)
    reps = np.flatnonzero(rep == np.arange(len(sets)))
    a, b, sims = _join([sets[i] for i in reps], threshold)
    return rep, reps[a], reps[b], sims


def _expand(rep: np.ndarray, a: np.ndarray, b: np.ndarray, sims: np.ndarray):
    """All document pairs implied by representative pairs and groups of identical sets."""
    members: Dict[int, np.ndarray] = {}
    dup = np.flatnonzero((rep >= 0) & (rep != np.arange(len(rep))))
    for r in np.unique(rep[dup]):
        members[int(r)] = np.r_[r, dup[rep[dup] == r]]
    if not members:
        return a, b, sims
    parts_a, parts_b, parts_s = [], [], []
    single = np.array([int(x) not in members and int(y) not in members for x, y in zip(a, b)], dtype=bool)
    parts_a.append(a[single]), parts_b.append(b[single]), parts_s.append(sims[single])
    for x, y, j in zip(a[~single], b[~single], sims[~single]):
        gx, gy = members.get(int(x), np.array([x])), members.get(int(y), np.array([y]))
        xx, yy = np.meshgrid(gx, gy, indexing="ij")
        parts_a.append(xx.ravel()), parts_b.append(yy.ravel()), parts_s.append(np.full(xx.size, j))
    for g in members.values():  # identical sets: J = 1 for every pair inside the group
        iu, ju = np.triu_indices(len(g), 1)
        parts_a.append(g[iu]), parts_b.append(g[ju]), parts_s.append(np.ones(len(iu)))
    a, b, sims = np.concatenate(parts_a), np.concatenate(parts_b), np.concatenate(parts_s)
    a, b = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((b, a))
    return a[order], b[order], sims[order]


def similar_pairs(sets: Sequence[np.ndarray], threshold: float = DEFAULT_THRESHOLD
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i, j, J), i < j, of sets with exact Jaccard J >= threshold (0 < threshold <= 1).

    `sets` are sorted-unique uint64 arrays as made by `shingle_hashes`. Empty sets match nothing.
    Pairs come sorted by (i, j).
    """
    return _expand(*_representative_pairs(sets, threshold))


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
                   ngram: int = DEFAULT_NGRAM, with_pairs: bool = True, normalize: str = DEFAULT_NORMALIZE):
    """Ground truth for a corpus: (truth DataFrame `id, cluster, has_dup`, pairs DataFrame).

    `cluster` is the smallest id of the document's connected component (the id itself for a
    singleton); `has_dup` is True when the component has more than one document. Pairs have columns
    `id_a, id_b, jaccard` with id_a < id_b (every pair: n identical copies give n(n-1)/2 rows; pass
    `with_pairs=False` to get None instead when only clusters matter). Rows are sorted by id. Ids
    must be unique. Words and shingles follow `pipeline.dedup.shingles` with preset `normalize`.
    """
    return clusters_from_sets(ids, [shingle_hashes(t or "", ngram, normalize) for t in texts], threshold,
                              with_pairs)


def clusters_from_sets(ids: Sequence[str], sets: Sequence[np.ndarray], threshold: float = DEFAULT_THRESHOLD,
                       with_pairs: bool = True):
    """`exact_clusters` for precomputed shingle sets (`shingle_hashes` output), one per id."""
    import pandas as pd

    ids = np.asarray(list(ids), dtype=object)
    if len(ids) != len(sets):
        raise ValueError("ids and shingle sets differ in length")
    order = np.argsort(ids, kind="stable")  # index order == id order, so min index == min id
    ids = ids[order]
    if len(ids) > 1 and (ids[1:] == ids[:-1]).any():
        raise ValueError("duplicate ids, e.g. %r" % ids[1:][ids[1:] == ids[:-1]][0])
    rep, a, b, sims = _representative_pairs([sets[i] for i in order], threshold)
    # Components need one edge per identical copy (to its representative), not all their pairs.
    dup = np.flatnonzero((rep >= 0) & (rep != np.arange(len(rep))))
    labels = components(len(ids), np.r_[a, rep[dup]], np.r_[b, dup])
    sizes = np.bincount(labels, minlength=len(ids))
    truth = pd.DataFrame({"id": ids.astype(str), "cluster": ids[labels].astype(str),
                          "has_dup": sizes[labels] > 1})
    if not with_pairs:
        return truth, None
    a, b, sims = _expand(rep, a, b, sims)
    pairs = pd.DataFrame({"id_a": ids[a].astype(str), "id_b": ids[b].astype(str), "jaccard": sims})
    return truth, pairs


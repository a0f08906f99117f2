"""The whole dedup stage in one process, without Spark: the same signatures, buckets, candidate-edge
rule, verification, components and keep rules as the Spark plan (pipeline/dedup/spark_plan.py).

Used as the single-process reference in tests (the Spark job must give the same report) and in
bench/bench_dedup.py ("pure-Python core"). Buckets live in dicts here, so it is for corpora that fit
in one machine's memory.
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from pipeline.dedup.components import UnionFind
from pipeline.dedup.keep import DEFAULT_KEEP, check_rule, keep_key
from pipeline.dedup.lsh import resolve_bands_rows
from pipeline.dedup.minhash import MinHasher, band_keys
from pipeline.dedup.shingles import DEFAULT_NGRAM, DEFAULT_NORMALIZE, jaccard


def dedup_local(ids: Sequence[str], texts: Sequence[Optional[str]], threshold: float = 0.8,
                ngram: int = DEFAULT_NGRAM, num_perm: int = 128, bands: int = 0, rows: int = 0,
                seed: int = 1, window: int = 4, batch_size: int = 1000,
                normalize: str = DEFAULT_NORMALIZE, keep: str = DEFAULT_KEEP,
                sources: Optional[Sequence[Optional[str]]] = None,
                positions: Optional[Sequence[Optional[int]]] = None) -> Tuple[List[Dict], Dict]:
    """Returns (report rows {id, cluster_id, cluster_size, kept} in input order, stats).

    `keep` is a rule of pipeline.dedup.keep; `first` reads each document's (source, pos) from
    `sources` and `positions` (parallel to `ids`)."""
    t0 = time.time()
    check_rule(keep)
    if keep == "first" and (sources is None or positions is None):
        raise ValueError("keep='first' needs sources and positions")
    bands, rows = resolve_bands_rows(threshold, num_perm, bands, rows)
    hasher = MinHasher(num_perm, seed, ngram, normalize)
    shingles: List[np.ndarray] = []
    buckets: Dict[Tuple[int, int], List[int]] = {}
    for start in range(0, len(texts), batch_size):
        flat, offsets, sigs = hasher.signatures(texts[start:start + batch_size])
        keys = band_keys(sigs, bands, rows).tolist()
        for i in range(len(offsets) - 1):
            shingles.append(flat[offsets[i]:offsets[i + 1]])
            if offsets[i + 1] > offsets[i]:
                for band, key in enumerate(keys[i]):
                    buckets.setdefault((band, key), []).append(start + i)

    # Same edge rule as batches.candidate_batches (see lsh.py): bucket min id + next `window` members by (size, id).
    edges = set()
    for members in buckets.values():
        if len(members) < 2:
            continue
        first = min(members, key=lambda d: ids[d])
        ordered = sorted(members, key=lambda d: (len(shingles[d]), ids[d]))
        for pos, d in enumerate(ordered):
            for other in [first] + ordered[pos + 1:pos + 1 + window]:
                if other != d:
                    edges.add((min(d, other), max(d, other)))

    uf = UnionFind()
    order = sorted(range(len(ids)), key=lambda d: ids[d])
    rank = {d: r for r, d in enumerate(order)}  # union by id order -> root = smallest id
    verified = 0
    for a, b in edges:
        if jaccard(shingles[a], shingles[b]) >= threshold:
            verified += 1
            uf.union(rank[a], rank[b])
    clusters: Dict[int, List[int]] = {}
    for d in range(len(ids)):
        clusters.setdefault(uf.find(rank[d]), []).append(d)
    report: List[Dict] = [{}] * len(ids)
    for root, members in clusters.items():
        kept = min(members, key=lambda d: keep_key(
            keep, ids[d], len(texts[d] or ""), sources[d] if sources is not None else None,
            positions[d] if positions is not None else None))
        for d in members:
            report[d] = {"id": ids[d], "cluster_id": ids[order[root]], "cluster_size": len(members),
                         "kept": d == kept}
    n_kept = len(clusters)
    stats = {"stage": "dedup", "seconds": round(time.time() - t0, 3), "records_in": len(ids),
             "records_out": n_kept, "duplicates_removed": len(ids) - n_kept, "dropped": {},
             "clusters": sum(1 for m in clusters.values() if len(m) > 1),
             "candidate_pairs": len(edges), "verified_pairs": verified, "bands": bands, "rows": rows,
             "keep": keep}
    return report, stats

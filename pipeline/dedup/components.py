"""Connected components by union-find, in plain Python: the near-duplicate clusters of one machine's
worth of edges. Every component's label is its smallest node, which for document ids is exactly the
report's cluster_id.

Used by the single-process core (`pipeline.dedup.local`) and, through `union_find_batches`, by the
Spark job's single-task path for small edge sets (`pipeline.dedup.spark_components`).
"""
from __future__ import annotations

from typing import Dict, Hashable, Iterator, KeysView

import pyarrow as pa

LABEL_BATCH_ROWS = 65536


class UnionFind:
    """Disjoint sets over ordered nodes, created on first union; a set's root is its smallest node,
    so no relabelling pass is needed. A node never united with another is its own root."""

    def __init__(self):
        self.parent: Dict[Hashable, Hashable] = {}

    def find(self, x):
        parent = self.parent
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def union(self, a, b) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if rb < ra:
                ra, rb = rb, ra
            self.parent[rb] = ra
            self.parent.setdefault(ra, ra)

    def nodes(self) -> KeysView:
        """Every node that was united with another."""
        return self.parent.keys()


def union_find_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """ALL (src, dst) edges as Arrow batches -> (id, cluster_id = smallest id of its component) for
    every node of an edge, sorted by id. A self-loop alone does not make a node (as in the
    distributed large-star/small-star path)."""
    uf = UnionFind()
    for batch in batches:
        for a, b in zip(batch.column("src").to_pylist(), batch.column("dst").to_pylist()):
            if a != b:
                uf.union(a, b)
    ids = sorted(uf.nodes())
    roots = [uf.find(x) for x in ids]
    for i in range(0, len(ids), LABEL_BATCH_ROWS):
        yield pa.RecordBatch.from_arrays([pa.array(ids[i:i + LABEL_BATCH_ROWS], pa.string()),
                                          pa.array(roots[i:i + LABEL_BATCH_ROWS], pa.string())],
                                         names=["id", "cluster_id"])

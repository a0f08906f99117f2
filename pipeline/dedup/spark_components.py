"""Connected components on Spark: an undirected graph given as a DataFrame of edges, without GraphFrames.

Algorithm: alternating large-star / small-star (Kiveris et al., "Connected Components in MapReduce and
Beyond", SoCC 2014), which needs O(log^2 n) rounds in the worst case and a handful in practice, versus
O(diameter) rounds for plain min-label propagation (a chain of 1000 near-duplicates would need 1000).
Node ids are strings compared lexicographically, so each component converges to a star around its
smallest id -- which is exactly the cluster id we want.

  large-star: every node u links its *larger* neighbours to m(u) = min(u, neighbours of u)
  small-star: every node u links its *smaller* neighbours, and itself, to m'(u) = min(u, smaller ones)

Both keep the components intact and strictly shrink distances to the minimum. It has converged when
the graph is a union of stars: every non-root node has exactly one edge, to a root. Each round's
edges are checkpointed (reliable checkpoint when a checkpoint dir is set, else localCheckpoint)
so the lineage -- and the query plan -- does not grow with the number of rounds.

Nothing is collected to the driver: the only driver-side values are counts.

Small edge sets (`single_task_max_edges`, a fixed bound, not a fraction of the data) skip the rounds:
verified near-duplicate edges are usually few (49k for 100k web documents), and each distributed round
costs several Spark jobs of scheduling for almost no data. They are shuffled into ONE task, which runs
union-find in Python (`pipeline.dedup.components`) and emits the same labels; the driver still never
sees an edge.
"""
from __future__ import annotations

from typing import Optional, Tuple

from pyspark.sql import Window
from pyspark.sql import functions as F

from pipeline.dedup.components import union_find_batches
from pipeline.spark import release


def _cut_lineage(df, reliable: bool):
    return df.checkpoint(eager=True) if reliable else df.localCheckpoint(eager=True)


def _large_star(edges):
    sym = edges.select("src", "dst").union(edges.select(F.col("dst").alias("src"), F.col("src").alias("dst")))
    # m(u) with a window instead of groupBy + join: one shuffle. Duplicates are left to small-star.
    m = F.least(F.col("src"), F.min("dst").over(Window.partitionBy("src")))
    return (sym.select("src", "dst", m.alias("m"))
            .where(F.col("dst") > F.col("src"))
            .select(F.col("dst").alias("src"), F.col("m").alias("dst")))


def _small_star(edges):
    # orient every edge as (hi, lo); the neighbours of hi smaller than hi are its lo's
    oriented = edges.select(F.greatest("src", "dst").alias("hi"), F.least("src", "dst").alias("lo"))
    joined = oriented.select("hi", "lo", F.min("lo").over(Window.partitionBy("hi")).alias("m"))
    out = (joined.where(F.col("lo") != F.col("m")).select(F.col("lo").alias("src"), F.col("m").alias("dst"))
           .union(joined.select(F.col("hi").alias("src"), F.col("m").alias("dst"))))
    return out.distinct()


def _is_star_forest(edges) -> bool:
    """True when every node that is the larger end of an edge has exactly one edge, to a node that is
    never the larger end of any edge (a root): then each component is one star around its minimum."""
    ends = (edges.select(F.greatest("src", "dst").alias("v"), F.lit(1).alias("as_hi"), F.lit(0).alias("as_lo"))
            .union(edges.select(F.least("src", "dst").alias("v"), F.lit(0).alias("as_hi"), F.lit(1).alias("as_lo"))))
    per_node = ends.groupBy("v").agg(F.sum("as_hi").alias("hi"), F.max("as_lo").alias("lo"))
    bad = per_node.where((F.col("hi") > 1) | ((F.col("hi") > 0) & (F.col("lo") > 0)))
    return bad.limit(1).count() == 0


LABEL_SCHEMA = "id string, cluster_id string"


def single_task_components(edges):
    """The bounded fast path: every edge into one partition, union-find there."""
    return edges.select("src", "dst").repartition(1).mapInArrow(union_find_batches, LABEL_SCHEMA)


def connected_components(edges, max_iterations: int = 100, checkpoint_dir: Optional[str] = None,
                         clean: bool = False, edge_count: Optional[int] = None,
                         single_task_max_edges: int = 0) -> Tuple[object, int]:
    """edges: DataFrame (src string, dst string), undirected, any order, duplicates allowed -- or, with
    clean=True, already distinct with src < dst and checkpointed (saves a shuffle and a job).

    Returns (labels, rounds): labels is a DataFrame (id, cluster_id) with one row for every node that
    appears in an edge, cluster_id = the smallest id of its component; rounds = large/small-star rounds
    (0 when the single-task path ran: edge_count, if known, or a count, <= single_task_max_edges).
    """
    if single_task_max_edges > 0:
        if edge_count is None:
            edge_count = edges.count()
        if edge_count <= single_task_max_edges:
            return single_task_components(edges), 0

    spark = edges.sparkSession
    reliable = bool(checkpoint_dir)
    if reliable:
        spark.sparkContext.setCheckpointDir(checkpoint_dir)
    if clean:
        cur = edges
    else:
        cur = _cut_lineage(edges.where(F.col("src") != F.col("dst"))
                           .select(F.least("src", "dst").alias("src"), F.greatest("src", "dst").alias("dst"))
                           .distinct(), reliable)
    rounds = 0
    while not _is_star_forest(cur):
        if rounds >= max_iterations:
            raise RuntimeError("connected components did not converge in %d rounds" % max_iterations)
        nxt = _cut_lineage(_small_star(_large_star(cur)), reliable)
        if cur is not edges:
            release(cur)  # this round's checkpoint: unpersist() alone leaves a local checkpoint's blocks
        cur = nxt
        rounds += 1
    # A star forest: every edge is (leaf, root) with root < leaf; roots label themselves.
    leaves = cur.select(F.greatest("src", "dst").alias("id"), F.least("src", "dst").alias("cluster_id"))
    roots = cur.select(F.least("src", "dst").alias("id")).distinct().withColumn("cluster_id", F.col("id"))
    return leaves.union(roots), rounds

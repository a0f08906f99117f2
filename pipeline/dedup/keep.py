"""Which document of a duplicate cluster survives: the longest text (in characters), ties -> smallest id.

The longest member usually carries the most content (the full article rather than a truncated copy or
one with navigation stripped); the id tie-break makes the choice independent of partitioning and
order, so reruns keep the same documents. cluster_id is the smallest id in the cluster (independent of
the keep rule), and a document that is nobody's duplicate is its own cluster of size 1, kept.
"""
from __future__ import annotations

from typing import Tuple


def keep_key(text_length: int, doc_id: str) -> Tuple[int, str]:
    """The member with the smallest key is kept."""
    return (-int(text_length), doc_id)


def keep_key_column(length_col: str = "length", id_col: str = "id"):
    """The same order as a Spark struct column: min(struct) picks the kept member."""
    from pyspark.sql import functions as F

    return F.struct((-F.col(length_col)).alias("neg_length"), F.col(id_col).alias("id"))

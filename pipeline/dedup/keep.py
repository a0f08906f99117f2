"""Which document of a near-duplicate cluster survives (`--keep`). Every other member is removed.

  longest      the longest text in characters; ties -> the smallest id. The longest member usually
               carries the most content (the full article rather than a truncated copy or one with
               navigation stripped). The default.
  first        the earliest in input order: the smallest (source, pos), where `source` is the input
               file's path and `pos` the record's place in it (as ingest writes them; see
               pipeline/ingest/records.py); ties -> the smallest id. A missing source sorts after
               every source, a missing pos after every pos of the same source. What most MinHash
               tools keep (the first document seen).
  smallest-id  the smallest id. Ids are content/record hashes, so this is a fixed pseudo-random pick.

Strings compare by code point (the same as Spark's UTF-8 byte order), so the choice never depends on
partitioning, task order or the machine: reruns keep the same documents. cluster_id is the smallest id
in the cluster whatever the rule, and a document that is nobody's duplicate is its own cluster of
size 1, kept.
"""
from __future__ import annotations

from typing import Optional, Tuple

KEEP_RULES = ("longest", "first", "smallest-id")
DEFAULT_KEEP = "longest"
# The input columns each rule reads besides `id` (`length` is computed from the text).
COLUMNS_NEEDED = {"longest": ("text",), "first": ("source", "pos"), "smallest-id": ()}


def check_rule(rule: str) -> str:
    if rule not in KEEP_RULES:
        raise ValueError("keep rule must be one of %s, not %r" % (", ".join(KEEP_RULES), rule))
    return rule


def keep_key(rule: str, doc_id: str, text_length: int = 0, source: Optional[str] = None,
             pos: Optional[int] = None) -> Tuple:
    """The member of a cluster with the smallest key is kept."""
    if rule == "longest":
        return (-int(text_length), doc_id)
    if rule == "first":
        return (source is None, source or "", pos is None, pos if pos is not None else 0, doc_id)
    if rule == "smallest-id":
        return (doc_id,)
    raise ValueError("keep rule must be one of %s, not %r" % (", ".join(KEEP_RULES), rule))

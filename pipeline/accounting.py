"""Record accounting: every input record is kept, removed as a duplicate, dropped for a named reason,
or was never a document at all.

A WARC file holds more than pages: the crawler's `request` records, `metadata` and `warcinfo` records
sit beside each `response`. Those records are counted as `not_documents` (nothing was lost: there was
no page to keep), apart from documents `dropped` for a reason (HTTP errors, binary bodies, empty
text, broken records, ...). Both kinds are rows of DIR/ingest/dropped, with their reason.

Each job's `run()` returns a stage-stats dict:

    {"stage": "ingest", "seconds": 12.3, "records_in": 2050, "records_out": 1000,
     "not_documents": {"not_response": 1000}, "dropped": {"not_html": 30, "http_status": 20}, ...}

with `records_in == records_out + duplicates_removed + sum(not_documents) + sum(dropped)` for every
stage. The run summary chains the stages and checks the whole-run identity

    records_in = not_documents + kept + duplicates_removed + sum(dropped[reason])

raising AccountingError if it does not hold: a record that vanished is a bug, never a rounding issue.
"""
from __future__ import annotations

import json
from typing import Dict, List, Mapping, Tuple

from pipeline import storage

# Records that were never documents: crawl bookkeeping, not data loss.
NOT_DOCUMENT_REASONS = {
    "not_response": "WARC record is not a `response` (request, metadata, warcinfo, ...)",
}
# Why a document was dropped. One vocabulary for all stages, so the summary can add them up.
DROP_REASONS = {
    "http_status": "HTTP status other than 200",
    "not_html": "content type is not HTML",
    "decode_error": "body could not be decoded as text",
    "extract_error": "HTML could not be parsed into text",
    "empty_text": "no text left after extraction/normalisation",
    "too_short": "text shorter than the configured minimum",
    "too_large": "record larger than the configured maximum",
    "bad_record": "malformed record (truncated gzip, broken WARC/HTTP headers, null/non-string text)",
    "unreadable_file": "an input file that could not be opened or parsed at all",
    "duplicate_id": "a second record with an id already seen (the first is kept)",
}
# Every `reason` a row of DIR/ingest/dropped can carry.
ROW_REASONS = dict(NOT_DOCUMENT_REASONS, **DROP_REASONS)


def split_reasons(counts: Mapping[str, int]) -> Tuple[Dict[str, int], Dict[str, int]]:
    """Per-reason row counts -> (not_documents, dropped), each sorted by reason."""
    not_documents = {r: int(n) for r, n in sorted(counts.items()) if r in NOT_DOCUMENT_REASONS}
    dropped = {r: int(n) for r, n in sorted(counts.items()) if r not in NOT_DOCUMENT_REASONS}
    return not_documents, dropped


class AccountingError(AssertionError):
    pass


def check_stage(stats: Mapping) -> None:
    dropped = sum(stats.get("dropped", {}).values())
    not_documents = sum(stats.get("not_documents", {}).values())
    removed = stats.get("duplicates_removed", 0)
    if stats["records_in"] != stats["records_out"] + removed + not_documents + dropped:
        raise AccountingError(
            "stage %s: records_in=%d != records_out=%d + duplicates_removed=%d + not_documents=%d + dropped=%d"
            % (stats["stage"], stats["records_in"], stats["records_out"], removed, not_documents, dropped))
    unknown = (set(stats.get("dropped", {})) - set(DROP_REASONS)) | \
        (set(stats.get("not_documents", {})) - set(NOT_DOCUMENT_REASONS))
    if unknown:
        raise AccountingError("stage %s: unknown drop reasons %s" % (stats["stage"], sorted(unknown)))


def _add_counts(stages: List[Mapping], key: str) -> Dict[str, int]:
    total: Dict[str, int] = {}
    for s in stages:
        for reason, n in s.get(key, {}).items():
            total[reason] = total.get(reason, 0) + int(n)
    return dict(sorted(total.items()))


def build_summary(stages: List[Mapping], extra: Mapping = None) -> Dict:
    """Chain stage stats (in order) into the run summary and check the record identity. `kept` is what
    the last stage run holds (the documents in the shards after a full run); every stage must read
    exactly the records the stage before it wrote."""
    for s in stages:
        check_stage(s)
    for prev, s in zip(stages, stages[1:]):  # each stage reads exactly what the one before wrote
        if int(s["records_in"]) != int(prev["records_out"]):
            raise AccountingError("stage %s read %d records, but %s wrote %d" % (
                s["stage"], s["records_in"], prev["stage"], prev["records_out"]))
    not_documents = _add_counts(stages, "not_documents")
    dropped = _add_counts(stages, "dropped")
    records_in = int(stages[0]["records_in"])
    duplicates_removed = sum(int(s.get("duplicates_removed", 0)) for s in stages)
    kept = int(stages[-1]["records_out"])  # what the last stage run holds: documents kept by every stage
    summary = {
        "records_in": records_in,
        "not_documents": not_documents,
        "documents_in": records_in - sum(not_documents.values()),
        "kept": kept,
        "duplicates_removed": duplicates_removed,
        "dropped": dropped,
        "stages": [dict(s) for s in stages],
        "total_seconds": round(sum(float(s.get("seconds", 0.0)) for s in stages), 3),
    }
    if extra:
        summary.update(extra)
    if records_in != sum(not_documents.values()) + kept + duplicates_removed + sum(dropped.values()):
        raise AccountingError(
            "records_in=%d != not_documents=%d + kept=%d + duplicates_removed=%d + dropped=%d"
            % (records_in, sum(not_documents.values()), kept, duplicates_removed, sum(dropped.values())))
    return summary


def format_table(summary: Mapping) -> str:
    """The per-stage table, then where every input record went (records that were never documents
    first, on their own line, so that nobody reads them as lost data)."""
    rows = [("stage", "records in", "records out", "seconds", "records/s")]
    for s in summary["stages"]:
        secs = float(s.get("seconds", 0.0))
        rate = s["records_in"] / secs if secs > 0 else float("nan")
        rows.append((s["stage"], str(s["records_in"]), str(s["records_out"]), "%.2f" % secs, "%.1f" % rate))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    not_documents = sum(summary["not_documents"].values())
    dropped = sum(summary["dropped"].values())
    width = len(str(summary["records_in"]))

    def line(label: str, n: int, note: str = "") -> str:
        return ("%-28s %*d   %s" % (label, width, n, note)).rstrip()

    lines += ["",
              line("records in", summary["records_in"]),
              line("  not documents", not_documents,
                   "WARC request/metadata/warcinfo records: never pages, nothing lost"),
              line("documents in", summary["documents_in"]),
              line("  kept", summary["kept"]),
              line("  duplicates removed", summary["duplicates_removed"])]
    lines += [line("  dropped %s" % reason, n) for reason, n in summary["dropped"].items()]
    total = not_documents + summary["kept"] + summary["duplicates_removed"] + dropped
    lines.append("check: %d records in = %d not documents + %d kept + %d duplicates removed + %d dropped  %s" % (
        summary["records_in"], not_documents, summary["kept"], summary["duplicates_removed"], dropped,
        "OK" if total == summary["records_in"] else "MISMATCH"))
    return "\n".join(lines)


def write_summary(summary: Mapping, out_dir: str) -> str:
    path = storage.join(out_dir, "summary.json")
    storage.write_text(path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return path

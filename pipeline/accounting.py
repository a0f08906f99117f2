"""Record accounting: every input record is kept, removed as a duplicate, or dropped for a named reason.

Each job's `run()` returns a stage-stats dict:

    {"stage": "ingest", "seconds": 12.3, "records_in": 1050, "records_out": 1000,
     "dropped": {"not_html": 30, "http_status": 20}, ...stage-specific extras}

with `records_in == records_out + sum(dropped.values())` for every stage. The run summary chains the
stages and checks the whole-run identity

    records_in = kept + duplicates_removed + sum(dropped[reason])

raising AccountingError if it does not hold: a record that vanished is a bug, never a rounding issue.
"""
from __future__ import annotations

import json
from typing import Dict, List, Mapping

from pipeline import storage

# Why a record was dropped. One vocabulary for all stages, so the summary can add them up.
DROP_REASONS = {
    "not_response": "WARC record is not a `response` (request, metadata, warcinfo, ...)",
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


class AccountingError(AssertionError):
    pass


def check_stage(stats: Mapping) -> None:
    dropped = sum(stats.get("dropped", {}).values())
    removed = stats.get("duplicates_removed", 0)
    if stats["records_in"] != stats["records_out"] + removed + dropped:
        raise AccountingError(
            "stage %s: records_in=%d != records_out=%d + duplicates_removed=%d + dropped=%d"
            % (stats["stage"], stats["records_in"], stats["records_out"], removed, dropped))
    unknown = set(stats.get("dropped", {})) - set(DROP_REASONS)
    if unknown:
        raise AccountingError("stage %s: unknown drop reasons %s" % (stats["stage"], sorted(unknown)))


def build_summary(stages: List[Mapping], extra: Mapping = None) -> Dict:
    """Chain stage stats (in order) into the run summary and check the record identity."""
    for s in stages:
        check_stage(s)
    by_name = {s["stage"]: s for s in stages}
    dropped: Dict[str, int] = {}
    for s in stages:
        for reason, n in s.get("dropped", {}).items():
            dropped[reason] = dropped.get(reason, 0) + int(n)
    records_in = int(stages[0]["records_in"])
    dedup = by_name.get("dedup")
    duplicates_removed = int(dedup.get("duplicates_removed", 0)) if dedup else 0
    kept = int(dedup["records_out"]) if dedup else int(stages[0]["records_out"])
    summary = {
        "records_in": records_in,
        "kept": kept,
        "duplicates_removed": duplicates_removed,
        "dropped": dict(sorted(dropped.items())),
        "stages": [dict(s) for s in stages],
        "total_seconds": round(sum(float(s.get("seconds", 0.0)) for s in stages), 3),
    }
    if extra:
        summary.update(extra)
    if records_in != kept + duplicates_removed + sum(dropped.values()):
        raise AccountingError(
            "records_in=%d != kept=%d + duplicates_removed=%d + dropped=%d"
            % (records_in, kept, duplicates_removed, sum(dropped.values())))
    return summary


def format_table(summary: Mapping) -> str:
    rows = [("stage", "records in", "records out", "seconds", "records/s")]
    for s in summary["stages"]:
        secs = float(s.get("seconds", 0.0))
        rate = s["records_in"] / secs if secs > 0 else float("nan")
        rows.append((s["stage"], str(s["records_in"]), str(s["records_out"]), "%.2f" % secs, "%.1f" % rate))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    lines.append("records in          %d" % summary["records_in"])
    lines.append("kept                %d" % summary["kept"])
    lines.append("duplicates removed  %d" % summary["duplicates_removed"])
    for reason, n in summary["dropped"].items():
        lines.append("dropped %-11s %d" % (reason, n))
    total = summary["kept"] + summary["duplicates_removed"] + sum(summary["dropped"].values())
    lines.append("check: %d = %d + %d + %d  %s" % (
        summary["records_in"], summary["kept"], summary["duplicates_removed"],
        sum(summary["dropped"].values()), "OK" if total == summary["records_in"] else "MISMATCH"))
    return "\n".join(lines)


def write_summary(summary: Mapping, out_dir: str) -> str:
    path = storage.join(out_dir, "summary.json")
    storage.write_text(path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return path

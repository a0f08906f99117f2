"""Tabular inputs: JSON lines, streamed here line by line (parquet is mapped in Spark, by
`pipeline.ingest.spark_parquet`, with the same rules).

Both map the user's columns onto the record: `--text-col` (required), `--id-col` (if absent or null,
id = sha1(url + "\\n" + text) hex, so the same document gets the same id on every run), `--url-col`
(optional). Text that is null or not a string is a `bad_record`; texts are otherwise kept as given.

JSON lines are parsed in Python rather than with spark.read.json: Spark would turn a number in the
text field into a string, silently null a malformed line, and fail the whole job on a truncated
.gz file. Here each of those is one counted drop row with the line number.
"""
from __future__ import annotations

import codecs
import gzip
import hashlib
import json
from typing import IO, Iterator, Optional

from pipeline import storage
from pipeline.ingest.charset import BINARY_CONTROL_SHARE, BINARY_SAMPLE_BYTES, control_share
from pipeline.ingest.records import IngestOptions, Record, dropped, kept, text_problem

MISSING_FIELD = "missing field"  # prefix of the drop detail the job uses to spot a missing text column
LINE_SLACK_BYTES = 1 << 20  # room for the other fields of a line whose text is at the size limit


class MissingColumnError(ValueError):
    """The text column is not in the input; the message names the files and the columns found."""


def content_id(url: Optional[str], text: str) -> str:
    return hashlib.sha1(((url or "") + "\n" + text).encode("utf-8")).hexdigest()


def _valid_unicode(s: str) -> str:
    """JSON may hold lone surrogates ("\\ud800"), which UTF-8 (parquet) cannot store."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def json_record(line: bytes, source: str, lineno: int, opts: IngestOptions) -> Record:
    """One JSON-lines line -> a kept record or a drop row."""
    where = "line %d" % lineno
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as e:  # invalid UTF-8 included; RecursionError: nesting too deep
        return dropped(source, lineno, "bad_record", "%s: invalid JSON: %s" % (where, str(e)[:200]))
    if not isinstance(obj, dict):
        return dropped(source, lineno, "bad_record", "%s: not a JSON object" % where)
    if opts.text_col not in obj:
        return dropped(source, lineno, "bad_record", "%s %r (fields: %s)" % (
            MISSING_FIELD, opts.text_col, ", ".join(sorted(obj))[:300]))
    text, url, rid = obj[opts.text_col], obj.get(opts.url_col), obj.get(opts.id_col)
    url = _valid_unicode(url) if isinstance(url, str) else None
    if text is None or not isinstance(text, str):
        return dropped(source, lineno, "bad_record", "%s: %r is %s, not a string" % (
            where, opts.text_col, "null" if text is None else type(text).__name__))
    text = _valid_unicode(text)
    if isinstance(rid, bool) or not isinstance(rid, (str, int, type(None))):
        return dropped(source, lineno, "bad_record", "%s: id %r is %s, not a string or integer" % (
            where, opts.id_col, type(rid).__name__), url=url)
    rid = content_id(url, text) if rid is None else _valid_unicode(str(rid))
    nbytes = len(text.encode("utf-8"))
    if nbytes > opts.max_record_bytes:
        return dropped(source, lineno, "too_large", "%s: text of %d bytes > --max-record-bytes %d" % (
            where, nbytes, opts.max_record_bytes), rid, url)
    problem = text_problem(text, opts)
    if problem:
        return dropped(source, lineno, problem[0], "%s: %s" % (where, problem[1]), rid, url)
    return kept(source, lineno, rid, url, text)


def iter_jsonl(stream: IO[bytes], source: str, opts: IngestOptions) -> Iterator[Record]:
    """Records of a JSON-lines stream (gzip detected from the magic bytes). Blank lines are not records.

    A record is handed out only once the next line has been read, so a file that breaks (truncated
    gzip) turns its last, possibly cut, line and the error into one `bad_record` for the tail.
    """
    limit = opts.max_record_bytes + LINE_SLACK_BYTES
    lineno, pending = 0, None
    try:
        f = gzip.GzipFile(fileobj=stream) if stream.peek(2)[:2] == b"\x1f\x8b" else stream
        # Whether the file is text at all is judged on its first bytes, not on its first line,
        # which in a binary file can be anything from empty to a few harmless-looking bytes.
        head = f.peek(BINARY_SAMPLE_BYTES)[:BINARY_SAMPLE_BYTES]
        first = True
        while True:
            line = f.readline(limit)
            if pending is not None:
                yield pending
                pending = None
            if not line:
                return
            lineno += 1
            if len(line) >= limit and not line.endswith(b"\n"):
                while True:  # skip the rest of the over-long line without holding it
                    rest = f.readline(limit)
                    if not rest or rest.endswith(b"\n"):
                        break
                pending = dropped(source, lineno, "too_large", "line %d longer than %d bytes" % (
                    lineno, limit))
                continue
            if not line.strip():
                continue
            pending = json_record(line, source, lineno, opts)
            if first and pending.reason == "bad_record" and _not_text(head):
                yield dropped(source, 0, "unreadable_file",
                              "not a JSON-lines file: its first bytes are binary")
                return
            first = False
    except storage.ReadInterrupted:
        raise  # the storage failed, not the file: the task fails and Spark retries it
    except Exception as e:
        msg = "%s: %s" % (type(e).__name__, " ".join(str(e).split())[:300])
        if lineno == 0:
            yield dropped(source, 0, "unreadable_file", "not a readable JSON-lines file: %s" % msg)
        else:
            yield dropped(source, lineno, "bad_record", "broken tail at line %d: %s" % (lineno, msg))


def _not_text(head: bytes) -> bool:
    try:  # incremental: a character cut at the end of the sample is not an error
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return True
    return control_share(head) >= BINARY_CONTROL_SHARE

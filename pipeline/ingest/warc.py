"""A WARC stream -> one `Record` per WARC record: kept HTML documents and named drops.

Streams with warcio's ArchiveIterator (gzip or plain, detected from the bytes); nothing holds more
than one record body, and bodies over `max_record_bytes` are skipped without being read into memory.
HTTP headers are parsed here rather than by warcio, so one malformed response costs one
`bad_record` instead of ending the file.

Broken files: warcio ends silently on a truncated file, handing out a last record whose block is
shorter than its Content-Length (or, cut inside the gzip trailer, whose gzip member never ends). We
count the bytes of every block and check the last member, so that record becomes the single
`bad_record` for the broken tail; an exception or garbage after the last record does the same. A
file that fails before its first record is not a WARC at all: one `unreadable_file`. A WARC gzipped
as a whole (`gzip x.warc`, which warcio refuses) is read again through Python's gzip module.
"""
from __future__ import annotations

import gzip
from typing import IO, Callable, Iterator, Optional, Tuple

from pipeline.ingest import charset
from pipeline.ingest.records import IngestOptions, Record, dropped, kept, text_problem
from pipeline.ingest.extract import get_extractor

HTML_TYPES = ("text/html", "application/xhtml+xml")
_CHUNK = 1 << 16
_MAX_TRAILING_BYTES = 4  # an uncompressed WARC ends with the CRLF CRLF after its last record


class _CountingReader:
    """Wraps a record's block stream and counts the bytes pulled through it."""

    def __init__(self, raw):
        self.raw = raw
        self.count = 0

    # warcio's readers mean "no limit" by None; -1 would make them stop at a buffer boundary.
    def read(self, size=None):
        b = self.raw.read(size)
        self.count += len(b)
        return b

    def readline(self, size=None):
        b = self.raw.readline(size)
        self.count += len(b)
        return b

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


def _printable(s: str) -> str:
    """Error text without the binary junk some parser messages quote."""
    return " ".join("".join(ch if ch.isprintable() and ord(ch) < 0x250 else "?" for ch in s).split())


def _mime(content_type: Optional[str]) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _sniff_html(prefix: bytes) -> bool:
    head = prefix[:1024].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<html" in head


def _parse_http(stream):
    from warcio.statusandheaders import StatusAndHeadersParser

    # verify=False: accept any protocol token (HTTP/2, ICY ...); the status code is checked below.
    return StatusAndHeadersParser([], verify=False).parse(stream)


def _response(rec, block: _CountingReader, opts: IngestOptions) -> Tuple[str, Optional[str], str]:
    """Turn one `response` record into ("ok", text, encoding) or (reason, None, detail)."""
    warc_type = _mime(rec.rec_headers.get_header("Content-Type"))
    if warc_type and not warc_type.startswith("application/http"):
        return "not_html", None, "not an HTTP response (WARC Content-Type %s)" % warc_type
    try:
        http = _parse_http(block)
        status = int(http.get_statuscode())
    except Exception as e:  # EOF, garbage status line, undecodable headers
        return "bad_record", None, "broken HTTP headers: %s" % (str(e)[:200] or type(e).__name__)
    if status != 200:
        return "http_status", None, "HTTP %d" % status
    content_type = http.get_header("Content-Type")
    mime = _mime(content_type) or _mime(rec.rec_headers.get_header("WARC-Identified-Payload-Type"))
    if mime and mime not in HTML_TYPES:
        return "not_html", None, "content type %s" % mime

    rec.http_headers = http
    encoded = bool(http.get_header("Content-Encoding")) or \
        (http.get_header("Transfer-Encoding") or "").lower() == "chunked"
    if rec.length is not None and not encoded and rec.length - block.count > opts.max_record_bytes:
        return "too_large", None, "body of %d bytes > --max-record-bytes %d" % (
            rec.length - block.count, opts.max_record_bytes)
    try:
        # content_stream() undoes chunking and gzip/deflate/brotli content encodings.
        body = rec.content_stream().read(opts.max_record_bytes + 1)
    except Exception as e:
        return "decode_error", None, "cannot decode %s body: %s" % (
            http.get_header("Content-Encoding") or "chunked", str(e)[:200])
    if len(body) > opts.max_record_bytes:
        return "too_large", None, "decoded body > --max-record-bytes %d" % opts.max_record_bytes
    if not mime and not _sniff_html(body):
        return "not_html", None, "no content type and the body does not look like HTML"
    try:
        html, encoding = charset.decode_html(body, charset.charset_from_content_type(content_type))
    except charset.DecodeError as e:
        return "decode_error", None, str(e)
    try:
        text = get_extractor(opts.extractor)(html)
    except Exception as e:
        return "extract_error", None, "%s: %s" % (type(e).__name__, str(e)[:200])
    problem = text_problem(text, opts)
    if problem:
        return problem[0], None, problem[1]
    return "ok", text, encoding


class _WholeFileGzip(Exception):
    """warcio's complaint about a WARC gzipped as one stream instead of one member per record."""

    def __init__(self, done: int):
        super().__init__("gzip of the whole file")
        self.done = done


def iter_warc(stream: IO[bytes], source: str, opts: IngestOptions,
              reopen: Optional[Callable[[], IO[bytes]]] = None) -> Iterator[Record]:
    """Records of one WARC stream. `reopen` (a fresh stream of the same file) lets a WARC that was
    gzipped as a whole (`gzip x.warc`, which warcio refuses) be read on through Python's gzip."""
    try:
        yield from _iter_archive(stream, source, opts, skip=0)
    except _WholeFileGzip as e:
        if reopen is None:
            yield dropped(source, 1, "bad_record", "gzip of the whole file, not per record: run "
                          "`warcio recompress` on it")
            return
        with reopen() as raw, gzip.GzipFile(fileobj=raw) as unzipped:
            yield from _iter_archive(unzipped, source, opts, skip=e.done)


def _iter_archive(stream: IO[bytes], source: str, opts: IngestOptions, skip: int) -> Iterator[Record]:
    from warcio.archiveiterator import ArchiveIterator

    n = yielded = last_end = 0
    it = pending = pending_gzip = None
    try:
        it = ArchiveIterator(stream, no_record_parse=True)
        for rec in it:
            if n == 0 and rec.format != "warc":
                # warcio also reads the old ARC format and takes many text files for ARC; neither
                # carries the WARC fields (record id, date) documents are keyed on.
                raise ValueError("not a WARC file (warcio sees format %r)" % rec.format)
            if n == 0 and not rec.rec_headers.protocol.startswith("WARC/"):
                # After a leading blank line warcio hands out a header-less "record" for any bytes.
                raise ValueError("not a WARC file (no WARC/ version line at the start)")
            n += 1
            if n <= skip:  # already handed out before a restart
                continue
            # A record is handed out once the next one is found: only then is it known to be whole.
            if pending is not None:
                yield pending
                yielded, pending = yielded + 1, None
            h = rec.rec_headers
            rid, url, date = (h.get_header("WARC-Record-ID"), h.get_header("WARC-Target-URI"),
                              h.get_header("WARC-Date"))
            block = _CountingReader(rec.raw_stream)
            rec.raw_stream = block  # so warcio's own skip-to-end is counted too
            if rec.rec_type != "response":
                reason, text, detail = "not_response", None, "WARC-Type %s" % rec.rec_type
            elif not rid:
                reason, text, detail = "bad_record", None, "response record without WARC-Record-ID"
            else:
                reason, text, detail = _response(rec, block, opts)
            block.drain()
            pos = it.get_record_offset()
            if rec.length is None or block.count < rec.length:
                # End of file inside this record: the broken tail of a truncated file.
                yield dropped(source, pos, "bad_record", "truncated file: record at offset %d is cut off "
                              "(%d of %s bytes)" % (pos, block.count, rec.length or "?"), rid, url, date)
                return
            if reason == "ok":
                pending = kept(source, pos, rid, url, text, date)
            else:
                pending = dropped(source, pos, reason, detail, rid, url, date)
            pending_gzip = it.reader.decompressor if it.reader is not None else None
            last_end = pos + it.member_info[1]
        if pending is not None:
            # The iterator has read to the end of the file, so a complete gzip member is at its end
            # now; one that is not lost its CRC/size trailer: the file was cut right there.
            if not getattr(pending_gzip, "eof", True):
                pending = dropped(source, pending.pos, "bad_record", "truncated file: the gzip member of "
                                  "the record at offset %d ends early" % pending.pos, pending.id,
                                  pending.url, pending.warc_date)
            yield pending
            yielded, pending = yielded + 1, None
        # warcio also stops quietly at a gzip member cut off inside its header: look for leftovers.
        size = it.fh.tell()
        if n == 0 and size > 0:
            raise ValueError("no WARC record in %d bytes" % size)
        if n > 0 and size - last_end > _MAX_TRAILING_BYTES:
            yield dropped(source, last_end, "bad_record", "truncated file: %d bytes after the last "
                          "complete record (offset %d) are not a record" % (size - last_end, last_end))
    except Exception as e:
        if n > 0 and "non-chunked gzip" in str(e):
            raise _WholeFileGzip(yielded)
        if pending is not None:  # whole, and read before the break
            yield pending
        # warcio quotes the unparseable first line (binary junk, for a non-WARC file): leave it out.
        msg = "%s: %s" % (type(e).__name__, _printable(str(e).split(" first line:")[0])[:200])
        if n == 0:
            yield dropped(source, 0, "unreadable_file", "not a readable WARC: %s" % msg)
        else:
            offset = it.offset if it is not None else -1
            yield dropped(source, offset, "bad_record",
                          "broken tail after %d records (from offset ~%d): %s" % (n, offset, msg))

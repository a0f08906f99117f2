"""A WARC stream -> one `Record` per WARC record: kept HTML documents and named drops.

Two readers give the same records and the same accounting (`IngestOptions.warc_reader`):

- `warcio` (pure Python): the default. It is as fast as the FastWARC path here, because what costs
  per record is ours either way (HTTP headers, decoding, charset, the checks below): 1.0x on 34 KB
  pages, and faster on short records (docs/benchmarks/ingest.md).
- `fastwarc` (FastWARC, native): frames the records and gunzips; a choice (`--warc-reader fastwarc`).

Either way nothing holds more than one record body, bodies over `max_record_bytes` are skipped
without being read into memory, and the HTTP headers, content decoding (chunked, gzip, brotli ...),
charset and extraction are the same code (`_classify`): HTTP headers are parsed here rather than by
the reader, so one malformed response costs one `bad_record` instead of ending the file.

Broken files with warcio: warcio ends silently on a truncated file, handing out a last record whose
block is shorter than its Content-Length (or, cut inside the gzip trailer, whose gzip member never
ends). We count the bytes of every block and check the last member, so that record becomes the single
`bad_record` for the broken tail; an exception or garbage after the last record does the same. A
file that fails before its first record is not a WARC at all: one `unreadable_file`. A WARC gzipped
as a whole (`gzip x.warc`, which warcio refuses) is read again through Python's gzip module.

Broken files with FastWARC: FastWARC also stops quietly on several kinds of damage (a gzip member cut
in its trailer or header, a gzip of a text file, garbage after the last record of an uncompressed
file), reports a record whose header block was cut off with Content-Length 0, numbers the records of
a whole-file gzip by a shared offset, and decodes header bytes that are not UTF-8 otherwise than
warcio. So the FastWARC path hands out a record only once it is proven whole and read alike: its WARC
headers are the ones warcio's parser reads from the same raw bytes, its block has Content-Length
bytes, the next record starts at a real record boundary (a gzip member, or a `WARC/` line exactly
after the block and its CRLF CRLF), and the last record is followed by exactly the end of the file
(its gzip member complete, or its block and the closing CRLF CRLF). At the first thing it cannot
prove, the file is read again from the start with warcio, which skips the records already handed
out and accounts for the rest as above. Damaged files are rare and cost a second read; sound files
never do (tests compare the two readers record for record on hand-made and randomly damaged files).
"""
from __future__ import annotations

import contextlib
import gzip
import io
import zlib
from collections import namedtuple
from typing import IO, Callable, Dict, Iterator, Optional, Tuple

from pipeline import storage
from pipeline.ingest import charset
from pipeline.ingest.extract import get_extractor
from pipeline.ingest.records import IngestOptions, Record, dropped, kept, text_problem

HTML_TYPES = ("text/html", "application/xhtml+xml")
READERS = ("warcio", "fastwarc")
DEFAULT_READER = "warcio"
_CHUNK = 1 << 16
_MAX_TRAILING_BYTES = 4  # an uncompressed WARC ends with the CRLF CRLF after its last record
_GZIP_MAGIC = b"\x1f\x8b"
# The raw bytes the FastWARC path keeps to check record boundaries: from the current record's start
# to FastWARC's read position. A record larger than this is read on with warcio instead.
_MAX_KEPT_BYTES = 64 << 20
_MAX_HEADER_BYTES = 1 << 16  # WARC header blocks are a few hundred bytes; a longer one goes to warcio

# What `_classify` needs of a record's WARC headers, whichever reader parsed them.
WarcFields = namedtuple("WarcFields", ["rec_type", "rid", "url", "date", "content_type", "payload_type",
                                       "length"])


class ReaderUnavailable(RuntimeError):
    """The chosen WARC reader's library is not installed (the message says what to install)."""


def resolve_reader(choice: str) -> Tuple[str, Optional[str]]:
    """(reader to use, note) for a `--warc-reader` choice; `fastwarc` raises ReaderUnavailable when
    the package is missing (warcio is a dependency of the pipeline, always there)."""
    if choice not in READERS:
        raise ValueError("unknown WARC reader %r (choose from %s)" % (choice, ", ".join(READERS)))
    if choice == "fastwarc":
        try:
            import fastwarc.warc  # noqa: F401
        except ImportError as e:
            raise ReaderUnavailable("WARC reader 'fastwarc' needs the fastwarc package: pip install fastwarc "
                                    "(or pip install '.[fast]')") from e
    return choice, None


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


def _content_stream(http, block, length):
    """The body with chunking and gzip/deflate/brotli content encodings undone, by warcio's own rules
    (a warcio record around the block we already hold, whichever reader framed it)."""
    from warcio.recordloader import ArcWarcRecord

    return ArcWarcRecord("warc", "response", None, block, http, None, length).content_stream()


def _response(f: WarcFields, block: _CountingReader, opts: IngestOptions) -> Tuple[str, Optional[str], str]:
    """Turn one `response` record into ("ok", text, encoding) or (reason, None, detail)."""
    warc_type = _mime(f.content_type)
    if warc_type and not warc_type.startswith("application/http"):
        return "not_html", None, "not an HTTP response (WARC Content-Type %s)" % warc_type
    try:
        http = _parse_http(block)
        status = int(http.get_statuscode())
    except storage.ReadInterrupted:
        raise
    except Exception as e:  # EOF, garbage status line, undecodable headers
        return "bad_record", None, "broken HTTP headers: %s" % (str(e)[:200] or type(e).__name__)
    if status != 200:
        return "http_status", None, "HTTP %d" % status
    content_type = http.get_header("Content-Type")
    mime = _mime(content_type) or _mime(f.payload_type)
    if mime and mime not in HTML_TYPES:
        return "not_html", None, "content type %s" % mime

    encoded = bool(http.get_header("Content-Encoding")) or \
        (http.get_header("Transfer-Encoding") or "").lower() == "chunked"
    if f.length is not None and not encoded and f.length - block.count > opts.max_record_bytes:
        return "too_large", None, "body of %d bytes > --max-record-bytes %d" % (
            f.length - block.count, opts.max_record_bytes)
    try:
        body = _content_stream(http, block, f.length).read(opts.max_record_bytes + 1)
    except storage.ReadInterrupted:
        raise
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
    except (UnicodeError, LookupError) as e:  # a codec's own failure: this record's, not the file's
        return "decode_error", None, "%s: %s" % (type(e).__name__, str(e)[:200])
    try:
        text = get_extractor(opts.extractor)(html)
    except Exception as e:
        return "extract_error", None, "%s: %s" % (type(e).__name__, str(e)[:200])
    problem = text_problem(text, opts)
    if problem:
        return problem[0], None, problem[1]
    return "ok", text, encoding


def _classify(f: WarcFields, block: _CountingReader, opts: IngestOptions) -> Tuple[str, Optional[str], str]:
    if f.rec_type != "response":
        return "not_response", None, "WARC-Type %s" % f.rec_type
    if not f.rid:
        return "bad_record", None, "response record without WARC-Record-ID"
    return _response(f, block, opts)


def _record(source: str, pos: int, f: WarcFields, result: Tuple[str, Optional[str], str]) -> Record:
    reason, text, detail = result
    if reason == "ok":
        return kept(source, pos, f.rid, f.url, text, f.date)
    return dropped(source, pos, reason, detail, f.rid, f.url, f.date)


def iter_warc(stream: IO[bytes], source: str, opts: IngestOptions,
              reopen: Optional[Callable[[], IO[bytes]]] = None) -> Iterator[Record]:
    """Records of one WARC stream, read with `opts.warc_reader`. `reopen` (a fresh stream of the
    same file; a seekable `stream` is rewound instead) lets a file be read a second time: a WARC
    gzipped as a whole, and whatever the FastWARC path hands over to warcio.

    The extractor is loaded before the first record: an executor without its library fails the task
    (and Spark says why) instead of dropping every page of the file as `extract_error`."""
    get_extractor(opts.extractor)
    if opts.warc_reader == "fastwarc":
        yield from _fastwarc_records(stream, source, opts, reopen)
    elif opts.warc_reader == "warcio":
        yield from _warcio_records(stream, source, opts, reopen, skip=0)
    else:
        raise ValueError("unknown WARC reader %r" % opts.warc_reader)


def _read_again(stream: IO[bytes], reopen: Optional[Callable[[], IO[bytes]]]):
    """A context manager giving the same file from its first byte (a fresh stream from `reopen`, or
    `stream` rewound when it can seek), or None when there is no way to read it again."""
    if reopen is not None:
        return reopen()
    if getattr(stream, "seekable", lambda: False)():
        stream.seek(0)
        return contextlib.nullcontext(stream)  # the caller's stream: the caller closes it
    return None


# --- warcio -----------------------------------------------------------------------------------------

class _WholeFileGzip(Exception):
    """warcio's complaint about a WARC gzipped as one stream instead of one member per record."""

    def __init__(self, done: int):
        super().__init__("gzip of the whole file")
        self.done = done


def _warcio_records(stream: IO[bytes], source: str, opts: IngestOptions,
                    reopen: Optional[Callable[[], IO[bytes]]], skip: int) -> Iterator[Record]:
    try:
        yield from _iter_archive(stream, source, opts, skip=skip)
    except _WholeFileGzip as e:
        again = _read_again(stream, reopen)
        if again is None:
            yield dropped(source, 1, "bad_record", "gzip of the whole file, not per record: run "
                          "`warcio recompress` on it")
            return
        with again as raw, gzip.GzipFile(fileobj=raw) as unzipped:
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
            f = WarcFields(rec.rec_type, h.get_header("WARC-Record-ID"), h.get_header("WARC-Target-URI"),
                           h.get_header("WARC-Date"), h.get_header("Content-Type"),
                           h.get_header("WARC-Identified-Payload-Type"), rec.length)
            block = _CountingReader(rec.raw_stream)
            rec.raw_stream = block  # so warcio's own skip-to-end is counted too
            result = _classify(f, block, opts)
            block.drain()
            pos = it.get_record_offset()
            if rec.length is None or block.count < rec.length:
                # End of file inside this record: the broken tail of a truncated file.
                yield dropped(source, pos, "bad_record", "truncated file: record at offset %d is cut off "
                              "(%d of %s bytes)" % (pos, block.count, rec.length or "?"), f.rid, f.url, f.date)
                return
            pending = _record(source, pos, f, result)
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
    except storage.ReadInterrupted:
        raise  # the storage failed, not the file: the task fails and Spark retries it
    except Exception as e:
        if n > 0 and "non-chunked gzip" in str(e):
            raise _WholeFileGzip(skip + yielded)
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


# --- FastWARC ---------------------------------------------------------------------------------------

class _Tap:
    """The raw file as FastWARC reads it: counts the bytes, notices the end of the file, and keeps
    the bytes from the current record's start on, to check record boundaries against them."""

    def __init__(self, raw):
        self.raw = raw
        self.pos = 0            # bytes read so far
        self.eof = False
        self.kept = bytearray()
        self.kept_from = 0      # file offset of kept[0]
        self.start = 0          # index in `kept` of the current record's first byte
        self.overflow = False   # a record too large to keep: its boundaries cannot be checked

    def read(self, size=-1):
        b = self.raw.read(size if size is not None and size >= 0 else -1)
        if not b and size != 0:
            self.eof = True
        if not self.overflow:
            self.kept += b
            if len(self.kept) - self.start > _MAX_KEPT_BYTES:
                self.overflow, self.kept = True, bytearray()
        self.pos += len(b)
        return b

    def tell(self):  # FastWARC asks; its own record offsets come from its decoder
        return self.pos

    def close(self):  # the caller closes the real stream
        pass

    def flush(self):
        pass

    def starts_record(self, offset: int, gzipped: bool) -> bool:
        """Whether the raw bytes at `offset` begin a record; from now on the current record."""
        if self.overflow or offset < self.kept_from + self.start:
            return False
        self.start = offset - self.kept_from
        if self.start > _MAX_HEADER_BYTES:  # forget what lies before, now and then, not per record
            del self.kept[:self.start]
            self.kept_from, self.start = offset, 0
        return self.kept.startswith(_GZIP_MAGIC if gzipped else b"WARC/", self.start)

    def header_bytes(self, gzipped: bool) -> bytes:
        """The first bytes of the current record (gunzipped for a gzip member), up to the blank line
        that ends its WARC header block, or _MAX_HEADER_BYTES without one."""
        with memoryview(self.kept) as view:  # no copy; released before `kept` changes size again
            rest, out, want = view[self.start:], b"", 1024  # a few hundred bytes, usually
            d = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzipped else None
            while len(out) < _MAX_HEADER_BYTES and b"\n\r\n" not in out and b"\n\n" not in out:
                if d is None:
                    more, rest = bytes(rest[:want]), rest[want:]
                else:
                    more = d.decompress(rest, want)
                    rest = d.unconsumed_tail
                if not more:
                    break
                out, want = out + more, want * 4
            return out

    def ends_after_one_record(self, gzipped: bool, length: int) -> bool:
        """Whether the bytes from the current record's start to the end of the file are exactly one
        whole record: one complete gzip member, or headers, `length` bytes of block and CRLF CRLF."""
        if self.overflow or not self.eof:
            return False
        data = bytes(self.kept[self.start:])
        if gzipped:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            while data and not d.eof:
                d.decompress(data, _CHUNK)  # output is thrown away: only the framing matters
                data = d.unconsumed_tail
            return d.eof and not d.unused_data and not data
        head_end = data.find(b"\r\n\r\n")
        return head_end >= 0 and len(data) == head_end + 4 + length + 4 and data.endswith(b"\r\n\r\n")


class _FastwarcBlock(io.RawIOBase):
    """A FastWARC record's block as a Python raw stream (io.BufferedReader adds readline)."""

    def __init__(self, reader):
        super().__init__()
        self.reader = reader

    def readable(self):
        return True

    def readinto(self, b):
        data = self.reader.read(len(b))
        b[:len(data)] = data
        return len(data)


def _target_uri(uri: Optional[str]) -> Optional[str]:
    # warcio's reading of WARC-Target-URI: Wget's <angle brackets> removed, spaces %-encoded.
    if uri is not None and uri.startswith("<") and uri.endswith(">"):
        uri = uri[1:-1]
    return uri.replace(" ", "%20") if uri is not None else None


_PRINTABLE_ASCII = bytes(range(0x20, 0x7f))


def _plain_header_pairs(block: bytes) -> Optional[list]:
    """[name, value] per line of a WARC header block (status line and closing blank line
    included) made of plain `name: value` lines of printable ASCII, each ending in CRLF, none
    folded or padded with blanks: there warcio's parser and FastWARC read the same thing, and a
    split is all it takes. None for anything else (warcio's parser decides then)."""
    if block.translate(None, _PRINTABLE_ASCII).replace(b"\r\n", b"") or b"\r\n " in block or \
            b"\r\n\t" in block or b" \r\n" in block or b"\t\r\n" in block:
        return None
    lines = block[:-4].decode("ascii").split("\r\n")
    pairs = [line.split(":", 1) for line in lines[1:]]
    return pairs if lines[0] in ("WARC/1.0", "WARC/1.1") and all(len(p) == 2 for p in pairs) else None


def _warcio_headers(data: bytes) -> Tuple[Optional[list], int]:
    """([(name, value)], bytes it spans) of the WARC header block at the start of `data`, parsed by
    warcio's parser; (None, 0) if it cannot parse one."""
    from warcio.recordloader import ArcWarcRecordLoader
    from warcio.statusandheaders import StatusAndHeadersParser

    stream = io.BytesIO(data)
    try:
        return StatusAndHeadersParser(ArcWarcRecordLoader.WARC_TYPES).parse(stream).headers, stream.tell()
    except Exception:
        return None, 0


class _HandOver(Exception):
    """Something the FastWARC path cannot prove about the file: warcio reads on from here."""


def _fastwarc_records(stream: IO[bytes], source: str, opts: IngestOptions,
                      reopen: Optional[Callable[[], IO[bytes]]]) -> Iterator[Record]:
    from fastwarc.warc import ArchiveIterator

    tap = _Tap(stream)
    n = yielded = length = next_start = 0
    pending, gzipped = None, False
    try:
        # parse_http=False: the HTTP part is ours (_classify), as with warcio. verify_digests stays
        # off: FastWARC would skip a record with a bad digest without a trace.
        for rec in ArchiveIterator(tap, parse_http=False):
            if n == 0:
                gzipped = tap.kept.startswith(_GZIP_MAGIC)
                if rec.stream_pos != 0:  # FastWARC skips leading blank lines, warcio rejects the file
                    raise _HandOver("the file does not start with a record")
            n += 1
            if not tap.starts_record(rec.stream_pos, gzipped):
                raise _HandOver("record at %d is not at a record boundary" % rec.stream_pos)
            if not gzipped and n > 1 and rec.stream_pos != next_start:
                raise _HandOver("record at %d, the one before ends at %d" % (rec.stream_pos, next_start))
            if pending is not None:  # the next record is where it should be: the previous one is whole
                yield pending
                yielded, pending = yielded + 1, None
            # The WARC headers as warcio reads them, from the raw bytes (FastWARC's own reading is
            # used for the framing only: it decodes bytes that are not UTF-8 otherwise than warcio,
            # dropping them or putting U+FFFD where warcio reads Latin-1, and does not split lines at
            # a bare LF). Plain `name: value` ASCII lines are split here, as warcio's parser would;
            # anything else goes through that parser.
            raw = tap.header_bytes(gzipped)
            header_len = raw.find(b"\r\n\r\n") + 4
            pairs = _plain_header_pairs(raw[:header_len]) if header_len > 3 else None
            if pairs is None:
                pairs, header_len = _warcio_headers(raw)
                if pairs is None:
                    raise _HandOver("no WARC header block that warcio can read")
            h: Dict[str, str] = {}
            for name, value in pairs:
                h.setdefault(name.rstrip(" \t").lower(), value.strip())
            declared = h.get("content-length")
            if declared is None or not declared.isdigit() or int(declared) != rec.content_length:
                raise _HandOver("FastWARC frames the record otherwise than its Content-Length says")
            length = int(declared)
            next_start = rec.stream_pos + header_len + length + 4  # uncompressed: block, CRLF CRLF
            f = WarcFields(h.get("warc-type"), h.get("warc-record-id"), _target_uri(h.get("warc-target-uri")),
                           h.get("warc-date"), h.get("content-type"), h.get("warc-identified-payload-type"),
                           length)
            if f.rec_type == "response":
                block = _CountingReader(io.BufferedReader(_FastwarcBlock(rec.reader), _CHUNK))
                result = _classify(f, block, opts)
                block.drain()
                count = block.count
            else:  # no HTTP to parse: count the block's bytes straight from FastWARC
                result, count = _classify(f, None, opts), 0
                for chunk in iter(lambda: rec.reader.read(_CHUNK), b""):
                    count += len(chunk)
            if count != length:
                raise _HandOver("block of %d bytes, Content-Length %d" % (count, length))
            pending = _record(source, rec.stream_pos, f, result)
        if pending is not None and not tap.ends_after_one_record(gzipped, length):
            raise _HandOver("the file does not end right after its last record")
        if pending is None and not (tap.eof and tap.pos == 0):
            raise _HandOver("no record found")
    except (GeneratorExit, KeyboardInterrupt, SystemExit, storage.ReadInterrupted):
        raise
    except BaseException:  # _HandOver, FastWARC's errors, and a Rust panic (not an Exception)
        again = _read_again(stream, reopen)
        if again is None:
            yield dropped(source, tap.pos, "bad_record", "broken or unusual file after %d records, and "
                          "the stream cannot be read again: read it with --warc-reader warcio" % yielded)
            return
        with again as raw:
            yield from _warcio_records(raw, source, opts, reopen, skip=yielded)
        return
    if pending is not None:
        yield pending

"""Ingest's plain-Python core on real bytes: charsets, extractors, WARC and JSON-lines streams."""
import gzip
import io
import os
import random

import pytest

from ingest_inputs import WarcBuilder, html_page, junk_bytes, page_bytes, write_jsonl
from pipeline.ingest import charset, core, tabular
from pipeline.ingest.records import IngestOptions
from pipeline.ingest.extract import EXTRACTORS, get_extractor
from pipeline.ingest.warc import READERS, iter_warc

@pytest.fixture(params=READERS)
def reader(request):
    """Every WARC test runs with each reader: they must give the same records."""
    return request.param


def warc_records(data: bytes, reader: str = "fastwarc", **opts):
    return list(iter_warc(io.BytesIO(data), "mem.warc.gz", IngestOptions(warc_reader=reader, **opts)))


# --- charsets -------------------------------------------------------------------------------------

JA = "日本語のテキストです。①"  # ① exists in cp932 (what pages labelled shift_jis really use)


@pytest.mark.parametrize("text,encoding,http_label", [
    ("naïve café — “quoted” €5", "cp1252", "windows-1252"),
    ("naïve café — “quoted” €5", "cp1252", "iso-8859-1"),  # browsers read latin-1 labels as cp1252
    (JA, "cp932", "shift_jis"),
    ("Ünïcödé ✓ 中文", "utf-8", "utf-8"),
    ("Привет, мир", "koi8-r", "KOI8-R"),
])
def test_declared_charset_in_http_header(text, encoding, http_label):
    body = html_page("t", [text]).encode(encoding)
    decoded, _ = charset.decode_html(body, http_label)
    assert text in decoded


def test_meta_charset_when_http_header_has_none():
    body = html_page("t", [JA], charset="shift_jis").encode("cp932")
    assert JA in charset.decode_html(body, None)[0]
    http_equiv = ('<html><head><meta http-equiv="Content-Type" content="text/html; charset=windows-1252">'
                  '</head><body>café</body></html>').encode("cp1252")
    assert "café" in charset.decode_html(http_equiv, None)[0]


def test_wrong_declarations_fall_back_to_what_the_bytes_are():
    utf8 = html_page("t", ["naïve café 中文"]).encode("utf-8")
    # servers' default "ISO-8859-1" on a UTF-8 page: UTF-8 wins, no mojibake
    assert "naïve café 中文" in charset.decode_html(utf8, "iso-8859-1")[0]
    # declared shift_jis, really UTF-8: the strict shift_jis decode fails, UTF-8 fits
    assert "naïve café 中文" in charset.decode_html(utf8, "shift_jis")[0]
    # declared UTF-8, really cp1252: decodes as cp1252 instead of replacement characters
    cp = html_page("t", ["naïve café"]).encode("cp1252")
    text, used = charset.decode_html(cp, "utf-8")
    assert "naïve café" in text and used == "cp1252"
    # unknown and non-text labels are ignored
    assert "naïve" in charset.decode_html(utf8, "x-no-such-charset")[0]
    assert "naïve" in charset.decode_html(utf8, "base64")[0]



@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("label", ["idna", "punycode", "undefined", "unicode_escape"])
def test_a_page_naming_a_non_web_codec_is_read_and_the_records_after_it_too(label, reader):
    """Python knows these codec names, but decoding a page with them raises UnicodeError (or turns
    backslashes into other characters): the label is ignored like an unknown one, and no record of
    the file is lost to it."""
    b = WarcBuilder()
    first = b.response("http://ex.com/0", page_bytes(0))
    odd = b.response("http://ex.com/odd", html_page("t", ["naïve café 1"]).encode("utf-8"),
                     content_type="text/html; charset=%s" % label)
    meta = b.response("http://ex.com/meta", html_page("t", ["naïve café 2"], charset=label).encode("utf-8"),
                      content_type="text/html")
    after = [b.response("http://ex.com/%d" % i, page_bytes(i)) for i in (1, 2)]
    recs = warc_records(b.bytes(), reader)
    assert [r.id for r in recs] == [first, odd, meta] + after
    assert all(r.reason is None for r in recs), [(r.reason, r.detail) for r in recs]
    assert "naïve café 1" in recs[1].text and "naïve café 2" in recs[2].text
    assert charset.normalise_charset(label) is None

def test_no_declaration_utf8_then_cp1252_with_replacement():
    assert charset.decode_html("plain ✓ text".encode("utf-8"))[0] == "plain ✓ text"
    assert charset.decode_html("café".encode("cp1252"))[0] == "café"
    # a byte undefined in cp1252 becomes U+FFFD, it does not fail the record
    text, _ = charset.decode_html(b"caf\xe9 \x81 ok")
    assert text.startswith("café") and "\ufffd" in text and text.endswith("ok")


def test_bom_wins_over_declarations():
    with_bom = b"\xef\xbb\xbf" + "ok ✓".encode("utf-8")
    assert charset.decode_html(with_bom, "iso-8859-1") == ("ok ✓", "utf-8")
    assert charset.decode_html(b"\xff\xfe" + "hi ✓".encode("utf-16-le"))[0] == "hi ✓"


def test_binary_bytes_are_a_decode_error_but_text_with_stray_controls_is_not():
    with pytest.raises(charset.DecodeError):
        charset.decode_html(random.Random(1).randbytes(5000), "utf-8")
    with pytest.raises(charset.DecodeError):
        charset.decode_html(gzip.compress(page_bytes(1) * 20))
    text, _ = charset.decode_html(b"<p>fine\x07 text\x00 with two stray controls in a long enough page</p>")
    assert "fine" in text


# --- extractors -----------------------------------------------------------------------------------

MESSY = """<!DOCTYPE html><html><head><title>Title</title><style>p {color: red}</style>
<script>var secret = "script text";</script></head><body>
<nav><a href="/">Home</a></nav>
<h1>Main   heading</h1>
<p>First paragraph
   continues on a second source line with <b>bold</b> and <a href="#">a link</a>.</p>
<!-- an html comment -->
<noscript>enable javascript</noscript><template><p>template text</p></template>
<svg><text>svg text</text></svg>
<ul><li>one</li><li>two</li></ul>
<table><tr><td>cell a</td><td>cell b</td></tr></table>
<pre>line 1
line 2</pre>
<div>x<br>y</div>
<p>unclosed paragraph <div>inside div
</body></html>"""


@pytest.mark.parametrize("name", ["bs4", "resiliparse"])
def test_extractors_keep_blocks_and_drop_non_prose(name):
    text = get_extractor(name)(MESSY)
    lines = text.split("\n")
    assert "Main heading" in lines
    assert "First paragraph continues on a second source line with bold and a link." in lines
    assert "one" in lines and "two" in lines
    assert "line 1" in lines and "line 2" in lines
    assert "x" in lines and "y" in lines
    assert any("cell a" in line and "cell b" in line for line in lines)
    for junk in ("secret", "color", "html comment", "enable javascript", "template text", "svg text",
                 "<", ">"):
        assert junk not in text, junk
    assert all(line == line.strip() and "  " not in line for line in lines) and "" not in lines


def test_extractor_registry():
    assert {"bs4", "resiliparse", "resiliparse-main"} <= set(EXTRACTORS)
    with pytest.raises(ValueError, match="unknown extractor"):
        get_extractor("nope")
    assert get_extractor("bs4")("<p>a</p><p>b</p>") == "a\nb"
    assert get_extractor("resiliparse-main")(html_page("t", ["main content here " * 20])).strip()


# --- WARC -----------------------------------------------------------------------------------------

def mixed_warc(gz=True):
    b = WarcBuilder(gzip=gz)
    expect = {}
    expect[b.warcinfo()] = "not_response"
    expect[b.request("http://ex.com/")] = "not_response"
    expect[b.response("http://ex.com/ok", page_bytes(1))] = None
    expect[b.response("http://ex.com/404", b"<html>gone</html>", status="404 Not Found")] = "http_status"
    expect[b.response("http://ex.com/301", b"", status="301 Moved Permanently")] = "http_status"
    expect[b.response("http://ex.com/png", b"\x89PNG\r\n\x1a\n" + bytes(300), content_type="image/png")] = "not_html"
    expect[b.response("http://ex.com/junk", junk_bytes(6000, seed=101), content_type="text/html")] = "decode_error"
    expect[b.response("http://ex.com/empty", b"<html><body><script>x()</script></body></html>")] = "empty_text"
    expect[b.response("http://ex.com/big", b"<html><body>" + b"<p>word</p>" * 200000 + b"</body></html>")] = "too_large"
    expect[b.raw_response("http://ex.com/broken", b"NOT-HTTP garbage\r\n\r\n<p>hi</p>")] = "bad_record"
    expect[b.response("http://ex.com/xhtml", b"<html><body><p>xhtml page</p></body></html>",
                      content_type="application/xhtml+xml")] = None
    expect[b.response("http://ex.com/notype", b"<!DOCTYPE html><html><body><p>sniffed</p></body></html>",
                      content_type=None)] = None
    expect[b.response("http://ex.com/gz", gzip.compress(page_bytes(2)), headers=[("Content-Encoding", "gzip")])] = None
    expect[b.response("http://ex.com/sjis", html_page("ja", [JA], charset="shift_jis").encode("cp932"),
                      content_type="text/html")] = None
    return b, expect


@pytest.mark.parametrize("gz", [True, False])
def test_warc_every_record_is_kept_or_dropped_for_its_reason(gz, reader):
    b, expect = mixed_warc(gz)
    recs = warc_records(b.bytes(), reader, max_record_bytes=1 << 20)
    assert [r.id for r in recs] == b.ids  # one output per record, in file order
    assert {r.id: r.reason for r in recs} == expect
    positions = [r.pos for r in recs]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    by_url = {r.url: r for r in recs}
    assert by_url["http://ex.com/ok"].text.startswith("Page 1\n")
    assert by_url["http://ex.com/ok"].warc_date and by_url["http://ex.com/ok"].source == "mem.warc.gz"
    assert by_url["http://ex.com/gz"].text.startswith("Page 2\n")
    assert JA in by_url["http://ex.com/sjis"].text
    assert by_url["http://ex.com/notype"].text == "sniffed"
    assert "too_large" == by_url["http://ex.com/big"].reason and "max-record-bytes" in by_url["http://ex.com/big"].detail


@pytest.mark.parametrize("gz,pads", [(True, range(23000, 31000, 4)), (False, range(15000, 16500, 4))])
def test_http_headers_split_across_read_buffers(gz, pads, reader):
    # warcio reads the file in 16 KiB blocks. Slide the second record's start across the end of the
    # first block so that its WARC and HTTP header lines get split there, one position at a time.
    rng = random.Random(7)
    letters = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(max(pads))).encode()
    tested = 0
    for pad in pads:
        b = WarcBuilder(gzip=gz)
        b.response("http://ex.com/pad", b"<p>" + letters[:pad] + b"</p>")
        start = len(b.bytes())  # where the second record begins
        if not 16384 - 400 <= start <= 16384:
            continue
        b.response("http://ex.com/next", page_bytes(1), content_type="text/html; charset=utf-8")
        recs = warc_records(b.bytes(), reader)
        assert [r.reason for r in recs] == [None, None], (pad, recs[1].detail)
        tested += 1
    # gzip sizes vary with the random record ids, so how many pads land in the window varies a little
    assert tested >= 40


def test_min_chars_and_max_record_bytes(reader):
    b = WarcBuilder()
    b.response("http://ex.com/short", b"<p>tiny</p>")
    b.response("http://ex.com/long", page_bytes(3))
    recs = warc_records(b.bytes(), reader, min_chars=50, max_record_bytes=len(page_bytes(3)))
    assert [r.reason for r in recs] == ["too_short", None]
    recs = warc_records(b.bytes(), reader, max_record_bytes=100)
    assert [r.reason for r in recs] == [None, "too_large"]


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("keep", [0.35, 0.6, 0.97])
def test_truncated_warc_counts_records_before_the_break_and_one_bad_tail(gz, keep, reader):
    b = WarcBuilder(gzip=gz)
    for i in range(8):
        b.response("http://ex.com/%d" % i, page_bytes(i, words=300))
    data = b.bytes()
    recs = warc_records(data[:int(len(data) * keep)], reader)
    good = [r for r in recs if r.reason is None]
    assert len(recs) == len(good) + 1 and recs[-1].reason == "bad_record"
    assert "truncated" in recs[-1].detail
    assert [r.id for r in good] == b.ids[:len(good)] and 0 < len(good) < 8


def test_gzip_member_cut_inside_its_trailer_is_still_truncated(reader):
    b = WarcBuilder()
    for i in range(3):
        b.response("http://ex.com/%d" % i, page_bytes(i))
    data = b.bytes()
    for cut in (2, 8):  # the body is complete, only the CRC/size trailer is missing
        recs = warc_records(data[:-cut], reader)
        assert [r.reason for r in recs] == [None, None, "bad_record"]


def test_file_that_is_not_a_warc_is_one_unreadable_file_record(reader):
    # b"\n" + junk: after a leading blank line warcio hands out a header-less record for any bytes.
    for junk in (junk_bytes(5000, seed=102), b"\n" + junk_bytes(4999, seed=103), gzip.compress(b"just some text\n" * 50),
                 b"hello, world\n" * 10):
        recs = warc_records(junk, reader)
        assert len(recs) == 1 and recs[0].reason == "unreadable_file" and recs[0].source == "mem.warc.gz"
    assert warc_records(b"", reader) == []


def test_garbage_after_valid_records_is_one_bad_tail(reader):
    b = WarcBuilder()
    for i in range(3):
        b.response("http://ex.com/%d" % i, page_bytes(i))
    recs = warc_records(b.bytes() + junk_bytes(3000, seed=104), reader)
    assert [r.reason for r in recs] == [None, None, None, "bad_record"]


# --- the two WARC readers agree -------------------------------------------------------------------

class OneWayStream(io.RawIOBase):
    """Bytes that can be read once, like an S3 body: no seek, so no second read of the file."""

    def __init__(self, data: bytes):
        super().__init__()
        self.buf = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, b):
        return self.buf.readinto(b)


def small_warc(gz: bool):
    b = WarcBuilder(gzip=gz)
    b.warcinfo()
    b.response("http://ex.com/a", page_bytes(1, words=300))
    b.response("http://ex.com/gz", gzip.compress(page_bytes(2)), headers=[("Content-Encoding", "gzip")])
    b.raw_response("http://ex.com/broken", b"NOT-HTTP garbage\r\n\r\n<p>hi</p>")
    b.response("http://ex.com/png", b"\x89PNG\r\n\x1a\n" + bytes(300), content_type="image/png")
    b.response("http://ex.com/z", page_bytes(3, words=300))
    return b


def damaged_files():
    """(name, bytes): the ways a WARC file arrives broken, each a different challenge to a reader."""
    rng = random.Random(17)
    for gz in (True, False):
        b = small_warc(gz)
        data, kind = b.bytes(), "gz" if gz else "plain"
        for i in range(1, 20):  # cut anywhere: inside headers, blocks, gzip members and trailers
            yield "%s-cut-%d" % (kind, i), data[:len(data) * i // 20]
        yield "%s-cut-in-last-header" % kind, data[:b.offsets[-1] + 40]
        yield "%s-garbage-tail" % kind, data + rng.randbytes(3000)
        yield "%s-text-tail" % kind, data + b"this line is not a record\n"
        yield "%s-blank-lines-tail" % kind, data + b"\r\n" * 3
    plain = small_warc(False)
    data = plain.bytes()
    yield "whole-file-gzip", gzip.compress(data)
    for cut in (2, 8, 30):
        yield "whole-file-gzip-cut-%d" % cut, gzip.compress(data)[:-cut]
    # a Content-Length that lies, in either direction, in the middle of a file
    head_end = data.index(b"\r\n\r\n", plain.offsets[2])
    declared = data.rindex(b"Content-Length: ", plain.offsets[2], head_end)
    line_end = data.index(b"\r\n", declared)
    length = int(data[declared + 16:line_end])
    for delta in (-7, 7):
        yield "lying-length-%+d" % delta, data[:declared + 16] + str(length + delta).encode() + data[line_end:]
        # the same, inside one gzip member of a per-record gzipped file
        members = [gzip.compress(data[a:b]) for a, b in zip(plain.offsets, plain.offsets[1:] + [len(data)])]
        yield "gz-lying-length-%+d" % delta, b"".join(members[:2]) + gzip.compress(
            data[plain.offsets[2]:declared + 16] + str(length + delta).encode() +
            data[line_end:plain.offsets[3]]) + b"".join(members[3:])
    # bytes that are not UTF-8 in a WARC header, and a bare LF inside a header line
    for name, bad in (("latin1-header", b"\xe9"), ("lf-in-header", b"\n")):
        at = data.index(b"WARC-Date: ", plain.offsets[1]) + 15
        yield name, data[:at] + bad + data[at + 1:]
    # a block a few bytes shorter than its Content-Length says (the next record's first line read as
    # part of it)
    yield "short-block", data[:plain.offsets[2] - 40] + data[plain.offsets[2] - 30:]
    yield "leading-blank-line", b"\r\n" + data
    yield "junk", rng.randbytes(5000)
    yield "gzip-of-text", gzip.compress(b"just some text\n" * 50)


DAMAGED = list(damaged_files())


@pytest.mark.parametrize("name,data", DAMAGED, ids=[n for n, _ in DAMAGED])
def test_readers_give_the_same_records_for_damaged_files(name, data):
    fast = list(iter_warc(io.BytesIO(data), "mem.warc.gz", IngestOptions(warc_reader="fastwarc")))
    slow = list(iter_warc(io.BytesIO(data), "mem.warc.gz", IngestOptions(warc_reader="warcio")))
    assert fast == slow  # same documents, drops, reasons, details and positions
    assert fast  # every file yields at least one record: nothing vanishes without a trace


@pytest.mark.parametrize("gz", [True, False])
def test_readers_give_the_same_records_for_randomly_damaged_files(gz):
    """Bytes changed, cut out or put in at random places (a few per file, 150 files): whatever the
    damage does to headers, lengths, gzip members or HTML, both readers give the same records."""
    rng = random.Random(5 if gz else 6)
    base = small_warc(gz).bytes()
    for _ in range(150):
        data = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            at, op = rng.randrange(len(data)), rng.random()
            if op < 0.4:
                data[at] = rng.randrange(256)
            elif op < 0.7:
                del data[at:at + rng.randint(1, 50)]
            else:
                data[at:at] = rng.randbytes(rng.randint(1, 20))
        fast = list(iter_warc(io.BytesIO(bytes(data)), "m", IngestOptions(warc_reader="fastwarc")))
        assert fast == list(iter_warc(io.BytesIO(bytes(data)), "m", IngestOptions(warc_reader="warcio")))


@pytest.mark.parametrize("gz", [True, False])
def test_fastwarc_reads_whole_files_in_one_pass(gz):
    """On a sound file FastWARC's records are proven whole without a second read: a stream that
    cannot be read again gives the same records as warcio."""
    b, _ = mixed_warc(gz)
    one_pass = list(iter_warc(OneWayStream(b.bytes()), "mem.warc.gz",
                              IngestOptions(warc_reader="fastwarc", max_record_bytes=1 << 20)))
    assert one_pass == warc_records(b.bytes(), "warcio", max_record_bytes=1 << 20)


def test_what_fastwarc_alone_misses_is_caught():
    """A gzip member cut inside its CRC/size trailer: FastWARC hands out every record as whole.
    Our FastWARC path notices; on a stream it cannot read again it says so in a drop row."""
    from fastwarc.warc import ArchiveIterator

    b = small_warc(True)
    cut = b.bytes()[:-8]
    alone = [(r.record_id, r.content_length, len(r.reader.read())) for r in
             ArchiveIterator(io.BytesIO(cut), parse_http=False)]
    assert [rid for rid, _, _ in alone] == b.ids and all(n == got for _, n, got in alone)
    recs = list(iter_warc(OneWayStream(cut), "mem.warc.gz", IngestOptions(warc_reader="fastwarc")))
    assert recs[-1].reason == "bad_record" and "--warc-reader warcio" in recs[-1].detail
    assert [r.id for r in recs[:-1]] == b.ids[:-1]  # the records proven whole before the last one
    assert warc_records(cut, "fastwarc")[-1].detail.startswith("truncated file: the gzip member")


# --- JSON lines -----------------------------------------------------------------------------------

def jsonl_records(path, **opts):
    return list(core.process_file(path, "jsonl", IngestOptions(**opts)))


@pytest.mark.parametrize("compress", [False, True])
def test_jsonl_rows(tmp_path, compress):
    path = write_jsonl(str(tmp_path / ("a.jsonl.gz" if compress else "a.jsonl")), [
        {"id": "x1", "text": "first doc", "url": "http://u/1"},
        {"text": "no id here", "url": "http://u/2"},
        {"id": 42, "text": "integer id"},
        b"",
        {"text": None},
        {"text": ["not", "a", "string"]},
        b"{not json",
        b"[1, 2]",
        {"id": "x2", "text": "   "},
        {"body": "wrong field"},
        {"id": "x3", "text": "lone \ud800 surrogate"},
    ], compress=compress)
    recs = jsonl_records(path)
    assert [r.reason for r in recs] == [None, None, None, "bad_record", "bad_record", "bad_record",
                                        "bad_record", "empty_text", "bad_record", None]
    assert [r.pos for r in recs] == [1, 2, 3, 5, 6, 7, 8, 9, 10, 11]  # line numbers; blank line 4 skipped
    assert recs[0].id == "x1" and recs[0].url == "http://u/1"
    assert recs[1].id == tabular.content_id("http://u/2", "no id here")
    assert recs[2].id == "42"
    assert recs[8].detail.startswith(tabular.MISSING_FIELD) and "body" in recs[8].detail
    assert recs[9].text == "lone \ufffd surrogate"


def test_jsonl_text_col_options_and_limits(tmp_path):
    path = write_jsonl(str(tmp_path / "b.jsonl"), [{"key": "k", "content": "x" * 100, "link": "L"},
                                                   {"key": "k2", "content": "short"}])
    recs = jsonl_records(path, text_col="content", id_col="key", url_col="link", min_chars=10)
    assert [(r.id, r.url, r.reason) for r in recs] == [("k", "L", None), ("k2", None, "too_short")]
    recs = jsonl_records(path, text_col="content", max_record_bytes=50)
    assert [r.reason for r in recs] == ["too_large", None]



def test_a_jsonl_line_nested_too_deep_is_one_bad_record(tmp_path):
    """json.loads raises RecursionError, not ValueError, for deep nesting: that line alone is a
    bad_record and the lines after it are read."""
    path = tmp_path / "deep.jsonl"
    deep = b'{"text": ' + b"[" * 100000 + b"]" * 100000 + b"}"
    path.write_bytes(b'{"text": "first document here"}\n' + deep + b'\n{"text": "third document here"}\n')
    recs = jsonl_records(str(path))
    assert [(r.pos, r.reason) for r in recs] == [(1, None), (2, "bad_record"), (3, None)]
    assert "invalid JSON" in recs[1].detail

def test_truncated_jsonl_gz_is_one_bad_tail(tmp_path):
    rows = [{"text": "document number %d " % i * 20} for i in range(200)]
    data = gzip.compress(b"".join(tabular.json.dumps(r).encode() + b"\n" for r in rows))
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(data[:len(data) // 2])
    recs = jsonl_records(str(path))
    assert all(r.reason is None for r in recs[:-1]) and len(recs) > 2
    assert recs[-1].reason == "bad_record" and "broken tail" in recs[-1].detail


def test_binary_or_missing_jsonl_file_is_unreadable(tmp_path):
    noise = random.Random(7).randbytes(3000)
    (tmp_path / "bin.jsonl").write_bytes(noise)
    (tmp_path / "badgz.jsonl.gz").write_bytes(b"\x1f\x8b" + noise)
    # binary files whose first line is blank or a few harmless bytes (os.urandom made these once
    # in a few hundred runs): judged on the first bytes of the file, not on line 1
    (tmp_path / "blank_first.jsonl").write_bytes(b"\n" + noise)
    (tmp_path / "short_first.jsonl").write_bytes(b"ab\n" + noise)
    (tmp_path / "bin.jsonl.gz").write_bytes(gzip.compress(b"\n  \n" + noise))
    for name in ("bin.jsonl", "badgz.jsonl.gz", "missing.jsonl", "blank_first.jsonl",
                 "short_first.jsonl", "bin.jsonl.gz"):
        recs = jsonl_records(str(tmp_path / name))
        assert [r.reason for r in recs] == ["unreadable_file"], name


def test_text_jsonl_with_a_broken_first_line_is_read_on(tmp_path):
    """A bad first line in a text file is one bad_record, also when a multi-byte character
    straddles the end of the bytes sampled to tell text from binary."""
    filler = "é" * 3000  # 2 bytes each after 7: the 4096-byte sample ends inside a character
    path = tmp_path / "t.jsonl"
    path.write_bytes(("{broke %s\n" % filler).encode() + b'{"text": "fine doc"}\n')
    assert [r.reason for r in jsonl_records(str(path))] == ["bad_record", None]


# --- inputs ---------------------------------------------------------------------------------------

def test_plan_inputs_by_extension(tmp_path):
    for name in ("a.warc.gz", "b.WARC", "c.parquet", "d.jsonl.gz", "e.json", "notes.txt", "_SUCCESS"):
        (tmp_path / name).write_bytes(b"x")
    plan, skipped = core.plan_inputs([str(tmp_path)])
    assert [os.path.basename(p) for p in plan["warc"]] == ["a.warc.gz", "b.WARC"]
    assert [os.path.basename(p) for p in plan["parquet"]] == ["c.parquet"]
    assert [os.path.basename(p) for p in plan["jsonl"]] == ["d.jsonl.gz", "e.json"]
    assert [os.path.basename(p) for p in skipped] == ["notes.txt"]
    plan, skipped = core.plan_inputs([str(tmp_path / "*.txt")], "warc")
    assert len(plan["warc"]) == 1 and not skipped


def test_warc_streamed_from_s3(monkeypatch, reader):
    moto = pytest.importorskip("moto")
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    b, expect = mixed_warc()
    with moto.mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="crawl")
        s3.put_object(Bucket="crawl", Key="cc/part-0.warc.gz", Body=b.bytes())
        plan, _ = core.plan_inputs(["s3://crawl/cc/"])
        assert plan["warc"] == ["s3://crawl/cc/part-0.warc.gz"]
        recs = list(core.process_file(plan["warc"][0], "warc", IngestOptions(warc_reader=reader, max_record_bytes=1 << 20)))
    assert {r.id: r.reason for r in recs} == expect
    assert all(r.source == "s3://crawl/cc/part-0.warc.gz" for r in recs)


def test_warc_gzipped_as_a_whole_is_read_through(tmp_path, reader):
    b, expect = mixed_warc(gz=False)
    path = tmp_path / "whole.warc.gz"
    path.write_bytes(gzip.compress(b.bytes()))
    recs = list(core.process_file(str(path), "warc", IngestOptions(warc_reader=reader, max_record_bytes=1 << 20)))
    assert [r.id for r in recs] == b.ids and {r.id: r.reason for r in recs} == expect


def test_large_warc_gzipped_as_a_whole(tmp_path, reader):
    # Larger than warcio's read block, so the single gzip member is still open after record one.
    b = WarcBuilder(gzip=False)
    for i in range(40):
        b.response("http://ex.com/%d" % i, page_bytes(i, words=600))
    path = tmp_path / "whole-big.warc.gz"
    path.write_bytes(gzip.compress(b.bytes()))
    assert path.stat().st_size > 16384
    recs = list(core.process_file(str(path), "warc", IngestOptions(warc_reader=reader)))
    assert [r.id for r in recs] == b.ids and all(r.reason is None for r in recs)


@pytest.mark.parametrize("reader", READERS)
def test_an_extractor_that_cannot_load_fails_the_file_not_each_page(reader, monkeypatch):
    """On an executor without the extractor's library the task must fail (Spark retries it, then
    says why), not drop every page as extract_error and report success."""
    from pipeline.ingest.extract import ExtractorUnavailable

    def unavailable():
        raise ExtractorUnavailable("the test's extractor library is not installed")

    monkeypatch.setitem(EXTRACTORS, "unavailable-in-test", unavailable)
    b = WarcBuilder()
    b.response("http://ex.com/0", page_bytes(0))
    with pytest.raises(ExtractorUnavailable):
        warc_records(b.bytes(), reader, extractor="unavailable-in-test")

"""Builders of real ingest inputs for the tests and the benchmark: WARC files written with warcio,
JSON lines and parquet files. Nothing here is mocked; every function writes actual bytes."""
from __future__ import annotations

import gzip
import io
import json
import random
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter


def junk_bytes(n: int, seed: int) -> bytes:
    """n random bytes, the same in every run (binary junk for the ingest tests: os.urandom could now
    and then make bytes that read as something else)."""
    return random.Random(seed).randbytes(n)


def html_page(title: str, paragraphs: Sequence[str], charset: Optional[str] = None) -> str:
    meta = '<meta charset="%s">' % charset if charset else ""
    body = "".join("<p>%s</p>\n" % p for p in paragraphs)
    return ("<!DOCTYPE html><html><head>%s<title>%s</title><style>p{color:red}</style>"
            "<script>var tracking = 1;</script></head><body><h1>%s</h1>\n%s</body></html>"
            % (meta, title, title, body))


class WarcBuilder:
    """Collects records, then writes them as one .warc or .warc.gz file."""

    def __init__(self, gzip: bool = True):
        self.buf = io.BytesIO()
        self.writer = WARCWriter(self.buf, gzip=gzip)
        self.ids: List[str] = []
        self.offsets: List[int] = []  # where each record starts in the file

    def _add(self, rec) -> str:
        self.offsets.append(self.buf.tell())
        self.writer.write_record(rec)
        rid = rec.rec_headers.get_header("WARC-Record-ID")
        self.ids.append(rid)
        return rid

    def response(self, url: str, body: bytes, content_type: Optional[str] = "text/html; charset=utf-8",
                 status: str = "200 OK", headers: Sequence[Tuple[str, str]] = (),
                 record_id: Optional[str] = None) -> str:
        hdrs = [("Content-Type", content_type)] if content_type else []
        hdrs += list(headers)
        http = StatusAndHeaders(status, hdrs, protocol="HTTP/1.1")
        extra: Dict[str, str] = {"WARC-Record-ID": record_id} if record_id else {}
        rec = self.writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http,
                                             warc_headers_dict=extra)
        return self._add(rec)

    def raw_response(self, url: str, http_block: bytes) -> str:
        """A response record whose HTTP part is given verbatim (for malformed headers)."""
        # warcio would parse (and reject) the HTTP part of a `response`; build a `resource` record
        # and relabel it, so the bytes go out untouched.
        rec = self.writer.create_warc_record(url, "resource", payload=io.BytesIO(http_block),
                                             length=len(http_block),
                                             warc_content_type="application/http; msgtype=response")
        rec.rec_headers.replace_header("WARC-Type", "response")
        return self._add(rec)

    def request(self, url: str) -> str:
        http = StatusAndHeaders("GET / HTTP/1.1", [("Host", "example.com")], is_http_request=True)
        rec = self.writer.create_warc_record(url, "request", payload=io.BytesIO(b""), http_headers=http)
        return self._add(rec)

    def warcinfo(self) -> str:
        rec = self.writer.create_warcinfo_record("test.warc.gz", {"software": "tests"})
        return self._add(rec)

    def bytes(self) -> bytes:
        return self.buf.getvalue()

    def write(self, path: str) -> str:
        with open(path, "wb") as f:
            f.write(self.bytes())
        return path


def page_bytes(i: int, words: int = 60, charset: str = "utf-8") -> bytes:
    rng = random.Random(i)
    vocab = ["crawl", "spark", "token", "river", "mountain", "café", "naïve", "data", "model", "shard",
             "window", "garden", "music", "history", "science", "ocean", "market", "paper"]
    paras = [" ".join(rng.choice(vocab) for _ in range(words // 3)) for _ in range(3)]
    return html_page("Page %d" % i, paras).encode(charset)


def write_jsonl(path: str, rows: Iterable, compress: bool = False) -> str:
    """`rows` are dicts (written as JSON) or raw bytes lines (written verbatim)."""
    data = b"".join((r if isinstance(r, bytes) else json.dumps(r).encode("utf-8")) + b"\n" for r in rows)
    with open(path, "wb") as f:
        f.write(gzip.compress(data, mtime=0) if compress else data)
    return path


def write_parquet(path: str, columns: Dict[str, list]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path

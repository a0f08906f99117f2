"""HTML rendering and deterministic WARC writing for the synthetic corpus.

The HTML is deliberately plain: one block element per line of the document's `text`, a newline
between elements and a space between inline links (a tag-gluing extractor would otherwise merge "Home"
and "About" into one word), no scripts. The <title> sits in <head>, which ingest's extractors drop.
So ingest extracts exactly `text`, and the ground truth computed on `text` is the truth for what the
pipeline sees (tests check this with pipeline.ingest's extractors).

WARC files hold, per document, a `request` record followed by its `response` (HTTP 200, text/html),
plus a `warcinfo` record per file and a few non-HTML / non-200 responses and a `metadata` record for
realism. Record ids and dates come from the seed (warcio would otherwise use uuid4() and the clock),
and warcio's gzip members carry no timestamps, so the files are byte-identical on rerun.
"""
from __future__ import annotations

import html
import random
import uuid
from datetime import datetime, timedelta, timezone
from io import BytesIO
from typing import Dict, List, Sequence

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

USER_AGENT = "sample-crawler/1.0 (+https://example.org/bot)"


def record_id(rng: random.Random) -> str:
    return "<urn:uuid:%s>" % uuid.UUID(int=rng.getrandbits(128), version=4)


def warc_date(start: datetime, seconds: int) -> str:
    return (start + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _http_date(warc_dt: str) -> str:
    dt = datetime.strptime(warc_dt, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    return dt.strftime("%a, %d %b %Y %H:%M:%S GMT")


def render_html(blocks: Sequence) -> str:
    """HTML for a page's blocks (see corpus.page_blocks), in the same order as the text."""
    e = html.escape
    parts: Dict[str, List] = {}
    for kind, content in blocks:
        parts.setdefault(kind, []).append(content)
    nav = " ".join('<a href="/%s">%s</a>' % ("" if c == "Home" else e(c.lower()), e(c)) for c in parts["nav"][0])
    out = ['<!DOCTYPE html>', '<html lang="en">', '<head>', '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           '<title>%s</title>' % e(parts["h1"][0]), '<link rel="stylesheet" href="/static/site.css">',
           '</head>', '<body>',
           '<header>', '<div class="site-title">%s</div>' % e(parts["header"][0]), '<nav>%s</nav>' % nav,
           '</header>', '<main>', '<article>', '<h1>%s</h1>' % e(parts["h1"][0])]
    out += ['<p>%s</p>' % e(p) for p in parts.get("p", [])]
    out.append('</article>')
    if "h2" in parts:
        out += ['<section class="comments">', '<h2>%s</h2>' % e(parts["h2"][0])]
        out += ['<div class="comment"><p>%s</p></div>' % e(c) for c in parts["comment"]]
        out.append('</section>')
    out.append('</main>')
    if "aside" in parts:
        aside = parts["aside"][0]
        out += ['<aside>', '<h3>%s</h3>' % e(aside[0]), '<ul>']
        out += ['<li><a href="#">%s</a></li>' % e(t) for t in aside[1:]]
        out += ['</ul>', '</aside>']
    out.append('<footer>')
    out += ['<p>%s</p>' % e(line) for line in parts["footer"]]
    out += ['</footer>', '</body>', '</html>', '']
    return "\n".join(out)


# Non-document responses mixed into each file: (status line, content type, body).
_EXTRAS = [
    ("404 Not Found", "text/html; charset=utf-8",
     b"<!DOCTYPE html>\n<html><body>\n<h1>Page not found</h1>\n<p>The page you requested does not exist.</p>\n"
     b"</body></html>\n"),
    ("301 Moved Permanently", "text/html; charset=utf-8", b"<html><body>Moved</body></html>\n"),
    ("500 Internal Server Error", "text/html; charset=utf-8", b"<html><body>Server error</body></html>\n"),
    ("200 OK", "application/pdf", b"%PDF-1.4\n% synthetic\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n"),
    ("200 OK", "image/jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"),
    ("200 OK", "application/json", b'{"status": "ok", "items": []}\n'),
    ("200 OK", "text/plain", b"User-agent: *\nDisallow: /private/\n"),
]


def write_warc(path: str, docs: Sequence[Dict], n_extra: int, seed: int, file_index: int,
               start: datetime) -> Dict[str, int]:
    """Write one .warc.gz with the given documents (dicts with id, url, html, date) and extras."""
    rng = random.Random("%d:warc:%d" % (seed, file_index))
    extra_at = set(rng.sample(range(len(docs) + n_extra), n_extra)) if n_extra else set()
    counts = {"warcinfo": 1, "request": 0, "response": 0, "metadata": 0, "doc_responses": 0}
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True, warc_version="WARC/1.1")
        info = ("software: pipeline.sample\nformat: WARC File Format 1.1\nrobots: ignore\n"
                "description: synthetic labelled corpus, seed %d\n" % seed).encode()
        writer.write_record(writer.create_warc_record(
            None, "warcinfo", payload=BytesIO(info), length=len(info),
            warc_content_type="application/warc-fields",
            warc_headers_dict={"WARC-Record-ID": record_id(rng), "WARC-Date": warc_date(start, 0),
                               "WARC-Filename": path.rsplit("/", 1)[-1]}))
        doc_iter = iter(docs)
        for slot in range(len(docs) + n_extra):
            if slot in extra_at:
                status, ctype, body = _EXTRAS[rng.randrange(len(_EXTRAS))]
                url = "https://www.example-%d.org/file/%d" % (rng.randrange(50), rng.randrange(10 ** 6))
                date = warc_date(start, 60 + rng.randrange(86400))
                extra_headers = [("Location", url + "/")] if status.startswith("301") else []
                _write_exchange(writer, rng, url, date, status, ctype, body, record_id(rng), extra_headers)
                counts["request"] += 1
                counts["response"] += 1
                if rng.random() < 0.3:
                    meta = b"fetchTimeMs: %d\n" % rng.randrange(20, 2000)
                    writer.write_record(writer.create_warc_record(
                        url, "metadata", payload=BytesIO(meta), length=len(meta),
                        warc_content_type="application/warc-fields",
                        warc_headers_dict={"WARC-Record-ID": record_id(rng), "WARC-Date": date}))
                    counts["metadata"] += 1
                continue
            doc = next(doc_iter)
            body = doc["html"].encode("utf-8")
            _write_exchange(writer, rng, doc["url"], doc["date"], "200 OK", "text/html; charset=utf-8", body,
                            doc["id"], [])
            counts["request"] += 1
            counts["response"] += 1
            counts["doc_responses"] += 1
    return counts


def _write_exchange(writer: WARCWriter, rng: random.Random, url: str, date: str, status: str, ctype: str,
                    body: bytes, response_id: str, extra_headers: List) -> None:
    host = url.split("/")[2]
    path = "/" + url.split("/", 3)[3] if url.count("/") >= 3 else "/"
    request_id = record_id(rng)
    req_headers = StatusAndHeaders("GET %s HTTP/1.1" % path,
                                   [("Host", host), ("User-Agent", USER_AGENT), ("Accept", "text/html,*/*")],
                                   is_http_request=True)
    writer.write_record(writer.create_warc_record(
        url, "request", http_headers=req_headers,
        warc_headers_dict={"WARC-Record-ID": request_id, "WARC-Date": date,
                           "WARC-Concurrent-To": response_id}))
    resp_headers = StatusAndHeaders(status, [("Date", _http_date(date)), ("Server", "nginx"),
                                             ("Content-Type", ctype), ("Content-Length", str(len(body)))]
                                    + extra_headers, protocol="HTTP/1.1")
    writer.write_record(writer.create_warc_record(
        url, "response", payload=BytesIO(body), length=len(body), http_headers=resp_headers,
        warc_headers_dict={"WARC-Record-ID": response_id, "WARC-Date": date,
                           "WARC-Concurrent-To": request_id}))

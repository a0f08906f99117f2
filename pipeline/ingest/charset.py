"""HTML bytes -> str: use the declared charset when it fits the bytes, otherwise fall back sanely.

Order of evidence, as browsers do it: a byte-order mark, then the HTTP `Content-Type` charset, then a
`<meta charset>` / `http-equiv` declaration in the first 1024 bytes. Declarations are often wrong, so
each is tried strictly and the next one is tried when it does not fit. Two deliberate deviations:

- bytes that are valid UTF-8 (and not plain ASCII) win over a Latin-1/cp1252 declaration: servers
  send `charset=ISO-8859-1` by default, while real cp1252 prose is almost never valid UTF-8;
- when nothing decodes strictly, the candidate with the fewest replacement characters wins.

Only bytes that are clearly not text (a high share of control bytes, as in images, archives or
compressed data) raise `DecodeError`; everything else decodes, with U+FFFD for the bad bytes.
"""
from __future__ import annotations

import codecs
import re
from typing import List, Optional, Tuple

# WHATWG maps these labels to a superset encoding; Python's strict codecs would reject real pages.
_SUPERSETS = {
    "iso8859-1": "cp1252", "ascii": "cp1252", "shift_jis": "cp932", "gb2312": "gb18030",
    "gbk": "gb18030", "euc_kr": "cp949", "iso8859-9": "cp1254", "tis-620": "cp874",
    "iso8859-11": "cp874",
}
# Labels seen on the web that Python's codec registry does not know.
_LABELS = {"x-sjis": "cp932", "windows-31j": "cp932", "x-euc-jp": "euc_jp", "x-gbk": "gb18030",
           "unicode-1-1-utf-8": "utf-8", "x-mac-roman": "mac_roman"}
# Python codecs that a page can name but that are not text charsets of the web: they decode nothing
# (`undefined`), or raise UnicodeError rather than UnicodeDecodeError for ordinary bytes (`idna`,
# `punycode`), or turn backslash sequences into other characters (`*unicode_escape`). WHATWG's
# encoding standard has none of them; a label naming one is ignored like an unknown label.
_NOT_WEB_CHARSETS = {"undefined", "idna", "punycode", "unicode-escape", "raw-unicode-escape"}
_SINGLE_BYTE_LATIN = {"cp1252", "iso8859-15", "cp1254", "iso8859-9", "mac-roman"}
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF32_LE, "utf-32-le"),
         (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF16_LE, "utf-16-le"),
         (codecs.BOM_UTF16_BE, "utf-16-be"))
_META_RE = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([a-z0-9_.:\-]+)""", re.I)
_PARAM_RE = re.compile(r"""charset\s*=\s*["']?\s*([^"';,\s]+)""", re.I)
# C0 controls other than tab/newline/vertical tab/form feed/carriage return/escape (ISO-2022 uses ESC).
_CONTROL_BYTES = bytes(list(range(0, 9)) + list(range(14, 27)) + list(range(28, 32)) + [127])
BINARY_SAMPLE_BYTES = 4096
BINARY_CONTROL_SHARE = 0.05


class DecodeError(ValueError):
    """The bytes are not text in any encoding (binary content)."""


def normalise_charset(label: Optional[str]) -> Optional[str]:
    """A usable Python codec name for a charset label, or None if unknown / not a text encoding."""
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    try:
        info = codecs.lookup(_LABELS.get(label, label))
    except LookupError:
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_WEB_CHARSETS:  # base64, zlib, idna ...
        return None
    return _SUPERSETS.get(info.name, info.name)


def charset_from_content_type(content_type: Optional[str]) -> Optional[str]:
    """The raw `charset=` parameter of a Content-Type header value."""
    m = _PARAM_RE.search(content_type or "")
    return m.group(1) if m else None


def charset_from_meta(body: bytes) -> Optional[str]:
    """The charset declared by `<meta charset>` or `<meta http-equiv content=...>` in the first KB."""
    m = _META_RE.search(body[:1024])
    return m.group(1).decode("ascii", "replace") if m else None


def control_share(body: bytes) -> float:
    """Share of control bytes in the first 4 KB: ~0.1 for random/compressed data, ~0 for text."""
    sample = body[:BINARY_SAMPLE_BYTES]
    if not sample:
        return 0.0
    return (len(sample) - len(sample.translate(None, _CONTROL_BYTES))) / len(sample)


def decode_html(body: bytes, http_charset: Optional[str] = None) -> Tuple[str, str]:
    """Decode an HTML body; returns (text, encoding used). Raises DecodeError for binary bytes."""
    for bom, enc in _BOMS:
        if body.startswith(bom):
            return body[len(bom):].decode(enc, "replace"), enc
    declared: List[str] = []
    for label in (http_charset, charset_from_meta(body)):
        cs = normalise_charset(label)
        if cs and cs not in declared:
            declared.append(cs)
    wide = bool(declared) and declared[0].startswith(("utf-16", "utf-32"))
    if wide:
        try:
            return body.decode(declared[0]), declared[0]
        except UnicodeDecodeError:
            declared.pop(0)
    share = control_share(body)
    if share >= BINARY_CONTROL_SHARE:
        raise DecodeError("binary content: %.0f%% control bytes in the first %d bytes"
                          % (100 * share, BINARY_SAMPLE_BYTES))
    try:
        as_utf8: Optional[str] = body.decode("utf-8")
    except UnicodeDecodeError:
        as_utf8 = None
    for cs in declared:
        if as_utf8 is not None and cs in _SINGLE_BYTE_LATIN:
            return as_utf8, "utf-8"
        try:
            return body.decode(cs), cs
        except UnicodeDecodeError:
            continue
    if as_utf8 is not None:
        return as_utf8, "utf-8"
    # Nothing fits strictly: take the reading that loses the fewest bytes (declared first on ties).
    best = None
    for cs in declared + ["utf-8", "cp1252"]:
        text = body.decode(cs, "replace")
        bad = text.count("\ufffd")
        if best is None or bad < best[0]:
            best = (bad, text, cs)
    return best[1], best[2]

"""HTML (already decoded to str) -> plain text, through a small registry of extractors.

Every extractor returns text in the same shape: one line per block (paragraph, heading, list item,
table row ...), whitespace inside a line collapsed to single spaces, no empty lines. Scripts, styles
and other non-prose elements are removed; markup is never part of the text.

    get_extractor("resiliparse")(html) -> str

- `resiliparse` (Resiliparse's HTML2Text, C++): the default (`--extractor auto`) wherever it installs,
  7-10x the documents per CPU-second of bs4 (docs/benchmarks/ingest.md).
- `bs4` (BeautifulSoup with lxml): pure-Python-installable, the fallback when Resiliparse is missing.
  It follows the same rules, so both give the same text on the pages we measure: switching between
  them changes the speed, not the data.
- `resiliparse-main`: Resiliparse's main-content heuristics on top, dropping navigation, headers,
  footers and other boilerplate.

Why plain `resiliparse` and not `resiliparse-main` by default: main-content extraction is a content
filter, applied before anything downstream can look at the text. Large pretraining sets do choose
it (DCLM extracts with Resiliparse's `main_content=True`, FineWeb with trafilatura), and for real
crawls it is the better choice of text; `--extractor resiliparse-main` is one flag. But it decides
what a document *is*: on the 1,000-document sample (`pipeline sample --docs 1000`) it removes 17% of
the characters (site navigation, footers, newsletter lines), and near-duplicate detection, which this
pipeline defines on the extracted text, then finds other clusters than the sample's ground truth
(computed on the full page text; dup-doc F1 0.875 instead of 1.0, and 1.0 against a truth computed
on its own output). The default keeps every visible line, as bs4 does, so the
default output is the same data, only faster.

`extractor=auto` in the ingest config resolves (`resolve_extractor`) to `resiliparse` when it imports,
else to `bs4` with a note the job logs and records; an explicit name whose package is missing raises
`ExtractorUnavailable`. Add an extractor with `register_extractor`.
"""
from __future__ import annotations

import re
from typing import Callable, Dict, Optional, Tuple

Extractor = Callable[[str], str]
AUTO = "auto"
DEFAULT_EXTRACTOR = "resiliparse"
FALLBACK_EXTRACTOR = "bs4"

# Elements whose content is never prose.
DROP_TAGS = ["script", "style", "noscript", "template", "svg", "math", "iframe", "object", "embed",
             "canvas", "applet", "head", "select", "button", "datalist"]
# Elements that start a new line of text.
BLOCK_TAGS = ["address", "article", "aside", "blockquote", "body", "caption", "dd", "details", "dialog",
              "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3",
              "h4", "h5", "h6", "header", "hgroup", "hr", "html", "legend", "li", "main", "nav", "ol",
              "p", "pre", "section", "summary", "table", "tbody", "tfoot", "thead", "tr", "ul"]
# Table cells share their row's line.
CELL_TAGS = ["td", "th"]
_BLOCK_SET, _CELL_SET = frozenset(BLOCK_TAGS), frozenset(CELL_TAGS)
_BREAK = "\x00"  # structural line break; real NULs are removed from the input first
_CONTROLS_RE = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f]")
_SPACE_RE = re.compile(r"\s+")


class ExtractorUnavailable(RuntimeError):
    """The chosen extractor's library is not installed (the message says what to install)."""


def clean_lines(text: str, sep: str = "\n") -> str:
    """Split on `sep`, collapse whitespace inside each line, drop empty lines, join with newlines."""
    lines = (_SPACE_RE.sub(" ", line).strip() for line in text.split(sep))
    return "\n".join(line for line in lines if line)


def extract_bs4(html: str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_CONTROLS_RE.sub("", html), "lxml")
    for tag in soup.find_all(DROP_TAGS):
        tag.decompose()
    # One pass over the remaining elements (each find_all is a full tree walk in Python).
    for tag in soup.find_all(True):
        name = tag.name
        if name in _BLOCK_SET:
            tag.insert_before(_BREAK)
            tag.append(_BREAK)
        elif name == "br":
            tag.replace_with(_BREAK)
        elif name in _CELL_SET:
            tag.insert_before(" ")
        if name == "pre":  # source newlines are just spaces, except inside <pre>
            for s in tag.find_all(string=True):
                s.replace_with(s.replace("\n", _BREAK))
    # get_text() yields text nodes only: comments, doctype and CDATA declarations are skipped.
    return clean_lines(soup.get_text(), _BREAK)


def _resiliparse(main_content: bool) -> Extractor:
    try:
        from resiliparse.extract.html2text import extract_plain_text
    except ImportError as e:
        raise ExtractorUnavailable(
            "extractor 'resiliparse' needs the resiliparse package: pip install resiliparse "
            "(or pip install '.[fast]')") from e

    def extract(html: str) -> str:
        text = extract_plain_text(_CONTROLS_RE.sub("", html), preserve_formatting=True,
                                  main_content=main_content, list_bullets=False, alt_texts=False,
                                  links=False, form_fields=False, noscript=False)
        return clean_lines(text)

    return extract


# name -> factory returning the extractor; factories import their library lazily.
EXTRACTORS: Dict[str, Callable[[], Extractor]] = {
    "bs4": lambda: extract_bs4,
    "resiliparse": lambda: _resiliparse(main_content=False),
    "resiliparse-main": lambda: _resiliparse(main_content=True),
}
_loaded: Dict[str, Extractor] = {}


def register_extractor(name: str, factory: Callable[[], Extractor]) -> None:
    EXTRACTORS[name] = factory


def get_extractor(name: str) -> Extractor:
    """The extractor registered as `name` (cached per process, so executors build it once)."""
    if name not in _loaded:
        if name not in EXTRACTORS:
            raise ValueError("unknown extractor %r (choose from %s)" % (name, ", ".join(sorted(EXTRACTORS))))
        _loaded[name] = EXTRACTORS[name]()
    return _loaded[name]


def resolve_extractor(choice: str) -> Tuple[str, Optional[str]]:
    """(extractor to use, note) for an `--extractor` choice: `auto` is DEFAULT_EXTRACTOR when its
    library imports, else FALLBACK_EXTRACTOR with a note saying why. An explicit choice is loaded
    as is (ExtractorUnavailable if its library is missing, ValueError if the name is unknown)."""
    if choice != AUTO:
        get_extractor(choice)
        return choice, None
    try:
        get_extractor(DEFAULT_EXTRACTOR)
        return DEFAULT_EXTRACTOR, None
    except ExtractorUnavailable as e:
        get_extractor(FALLBACK_EXTRACTOR)
        return FALLBACK_EXTRACTOR, ("%s: extracting with %s instead, 7-10x fewer documents per "
                                    "CPU-second" % (e, FALLBACK_EXTRACTOR))

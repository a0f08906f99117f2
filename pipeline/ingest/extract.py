"""HTML (already decoded to str) -> plain text, through a small registry of extractors.

Every extractor returns text in the same shape: one line per block (paragraph, heading, list item,
table row ...), whitespace inside a line collapsed to single spaces, no empty lines. Scripts, styles
and other non-prose elements are removed; markup is never part of the text.

    get_extractor("bs4")(html) -> str

`bs4` (BeautifulSoup with the lxml parser) is the default: pure-Python-installable and robust on
broken markup. `resiliparse` (Resiliparse's C++ HTML2Text) is several times faster; it is imported
only when chosen. `resiliparse-main` additionally applies Resiliparse's main-content heuristics
(drops navigation, footers and other boilerplate). Add an extractor with `register_extractor`.
"""
from __future__ import annotations

import re
from typing import Callable, Dict

Extractor = Callable[[str], str]

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

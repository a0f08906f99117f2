"""Synthetic web pages: sites with boilerplate, grammar-generated English, near-duplicate families.

A *page* is a dict: its site (host, name, nav, footer...), title, body paragraphs, comments, url and
date. `page_blocks(page)` turns it into the ordered text blocks (site header, nav, title, paragraphs,
comments, footer) from which both the document text and the HTML are built, so the two cannot drift.

Near-duplicate families start from a base page; every further member copies the base (or an earlier
member, making chains) and applies one realistic edit: an exact re-post under another URL, word
substitutions/insertions/deletions, shuffled paragraphs, reader comments appended, a site redesign
(changed header/footer), syndication to another site, or a truncated excerpt. Edit strengths are drawn
so that member-to-parent Jaccard similarities fall on both sides of the 0.8 threshold. Whether two
pages *are* near-duplicates is decided afterwards by exact Jaccard, never by these labels.

Every family is generated from its own `random.Random("<seed>:<family>")` (string seeds are hashed
with SHA-512 by `random`, not with the per-process salted `hash()`), so output depends only on the seed.
"""
from __future__ import annotations

import copy
import random
from typing import Dict, List, Sequence, Tuple

from pipeline.sample import vocab

Page = Dict[str, object]

# Edit kinds and how often a family member gets each.
EDITS: Sequence[Tuple[str, float]] = (
    ("exact_copy", 0.12),
    ("word_edits", 0.33),
    ("reorder", 0.09),
    ("comments", 0.12),
    ("redesign", 0.08),
    ("syndicated", 0.08),
    ("excerpt", 0.08),
    ("word_edits+comments", 0.10),
)


_IRREGULAR = {"child": "children", "person": "people", "woman": "women", "people": "peoples",
              "knife": "knives", "shelf": "shelves", "leaf": "leaves", "mouse": "mice", "goose": "geese",
              "foot": "feet", "tooth": "teeth", "wolf": "wolves", "half": "halves", "life": "lives"}


def _plural(noun: str) -> str:
    if noun in _IRREGULAR:
        return _IRREGULAR[noun]
    if noun.endswith(("s", "sh", "ch", "x", "z")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


class Grammar:
    """A tiny sentence grammar over the built-in vocabulary, flavoured by a site's topic."""

    def __init__(self, rng: random.Random, topic: str):
        self.rng = rng
        self.topic_nouns = vocab.TOPICS[topic]

    def noun(self) -> str:
        r = self.rng
        return r.choice(self.topic_nouns) if r.random() < 0.4 else r.choice(vocab.NOUNS)

    def np(self) -> str:
        r = self.rng
        det = r.choice(("the", "the", "a", "this", "that", "our", "their", "every", "one"))
        head = "%s %s" % (r.choice(vocab.ADJECTIVES), self.noun()) if r.random() < 0.45 else self.noun()
        if det == "a" and head[0] in "aeiou":
            det = "an"
        return "%s %s" % (det, head)

    def person(self) -> str:
        return "%s %s" % (self.rng.choice(vocab.FIRST_NAMES), self.rng.choice(vocab.LAST_NAMES))

    def sentence(self) -> str:
        r = self.rng
        v = r.choice(vocab.VERBS)
        k = r.randrange(10)
        if k == 0:
            s = "%s %s %s %s %s" % (self.np(), v[2], self.np(), r.choice(vocab.PREPOSITIONS), self.np())
        elif k == 1:
            s = "%s said that %s %s %s %s" % (self.person(), self.np(), v[2], self.np(), r.choice(vocab.ADVERBS))
        elif k == 2:
            s = "in %d, %s in %s %s %s" % (r.randrange(1890, 2025), self.np(), r.choice(vocab.PLACES), v[2],
                                          self.np())
        elif k == 3:
            w = r.choice(vocab.VERBS)
            s = "%s %s %s, and %s %s %s %s %s" % (self.np(), v[1], self.np(), self.np(), w[1], self.np(),
                                                  r.choice(vocab.PREPOSITIONS), self.np())
        elif k == 4:
            s = "most %s %s %s when %s is %s" % (_plural(self.noun()), v[0], r.choice(vocab.ADVERBS), self.np(),
                                                 r.choice(vocab.ADJECTIVES))
        elif k == 5:
            s = "if you %s %s, %s will %s %s %s" % (v[0], self.np(), self.np(), r.choice(vocab.VERBS)[0],
                                                    r.choice(vocab.PREPOSITIONS), self.np())
        elif k == 6:
            s = "%s, %s %s %d %s %s %s" % (r.choice(vocab.ADVERBS), self.np(), v[2], r.randrange(2, 90),
                                           _plural(self.noun()), r.choice(vocab.PREPOSITIONS), self.np())
        elif k == 7:
            s = "why does %s %s %s %s" % (self.np(), v[0], self.np(), r.choice(vocab.ADVERBS))
            return s[0].upper() + s[1:] + "?"
        elif k == 8:
            s = "“%s %s %s,” %s %s" % (self.np(), v[2], self.np(), r.choice(("said", "wrote", "added", "noted")),
                                       self.person())
            return "“" + s[1].upper() + s[2:] + "."
        else:
            s = "%s and %s %s %s %s %s" % (self.np(), self.np(), v[2], r.choice(vocab.PREPOSITIONS),
                                           r.choice(vocab.PLACES), r.choice(vocab.ADVERBS))
        return s[0].upper() + s[1:] + "."

    def paragraph(self) -> str:
        return " ".join(self.sentence() for _ in range(self.rng.randint(2, 7)))

    def title(self) -> str:
        r = self.rng
        k = r.randrange(4)
        if k == 0:
            t = "%d %s %s for %s" % (r.randrange(3, 15), r.choice(vocab.ADJECTIVES), _plural(self.noun()),
                                     _plural(self.noun()))
        elif k == 1:
            t = "how to %s %s %s" % (r.choice(vocab.VERBS)[0], self.np(), r.choice(vocab.ADVERBS))
        elif k == 2:
            t = "the %s %s of %s" % (r.choice(vocab.ADJECTIVES), self.noun(), r.choice(vocab.PLACES))
        else:
            t = "%s %s %s" % (self.np(), r.choice(vocab.VERBS)[1], self.np())
        return t[0].upper() + t[1:]


def make_sites(n_sites: int, seed: int) -> List[Dict[str, object]]:
    """Synthetic sites, each with its own host, topic and header/nav/footer boilerplate."""
    rng = random.Random("%d:sites" % seed)
    topics = sorted(vocab.TOPICS)
    sites, hosts = [], set()
    for i in range(n_sites):
        while True:
            a, b = rng.choice(vocab.SITE_WORDS), rng.choice(vocab.SITE_WORDS)
            host = "www.%s%s.%s" % (a, b, rng.choice(vocab.TLDS))
            if a != b and host not in hosts:
                hosts.add(host)
                break
        topic = topics[i % len(topics)]
        g = Grammar(rng, topic)
        name = "%s %s" % (a.capitalize(), b.capitalize())
        sections = [w.capitalize() for w in rng.sample(vocab.TOPICS[topic], rng.randint(2, 4))]
        sites.append({
            "host": host,
            "name": name,
            "topic": topic,
            "tagline": "%s — %s %s since %d" % (name, rng.choice(("Notes on", "All about", "Stories of",
                                                                   "Your guide to")), topic,
                                                  rng.randrange(1998, 2020)),
            "nav": ["Home"] + sections + ["About", "Contact"],
            "sidebar": ([g.title() for _ in range(rng.randint(2, 4))] if rng.random() < 0.35 else []),
            "footer": ["© %d %s. All rights reserved." % (rng.randrange(2015, 2025), name),
                       rng.choice(("Privacy Policy · Terms of Use · Cookie Settings",
                                   "Imprint · Privacy · Accessibility",
                                   "Advertise with us · Careers · Privacy Policy")),
                       "Subscribe to our newsletter for weekly %s updates from %s." % (topic, name)],
            "path_style": rng.randrange(3),
        })
    return sites


def page_blocks(page: Page) -> List[Tuple[str, object]]:
    """Ordered (kind, content) blocks of a page; the document text is their text joined by newlines."""
    site = page["site"]
    blocks: List[Tuple[str, object]] = [("header", site["tagline"]), ("nav", list(site["nav"])),
                                        ("h1", page["title"])]
    blocks += [("p", p) for p in page["paragraphs"]]
    if page["comments"]:
        blocks.append(("h2", "%d Comments" % len(page["comments"])))
        blocks += [("comment", c) for c in page["comments"]]
    if site["sidebar"]:
        blocks.append(("aside", ["Popular posts"] + list(site["sidebar"])))
    blocks += [("footer", line) for line in site["footer"]]
    return blocks


def page_text(page: Page) -> str:
    # One line per HTML block element, as ingest's extractors emit them: the nav links share a line.
    lines = []
    for kind, content in page_blocks(page):
        if kind == "nav":
            lines.append(" ".join(content))
        else:
            lines.extend(content if isinstance(content, list) else [content])
    return "\n".join(lines)


def _slug(title: str) -> str:
    words = "".join(ch if ch.isalnum() else " " for ch in title.lower()).split()
    return "-".join(words[:6])


def _url(rng: random.Random, site: Dict[str, object], title: str, serial: int) -> str:
    style = site["path_style"]
    if style == 0:
        path = "/%d/%02d/%s" % (rng.randrange(2012, 2025), rng.randint(1, 12), _slug(title))
    elif style == 1:
        path = "/%s/%s-%d" % (rng.choice(site["nav"][1:-2]).lower(), _slug(title), serial)
    else:
        path = "/article.php?id=%d" % (10000 + serial)
    return "https://%s%s" % (site["host"], path)


def _base_page(rng: random.Random, site: Dict[str, object], serial: int) -> Page:
    g = Grammar(rng, site["topic"])
    title = g.title()
    u = rng.random()
    if u < 0.06:  # very short page: a single line of body text
        paragraphs = [g.sentence()]
    elif u < 0.11:  # long read
        paragraphs = [g.paragraph() for _ in range(rng.randint(15, 35))]
    else:
        n = 1
        while n < 14 and rng.random() < 0.72:
            n += 1
        paragraphs = [g.paragraph() for _ in range(n)]
    return {"site": site, "title": title, "paragraphs": paragraphs, "comments": [],
            "url": _url(rng, site, title, serial)}


def _edit_words(rng: random.Random, g: Grammar, paragraphs: List[str], rate: float) -> List[str]:
    out = []
    for p in paragraphs:
        words = []
        for w in p.split(" "):
            if rng.random() >= rate:
                words.append(w)
                continue
            op = rng.randrange(3)
            if op == 0:  # substitute
                words.append(rng.choice((g.noun(), rng.choice(vocab.ADJECTIVES))))
            elif op == 1:  # insert an extra word
                words.extend((w, rng.choice((rng.choice(vocab.ADJECTIVES), rng.choice(vocab.ADVERBS)))))
            # op == 2: delete
        out.append(" ".join(words) if words else p)
    return out


def _comment(rng: random.Random, g: Grammar) -> str:
    user = "%s%d" % (rng.choice(vocab.FIRST_NAMES).lower(), rng.randrange(10, 999))
    return "%s wrote: %s! %s" % (user, rng.choice(vocab.COMMENT_OPENERS), g.sentence())


def _variant(rng: random.Random, parent: Page, sites: Sequence[Dict[str, object]], edit: str,
             serial: int) -> Page:
    page = copy.copy(parent)
    page["paragraphs"] = list(parent["paragraphs"])
    page["comments"] = list(parent["comments"])
    site = parent["site"]
    g = Grammar(rng, site["topic"])
    # Every member lives at its own URL: re-posts, tracking parameters, mirrors, AMP/print versions.
    tracking = "utm_source=%s&ref=%d" % (rng.choice(("feed", "mail", "social")), serial)
    page["url"] = rng.choice((
        parent["url"] + ("&" if "?" in parent["url"] else "?") + tracking,
        _url(rng, site, page["title"], serial),
        parent["url"] + ("&" if "?" in parent["url"] else "?") + "%s=%d" % (rng.choice(("amp", "print")), serial)))
    if edit == "exact_copy":
        return page
    if edit in ("word_edits", "word_edits+comments"):
        page["paragraphs"] = _edit_words(rng, g, page["paragraphs"], rng.uniform(0.003, 0.08))
    if edit == "reorder":
        if len(page["paragraphs"]) > 1:
            if rng.random() < 0.5:
                i, j = rng.sample(range(len(page["paragraphs"])), 2)
                page["paragraphs"][i], page["paragraphs"][j] = page["paragraphs"][j], page["paragraphs"][i]
            else:
                rng.shuffle(page["paragraphs"])
        else:
            page["paragraphs"] = _edit_words(rng, g, page["paragraphs"], 0.02)
    if edit in ("comments", "word_edits+comments"):
        page["comments"] += [_comment(rng, g) for _ in range(rng.choice((1, 1, 2, 3, 5, 8)))]
    if edit == "redesign":  # same site, new boilerplate: new footer year, changed nav, new tagline
        new = dict(site)
        new["nav"] = list(site["nav"][:-2]) + [rng.choice(("Shop", "Events", "Podcast", "Newsletter"))] + \
            list(site["nav"][-2:])
        new["footer"] = ["© %d %s. Some rights reserved." % (rng.randrange(2025, 2030), site["name"])] + \
            list(site["footer"][1:])
        new["tagline"] = "%s — %s" % (site["name"], g.title())
        new["sidebar"] = [] if site["sidebar"] else [g.title(), g.title()]
        page["site"] = new
    if edit == "syndicated":  # republished elsewhere: other host, other boilerplate, maybe a new title
        other = rng.choice(sites)
        page["site"] = other
        if rng.random() < 0.5:
            page["title"] = g.title()
        page["url"] = _url(rng, other, page["title"], serial)
    if edit == "excerpt":  # a teaser: the first paragraphs only
        n = len(page["paragraphs"])
        if n > 1:
            page["paragraphs"] = page["paragraphs"][:rng.randint(max(1, n // 2), n - 1)]
        else:
            page["comments"].append(_comment(rng, g))
    return page


def _family_size(rng: random.Random) -> int:
    u = rng.random()
    if u < 0.6:
        return 1
    if u < 0.99:
        n = 2
        while n < 12 and rng.random() < 0.45:
            n += 1
        return n
    return rng.randint(15, 40)  # a widely syndicated story


def family_plan(seed: int, n_docs: int) -> List[Tuple[int, int]]:
    """(family, size) for every family of an n_docs corpus; the last one is cut to fit.

    Sizes are the first draw of each family's own generator, so planning is cheap and lets workers
    generate disjoint family ranges that together equal the serial result.
    """
    plan, total, family = [], 0, 0
    while total < n_docs:
        size = min(_family_size(random.Random("%d:%d" % (seed, family))), n_docs - total)
        plan.append((family, size))
        total += size
        family += 1
    return plan


def generate_family(seed: int, family: int, sites: Sequence[Dict[str, object]], weights: Sequence[float],
                    max_size: int) -> List[Page]:
    """The pages of one family (base first), each annotated with `family`, `parent` index and `edit`."""
    rng = random.Random("%d:%d" % (seed, family))
    size = min(_family_size(rng), max_size)  # the same first draw as in family_plan
    site = rng.choices(sites, weights=weights)[0]
    base = _base_page(rng, site, serial=family * 64)
    base.update(family=family, parent=None, edit="base")
    pages = [base]
    kinds, kind_weights = zip(*EDITS)
    for k in range(1, size):
        parent_idx = 0 if rng.random() < 0.7 else rng.randrange(len(pages))
        edit = rng.choices(kinds, weights=kind_weights)[0]
        page = _variant(rng, pages[parent_idx], sites, edit, serial=family * 64 + k)
        page.update(family=family, parent=parent_idx, edit=edit)
        pages.append(page)
    return pages

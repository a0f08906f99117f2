"""The near-duplicate definition written out plainly, as ground truth for the tests.

Independent of `pipeline.dedup.shingles` and `pipeline.exact_jaccard` (which hash words, use numpy,
a bytes fast path and prefix filtering): here words come from the documented idiom of each preset,
shingles are Python sets of word tuples, Jaccard is counted from those sets, and clusters come from
comparing every pair.
"""
import itertools
import re


def words(text, normalize):
    text = (text or "").lower()
    if normalize == "word":  # Python's \w: letters and digits of any script, and the underscore
        return re.sub(r"[^\w\s]", " ", text).split()
    if normalize == "alnum":  # letters and digits only: the underscore is punctuation
        return "".join(ch if ch.isalnum() else " " for ch in text).split()
    raise ValueError(normalize)


def shingles(text, normalize, n=5):
    w = words(text, normalize)
    if not w:
        return set()
    if len(w) < n:  # a short document is one shingle of all its words
        return {tuple(w)}
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def jaccard(a, b):
    if not a and not b:
        return 0.0
    return len(a & b) / float(len(a | b))


def similar_pairs(texts, normalize, threshold=0.8, n=5):
    """{(i, j): J} for every i < j with J >= threshold."""
    sets = [shingles(t, normalize, n) for t in texts]
    out = {}
    for i, j in itertools.combinations(range(len(sets)), 2):
        if sets[i] and sets[j]:
            sim = jaccard(sets[i], sets[j])
            if sim >= threshold:
                out[(i, j)] = sim
    return out


def clusters(ids, texts, normalize, threshold=0.8, n=5):
    """{id: smallest id of its connected component in the `J >= threshold` graph}."""
    parent = {i: i for i in ids}

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for i, j in similar_pairs(texts, normalize, threshold, n):
        ri, rj = find(ids[i]), find(ids[j])
        parent[max(ri, rj)] = min(ri, rj)
    return {i: find(i) for i in ids}

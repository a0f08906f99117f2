"""Dedup building blocks without Spark: shingle hashing, MinHash, banding choice, reference core."""
import random

import numpy as np
import pytest

from pipeline.dedup import shingles as S
from pipeline.dedup.lsh import (choose_bands_rows, collision_probability, false_negative_area,
                                resolve_bands_rows)
from pipeline.dedup.local import dedup_local
from pipeline.dedup.minhash import MinHasher, band_keys, estimate_jaccard, permutation_params

import near_dup_reference as ref

VOCAB = ["w%d" % i for i in range(5000)]


def words(rng, n):
    return [rng.choice(VOCAB) for _ in range(n)]


PRESETS = sorted(S.NORMALIZATIONS)
# Underscores, digits, accents (composed and combining), mixed case, Cyrillic, Greek, CJK, Arabic,
# Devanagari, odd whitespace and punctuation.
ALPHABET = ("aZ_9 \t\n.,—’“é\u00a0\u2003İßΣς文字-–'K\u0307\u200b"
            "Жж中ب٣١ीक\u0301Ǆ²½_\x1c")
TEXTS = [
    "fn main() { let v = vec![1, 2, 3]; for x in v.into_iter() { println!(\"{}\", x); } }",
    "Use into_iter, as_ref and to_owned: snake_case names like __init__ and _private_42.",
    "Crème brûlée at the Café Müller costs 4,50 € — naïve RÉSUMÉ of São Paulo's ÉCOLE.",
    "Москва — столица России; в 2024 году население_города выросло. ПРИВЕТ мир!",
    "東京都は日本の首都です。人口は約1400万人。漢字とひらがな、カタカナ_テスト",
    "مرحبا بالعالم، هذا نص عربي مع أرقام ٣١٢ و 42 وكلمة_مركبة.",
    "Ελληνικά ΚΕΦΑΛΑΙΑ και πεζά, ΣΊΣΥΦΟΣ ο σοφός; x_1 + y_2 = z³",
    "Short one", "a_b", "___", "...", "", "MiXeD CaSe WoRdS are LOWER cased here ok",
    "tabs\tand\nnewlines\r\nand\u00a0nbsp\u2003em-space\u200bzero-width",
]


@pytest.mark.parametrize("normalize", PRESETS)
def test_words_match_the_documented_idiom(normalize):
    """normalize_words and the bytes fast path both give the reference's words, on random text over
    a mixed alphabet and on real-looking text in several scripts."""
    rng = random.Random(2)
    texts = TEXTS + ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 30))) for _ in range(5000)]
    for text in texts:
        expected = ref.words(text, normalize)
        assert S.normalize_words(text, normalize) == expected, repr(text)
        assert S._word_bytes(text, normalize) == [w.encode() for w in expected], repr(text)


def test_presets_differ_only_on_underscores():
    assert S.normalize_words("Call into_iter() on A_B", "word") == ["call", "into_iter", "on", "a_b"]
    assert S.normalize_words("Call into_iter() on A_B", "alnum") == ["call", "into", "iter", "on", "a", "b"]
    assert S.normalize_words("Café №42 Ж½", "word") == S.normalize_words("Café №42 Ж½", "alnum") == [
        "café", "42", "ж½"]
    assert S.DEFAULT_NORMALIZE == "word"
    with pytest.raises(ValueError, match="alnum, word"):
        S.shingle_hashes("x", normalize="letters")


@pytest.mark.parametrize("normalize", PRESETS)
@pytest.mark.parametrize("n", [1, 3, 5])
def test_shingle_sets_and_jaccard_match_reference(normalize, n):
    """One hash per reference shingle, and exactly the reference's Jaccard for every pair: texts in many
    scripts, shorter than n words, and edited copies (case changes, underscores, word swaps)."""
    rng = random.Random(n)
    texts = list(TEXTS)
    for t in TEXTS[:7]:
        w = t.split()
        texts.append(t.upper())
        texts.append(t.replace("_", " "))
        texts.append(" ".join(w[:-1] + [rng.choice(w)]))
        texts.append(" ".join(w[:3]))
    for text in texts:
        assert len(S.shingle_hashes(text, n, normalize)) == len(ref.shingles(text, normalize, n)), repr(text)
    hashes = [S.shingle_hashes(t, n, normalize) for t in texts]
    sets = [ref.shingles(t, normalize, n) for t in texts]
    for i in range(len(texts)):
        for j in range(len(texts)):
            assert S.jaccard(hashes[i], hashes[j]) == ref.jaccard(sets[i], sets[j]), (texts[i], texts[j])


@pytest.mark.parametrize("normalize", PRESETS)
def test_shingle_hashes_one_per_shingle_string_and_batch_equals_single(normalize):
    rng = random.Random(3)
    parts = ["Ab", "c", "É", ".", "  ", "x", "Straße", "42", "_", "a_b"]
    texts = ["".join(rng.choice(parts) for _ in range(rng.randint(0, 25))) for _ in range(500)]
    texts += [None, "", "one two three", "One, two; THREE!"]
    flat, offsets = S.shingle_hashes_batch(texts, normalize=normalize)
    for i, t in enumerate(texts):
        single = S.shingle_hashes(t or "", normalize=normalize)
        assert np.array_equal(flat[offsets[i]:offsets[i + 1]], single)
        assert len(single) == len(S.shingle_strings(t or "", normalize=normalize)) == len(
            ref.shingles(t, normalize))
        assert np.all(np.diff(single.astype(np.float64)) >= 0)  # sorted
    # short documents: one whole-text shingle, equal only when the normalised words are equal
    assert np.array_equal(S.shingle_hashes("one two three"), S.shingle_hashes("One, two; THREE!"))
    assert len(S.shingle_hashes("one two three")) == 1
    assert not np.array_equal(S.shingle_hashes("one two"), S.shingle_hashes("one two three"))
    assert len(S.shingle_hashes(" ... ")) == 0


def test_word_order_matters_in_shingles():
    assert not np.array_equal(S.shingle_hashes("a b c d e"), S.shingle_hashes("e d c b a"))
    assert S.jaccard(S.shingle_hashes("a b c d e f"), S.shingle_hashes("a b c d e g")) == pytest.approx(1 / 3)


def test_minhash_is_deterministic_and_estimates_jaccard():
    a1, b1 = permutation_params(128, seed=1)
    a2, b2 = permutation_params(128, seed=1)
    assert np.array_equal(a1, a2) and np.array_equal(b1, b2) and np.all(a1 % 2 == 1)
    rng = random.Random(4)
    hasher = MinHasher(128)
    errors = []
    for _ in range(60):
        base = words(rng, 300)
        other = list(base)
        for pos in rng.sample(range(300), rng.randint(0, 40)):
            other[pos] = rng.choice(VOCAB)
        texts = [" ".join(base), " ".join(other)]
        flat, off, sigs = hasher.signatures(texts)
        exact = S.jaccard(flat[off[0]:off[1]], flat[off[1]:off[2]])
        errors.append(abs(estimate_jaccard(sigs[0], sigs[1]) - exact))
        assert np.array_equal(sigs[0], hasher.signature(S.shingle_hashes(texts[0])))
    # the standard error of a 128-permutation estimate is <= 0.5/sqrt(128) = 0.044
    assert np.mean(errors) < 0.04 and max(errors) < 0.2


def test_empty_documents_get_no_signature_and_band_keys_split_by_band():
    hasher = MinHasher(64)
    flat, off, sigs = hasher.signatures(["", None, "a b c d e f g"])
    assert list(np.diff(off)) == [0, 0, 3] and not sigs[:2].any()
    keys = band_keys(sigs, 8, 8)
    assert keys.shape == (3, 8) and keys.dtype == np.int64
    assert len(set(keys[2].tolist())) == 8  # same rows in different bands give different keys
    with pytest.raises(ValueError):
        band_keys(sigs, 9, 8)


def test_banding_choice():
    assert choose_bands_rows(0.8, 128) == (18, 7)            # default: recall-weighted
    assert choose_bands_rows(0.8, 128, 0.5, 0.5) == (9, 13)  # equal weights (datasketch's default)
    b, r = choose_bands_rows(0.8, 128)
    assert collision_probability(0.8, b, r) > 0.98 and collision_probability(0.5, b, r) < 0.15
    # more weight on false negatives never increases the false-negative area
    b2, r2 = choose_bands_rows(0.8, 128, 0.5, 0.5)
    assert false_negative_area(0.8, b, r) < false_negative_area(0.8, b2, r2)
    assert resolve_bands_rows(0.8, 128, 20, 5) == (20, 5)
    assert resolve_bands_rows(0.8, 128, bands=32) == (32, 4)
    assert resolve_bands_rows(0.8, 128, rows=4) == (32, 4)
    with pytest.raises(ValueError):
        resolve_bands_rows(0.8, 128, 20, 7)
    for t in (0.5, 0.7, 0.9, 0.95):
        b, r = choose_bands_rows(t, 128)
        assert b * r <= 128 and collision_probability(t, b, r) > 0.5


def test_local_core_keeps_one_per_cluster_and_never_matches_empty_docs():
    rng = random.Random(5)
    base = words(rng, 200)
    near = list(base)
    near[100] = "changed"
    ids = ["d1", "d0", "d2", "e1", "e0"]
    texts = [" ".join(base), " ".join(base) + " tail", " ".join(near), "", None]
    report, stats = dedup_local(ids, texts)
    by_id = {r["id"]: r for r in report}
    assert {by_id[i]["cluster_id"] for i in ("d0", "d1", "d2")} == {"d0"}
    assert by_id["d0"]["kept"] and not by_id["d1"]["kept"] and not by_id["d2"]["kept"]  # longest
    assert by_id["e0"] == {"id": "e0", "cluster_id": "e0", "cluster_size": 1, "kept": True}
    assert by_id["e1"]["cluster_size"] == 1
    assert stats["records_in"] == stats["records_out"] + stats["duplicates_removed"] == 5


def bucket_rule_edges(rows, window):
    """pipeline/dedup/lsh.py's candidate-edge rule written out plainly: per bucket (band, key) with
    >= 2 members, every member -> the bucket's smallest id and its next `window` members by (n, id)."""
    buckets = {}
    for doc_id, n, band, key in rows:
        buckets.setdefault((band, key), []).append((n, doc_id))
    edges = set()
    for members in buckets.values():
        if len(members) < 2:
            continue
        first = min(doc_id for _, doc_id in members)
        ordered = [doc_id for _, doc_id in sorted(members)]
        for pos, d in enumerate(ordered):
            for other in [first] + ordered[pos + 1:pos + 1 + window]:
                if other != d:
                    edges.add((min(d, other), max(d, other)))
    return edges


@pytest.mark.parametrize("trial", range(12))
def test_candidate_batches_follow_the_bucket_rule(trial):
    import pyarrow as pa

    from pipeline.dedup.batches import candidate_batches

    rng = random.Random(trial)
    # non-ASCII ids: string order must be code-point order, as in Spark and in the core
    ids = list(dict.fromkeys("d%04d%s" % (rng.randint(0, 9999), rng.choice(["", "é", "z", "Ω"]))
                             for _ in range(rng.randint(1, 250))))
    rows = []
    for doc_id in ids:
        n = rng.randint(1, 12)  # ties in n: the id decides
        for band in range(rng.randint(1, 5)):
            key = rng.randint(-3, 3) if rng.random() < 0.8 else rng.randint(-2 ** 63, 2 ** 63 - 1)
            rows.append((doc_id, n, band, key))
    rng.shuffle(rows)
    window = rng.randint(0, 5)
    doc_id, n, band, key = zip(*rows)
    batch = pa.RecordBatch.from_arrays([pa.array(doc_id, pa.string()), pa.array(n, pa.int32()),
                                        pa.array(band, pa.int32()), pa.array(key, pa.int64())],
                                       names=["id", "n", "band", "key"])
    cut = rng.randint(0, len(rows))  # a partition arrives as several Arrow batches
    got = [(s, d) for out in candidate_batches(iter([batch.slice(0, cut), batch.slice(cut)]), window)
           for s, d in zip(out.column("src").to_pylist(), out.column("dst").to_pylist())]
    assert len(got) == len(set(got))
    assert set(got) == bucket_rule_edges(rows, window)
    assert list(candidate_batches(iter([]), window)) == []


@pytest.mark.parametrize("trial", range(6))
def test_routed_bucket_rows_keep_buckets_whole_and_give_the_same_edges(trial):
    """Routing bucket rows to partitions (as the Spark plan does before its shuffle) loses no row, puts
    every bucket in one partition, and the partitions' edges together are the bucket rule's edges."""
    import pyarrow as pa

    from pipeline.dedup.batches import routed_bucket_batches, routed_candidate_batches

    rng = random.Random(100 + trial)
    bands = rng.randint(1, 6)
    ids = list(dict.fromkeys("d%04d%s" % (rng.randint(0, 9999), rng.choice(["", "é", "Ω"]))
                             for _ in range(rng.randint(1, 200))))
    docs = [(doc_id, rng.randint(1, 12),
             [rng.randint(-3, 3) if rng.random() < 0.8 else rng.randint(-2 ** 63, 2 ** 63 - 1)
              for _ in range(bands)]) for doc_id in ids]
    exploded = [(d, n, band, key) for d, n, keys in docs for band, key in enumerate(keys)]
    window = rng.randint(0, 5)
    part_values = [rng.randint(0, 10 ** 6) for _ in range(rng.randint(1, 7))]
    batch = pa.RecordBatch.from_arrays(
        [pa.array([d for d, _, _ in docs], pa.string()), pa.array([n for _, n, _ in docs], pa.int32()),
         pa.array([k for _, _, k in docs], pa.list_(pa.int64()))], names=["id", "n", "bands"])
    cut = rng.randint(0, len(docs))
    routed = list(routed_bucket_batches(iter([batch.slice(0, cut), batch.slice(cut)]), part_values))

    by_part = {}
    for out in routed:
        for part, stream in zip(out.column("part").to_pylist(), out.column("rows")):
            assert part in part_values
            for rows in pa.ipc.open_stream(stream.as_buffer()):
                by_part.setdefault(part, []).append(rows)
    seen = [r for parts in by_part.values() for b in parts for r in zip(*(b.column(c).to_pylist()
                                                                         for c in ("id", "n", "band", "key")))]
    assert sorted(seen) == sorted(exploded)
    home = {}
    for part, parts in by_part.items():
        for b in parts:
            for band, key in zip(b.column("band").to_pylist(), b.column("key").to_pylist()):
                assert home.setdefault((band, key), part) == part
    got = set()
    for part in by_part:
        streams = [out.filter(pa.compute.equal(out.column("part"), part)) for out in routed]
        for edges in routed_candidate_batches(iter(streams), window):
            got.update(zip(edges.column("src").to_pylist(), edges.column("dst").to_pylist()))
    assert got == bucket_rule_edges(exploded, window)

"""`pipeline sample`: a labelled synthetic web corpus for testing and scoring the pipeline offline.

    pipeline sample --docs 10000 --out data/sample-10k [--seed 0]

writes

    OUT/warc/sample-00000.warc.gz ...  request+response records of HTTP 200 text/html pages, plus a few
                                       non-HTML / non-200 records (ingest must drop those)
    OUT/parquet/docs.parquet           id, url, text: the same documents (id = WARC-Record-ID)
    OUT/truth.parquet                  id, cluster, has_dup: exact-Jaccard ground truth
    OUT/families.parquet               id, family, parent_id, edit, parent_jaccard: how each page was
                                       made (for diagnosis only; truth does not use it)
    OUT/_config.json, OUT/_sample.json the config and the counts

Ground truth is computed with `pipeline.exact_jaccard` on the document text (the words ingest
extracts from the HTML), with the near-duplicate definition of docs/DESIGN.md (`--threshold`, `--ngram`,
`--normalize`, the same flags and defaults as `pipeline dedup`): `cluster` is the
smallest id of the document's connected component. Everything derives from `--seed`: the same seed
gives byte-identical files, whatever `--workers` (processes for page generation and WARC writing).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Dict, List, Optional, Sequence

from pipeline.config import JobConfig, flag, save_config
from pipeline.dedup.shingles import DEFAULT_NGRAM, DEFAULT_NORMALIZE, NORMALIZATIONS, jaccard, shingle_hashes
from pipeline.sample import corpus, warc

DOCS_PER_WARC = 2000


@dataclass(frozen=True)
class SampleConfig(JobConfig):
    """Generate a labelled synthetic corpus (WARC + parquet + exact-Jaccard truth)."""
    out: str = field(metadata=flag("--out", required=True, help="output directory"))
    docs: int = field(default=1000, metadata=flag("--docs", type=int, help="number of HTML documents"))
    seed: int = field(default=0, metadata=flag("--seed", type=int, help="random seed"))
    threshold: float = field(default=0.8, metadata=flag("--threshold", type=float,
                                                        help="Jaccard threshold for the truth"))
    ngram: int = field(default=DEFAULT_NGRAM, metadata=flag("--ngram", type=int, help="shingle size in words"))
    normalize: str = field(default=DEFAULT_NORMALIZE, metadata=flag(
        "--normalize", choices=sorted(NORMALIZATIONS), help="what counts as a word for the truth, as "
        "`pipeline dedup --normalize`"))
    workers: int = field(default=0, metadata=flag("--workers", type=int,
                                                  help="processes; 0 = one per CPU, at most 4 (output is the same)"))


def _n_sites(n_docs: int) -> int:
    return max(8, min(200, n_docs // 400))


def _site_setup(n_docs: int, seed: int):
    sites = corpus.make_sites(_n_sites(n_docs), seed)
    site_rng = random.Random("%d:site-weights" % seed)
    weights = [1.0 / (1 + i) ** 0.8 * site_rng.uniform(0.5, 1.5) for i in range(len(sites))]  # Zipf-ish
    start = datetime(2024, 1, 1) + timedelta(days=random.Random("%d:start" % seed).randrange(365))
    return sites, weights, start


def _generate_families(args) -> List[Dict]:
    """Documents of a range of planned families (runs in a worker process)."""
    n_docs, seed, plan, ngram, normalize = args
    sites, weights, start = _site_setup(n_docs, seed)
    docs: List[Dict] = []
    for family, size in plan:
        pages = corpus.generate_family(seed, family, sites, weights, max_size=size)
        id_rng = random.Random("%d:ids:%d" % (seed, family))
        ids = [warc.record_id(id_rng) for _ in pages]
        for page, doc_id in zip(pages, ids):
            doc = {
                "id": doc_id,
                "url": page["url"],
                "text": corpus.page_text(page),
                "html": warc.render_html(corpus.page_blocks(page)),
                "date": warc.warc_date(start, id_rng.randrange(30 * 86400)),
                "site": page["site"]["host"],
                "family": family,
                "parent_id": None if page["parent"] is None else ids[page["parent"]],
                "edit": page["edit"],
            }
            if ngram:  # write_sample needs the shingles; computing them here spreads the work
                doc["shingles"] = shingle_hashes(doc["text"], ngram, normalize)
            docs.append(doc)
    return docs


def _map(fn, tasks: Sequence, workers: int) -> List:
    """fn over tasks, in order; in a process pool when workers > 1. Results never depend on workers."""
    if workers <= 1 or len(tasks) <= 1:
        return [fn(t) for t in tasks]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, tasks))


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _generate(n_docs: int, seed: int, workers: int, ngram: int, normalize: str = DEFAULT_NORMALIZE) -> List[Dict]:
    if n_docs < 0:
        raise ValueError("n_docs must be >= 0")
    plan = corpus.family_plan(seed, n_docs)
    n_chunks = 1 if workers <= 1 else workers * 4
    step = -(-len(plan) // n_chunks) if plan else 1
    tasks = [(n_docs, seed, plan[i:i + step], ngram, normalize) for i in range(0, len(plan), step)]
    docs = [d for chunk in _map(_generate_families, tasks, workers) for d in chunk]
    random.Random("%d:order" % seed).shuffle(docs)
    return docs


def generate_documents(n_docs: int, seed: int = 0, workers: int = 1) -> List[Dict]:
    """The corpus as a list of dicts, in crawl order (families scattered).

    Keys: id (`<urn:uuid:...>`), url, text, html, date (WARC-Date), site (host), family (int),
    parent_id (id of the page it was derived from, or None), edit (how it was derived).
    The result depends only on n_docs and seed, not on `workers`.
    """
    return _generate(n_docs, seed, workers, ngram=0)


def _write_warc_file(args) -> Dict[str, int]:
    path, docs, seed, index, start = args
    return warc.write_warc(path, docs, n_extra=max(2, len(docs) // 40), seed=seed, file_index=index, start=start)


def _write_parquet(path: str, columns: Dict[str, Sequence], types: Dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({k: pa.array(v, type=types[k]) for k, v in columns.items()})
    tmp = path + ".tmp"
    pq.write_table(table, tmp, compression="snappy")
    os.replace(tmp, path)


def write_sample(out_dir: str, n_docs: int, seed: int = 0, threshold: float = 0.8,
                 ngram: int = DEFAULT_NGRAM, workers: Optional[int] = None,
                 normalize: str = DEFAULT_NORMALIZE) -> Dict:
    """Generate and write the corpus (see module doc). Returns paths, counts and timings.

    `workers` processes (default: up to 4, one per CPU) generate pages and write WARC files; the
    files are byte-identical whatever the number of workers.
    """
    import pyarrow as pa

    from pipeline.exact_jaccard import clusters_from_sets

    workers = _default_workers() if workers is None else max(1, workers)
    t0 = time.time()
    docs = _generate(n_docs, seed, workers, ngram, normalize)
    t_gen = time.time() - t0

    warc_dir = os.path.join(out_dir, "warc")
    parquet_dir = os.path.join(out_dir, "parquet")
    os.makedirs(warc_dir, exist_ok=True)
    os.makedirs(parquet_dir, exist_ok=True)
    for name in os.listdir(warc_dir):  # a rerun with fewer files must not leave stale ones behind
        if name.endswith(".warc.gz"):
            os.remove(os.path.join(warc_dir, name))

    t1 = time.time()
    n_files = max(2, min(64, -(-n_docs // DOCS_PER_WARC)))
    start = _site_setup(n_docs, seed)[2]
    warc_paths = [os.path.join(warc_dir, "sample-%05d.warc.gz" % i) for i in range(n_files)]
    keys = ("id", "url", "html", "date")  # only what the WARC needs travels to the workers
    tasks = [(warc_paths[i], [{k: d[k] for k in keys} for d in docs[i::n_files]], seed, i, start)
             for i in range(n_files)]
    records: Dict[str, int] = {}
    for counts in _map(_write_warc_file, tasks, workers):
        for k, v in counts.items():
            records[k] = records.get(k, 0) + v
    del tasks
    t_warc = time.time() - t1
    for d in docs:  # the HTML is in the WARC files now; free it before the truth needs memory
        del d["html"]

    t2 = time.time()
    docs.sort(key=lambda d: d["id"])
    docs_path = os.path.join(parquet_dir, "docs.parquet")
    _write_parquet(docs_path, {"id": [d["id"] for d in docs], "url": [d["url"] for d in docs],
                               "text": [d["text"] for d in docs]},
                   {"id": pa.string(), "url": pa.string(), "text": pa.string()})
    sets = {d["id"]: d.pop("shingles") for d in docs}
    truth, pairs = clusters_from_sets(list(sets), list(sets.values()), threshold)
    truth_path = os.path.join(out_dir, "truth.parquet")
    _write_parquet(truth_path, {c: truth[c].tolist() for c in ("id", "cluster", "has_dup")},
                   {"id": pa.string(), "cluster": pa.string(), "has_dup": pa.bool_()})
    t_truth = time.time() - t2

    parent_j = [None if d["parent_id"] is None else round(jaccard(sets[d["id"]], sets[d["parent_id"]]), 6)
                for d in docs]
    families_path = os.path.join(out_dir, "families.parquet")
    _write_parquet(families_path, {"id": [d["id"] for d in docs], "family": [d["family"] for d in docs],
                                   "parent_id": [d["parent_id"] for d in docs], "edit": [d["edit"] for d in docs],
                                   "site": [d["site"] for d in docs], "parent_jaccard": parent_j},
                   {"id": pa.string(), "family": pa.int64(), "parent_id": pa.string(), "edit": pa.string(),
                    "site": pa.string(), "parent_jaccard": pa.float64()})

    sizes = truth.groupby("cluster").size()
    result = {
        "out": out_dir,
        "warc": warc_paths,
        "docs": docs_path,
        "truth": truth_path,
        "families": families_path,
        "n_docs": len(docs),
        "n_families": len({d["family"] for d in docs}),
        "warc_records": records,
        "dup_docs": int(truth["has_dup"].sum()),
        "true_clusters": int(len(sizes)),
        "dup_clusters": int((sizes > 1).sum()),
        "similar_pairs": int(len(pairs)),
        "seconds": {"generate": round(t_gen, 2), "warc": round(t_warc, 2), "truth": round(t_truth, 2),
                    "total": round(time.time() - t0, 2)},
    }
    with open(os.path.join(out_dir, "_sample.json"), "w") as f:
        # Paths relative to OUT and no timings, so that reruns (anywhere) are byte-identical.
        meta = {k: v for k, v in result.items() if k not in ("seconds", "out")}
        for k in ("docs", "truth", "families"):
            meta[k] = os.path.relpath(meta[k], out_dir)
        meta["warc"] = [os.path.relpath(w, out_dir) for w in meta["warc"]]
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pipeline sample", description=SampleConfig.__doc__)
    SampleConfig.add_arguments(parser)
    cfg = SampleConfig.from_args(parser.parse_args(argv))
    if cfg.docs < 1:
        parser.error("--docs must be >= 1")
    res = write_sample(cfg.out, cfg.docs, cfg.seed, cfg.threshold, cfg.ngram, workers=cfg.workers or None,
                       normalize=cfg.normalize)
    save_config(cfg, cfg.out)
    r = res["warc_records"]
    print("wrote %d documents (%d families) to %s in %.1fs" % (res["n_docs"], res["n_families"], cfg.out,
                                                             res["seconds"]["total"]))
    print("  warc:   %d files, %d records (%d HTML documents, %d other responses, %d requests, %d metadata, "
          "%d warcinfo)" % (len(res["warc"]), sum(r.values()) - r["doc_responses"], r["doc_responses"],
                            r["response"] - r["doc_responses"], r["request"], r["metadata"], r["warcinfo"]))
    print("  docs:   %s" % res["docs"])
    print("  truth:  %s  (%d documents have a near-duplicate, in %d clusters; %d similar pairs)"
          % (res["truth"], res["dup_docs"], res["dup_clusters"], res["similar_pairs"]))
    return 0

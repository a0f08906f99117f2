"""Sample-corpus generation time and the similarity spread of its near-duplicate families.

    PYTHONPATH=. python bench/bench_sample.py --docs 1000 10000 100000 [--workers 1] [--seed 0]

For each size: wall time of `write_sample` by phase (generate pages, write WARC, shingle + exact
truth + parquet), output sizes and truth statistics; then, for the largest size, the distribution of
each derived page's exact Jaccard to the page it was made from (families.parquet), overall and per
edit kind; and the exact Jaccard join alone on the largest sample's texts. Prints tables and writes JSON to --out (default bench/results/sample.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time

from runinfo import run_info  # bench/ is sys.path[0] when a bench script runs

import pandas as pd  # noqa: E402

from pipeline.sample import write_sample  # noqa: E402

BINS = [0.0, 0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.0001]


def _dir_mb(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total / 1e6


def _cpu() -> float:
    """CPU seconds of this process and its finished worker processes."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="write_sample worker processes")
    p.add_argument("--workdir", default="/tmp/bench-sample")
    p.add_argument("--keep", action="store_true", help="keep the generated corpora")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "sample.json"))
    args = p.parse_args()

    rows, last = [], None
    for n in sorted(args.docs):
        out = os.path.join(args.workdir, "sample-%d" % n)
        shutil.rmtree(out, ignore_errors=True)
        t, cpu = time.time(), _cpu()
        res = write_sample(out, n, args.seed, workers=args.workers)
        wall, cpu = time.time() - t, _cpu() - cpu
        # sizes run in increasing order, so the process's peak RSS so far is this size's peak
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        rows.append({"docs": n, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(peak_mb),
                     **{k + "_s": v for k, v in res["seconds"].items()},
                     "warc_mb": round(_dir_mb(os.path.join(out, "warc")), 1),
                     # doc_responses counts the HTML documents among the responses, which are in "response" too
                     "warc_records": sum(res["warc_records"].values()) - res["warc_records"]["doc_responses"],
                     "dup_docs": res["dup_docs"],
                     "dup_clusters": res["dup_clusters"], "similar_pairs": res["similar_pairs"],
                     "families": res["n_families"]})
        last = out
        print("docs=%d done in %.1fs" % (n, wall), flush=True)

    cols = ["docs", "wall_s", "cpu_s", "peak_rss_mb", "generate_s", "warc_s", "truth_s", "warc_mb", "warc_records", "families",
            "dup_docs", "dup_clusters", "similar_pairs"]
    print()
    print(pd.DataFrame(rows)[cols].to_string(index=False))

    fam = pd.read_parquet(os.path.join(last, "families.parquet"))
    derived = fam[fam["parent_id"].notna()]
    binned = pd.cut(derived["parent_jaccard"], BINS, right=False)
    hist = binned.value_counts().sort_index()
    labels = ["[%.2f, %.2f)" % (iv.left, iv.right) if iv.right <= 1.0 else "1.0 (exact)" for iv in hist.index]
    hist_rows = [{"jaccard_to_parent": lab, "pages": int(c), "share": round(c / len(derived), 4)}
                 for lab, c in zip(labels, hist.values)]
    by_edit = (derived.groupby("edit")["parent_jaccard"]
               .agg(pages="size", mean="mean", p10=lambda s: s.quantile(0.1), median="median",
                    p90=lambda s: s.quantile(0.9), below_08=lambda s: (s < 0.8).mean())
               .round(3).reset_index())
    print("\nJaccard of each derived page to its parent (docs=%d, %d derived pages, %.1f%% below 0.8)"
          % (max(args.docs), len(derived), 100 * (derived["parent_jaccard"] < 0.8).mean()))
    print(pd.DataFrame(hist_rows).to_string(index=False))
    print()
    print(by_edit.to_string(index=False))

    # The exact join alone (what `pipeline evaluate --truth exact` runs), on the largest sample's texts.
    from pipeline.dedup.shingles import shingle_hashes
    from pipeline.exact_jaccard import clusters_from_sets

    docs = pd.read_parquet(os.path.join(last, "parquet", "docs.parquet"))
    t, cpu = time.time(), time.process_time()
    sets = [shingle_hashes(x) for x in docs["text"]]
    shingle_wall, shingle_cpu = time.time() - t, time.process_time() - cpu
    t, cpu = time.time(), time.process_time()
    truth, pairs = clusters_from_sets(docs["id"].tolist(), sets, 0.8)
    join_wall, join_cpu = time.time() - t, time.process_time() - cpu
    exact = {"docs": len(docs), "shingles": int(sum(len(x) for x in sets)), "pairs": int(len(pairs)),
             "shingle_wall_s": round(shingle_wall, 2), "shingle_cpu_s": round(shingle_cpu, 2),
             "join_wall_s": round(join_wall, 2), "join_cpu_s": round(join_cpu, 2)}
    print("\nexact Jaccard join (threshold 0.8, 5-word shingles)")
    print(pd.DataFrame([exact]).to_string(index=False))

    result = {"run": run_info(), "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "load_avg_1m": round(os.getloadavg()[0], 2)},
              "seed": args.seed, "workers": args.workers, "sizes": rows, "parent_jaccard_hist": hist_rows,
              "parent_jaccard_by_edit": by_edit.to_dict(orient="records"), "exact_join": exact}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print("\nwrote %s" % args.out)
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

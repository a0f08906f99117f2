"""`pipeline evaluate`: score a dedup report against ground truth.

    pipeline evaluate --report OUT/dedup/report --truth data/sample-10k/truth.parquet [--json scores.json]
    pipeline evaluate --report OUT/dedup/report --truth exact --docs OUT/docs [--threshold 0.8 --ngram 5 --normalize word]

The report is parquet `id, cluster_id[, cluster_size, kept]` (docs/DESIGN.md); the truth is parquet
`id, cluster` (cluster = any label shared by a component's members) or just `id, has_dup`. Both may
be single files or directories of parquet parts. `--truth exact` computes the truth from the
documents themselves with `pipeline.exact_jaccard` (in memory; meant for up to ~20k documents), under
the same near-duplicate definition as `pipeline dedup` (`--threshold`, `--ngram`, `--normalize`: use
the values the report was made with, saved in its `_config.json`).

Two views of quality:
- per document, "has a near-duplicate" (positive = in a cluster of size > 1): precision, recall, F1.
- per pair, "same cluster": precision, recall, F1 over all document pairs, counted from the contingency
  table of (predicted cluster, true cluster), so no pair list is ever built. Needs `cluster` truth.

Only ids present on both sides are scored, and cluster sizes are recomputed on that shared set (a
document ingest dropped cannot be anyone's duplicate). Ids found on one side only are counted and
listed, never silently ignored. Needs pandas/pyarrow only, no Spark.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

from pipeline.dedup.shingles import DEFAULT_NGRAM, DEFAULT_NORMALIZE, NORMALIZATIONS

EXACT_WARN_DOCS = 20000
_SHOW_IDS = 10


def _ratio(num: int, den: int) -> Optional[float]:
    return None if den == 0 else num / float(den)


def _prf(tp: int, fp: int, fn: int) -> Dict[str, object]:
    """Counts plus precision/recall/F1; a ratio with a zero denominator is None (undefined), not 0 or 1."""
    return {"tp": int(tp), "fp": int(fp), "fn": int(fn), "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn), "f1": _ratio(2 * tp, 2 * tp + fp + fn)}


def _pairs(sizes: np.ndarray) -> int:
    s = sizes.astype(object)  # Python ints: n*(n-1)/2 must not overflow for any corpus size
    return int(sum(s * (s - 1) // 2)) if len(s) else 0


def score(report_df, truth_df) -> Dict[str, object]:
    """Scores of a dedup report (`id, cluster_id`, optional `kept`) against truth (`id, cluster` or
    `id, has_dup`). Returns a JSON-ready dict: `docs`, `clusters`, `has_dup`, `pairs` (None without
    cluster truth), `kept` (when the report has a `kept` column)."""
    for col in ("id", "cluster_id"):
        if col not in report_df.columns:
            raise ValueError("report has no %r column (columns: %s)" % (col, list(report_df.columns)))
    if "id" not in truth_df.columns or not ({"cluster", "has_dup"} & set(truth_df.columns)):
        raise ValueError("truth needs columns id and cluster (or has_dup); got %s" % list(truth_df.columns))
    has_clusters = "cluster" in truth_df.columns

    rep = report_df.drop_duplicates("id").copy()
    tru = truth_df.drop_duplicates("id").copy()
    # A missing cluster label means "not clustered": the document is its own singleton.
    rep["cluster_id"] = rep["cluster_id"].fillna(rep["id"])
    if has_clusters:
        tru["cluster"] = tru["cluster"].fillna(tru["id"])
    dup_report_ids = len(report_df) - len(rep)
    dup_truth_ids = len(truth_df) - len(tru)
    tcols = ["id", "cluster"] if has_clusters else ["id", "has_dup"]
    m = rep[["id", "cluster_id"] + (["kept"] if "kept" in rep.columns else [])].merge(
        tru[tcols], on="id", how="inner")
    rep_ids, tru_ids = set(rep["id"]), set(tru["id"])
    missing = sorted(tru_ids - rep_ids)
    extra = sorted(rep_ids - tru_ids)

    pred_size = m.groupby("cluster_id")["id"].transform("size").to_numpy()
    pred_pos = pred_size > 1
    if has_clusters:
        true_pos = m.groupby("cluster")["id"].transform("size").to_numpy() > 1
    else:
        true_pos = m["has_dup"].astype(bool).to_numpy()

    pred_sizes = m.groupby("cluster_id").size().to_numpy()
    out: Dict[str, object] = {
        "docs": {"truth": len(tru), "report": len(rep), "scored": len(m), "missing": len(missing),
                 "extra": len(extra), "missing_ids": missing[:_SHOW_IDS], "extra_ids": extra[:_SHOW_IDS],
                 "duplicate_report_ids": int(dup_report_ids), "duplicate_truth_ids": int(dup_truth_ids)},
        "clusters": {"predicted": int(len(pred_sizes)), "predicted_with_dups": int((pred_sizes > 1).sum()),
                     "predicted_largest": int(pred_sizes.max()) if len(pred_sizes) else 0,
                     "predicted_dup_docs": int(pred_pos.sum()), "true_dup_docs": int(true_pos.sum())},
        "has_dup": _prf(int((pred_pos & true_pos).sum()), int((pred_pos & ~true_pos).sum()),
                        int((~pred_pos & true_pos).sum())),
        "pairs": None,
    }
    if "cluster_size" in rep.columns:
        # The report's own cluster_size must match its cluster_id counts (over the whole report).
        actual = rep.groupby("cluster_id")["id"].transform("size")
        out["clusters"]["report_size_mismatches"] = int((rep["cluster_size"] != actual).sum())
    if has_clusters:
        true_sizes = m.groupby("cluster").size().to_numpy()
        both = m.groupby(["cluster_id", "cluster"]).size().to_numpy()
        tp, pred_pairs, true_pairs = _pairs(both), _pairs(pred_sizes), _pairs(true_sizes)
        out["clusters"].update({"true": int(len(true_sizes)), "true_with_dups": int((true_sizes > 1).sum()),
                                "true_largest": int(true_sizes.max()) if len(true_sizes) else 0})
        out["pairs"] = _prf(tp, pred_pairs - tp, true_pairs - tp)
        out["pairs"].update({"predicted_pairs": pred_pairs, "true_pairs": true_pairs})
    if "kept" in m.columns:
        kept = m["kept"].fillna(False).astype(bool)
        kept_per_cluster = kept.groupby(m["cluster_id"]).sum().to_numpy()
        out["kept"] = {"kept": int(kept.sum()),
                       # a perfect dedup keeps one document per true cluster
                       "expected": out["clusters"].get("true"),
                       "clusters_keeping_none": int((kept_per_cluster == 0).sum()),
                       "clusters_keeping_several": int((kept_per_cluster > 1).sum())}
    return out


def _read_parquet(path: str, columns: Optional[Sequence[str]] = None):
    """A parquet file or a directory of parts (Spark output: `_SUCCESS`, `.crc` files are skipped)."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(path, format="parquet")
    names = dataset.schema.names
    cols = [c for c in columns if c in names] if columns else None
    return dataset.to_table(columns=cols).to_pandas()


def exact_truth(docs_path: str, threshold: float = 0.8, ngram: int = DEFAULT_NGRAM,
                normalize: str = DEFAULT_NORMALIZE):
    """Ground truth computed from a document table (`id, text`) by exact all-pairs Jaccard."""
    from pipeline.exact_jaccard import exact_clusters

    docs = _read_parquet(docs_path, ["id", "text"])
    if len(docs) > EXACT_WARN_DOCS:
        print("warning: exact truth over %d documents runs in one process and may take a while "
              "(meant for <= %d)" % (len(docs), EXACT_WARN_DOCS), file=sys.stderr)
    truth, _ = exact_clusters(docs["id"].tolist(), docs["text"].tolist(), threshold, ngram, with_pairs=False,
                              normalize=normalize)
    return truth


def definition_mismatches(report_path: str, threshold: float, ngram: int, normalize: str) -> List[str]:
    """How the exact truth's near-duplicate definition differs from the one the report was made with
    (its `_config.json`, when there is one): e.g. ["normalize: report alnum, truth word"]."""
    from pipeline import storage
    from pipeline.config import CONFIG_FILE

    path = storage.join(report_path, CONFIG_FILE)
    if not storage.exists(path):
        return []
    saved = json.loads(storage.read_text(path)).get("config", {})
    mine = {"threshold": threshold, "ngram": ngram, "normalize": normalize}
    return ["%s: report %s, truth %s" % (k, saved[k], v) for k, v in sorted(mine.items())
            if k in saved and saved[k] != v]


def _fmt(x: Optional[float]) -> str:
    return "n/a" if x is None else "%.4f" % x


def format_scores(s: Dict) -> str:
    d, c = s["docs"], s["clusters"]
    lines = ["documents: truth %d, report %d, scored %d, missing from report %d, not in truth %d"
             % (d["truth"], d["report"], d["scored"], d["missing"], d["extra"])]
    if "true" in c:
        lines.append("clusters:  true %d (%d with duplicates, largest %d), predicted %d (%d with duplicates, "
                     "largest %d)" % (c["true"], c["true_with_dups"], c["true_largest"], c["predicted"],
                                      c["predicted_with_dups"], c["predicted_largest"]))
    else:
        lines.append("clusters:  predicted %d (%d with duplicates, largest %d)"
                     % (c["predicted"], c["predicted_with_dups"], c["predicted_largest"]))
    rows = [("metric", "TP", "FP", "FN", "precision", "recall", "F1")]
    for name, key in (("has near-duplicate (docs)", "has_dup"), ("same cluster (pairs)", "pairs")):
        r = s[key]
        if r is not None:
            rows.append((name, str(r["tp"]), str(r["fp"]), str(r["fn"]), _fmt(r["precision"]),
                         _fmt(r["recall"]), _fmt(r["f1"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines += [""] + table[:1] + ["-" * len(table[0])] + table[1:]
    if s["pairs"] is None:
        lines.append("(pairwise scores need truth with a `cluster` column)")
    if s.get("kept"):
        k = s["kept"]
        lines.append("")
        lines.append("kept %d documents (expected %s); predicted clusters keeping none: %d, several: %d"
                     % (k["kept"], "n/a" if k["expected"] is None else k["expected"],
                        k["clusters_keeping_none"], k["clusters_keeping_several"]))
    for key, what in (("missing_ids", "in truth but not in the report"), ("extra_ids", "in the report only")):
        n = d[key.split("_")[0]]
        if n:
            lines.append("warning: %d ids %s, e.g. %s" % (n, what, ", ".join(d[key][:3])))
    if c.get("report_size_mismatches"):
        lines.append("warning: %d report rows have a cluster_size that differs from their cluster_id's "
                     "row count" % c["report_size_mismatches"])
    if d["duplicate_report_ids"] or d["duplicate_truth_ids"]:
        lines.append("warning: repeated ids (first row kept): report %d, truth %d"
                     % (d["duplicate_report_ids"], d["duplicate_truth_ids"]))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="pipeline evaluate", description="Score a dedup report against ground truth.")
    p.add_argument("--report", required=True, help="dedup report parquet (file or dir): id, cluster_id[, kept]")
    p.add_argument("--truth", required=True,
                   help="truth parquet (id, cluster or id, has_dup; a `pipeline sample` dir works too), "
                        "or 'exact' to compute it from --docs")
    p.add_argument("--docs", help="documents parquet (id, text) for --truth exact")
    p.add_argument("--threshold", type=float, default=0.8, help="Jaccard threshold for --truth exact (default 0.8)")
    p.add_argument("--ngram", type=int, default=DEFAULT_NGRAM,
                   help="shingle size in words for --truth exact (default %(default)s)")
    p.add_argument("--normalize", choices=sorted(NORMALIZATIONS), default=DEFAULT_NORMALIZE,
                   help="what counts as a word for --truth exact, as `pipeline dedup --normalize` "
                        "(default %(default)s)")
    p.add_argument("--json", help="also write the scores to this JSON file")
    args = p.parse_args(argv)

    report = _read_parquet(args.report, ["id", "cluster_id", "cluster_size", "kept"])
    if args.truth == "exact":
        if not args.docs:
            p.error("--truth exact needs --docs")
        for diff in definition_mismatches(args.report, args.threshold, args.ngram, args.normalize):
            print("warning: the truth's near-duplicate definition differs from the report's (%s); pass "
                  "the report's values to score the approximation alone" % diff, file=sys.stderr)
        truth = exact_truth(args.docs, args.threshold, args.ngram, args.normalize)
    else:
        truth_path = args.truth
        if os.path.isdir(truth_path) and os.path.isfile(os.path.join(truth_path, "truth.parquet")):
            truth_path = os.path.join(truth_path, "truth.parquet")  # a `pipeline sample` output dir
        truth = _read_parquet(truth_path, ["id", "cluster", "has_dup"])
    scores = score(report, truth)
    scores["inputs"] = {"report": args.report, "truth": args.truth, "docs": args.docs,
                        "threshold": args.threshold if args.truth == "exact" else None,
                        "ngram": args.ngram if args.truth == "exact" else None,
                        "normalize": args.normalize if args.truth == "exact" else None}
    print(format_scores(scores))
    if args.json:
        from pipeline import storage

        storage.write_text(args.json, json.dumps(scores, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

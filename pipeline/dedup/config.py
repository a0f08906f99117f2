"""DedupConfig: the flags of `pipeline dedup` / `spark-submit jobs/dedup_job.py`."""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config import JobConfig, flag
from pipeline.dedup.keep import DEFAULT_KEEP, KEEP_RULES, check_rule
from pipeline.dedup.lsh import DEFAULT_FN_WEIGHT, DEFAULT_FP_WEIGHT
from pipeline.dedup.shingles import DEFAULT_NGRAM, DEFAULT_NORMALIZE, NORMALIZATIONS


@dataclass(frozen=True)
class DedupConfig(JobConfig):
    """MinHash-LSH near-duplicate removal: DIR/docs -> DIR/dedup/kept + DIR/dedup/report."""
    input: str = field(metadata=flag("--input", required=True,
                                                 help="ingest output (parquet id,url,text,source,warc_date), e.g. DIR/docs"))
    output: str = field(metadata=flag("--output", required=True,
                                                  help="output root DIR; writes DIR/dedup/kept and DIR/dedup/report"))
    threshold: float = field(default=0.8, metadata=flag("--threshold", type=float,
                                                        help="Jaccard similarity at or above which two documents are duplicates"))
    ngram: int = field(default=DEFAULT_NGRAM, metadata=flag("--ngram", type=int, help="words per shingle"))
    normalize: str = field(default=DEFAULT_NORMALIZE, metadata=flag(
        "--normalize", choices=sorted(NORMALIZATIONS), help="what counts as a word: " + "; ".join(
            "%s = %s" % (k, NORMALIZATIONS[k][0]) for k in sorted(NORMALIZATIONS))))
    num_perm: int = field(default=128, metadata=flag("--num-perm", type=int, help="MinHash permutations"))
    bands: int = field(default=0, metadata=flag("--bands", type=int, help="LSH bands; 0 = choose from the threshold"))
    rows: int = field(default=0, metadata=flag("--rows", type=int, help="rows per band; 0 = choose from the threshold"))
    fp_weight: float = field(default=DEFAULT_FP_WEIGHT, metadata=flag(
        "--fp-weight", type=float, help="weight of false-positive area when choosing bands x rows"))
    fn_weight: float = field(default=DEFAULT_FN_WEIGHT, metadata=flag(
        "--fn-weight", type=float, help="weight of false-negative area when choosing bands x rows"))
    window: int = field(default=4, metadata=flag(
        "--window", type=int, help="chain edges per bucket member (to the next N by shingle count)"))
    keep: str = field(default=DEFAULT_KEEP, metadata=flag(
        "--keep", choices=KEEP_RULES,
        help="which document of a cluster is kept: longest text, first in input order (source file, "
             "position; needs ingest's source and pos columns) or smallest id; ties -> smallest id"))
    seed: int = field(default=1, metadata=flag("--seed", type=int, help="MinHash permutation seed"))
    partitions: int = field(default=0, metadata=flag(
        "--partitions", type=int, help="output files per dir; 0 = as many as input partitions"))
    checkpoint_dir: str = field(default="", metadata=flag(
        "--checkpoint-dir", help="reliable checkpoints for connected components (e.g. hdfs:///tmp/dedup on EMR "
                                 "with dynamic allocation); empty = localCheckpoint"))
    max_iterations: int = field(default=100, metadata=flag(
        "--max-iterations", type=int, help="connected-components rounds before giving up"))
    single_task_max_edges: int = field(default=1000000, metadata=flag(
        "--single-task-max-edges", type=int,
        help="verified edges up to this many: connected components by union-find in one task instead of "
             "distributed large/small-star rounds (fewer Spark jobs); 0 = always distributed"))

    def __post_init__(self):
        check_rule(self.keep)

"""Where every token goes: the layout of llm.c shards over one ordered token stream.

All documents, ordered by id, form one stream of `total` tokens (each document starts with
<|endoftext|>). The first documents, whole, form the validation shard `{name}_val_000000.bin`: every
document that starts before the validation target (`--val-tokens`, or `--val-fraction` of all tokens),
so the val shard holds at least the target and ends on a document boundary. The rest of the stream is
cut into training shards of exactly `shard_tokens` tokens (`{name}_train_000001.bin`, ...), the last
one shorter; a document may straddle two training shards, as in llm.c's fineweb.py.

Because ids are content/record hashes, id order is a fixed pseudo-random shuffle of the crawl: the val
shard is a fair sample, and neighbouring documents in a shard are unrelated (not one site's pages).

Given each document's global start offset, `pieces()` says which shard(s) receive which slice of it and
where; shard writers then place slices by position, so the result does not depend on the order in which
Spark delivers them. The per-partition bodies the Spark job runs (`block_stats`, `with_starts`,
`arrow_pieces`) are plain Python here; pipeline/shards/spark_plan.py wires them together.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import pyarrow as pa

from pipeline.bpe import EOT_TOKEN, GPT2_VOCAB_SIZE
from pipeline.shards.llmc import MAX_TOKENS_PER_SHARD

DEFAULT_SHARD_TOKENS = 100_000_000  # llm.c's fineweb.py shard size
# 1% of tokens: on FineWeb-10B (llm.c's GPT-2 124M run) that is one 100M-token shard, like fineweb.py.
DEFAULT_VAL_FRACTION = 0.01


class PlanError(ValueError):
    """A shard layout that cannot be written (sizes out of range, nothing left to train on)."""


def shard_name(name: str, split: str, index: int) -> str:
    return "%s_%s_%06d.bin" % (name, split, index)


def val_target(total: int, val_fraction: float, val_tokens: Optional[int]) -> int:
    """Tokens the validation shard must at least hold (0 = no validation shard)."""
    if val_tokens is not None:
        if val_tokens < 0:
            raise PlanError("--val-tokens must be >= 0, got %d" % val_tokens)
        return val_tokens
    if not 0.0 <= val_fraction < 1.0:
        raise PlanError("--val-fraction must be in [0, 1), got %r" % val_fraction)
    return int(math.ceil(val_fraction * total))


def check_shard_tokens(shard_tokens: int) -> None:
    if not 1 <= shard_tokens <= MAX_TOKENS_PER_SHARD:
        raise PlanError("--shard-tokens %d out of range: a shard holds 1..%d tokens (llm.c files stay "
                        "under 2 GiB)" % (shard_tokens, MAX_TOKENS_PER_SHARD))


def locate(cum_starts: Sequence[int], offset: int) -> int:
    """Index i of the block with cum_starts[i] <= offset < cum_starts[i+1] (blocks may be empty)."""
    return bisect.bisect_right(cum_starts, offset) - 1


@dataclass(frozen=True)
class ShardPlan:
    name: str
    total: int         # tokens in the whole stream
    val_end: int       # the val shard is [0, val_end); 0 = no val shard
    shard_tokens: int  # size of every training shard but the last

    def __post_init__(self):
        check_shard_tokens(self.shard_tokens)
        if self.total <= 0:
            raise PlanError("no tokens to shard: the tokens input has no documents")
        if self.val_end > MAX_TOKENS_PER_SHARD:
            raise PlanError("the validation shard would hold %d tokens, over the 2 GiB limit (%d): "
                            "lower --val-fraction / --val-tokens" % (self.val_end, MAX_TOKENS_PER_SHARD))
        if self.val_end >= self.total:
            raise PlanError("the validation split takes all %d tokens and leaves nothing to train on: "
                            "lower --val-fraction / --val-tokens" % self.total)

    @property
    def n_train(self) -> int:
        return -(-(self.total - self.val_end) // self.shard_tokens)

    @property
    def n_shards(self) -> int:
        """Shard indices run 0..n_shards-1; index 0 is the val shard (absent when val_end == 0)."""
        return self.n_train + 1

    def shard_range(self, index: int) -> Tuple[int, int]:
        """[start, end) of shard `index` in the global stream."""
        if index == 0:
            return 0, self.val_end
        start = self.val_end + (index - 1) * self.shard_tokens
        return start, min(start + self.shard_tokens, self.total)

    def shards(self) -> List[Tuple[int, str, str, int]]:
        """(index, split, file name, n_tokens) for every file to write, in order."""
        out = []
        for i in range(0 if self.val_end else 1, self.n_shards):
            split = "val" if i == 0 else "train"
            lo, hi = self.shard_range(i)
            out.append((i, split, shard_name(self.name, split, i), hi - lo))
        return out

    def pieces(self, start: int, n: int) -> Iterator[Tuple[int, int, int, int]]:
        """For a document at [start, start+n): (shard index, position in shard, lo, hi) per slice
        tokens[lo:hi] of the document."""
        end = start + n
        if start < self.val_end:
            if end > self.val_end:
                raise PlanError("document at %d..%d straddles the val boundary %d" % (start, end, self.val_end))
            yield 0, start, 0, n
            return
        first = (start - self.val_end) // self.shard_tokens + 1
        last = (end - 1 - self.val_end) // self.shard_tokens + 1
        for index in range(first, last + 1):
            lo, hi = self.shard_range(index)
            a, b = max(start, lo), min(end, hi)
            yield index, a - lo, a - start, b - start


def val_end_from_docs(starts_and_sizes, target: int) -> int:
    """End of the last document starting before `target`, scanning (start, n) pairs of the block
    that contains offset target-1 (0 when target is 0)."""
    if target <= 0:
        return 0
    for start, n in starts_and_sizes:
        if start <= target - 1 < start + n:
            return start + n
    raise PlanError("no document covers token offset %d" % (target - 1))


# --- per-partition bodies of the Spark job (plain Python on rows / Arrow batches) -------------------

def block_stats(rows):
    """(docs, tokens) of one id-sorted partition; rejects duplicate ids and broken token counts."""
    docs = tokens = 0
    prev = None
    for doc_id, n in rows:
        if doc_id == prev:
            raise ValueError("duplicate id %r in the tokens input (ids must be unique)" % doc_id)
        if n is None or n < 1:
            raise ValueError("document %r has n_tokens=%r (every document starts with <|endoftext|>)"
                             % (doc_id, n))
        prev = doc_id
        docs += 1
        tokens += n
    yield docs, tokens


def with_starts(start: int, rows):
    """(id, n_tokens) of one id-sorted partition whose first token is at global offset `start`
    -> (id, start, n_tokens) per document."""
    for doc_id, n in rows:
        yield doc_id, start, n
        start += n


def arrow_pieces(batches, plan: ShardPlan):
    """Spark `mapInArrow` body: record batches of (id, start, n_tokens, tokens) -> one row
    (shard int32, pos int64, first bool, data binary) per slice of a document that goes to one shard;
    `data` is the slice as little-endian uint16 and `first` marks the slice holding the document start.
    Rejects token lists that do not start with <|endoftext|>, disagree with n_tokens or leave the vocab.
    """
    for batch in batches:
        cols = {name: batch.column(i) for i, name in enumerate(batch.schema.names)}
        lists = cols["tokens"]
        if lists.null_count:
            raise ValueError("null tokens in the tokens input")
        offsets = lists.offsets.to_numpy()
        flat = lists.flatten().to_numpy(zero_copy_only=False)
        offsets = offsets - offsets[0]
        if flat.size and (flat.min() < 0 or flat.max() >= GPT2_VOCAB_SIZE):
            raise ValueError("token ids outside the GPT-2 vocabulary in the tokens input")
        data = flat.astype("<u2")
        out = ([], [], [], [])
        for i, (doc_id, start, n) in enumerate(zip(cols["id"].to_pylist(), cols["start"].to_pylist(),
                                                   cols["n_tokens"].to_pylist())):
            a, b = int(offsets[i]), int(offsets[i + 1])
            if b - a != n or data[a] != EOT_TOKEN:
                raise ValueError("document %r: tokens must start with <|endoftext|> and number n_tokens=%s"
                                 % (doc_id, n))
            for shard, pos, lo, hi in plan.pieces(start, n):
                out[0].append(shard)
                out[1].append(pos)
                out[2].append(lo == 0)
                out[3].append(data[a + lo:a + hi].tobytes())
        yield pa.RecordBatch.from_arrays(
            [pa.array(out[0], pa.int32()), pa.array(out[1], pa.int64()), pa.array(out[2], pa.bool_()),
             pa.array(out[3], pa.binary())], names=["shard", "pos", "first", "data"])

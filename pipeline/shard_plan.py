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
Spark delivers them.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

from pipeline.shards import MAX_TOKENS_PER_SHARD

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
            raise PlanError("no tokens to shard")
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

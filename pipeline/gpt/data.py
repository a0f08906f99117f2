"""llm.c's distributed data loader (`llmc/dataloader.h`), batch for batch.

Shards matching a glob (sorted, like glob(3)) are validated up front with `pipeline.shards.llmc`. Each
shard is cut into windows of `world * B * T` tokens; rank r reads `B*T + 1` tokens at offset
`r * B * T` inside a window (inputs = first B*T, targets = the same shifted by one). A shard holds
`(ntok - 1) // (world * B * T)` windows.

Train loaders shuffle like llm.c: a Mersenne Twister seeded with 42 + rank (numpy's MT19937 with
legacy seeding is bit-identical to llm.c's `manual_seed`), a Fisher-Yates shuffle of the shard
order at every epoch and of the windows inside each shard as it is opened. So for the same shards,
-b, -t and world size, this loader serves the same batches in the same order as train_gpt2cu.
Val loaders read sequentially and are reset before every evaluation.
"""
from __future__ import annotations

import glob
from typing import List, Tuple

import numpy as np

from pipeline.shards.llmc import ShardError, load_tokens, read_header


class MT19937:
    """llm.c/torch's Mersenne Twister: `randint32` stream for a given 32-bit seed."""

    def __init__(self, seed: int):
        self._bg = np.random.MT19937()
        self._bg._legacy_seeding(seed & 0xFFFFFFFF)

    def randint32(self, n: int) -> np.ndarray:
        return self._bg.random_raw(n).astype(np.uint64)

    def get_state(self) -> dict:
        s = self._bg.state
        return {"key": s["state"]["key"].tolist(), "pos": int(s["state"]["pos"])}

    def set_state(self, state: dict) -> None:
        self._bg.state = {"bit_generator": "MT19937",
                          "state": {"key": np.array(state["key"], dtype=np.uint32), "pos": state["pos"]}}


def random_permutation(data: List[int], rng: MT19937) -> List[int]:
    """llm.c's in-place Fisher-Yates: for i = n-1..1, j = randint32() % (i+1), swap."""
    n = len(data)
    if n > 1:
        draws = rng.randint32(n - 1)
        for k, i in enumerate(range(n - 1, 0, -1)):
            j = int(draws[k] % (i + 1))
            data[i], data[j] = data[j], data[i]
    return data


def find_shards(pattern: str, what: str = "train") -> List[str]:
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError("no %s shards match %r (expected llm.c .bin token shards, e.g. "
                                "DIR/shards/*_%s_*.bin)" % (what, pattern, what))
    return files


class DataLoader:
    def __init__(self, pattern: str, B: int, T: int, rank: int = 0, world: int = 1,
                 shuffle: bool = True, what: str = "train"):
        self.B, self.T, self.rank, self.world, self.shuffle = B, T, rank, world, shuffle
        self.files = find_shards(pattern, what)
        self.window = world * B * T
        self.num_tokens = 0
        for path in self.files:  # validate everything now, not hours into the run
            ntok = read_header(path)
            if ntok < self.window + 1:
                raise ShardError("%s: %d tokens, but one batch needs world*B*T+1 = %d; lower -b/-t "
                                 "or write larger shards" % (path, ntok, self.window + 1))
            self.num_tokens += ntok
        self.rng = MT19937(42 + rank) if shuffle else None
        self.shard_indices = list(range(len(self.files)))
        self.intra = None
        self.shard_pos = 0
        self.window_pos = -1
        self.tokens = None
        self.reset()

    # --- llm.c's state machine ---------------------------------------------------------------
    def _open(self, shard_pos: int) -> None:
        index = self.shard_indices[shard_pos] if self.shuffle else shard_pos
        self.tokens = load_tokens(self.files[index])
        self.num_windows = (len(self.tokens) - 1) // self.window

    def reset(self) -> None:
        self.shard_pos, self.window_pos = 0, -1
        if self.shuffle:
            random_permutation(self.shard_indices, self.rng)
        self._open(0)
        if self.shuffle:
            self.intra = random_permutation(list(range(self.num_windows)), self.rng)

    def _advance(self) -> None:
        if self.shard_pos == len(self.files) - 1:
            self.reset()  # new epoch
            return
        self.shard_pos += 1
        self.window_pos = -1
        self._open(self.shard_pos)
        if self.shuffle:
            self.intra = random_permutation(list(range(self.num_windows)), self.rng)

    def next_batch(self) -> Tuple[np.ndarray, np.ndarray]:
        """(inputs, targets), each int64 of shape (B, T)."""
        self.window_pos += 1
        if self.window_pos >= self.num_windows:
            self._advance()
        idx = self.intra[self.window_pos] if self.shuffle else self.window_pos
        start = idx * self.window + self.rank * self.B * self.T
        buf = np.asarray(self.tokens[start:start + self.B * self.T + 1], dtype=np.int64)
        return buf[:-1].reshape(self.B, self.T), buf[1:].reshape(self.B, self.T)

    # --- exact resume --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"files": len(self.files), "shard_pos": self.shard_pos, "window_pos": self.window_pos,
                "shard_indices": list(self.shard_indices), "intra": list(self.intra or []),
                "rng": self.rng.get_state() if self.shuffle else None}

    def load_state_dict(self, state: dict) -> None:
        if state["files"] != len(self.files):
            raise ValueError("the checkpoint was trained on %d shards but -i matches %d; resume needs "
                             "the same shards" % (state["files"], len(self.files)))
        self.shard_indices = list(state["shard_indices"])
        self.shard_pos = state["shard_pos"]
        self._open(self.shard_pos)
        self.window_pos = state["window_pos"]
        if self.shuffle:
            self.intra = list(state["intra"])
            self.rng.set_state(state["rng"])

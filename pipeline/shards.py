"""llm.c token shards: write them, read them, and validate them the way llm.c's dataloader does.

Format (llm.c `dev/data/data_common.py` / `llmc/dataloader.h`): a header of 256 little-endian int32,
`[20240520, 1, ntok, 0, ...]`, then `ntok` little-endian uint16 token ids. llm.c's loader checks the
magic number and version, then that the file size equals 256*4 + ntok*2 exactly.
"""
from __future__ import annotations

import os
from typing import IO, Union

import numpy as np

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_SHARD_BYTES = 2 ** 31 - 1  # every shard stays under 2 GiB
MAX_TOKENS_PER_SHARD = (MAX_SHARD_BYTES - HEADER_BYTES) // 2


class ShardError(ValueError):
    """A shard file that llm.c would refuse; the message names the file and the problem."""


def header_bytes(ntok: int) -> bytes:
    if not 0 <= ntok <= MAX_TOKENS_PER_SHARD:
        raise ValueError("shard of %d tokens would exceed 2 GiB" % ntok)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, ntok
    return header.tobytes()


def write_shard(path: str, tokens: np.ndarray) -> None:
    """Write a complete shard atomically (local path)."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2 ** 16):
        raise ValueError("token ids must fit in uint16")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(header_bytes(int(tokens.size)))
        f.write(tokens.astype("<u2", copy=False).tobytes())
    os.replace(tmp, path)


def read_header(path_or_file: Union[str, IO[bytes]], name: str = None) -> int:
    """Validate the header (and, for paths, the file size); return the token count."""
    if isinstance(path_or_file, (str, os.PathLike)):
        name = str(path_or_file)
        with open(path_or_file, "rb") as f:
            raw = f.read(HEADER_BYTES)
        size = os.path.getsize(path_or_file)
    else:
        raw = path_or_file.read(HEADER_BYTES)
        size = None
    name = name or "<shard>"
    if len(raw) < HEADER_BYTES:
        raise ShardError("%s: file too short for the 1024-byte header (%d bytes)" % (name, len(raw)))
    header = np.frombuffer(raw, dtype="<i4")
    if header[0] != MAGIC:
        raise ShardError("%s: bad magic number %d (expected %d): not an llm.c token shard"
                         % (name, header[0], MAGIC))
    if header[1] != VERSION:
        raise ShardError("%s: unsupported version %d (expected %d)" % (name, header[1], VERSION))
    ntok = int(header[2])
    if ntok < 0:
        raise ShardError("%s: negative token count %d" % (name, ntok))
    if size is not None and size != HEADER_BYTES + 2 * ntok:
        raise ShardError("%s: file is %d bytes but the header promises %d tokens (%d bytes)"
                         % (name, size, ntok, HEADER_BYTES + 2 * ntok))
    return ntok


def load_tokens(path: str, mmap: bool = True) -> np.ndarray:
    """The shard's tokens as uint16 (memory-mapped by default), after validating it."""
    ntok = read_header(path)
    if mmap:
        if ntok == 0:
            return np.zeros(0, dtype=np.uint16)
        return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(ntok,))
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        return np.frombuffer(f.read(), dtype="<u2").copy()

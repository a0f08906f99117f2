"""llm.c token shards: write them, read them, and validate them the way llm.c's dataloader does.

Format (llm.c `dev/data/data_common.py` / `llmc/dataloader.h`): a header of 256 little-endian int32,
`[20240520, 1, ntok, 0, ...]`, then `ntok` little-endian uint16 token ids. llm.c's loader checks the
magic number and version, then that the file size equals 256*4 + ntok*2 exactly.

Besides the single-file writer and reader, this module writes one shard from pieces that arrive in any
order (the Spark shards stage, see pipeline/shards/spark_plan.py and pipeline/shards/plan.py) and
validates a shard as llm.c's loader would (`pipeline check-shards`, pipeline/shards/check.py).
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
from typing import IO, Iterable, List, Tuple, Union

import numpy as np

from pipeline import storage
from pipeline.bpe import EOT_TOKEN, GPT2_VOCAB_SIZE

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


# --- writing one shard from position-tagged pieces ------------------------------------------------

def _scratch_dir() -> str:
    """Executors' local disks (YARN: LOCAL_DIRS, standalone/local: SPARK_LOCAL_DIRS), else /tmp."""
    for var in ("SPARK_LOCAL_DIRS", "LOCAL_DIRS"):
        for d in os.environ.get(var, "").split(","):
            if d and os.path.isdir(d):
                return d
    return tempfile.gettempdir()


def sha256_file(path: str, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def write_shard_pieces(dest: str, ntok: int, pieces: Iterable[Tuple[int, bool, bytes]]) -> dict:
    """Write the shard `dest` (local path or s3://) of `ntok` tokens from (position, starts_doc,
    uint16 little-endian bytes) pieces arriving in any order; return its manifest entry.

    Pieces are written in place with seek, so memory stays at one piece whatever the shard size, and
    the bytes do not depend on the order Spark delivers them in. The pieces must tile [0, ntok) exactly;
    anything else is a planning bug and raises rather than producing a shard with holes.
    """
    local = not storage.is_s3(dest)
    if local:
        os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    # A unique temp name: a retried or speculative task attempt never writes into another's file.
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(dest), suffix=".tmp",
                               dir=os.path.dirname(os.path.abspath(dest)) if local else _scratch_dir())
    spans: List[Tuple[int, int]] = []
    n_docs = 0
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; shards are data for other users and jobs
        with os.fdopen(fd, "wb") as f:
            f.write(header_bytes(ntok))
            f.truncate(HEADER_BYTES + 2 * ntok)
            for pos, starts_doc, data in pieces:
                n = len(data) // 2
                if pos < 0 or pos + n > ntok:
                    raise ShardError("%s: piece [%d, %d) outside the shard's %d tokens" % (dest, pos, pos + n, ntok))
                f.seek(HEADER_BYTES + 2 * pos)
                f.write(data)
                spans.append((pos, n))
                n_docs += bool(starts_doc)
        spans.sort()
        covered = 0
        for pos, n in spans:
            if pos != covered:
                raise ShardError("%s: pieces leave a gap or overlap at token %d" % (dest, covered))
            covered += n
        if covered != ntok:
            raise ShardError("%s: pieces cover %d of %d tokens" % (dest, covered, ntok))
        digest = sha256_file(tmp)
        if local:
            os.replace(tmp, dest)
        else:
            storage.upload_file(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return {"name": os.path.basename(dest), "n_tokens": ntok, "n_docs": n_docs, "sha256": digest}


# --- validating a shard the way llm.c reads it -----------------------------------------------------

MANIFEST = "_manifest.json"  # written next to the shards by the shards stage


def check_shard(path: str, vocab_size: int = GPT2_VOCAB_SIZE, chunk_tokens: int = 16 << 20) -> dict:
    """Validate one shard (local or s3://) the way llm.c's loader does, plus token ids < vocab_size;
    return {"n_tokens", "n_eot", "sha256"}. Reads the file once, in chunks."""
    size = storage.file_size(path)
    h = hashlib.sha256()
    with storage.open_read(path) as f:
        raw = _read_exactly(f, HEADER_BYTES)
        h.update(raw)
        ntok = read_header(io.BytesIO(raw), name=path)
        if size != HEADER_BYTES + 2 * ntok:
            raise ShardError("%s: file is %d bytes but the header promises %d tokens (%d bytes)"
                             % (path, size, ntok, HEADER_BYTES + 2 * ntok))
        seen, n_eot = 0, 0
        while seen < ntok:
            want = min(chunk_tokens, ntok - seen)
            data = _read_exactly(f, 2 * want)
            if len(data) != 2 * want:
                raise ShardError("%s: truncated after %d of %d tokens" % (path, seen + len(data) // 2, ntok))
            h.update(data)
            toks = np.frombuffer(data, dtype="<u2")
            bad = np.flatnonzero(toks >= vocab_size)
            if bad.size:
                raise ShardError("%s: token id %d at position %d is outside the GPT-2 vocabulary (< %d)"
                                 % (path, toks[bad[0]], seen + int(bad[0]), vocab_size))
            n_eot += int(np.count_nonzero(toks == EOT_TOKEN))
            seen += want
    return {"n_tokens": ntok, "n_eot": n_eot, "sha256": h.hexdigest()}


def _read_exactly(f, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        b = f.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)

"""GPT-2's BPE (tiktoken `r50k_base`, identical ranks to `gpt2`), loadable without internet.

tiktoken normally downloads its rank file on first use. Air-gapped clusters and CI instead give either
a tiktoken cache directory (`TIKTOKEN_CACHE_DIR`, or `--tiktoken-cache`) or the `.tiktoken` rank file
itself (`--bpe-file`, local or s3://). Every path goes through `load_bpe_bytes` (which checks the
file's SHA-256) and `encoding_from_bytes`; Spark ships those bytes to executors, the trainer and the
sampler call `get_encoding`.
"""
from __future__ import annotations

import base64
import hashlib
import os
from typing import Dict, Optional

from pipeline import storage

EOT_TOKEN = 50256
GPT2_VOCAB_SIZE = 50257
ENCODING_NAME = "r50k_base"
# The GPT-2 pre-tokenizer regex (tiktoken's r50k_base pattern).
R50K_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Where tiktoken downloads r50k_base from, and the SHA-256 it expects (tiktoken_ext/openai_public.py).
# A tiktoken cache directory stores the file under sha1(URL).
R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"

class BpeError(ValueError):
    """The GPT-2 BPE ranks could not be found, or are not GPT-2's."""


def load_bpe_bytes(cache_dir: Optional[str] = None, bpe_file: Optional[str] = None) -> bytes:
    """The raw `r50k_base.tiktoken` rank file, checked against tiktoken's published SHA-256.

    Precedence: `bpe_file` (local or s3://), then `cache_dir`, then
    `TIKTOKEN_CACHE_DIR` / tiktoken's default cache / download.
    """
    if bpe_file:
        try:
            with storage.open_read(bpe_file) as f:
                data = f.read()
        except storage.InputError as e:
            raise BpeError("--bpe-file: %s" % e) from e
        where = bpe_file
    elif cache_dir:
        where = os.path.join(cache_dir, hashlib.sha1(R50K_URL.encode()).hexdigest())
        if not os.path.isfile(where):
            raise BpeError("tiktoken cache %s has no r50k_base ranks (expected the file %s)"
                           % (cache_dir, where))
        with open(where, "rb") as f:
            data = f.read()
    else:
        from tiktoken.load import read_file_cached

        where = os.environ.get("TIKTOKEN_CACHE_DIR") or R50K_URL
        try:
            data = read_file_cached(R50K_URL, R50K_SHA256)
        except Exception as e:  # no cache and no internet: say how to fix it
            raise BpeError("cannot load GPT-2 BPE ranks (%s); pass --tiktoken-cache DIR or "
                           "--bpe-file r50k_base.tiktoken" % e) from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != R50K_SHA256:
        raise BpeError("%s is not tiktoken's r50k_base (GPT-2) rank file: sha256 %s, expected %s"
                       % (where, digest, R50K_SHA256))
    return data


def encoding_from_bytes(data: bytes):
    """A tiktoken Encoding identical to `r50k_base`, built from the rank file's bytes.

    Built in memory, so executors that receive the bytes never touch a cache directory.
    """
    import tiktoken

    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(name=ENCODING_NAME, pat_str=R50K_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT_TOKEN},
                             explicit_n_vocab=GPT2_VOCAB_SIZE)


# Encoders built so far in this process, keyed by the ranks' SHA-256 (Spark reuses Python workers).
_ENCODERS: Dict[str, object] = {}


def cached_encoding(data: bytes):
    key = hashlib.sha256(data).hexdigest()
    if key not in _ENCODERS:
        _ENCODERS[key] = encoding_from_bytes(data)
    return _ENCODERS[key]


def get_encoding(cache_dir: Optional[str] = None, bpe_file: Optional[str] = None):
    """The GPT-2 encoding: `bpe_file` wins over `cache_dir`, which wins over the environment."""
    return cached_encoding(load_bpe_bytes(cache_dir, bpe_file))

"""GPT-2's BPE (tiktoken `r50k_base`, identical ranks to `gpt2`), shipped with the package: no download.

The rank file (`pipeline/resources/r50k_base.tiktoken`, 835,554 bytes) is package data, read with
`pkgutil.get_data`, so it is found the same way in a source checkout, an installed wheel and the zip
that `spark-submit --py-files` ships to a cluster. Every source goes through `load_bpe_bytes`, which
checks the bytes against tiktoken's published SHA-256, and `encoding_from_bytes`, which builds the
tiktoken Encoding from the ranks with GPT-2's pre-tokenizer pattern and `<|endoftext|>` = 50256 (no
tiktoken cache or plugin registry involved). Spark ships those bytes to executors; the trainer and the
sampler call `get_encoding`.

Overrides, for users who keep the ranks elsewhere: `--bpe-file` (the `.tiktoken` file, local or s3://),
`--tiktoken-cache DIR` and the `TIKTOKEN_CACHE_DIR` environment variable (tiktoken cache directories).
All of them must hold the same bytes: anything else is rejected, so the tokens never depend on which
source was used.
"""
from __future__ import annotations

import base64
import hashlib
import os
import pkgutil
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
R50K_CACHE_NAME = hashlib.sha1(R50K_URL.encode()).hexdigest()
# The shipped copy, relative to the `pipeline` package (setup.cfg's package_data).
SHIPPED_RANKS = "resources/r50k_base.tiktoken"


class BpeError(ValueError):
    """The GPT-2 BPE ranks could not be found, or are not GPT-2's."""


def shipped_bpe_bytes() -> bytes:
    """The rank file shipped inside the `pipeline` package (works from a directory or a zip)."""
    try:
        data = pkgutil.get_data("pipeline", SHIPPED_RANKS)
    except OSError:
        data = None
    if not data:
        raise BpeError("the pipeline package has no %s (an incomplete install?); pass --bpe-file "
                       "r50k_base.tiktoken" % SHIPPED_RANKS)
    return data


def _read_cache_dir(cache_dir: str, what: str) -> bytes:
    path = os.path.join(cache_dir, R50K_CACHE_NAME)
    if not os.path.isfile(path):
        raise BpeError("%s %s has no r50k_base ranks (expected the file %s)" % (what, cache_dir, path))
    with open(path, "rb") as f:
        return f.read()


def load_bpe_bytes(cache_dir: Optional[str] = None, bpe_file: Optional[str] = None) -> bytes:
    """The raw `r50k_base.tiktoken` rank file, checked against tiktoken's published SHA-256.

    Precedence: `bpe_file` (local or s3://), then `cache_dir`, then a `TIKTOKEN_CACHE_DIR` that holds
    r50k_base, then the copy shipped in the package. Never downloads.
    """
    env_cache = os.environ.get("TIKTOKEN_CACHE_DIR")
    if bpe_file:
        try:
            with storage.open_read(bpe_file) as f:
                data = f.read()
        except storage.InputError as e:
            raise BpeError("--bpe-file: %s" % e) from e
        where = bpe_file
    elif cache_dir:
        data, where = _read_cache_dir(cache_dir, "tiktoken cache"), cache_dir
    elif env_cache and os.path.isfile(os.path.join(env_cache, R50K_CACHE_NAME)):
        # A TIKTOKEN_CACHE_DIR without r50k_base (e.g. one kept for other encodings) is passed over.
        data, where = _read_cache_dir(env_cache, "TIKTOKEN_CACHE_DIR"), "TIKTOKEN_CACHE_DIR=" + env_cache
    else:
        data, where = shipped_bpe_bytes(), "pipeline/" + SHIPPED_RANKS
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
    """The GPT-2 encoding, from the ranks `load_bpe_bytes` finds (the shipped copy by default)."""
    return cached_encoding(load_bpe_bytes(cache_dir, bpe_file))

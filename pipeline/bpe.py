"""GPT-2's BPE (tiktoken `r50k_base`, identical ranks to `gpt2`), loadable without internet.

tiktoken normally downloads its rank file on first use. Air-gapped clusters and CI instead give either
a tiktoken cache directory (`TIKTOKEN_CACHE_DIR`, or `--tiktoken-cache`) or the `.tiktoken` rank file
itself (`--bpe-file`). Both paths end in the same `tiktoken.Encoding`.
"""
from __future__ import annotations

import os
from typing import Optional

EOT_TOKEN = 50256
GPT2_VOCAB_SIZE = 50257
ENCODING_NAME = "r50k_base"
# The GPT-2 pre-tokenizer regex (tiktoken's r50k_base pattern).
R50K_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def get_encoding(cache_dir: Optional[str] = None, bpe_file: Optional[str] = None):
    """The GPT-2 encoding. `bpe_file` wins over `cache_dir`, which wins over the environment."""
    import tiktoken

    if bpe_file:
        from tiktoken.load import load_tiktoken_bpe

        ranks = load_tiktoken_bpe(bpe_file)
        return tiktoken.Encoding(name=ENCODING_NAME, pat_str=R50K_PATTERN, mergeable_ranks=ranks,
                                 special_tokens={"<|endoftext|>": EOT_TOKEN},
                                 explicit_n_vocab=GPT2_VOCAB_SIZE)
    if cache_dir:
        os.environ["TIKTOKEN_CACHE_DIR"] = cache_dir
    return tiktoken.get_encoding(ENCODING_NAME)

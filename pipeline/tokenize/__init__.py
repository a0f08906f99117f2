"""Tokenize: documents (id, text) -> GPT-2 BPE token ids, `<|endoftext|>` first.

- `encode`      the plain-Python core: token lists per text, and the Arrow batch body (no Spark)
- `config`      TokenizeConfig, the flags of `pipeline tokenize`
- `spark_plan`  the stage on Spark: DIR/dedup/kept -> DIR/tokens
"""

"""Shards: token rows -> llm.c `.bin` token shards (val shard first, then fixed-size train shards).

- `llmc`        llm.c's shard file format: write, read, write from position-tagged pieces, validate
- `plan`        where every token goes (shard layout over the id-ordered token stream), plain Python
- `config`      ShardsConfig, the flags of `pipeline shards`
- `spark_plan`  the stage on Spark: DIR/tokens -> DIR/shards
- `check`       `pipeline check-shards`
"""

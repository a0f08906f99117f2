"""Ingest: raw inputs (WARC, parquet, JSON lines) -> one row per document, or one drop row per record.

The plain-Python core works on streams and needs no Spark:

- `records`  the record tuple every reader yields, and the options executors need
- `charset`  bytes -> str for HTML bodies (BOM, HTTP header, `<meta>`, then sane fallbacks)
- `extract`  HTML str -> plain text, through a small registry of extractors (resiliparse, bs4)
- `warc`     a WARC stream -> records (WARC-Record-ID, URL, date, text) or drop rows, read
              with FastWARC or warcio (the same records either way)
- `tabular`  JSON-lines streams -> records
- `core`     input planning, and `process_file` (all records of one streamed file)
- `config`   IngestConfig, the flags of `pipeline ingest`

On Spark: `spark_parquet` maps parquet input onto the record columns, and `spark_plan` runs the stage
(DIR/docs + DIR/ingest/dropped).
"""

"""Ingest: raw inputs (WARC, parquet, JSON lines) -> one row per document, or one drop row per record.

The plain-Python core works on streams and needs no Spark:

- `charset`  bytes -> str for HTML bodies (BOM, HTTP header, `<meta>`, then sane fallbacks)
- `extract`  HTML str -> plain text, through a small registry of extractors (bs4, resiliparse)
- `warc`     a WARC stream -> records (WARC-Record-ID, URL, date, text) or drop rows
- `tabular`  JSON-lines streams -> records; parquet column mapping (the one Spark-side helper)
- `core`     the record tuple every reader yields, input planning, and `process_file`

`jobs/ingest.py` wires these to Spark.
"""

"""Parquet input for ingest: the user's columns mapped onto the record columns inside Spark.

The rules are those of JSON lines (`pipeline.ingest.tabular`): `--text-col` required, `--id-col` or
sha1(url + "\\n" + text), `--url-col` optional; null or non-string text is a `bad_record` row, and
`--max-record-bytes` / `--min-chars` apply. Parquet is read by Spark itself (no Python per row);
`pos` is the row index within its file, so the input order is the same on every rerun.
"""
from __future__ import annotations

from typing import List, Sequence

from pyspark.sql import functions as F
from pyspark.sql.types import StringType

from pipeline import storage
from pipeline.ingest.records import IngestOptions
from pipeline.ingest.tabular import MissingColumnError


def parquet_records(spark, files: Sequence[str], opts: IngestOptions):
    """A DataFrame of records (records.RECORD_DDL columns) from parquet files, mapped without Python."""
    try:
        # mergeSchema: files written at different times may have gained or lost columns.
        df = spark.read.option("mergeSchema", "true").parquet(*[storage.to_spark_path(f) for f in files])
    except Exception as e:  # a corrupt footer, conflicting column types: Spark's first line says which
        raise storage.InputError("cannot read parquet input (%s): %s" % (
            _names(files), str(e).strip().splitlines()[0][:500])) from e
    if opts.text_col not in df.columns:
        raise MissingColumnError("text column %r not found in %s; available columns: %s (use --text-col)"
                                 % (opts.text_col, _names(files), ", ".join(df.columns)))
    text = F.col(_q(opts.text_col))
    url = F.col(_q(opts.url_col)).cast("string") if opts.url_col in df.columns else F.lit(None).cast("string")
    if isinstance(df.schema[opts.text_col].dataType, StringType):
        bad = "CASE WHEN %s IS NULL THEN 'null' END" % _q(opts.text_col)
    else:  # e.g. a binary or numeric column: every row is malformed
        text = text.cast("string")
        bad = "'%s'" % df.schema[opts.text_col].dataType.simpleString()
    bad = F.expr(bad)
    ident = F.sha1(F.concat(F.coalesce(url, F.lit("")), F.lit("\n"), text))
    if opts.id_col in df.columns:
        ident = F.coalesce(F.col(_q(opts.id_col)).cast("string"), ident)
    nbytes, nchars = F.octet_length(text), F.char_length(text)
    reason = (F.when(bad.isNotNull(), "bad_record")
              .when(nbytes > opts.max_record_bytes, "too_large")
              .when(text.rlike(r"(?U)^\s*$"), "empty_text")
              .when(nchars < opts.min_chars, "too_short"))
    detail = (F.when(bad.isNotNull(), F.format_string("%s is %s, not a string", F.lit(repr(opts.text_col)), bad))
              .when(nbytes > opts.max_record_bytes, F.format_string(
                  "text of %d bytes > --max-record-bytes %d", nbytes, F.lit(opts.max_record_bytes)))
              .when(text.rlike(r"(?U)^\s*$"), F.lit("no text"))
              .when(nchars < opts.min_chars, F.format_string(
                  "%d chars < --min-chars %d", nchars, F.lit(opts.min_chars))))
    # Spark reports paths as URIs (file:/x%20y.parquet); `source` should read like the WARC paths.
    source = F.expr("url_decode(replace(regexp_replace(_metadata.file_path, '^file:(//)?', ''), "
                    "'+', '%2B'))")
    return df.select(source.alias("source"),
                     F.col("_metadata.row_index").cast("long").alias("pos"),
                     ident.alias("id"),
                     url.alias("url"),
                     F.when(reason.isNull(), text).alias("text"),
                     F.lit(None).cast("string").alias("warc_date"),
                     reason.alias("reason"),
                     detail.alias("detail"))


def _q(name: str) -> str:
    return "`%s`" % name.replace("`", "``")


def _names(files: Sequence[str], limit: int = 10) -> str:
    shown: List[str] = list(files[:limit])
    more = " and %d more" % (len(files) - limit) if len(files) > limit else ""
    return ", ".join(shown) + more

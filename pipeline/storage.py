"""Paths that may be local or on S3: list inputs, open them as streams, write small files.

Spark reads and writes parquet through Hadoop (EMRFS on EMR, the local file system on a laptop), but
some work happens in plain Python on executors: streaming WARC files, writing llm.c shards, saving
configs and summaries. Those go through this module so that the same code handles `/data/x.warc.gz`
and `s3://bucket/x.warc.gz`. S3 access uses boto3, honouring `AWS_ENDPOINT_URL` (moto in tests).
"""
from __future__ import annotations

import fnmatch
import glob
import os
import shutil
import tempfile
from typing import IO, List, Optional, Sequence, Tuple

S3_SCHEMES = ("s3://", "s3a://", "s3n://")


class InputError(Exception):
    """An input path that cannot be found or read at all (the message names the path)."""


def is_s3(path: str) -> bool:
    return path.startswith(S3_SCHEMES)


def split_s3(uri: str) -> Tuple[str, str]:
    """`s3://bucket/key/part` -> (`bucket`, `key/part`)."""
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    return bucket, key


def join(base: str, *parts: str) -> str:
    if is_s3(base):
        out = base.rstrip("/")
        for p in parts:
            out += "/" + p.strip("/")
        return out
    return os.path.join(base, *parts)


def to_spark_path(path: str) -> str:
    """Spark on EMR reads `s3://` natively (EMRFS); open-source Hadoop needs `s3a://`."""
    if path.startswith("s3n://"):
        return "s3a://" + path[len("s3n://"):]
    return path


def _s3_client():
    import boto3

    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)


def _has_glob(s: str) -> bool:
    return any(ch in s for ch in "*?[")


def _list_s3(pattern: str) -> List[str]:
    scheme = pattern.split("://", 1)[0] + "://"
    bucket, key = split_s3(pattern)
    # List under the longest glob-free prefix, then filter with the glob.
    cut = min([key.find(c) for c in "*?[" if c in key] or [len(key)])
    prefix = key[:cut]
    client = _s3_client()
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            keys.append(obj["Key"])
    if _has_glob(key):
        keys = [k for k in keys if fnmatch.fnmatchcase(k, key)]
    elif keys and key not in keys:
        # A "directory": everything below it.
        d = key.rstrip("/") + "/"
        keys = [k for k in keys if k.startswith(d)]
    return [scheme + bucket + "/" + k for k in keys if not k.endswith("/")]


def _hidden(path: str) -> bool:
    """Spark's convention: names starting with `_` or `.` are metadata (`_SUCCESS`, `.crc`)."""
    return os.path.basename(path.rstrip("/")).startswith(("_", "."))


def list_files(patterns: Sequence[str], suffixes: Optional[Sequence[str]] = None) -> List[str]:
    """Expand files, directories (recursively) and globs, local or S3, into a sorted file list.

    Sorted so that the same input always yields the same order (and the same output). A pattern that
    matches nothing raises InputError naming it: a typo must not silently become an empty dataset.
    """
    out = []
    for pattern in patterns:
        if is_s3(pattern):
            found = _list_s3(pattern)
        elif os.path.isdir(pattern):
            found = []
            for root, dirs, files in os.walk(pattern):
                dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
                found.extend(os.path.join(root, f) for f in files)
        elif _has_glob(pattern):
            found = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
        elif os.path.isfile(pattern):
            found = [pattern]
        else:
            raise InputError("input not found: %s" % pattern)
        found = [p for p in found if not _hidden(p)]
        if suffixes is not None:
            found = [p for p in found if p.lower().endswith(tuple(suffixes))]
        if not found:
            raise InputError("no input files match %s" % pattern)
        out.extend(found)
    return sorted(set(out))


def open_read(path: str) -> IO[bytes]:
    """A binary stream; S3 objects are streamed, never loaded whole."""
    if is_s3(path):
        bucket, key = split_s3(path)
        try:
            body = _s3_client().get_object(Bucket=bucket, Key=key)["Body"]
        except Exception as e:  # botocore's errors carry the S3 code; keep the path in the message
            raise InputError("cannot read %s: %s" % (path, e)) from e
        return body._raw_stream if hasattr(body, "_raw_stream") else body
    try:
        return open(path, "rb")
    except OSError as e:
        raise InputError("cannot read %s: %s" % (path, e)) from e


def file_size(path: str) -> int:
    if is_s3(path):
        bucket, key = split_s3(path)
        return int(_s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"])
    return os.path.getsize(path)


def write_bytes(path: str, data: bytes) -> None:
    if is_s3(path):
        bucket, key = split_s3(path)
        _s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # readers never see a half-written file


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def read_text(path: str) -> str:
    with open_read(path) as f:
        return f.read().decode("utf-8")


def exists(path: str) -> bool:
    if is_s3(path):
        bucket, key = split_s3(path)
        resp = _s3_client().list_objects_v2(Bucket=bucket, Prefix=key.rstrip("/"), MaxKeys=1)
        return resp.get("KeyCount", 0) > 0
    return os.path.exists(path)


def upload_file(local_path: str, dest: str) -> None:
    """Copy a finished local file to `dest` (local or S3) without reading it into memory."""
    if is_s3(dest):
        bucket, key = split_s3(dest)
        _s3_client().upload_file(local_path, bucket, key)
        return
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    tmp = dest + ".tmp"
    shutil.copyfile(local_path, tmp)
    os.replace(tmp, dest)


def remove_tree(path: str) -> None:
    """Delete a directory (or S3 prefix) so that a rerun does not mix old and new files."""
    if is_s3(path):
        bucket, key = split_s3(path)
        client = _s3_client()
        prefix = key.rstrip("/") + "/"
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objs:
                client.delete_objects(Bucket=bucket, Delete={"Objects": objs})
        return
    if os.path.isdir(path):
        shutil.rmtree(path)


def local_scratch_dir() -> str:
    return tempfile.mkdtemp(prefix="pipeline-")


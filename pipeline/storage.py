"""Paths that may be local or on S3: list inputs, open them as streams, write small files.

Spark reads and writes parquet through Hadoop (EMRFS on EMR, the local file system on a laptop), but
some work happens in plain Python on executors: streaming WARC files, writing llm.c shards, saving
configs and summaries. Those go through this module so that the same code handles `/data/x.warc.gz`
and `s3://bucket/x.warc.gz`. S3 access uses boto3, honouring `AWS_ENDPOINT_URL` (moto in tests).
"""
from __future__ import annotations

import glob
import io
import os
import re
import shutil
import tempfile
from typing import IO, List, Optional, Sequence, Tuple

S3_SCHEMES = ("s3://", "s3a://", "s3n://")


class InputError(Exception):
    """An input path that cannot be found or read at all (the message names the path)."""


class ReadInterrupted(InputError):
    """An object that opened could not be read to its end: the connection failed past the retries,
    or the object changed or went away meanwhile. Not a fault of the data: the readers let it
    through, so the task fails and Spark runs it again, instead of counting the rest of the file as
    a broken tail."""


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


def _glob_regex(pattern: str) -> "re.Pattern[str]":
    """A key glob with local-glob semantics: `*`, `?`, `[..]` stay within one path segment, `**/`
    spans any number of directories (fnmatch's `*` would also match `/`)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _hidden_below(key: str, base: str) -> bool:
    """Is any path segment of `key` below `base` a metadata name (`_temporary/`, `.spark-staging/`)?
    Locally os.walk prunes such directories; on S3 they are just key prefixes."""
    rel = key[len(base):] if key.startswith(base) else key
    return any(seg.startswith(("_", ".")) for seg in rel.replace(os.sep, "/").split("/") if seg)


def _list_s3(pattern: str) -> List[str]:
    from botocore.exceptions import BotoCoreError, ClientError

    scheme = pattern.split("://", 1)[0] + "://"
    bucket, key = split_s3(pattern)
    # List under the longest glob-free prefix, then filter with the glob.
    cut = min([key.find(c) for c in "*?[" if c in key] or [len(key)])
    prefix = key[:cut]
    client = _s3_client()
    keys = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                keys.append(obj["Key"])
    except (ClientError, BotoCoreError) as e:  # NoSuchBucket, AccessDenied, no credentials, ...
        raise InputError("cannot list %s: %s" % (pattern, e)) from e
    base = prefix[:prefix.rfind("/") + 1]
    if _has_glob(key):
        rx = _glob_regex(key)
        keys = [k for k in keys if rx.match(k) and not _hidden_below(k, base)]
    elif key in keys:
        keys = [key]  # one object; `x.warc.gz` must not also pick up `x.warc.gz.bak`
    else:
        # A "directory" (or the bucket root): everything below it.
        d = key.rstrip("/") + "/" if key.strip("/") else ""
        keys = [k for k in keys if k.startswith(d) and not _hidden_below(k, d)]
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
            # Like a directory walk (and S3 listing), skip metadata directories such as _temporary/.
            cut = min(pattern.find(c) for c in "*?[" if c in pattern)
            base = os.path.dirname(pattern[:cut] + "x")
            found = [p for p in glob.glob(pattern, recursive=True)
                     if os.path.isfile(p) and not _hidden_below(os.path.relpath(p, base), "")]
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


class _S3Reader(io.RawIOBase):
    """Sequential reader of one S3 object that survives dropped connections.

    Hours-long WARC streams on a busy cluster do see resets and read timeouts; instead of failing the
    file we re-request the rest with a Range GET (up to `retries` times in a row). The object length
    from the first response tells a real end of file from a connection that closed early, and its
    ETag (sent as If-Match) makes sure the rest comes from the same version of the object: one
    replaced in between fails the read instead of splicing two versions.
    """

    def __init__(self, path: str, retries: int = 3):
        self._path = path
        self._bucket, self._key = split_s3(path)
        self._client = _s3_client()
        self._retries = retries
        self._pos = 0
        self._size = -1
        self._etag = None
        self._body = None
        self._request()

    def _request(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs = {"Bucket": self._bucket, "Key": self._key}
        if self._etag:
            kwargs["IfMatch"] = self._etag
        if self._pos:
            kwargs["Range"] = "bytes=%d-" % self._pos
        error = ReadInterrupted if self._size >= 0 else InputError  # opened before: a re-request
        try:
            resp = self._client.get_object(**kwargs)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "PreconditionFailed":
                raise error("cannot read %s: the object changed while it was read (at byte %d)"
                            % (self._path, self._pos)) from e
            raise error("cannot read %s: %s" % (self._path, e)) from e
        except BotoCoreError as e:  # the S3 error code is in the message
            raise error("cannot read %s: %s" % (self._path, e)) from e
        if self._size < 0:
            self._size = int(resp["ContentLength"])
            self._etag = resp["ETag"]
        self._body = resp["Body"]

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        from botocore.exceptions import BotoCoreError
        from urllib3.exceptions import HTTPError

        if self._pos >= self._size:
            return 0
        failures = 0
        while True:
            try:  # no body: the last re-request failed, so this read asks again (and fails again)
                data = self._body.read(len(buf)) if self._body is not None else b""
            except (BotoCoreError, HTTPError, OSError, ValueError):
                data = b""  # ValueError: read on a closed stream
            if data:
                buf[:len(data)] = data
                self._pos += len(data)
                return len(data)
            failures += 1
            if failures > self._retries:
                raise ReadInterrupted("cannot read %s: connection lost at byte %d of %d"
                                      % (self._path, self._pos, self._size))
            self._close_body()
            self._request()

    def _close_body(self) -> None:
        if self._body is not None:
            try:
                self._body.close()
            except Exception:  # already broken; nothing left to release
                pass
            self._body = None

    def close(self) -> None:
        self._close_body()
        super().close()


def open_read(path: str) -> IO[bytes]:
    """A buffered binary stream; S3 objects are streamed (1 MiB reads), never loaded whole."""
    if is_s3(path):
        return io.BufferedReader(_S3Reader(path), buffer_size=1 << 20)
    try:
        return open(path, "rb")
    except OSError as e:
        raise InputError("cannot read %s: %s" % (path, e)) from e


def file_size(path: str) -> int:
    if is_s3(path):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3(path)
        try:
            return int(_s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"])
        except (ClientError, BotoCoreError) as e:
            raise InputError("cannot read %s: %s" % (path, e)) from e
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
    """A file, or a directory with something in it (on S3: the key, or any key below `key/`)."""
    if is_s3(path):
        bucket, key = split_s3(path)
        client = _s3_client()
        key = key.rstrip("/")
        if not key:
            resp = client.list_objects_v2(Bucket=bucket, MaxKeys=1)
            return resp.get("KeyCount", 0) > 0
        # Prefix `key/`, not `key`: `s3://b/out` must not "exist" because `s3://b/output/x` does.
        resp = client.list_objects_v2(Bucket=bucket, Prefix=key + "/", MaxKeys=1)
        if resp.get("KeyCount", 0) > 0:
            return True
        resp = client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
        return any(o["Key"] == key for o in resp.get("Contents", []))
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
        if not key.strip("/"):
            raise ValueError("refusing to delete a whole bucket: %s" % path)
        client = _s3_client()
        prefix = key.rstrip("/") + "/"
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objs:  # a page holds at most 1000 keys, DeleteObjects' limit
                resp = client.delete_objects(Bucket=bucket, Delete={"Objects": objs, "Quiet": True})
                if resp.get("Errors"):  # partial failures come back as a 200 with a list
                    e = resp["Errors"][0]
                    raise OSError("cannot delete s3://%s/%s: %s %s (%d keys failed)"
                                  % (bucket, e.get("Key"), e.get("Code"), e.get("Message"),
                                     len(resp["Errors"])))
        return
    if os.path.isdir(path):
        shutil.rmtree(path)


def local_scratch_dir() -> str:
    return tempfile.mkdtemp(prefix="pipeline-")


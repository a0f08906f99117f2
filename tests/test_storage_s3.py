"""pipeline.storage against S3 as moto implements it (in-process `mock_aws`, and a loopback moto
server for code that runs in Spark's Python workers, which in-process mocking cannot reach)."""
import gzip
import hashlib
import io
import os

import pytest

boto3 = pytest.importorskip("boto3")
moto = pytest.importorskip("moto")

from pipeline import storage  # noqa: E402
from pipeline.storage import InputError  # noqa: E402

from conftest import FAKE_AWS_ENV as FAKE_CREDS  # noqa: E402

BUCKET = "test-bucket"

# A tree with the awkward cases: a subdirectory, Spark metadata (files and directories), a key that
# is a string prefix of another, and a sibling "directory" sharing the name's prefix.
TREE = [
    "warc/a.warc.gz",
    "warc/a.warc.gz.bak",
    "warc/b.warc.gz",
    "warc/sub/c.warc.gz",
    "warc/_SUCCESS",
    "warc/.part-0.crc",
    "warc/_temporary/0/d.warc.gz",
    "warcfoo/x.warc.gz",
]


@pytest.fixture
def s3(fake_aws_env):
    with moto.mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def _put_tree(client, keys):
    for k in keys:
        client.put_object(Bucket=BUCKET, Key=k, Body=k.encode())


def _rel(paths, base):
    return [p[len(base):] for p in paths]


def test_list_directory_skips_metadata_and_prefix_siblings(s3):
    _put_tree(s3, TREE)
    base = "s3://%s/" % BUCKET
    expected = ["warc/a.warc.gz", "warc/a.warc.gz.bak", "warc/b.warc.gz", "warc/sub/c.warc.gz"]
    assert _rel(storage.list_files([base + "warc"]), base) == expected
    assert _rel(storage.list_files([base + "warc/"]), base) == expected
    assert _rel(storage.list_files([base + "warc"], suffixes=[".warc.gz"]), base) == [
        "warc/a.warc.gz", "warc/b.warc.gz", "warc/sub/c.warc.gz"]
    # The bucket root is a directory too.
    assert _rel(storage.list_files([base]), base) == expected + ["warcfoo/x.warc.gz"]


def test_list_exact_key_is_only_that_object(s3):
    _put_tree(s3, TREE)
    # `a.warc.gz` is also a string prefix of `a.warc.gz.bak`: only the named object comes back.
    assert storage.list_files(["s3://%s/warc/a.warc.gz" % BUCKET]) == ["s3://%s/warc/a.warc.gz" % BUCKET]


def test_list_globs_follow_local_glob_semantics(s3, tmp_path):
    _put_tree(s3, TREE)
    for k in TREE:  # the same tree on local disk
        p = tmp_path / k
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(k.encode())
    s3_base, local_base = "s3://%s/" % BUCKET, str(tmp_path) + os.sep
    for pattern, expected in [
        ("warc/*.warc.gz", ["warc/a.warc.gz", "warc/b.warc.gz"]),  # `*` stays in one directory
        ("warc/**/*.warc.gz", ["warc/a.warc.gz", "warc/b.warc.gz", "warc/sub/c.warc.gz"]),
        ("warc/[ab].warc.gz*", ["warc/a.warc.gz", "warc/a.warc.gz.bak", "warc/b.warc.gz"]),
        ("warc/?.warc.gz", ["warc/a.warc.gz", "warc/b.warc.gz"]),
        ("warc*/x.*", ["warcfoo/x.warc.gz"]),
    ]:
        assert _rel(storage.list_files([s3_base + pattern]), s3_base) == expected, pattern
        local = _rel(storage.list_files([local_base + pattern]), local_base)
        assert [p.replace(os.sep, "/") for p in local] == expected, pattern


def test_list_keeps_scheme_and_merges_patterns_sorted(s3):
    _put_tree(s3, TREE)
    got = storage.list_files(["s3a://%s/warcfoo" % BUCKET, "s3a://%s/warc/b.warc.gz" % BUCKET,
                              "s3a://%s/warc/*.gz" % BUCKET])
    assert got == ["s3a://%s/%s" % (BUCKET, k)
                   for k in ["warc/a.warc.gz", "warc/b.warc.gz", "warcfoo/x.warc.gz"]]


@pytest.mark.parametrize("pattern", [
    "s3://test-bucket/nothing-here/",
    "s3://test-bucket/warc/*.parquet",
    "s3://no-such-bucket-xyz/warc/",
])
def test_list_missing_raises_input_error_naming_the_path(s3, pattern):
    _put_tree(s3, TREE)
    with pytest.raises(InputError) as err:
        storage.list_files([pattern])
    assert pattern in str(err.value)


def test_open_read_streams_in_bounded_reads(s3):
    data = os.urandom(3 * (1 << 20) + 12345)
    s3.put_object(Bucket=BUCKET, Key="big.bin", Body=data)
    with storage.open_read("s3://%s/big.bin" % BUCKET) as f:
        head = f.read(10)
        assert head == data[:10]
        # Only one 1 MiB buffer has been fetched so far, not the whole object.
        assert f.raw._pos <= 1 << 20
        rest = f.read()
    assert head + rest == data


def test_open_read_resumes_after_a_dropped_connection(s3):
    data = os.urandom(2 * (1 << 20) + 777)
    s3.put_object(Bucket=BUCKET, Key="big.bin", Body=data)
    f = storage.open_read("s3://%s/big.bin" % BUCKET)
    first = f.read(1 << 20)
    f.raw._body.close()  # the connection goes away mid-object
    rest = f.read()
    f.close()
    assert first + rest == data


def test_open_read_does_not_splice_an_object_replaced_mid_read(s3):
    old, new = bytes(range(256)) * 8192, bytes(reversed(range(256))) * 8192  # 2 MiB each
    s3.put_object(Bucket=BUCKET, Key="big.bin", Body=old)
    f = storage.open_read("s3://%s/big.bin" % BUCKET)
    assert f.read(1 << 20) == old[:1 << 20]
    s3.put_object(Bucket=BUCKET, Key="big.bin", Body=new)  # replaced, then the connection drops
    f.raw._body.close()
    with pytest.raises(InputError, match="changed while it was read"):
        f.read()
    f.close()


def test_open_read_gzip_roundtrip(s3):
    text = "".join("line %d\n" % i for i in range(20000)).encode()
    s3.put_object(Bucket=BUCKET, Key="t.txt.gz", Body=gzip.compress(text))
    with storage.open_read("s3://%s/t.txt.gz" % BUCKET) as raw, gzip.GzipFile(fileobj=raw) as f:
        assert f.read() == text


def test_open_read_and_file_size_of_missing_object(s3):
    for fn in (storage.open_read, storage.file_size):
        with pytest.raises(InputError) as err:
            fn("s3://%s/missing.warc.gz" % BUCKET)
        assert "s3://%s/missing.warc.gz" % BUCKET in str(err.value)


def test_write_read_text_and_file_size(s3):
    path = "s3://%s/out/_config.json" % BUCKET
    text = '{"name": "fineweb \u00e9\u00e8 \u4e2d\u6587"}\n'
    storage.write_text(path, text)
    assert storage.read_text(path) == text
    assert storage.file_size(path) == len(text.encode("utf-8"))
    assert s3.get_object(Bucket=BUCKET, Key="out/_config.json")["Body"].read() == text.encode()


def test_upload_file_multipart(s3, tmp_path):
    # Above boto3's 8 MiB threshold, so this goes through a multipart upload.
    data = os.urandom(9 * (1 << 20))
    local = tmp_path / "shard.bin"
    local.write_bytes(data)
    storage.upload_file(str(local), "s3://%s/out/shards/shard_000000.bin" % BUCKET)
    body = s3.get_object(Bucket=BUCKET, Key="out/shards/shard_000000.bin")["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()


def test_exists(s3):
    _put_tree(s3, TREE)
    assert storage.exists("s3://%s/warc/a.warc.gz" % BUCKET)
    assert storage.exists("s3://%s/warc" % BUCKET)
    assert storage.exists("s3://%s/warc/" % BUCKET)
    assert storage.exists("s3://%s/" % BUCKET)
    assert not storage.exists("s3://%s/war" % BUCKET)  # a string prefix is not a directory
    assert not storage.exists("s3://%s/warc/a.warc" % BUCKET)
    assert not storage.exists("s3://%s/nothing" % BUCKET)


def test_remove_tree_deletes_more_than_one_page_and_nothing_else(s3):
    keys = ["out/part-%05d.parquet" % i for i in range(1003)] + ["out/sub/_SUCCESS"]
    keep = ["output2/x", "out.txt", "other/out/y"]
    _put_tree(s3, keys + keep)
    storage.remove_tree("s3://%s/out" % BUCKET)
    left = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))
    assert left == sorted(keep)
    storage.remove_tree("s3://%s/out/" % BUCKET)  # already gone: a no-op
    with pytest.raises(ValueError):
        storage.remove_tree("s3://%s/" % BUCKET)


def test_join_s3():
    assert storage.join("s3://b/out/", "dedup", "/kept/") == "s3://b/out/dedup/kept"
    assert storage.split_s3("s3a://b/k/x.parquet") == ("b", "k/x.parquet")


# --- Spark's Python workers are separate processes: a loopback moto server reaches them. ------------

@pytest.fixture(scope="module")
def moto_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield "http://%s:%d" % (host, port)
    server.stop()


@pytest.fixture
def s3_server(moto_server, monkeypatch, spark):
    """Point this process and Spark's Python workers (via sc.environment) at the moto server."""
    env = dict(FAKE_CREDS, AWS_ENDPOINT_URL=moto_server)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    sc = spark.sparkContext
    saved = dict(sc.environment)
    sc.environment.update(env)
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield client
    sc.environment.clear()
    sc.environment.update(saved)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for o in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=o["Key"])
    client.delete_bucket(Bucket=BUCKET)


def test_spark_workers_stream_s3_objects(s3_server, spark):
    blobs = {"in/%d.bin" % i: os.urandom(200000 + i) for i in range(6)}
    for k, v in blobs.items():
        s3_server.put_object(Bucket=BUCKET, Key=k, Body=v)
    paths = storage.list_files(["s3://%s/in/" % BUCKET])

    def digest(path):
        from pipeline import storage as st  # imported in the worker process

        with st.open_read(path) as f:
            return path, hashlib.sha256(f.read()).hexdigest(), os.getpid()

    rows = spark.sparkContext.parallelize(paths, 3).map(digest).collect()
    assert {p: h for p, h, _ in rows} == {
        "s3://%s/%s" % (BUCKET, k): hashlib.sha256(v).hexdigest() for k, v in blobs.items()}
    assert os.getpid() not in {pid for _, _, pid in rows}  # really read by other processes

    # Workers write too (shards and configs are written this way).
    spark.sparkContext.parallelize(range(3), 3).foreach(
        lambda i: __import__("pipeline.storage").storage.write_text(
            "s3://%s/written/%d.txt" % (BUCKET, i), "from worker %d" % i))
    assert [storage.read_text("s3://%s/written/%d.txt" % (BUCKET, i)) for i in range(3)] == [
        "from worker %d" % i for i in range(3)]


def _warc_files():
    """Three real WARC files: two good ones (with records ingest must drop) and a truncated one."""
    from ingest_inputs import WarcBuilder, page_bytes

    files = {}
    for n in range(2):
        b = WarcBuilder(gzip=True)
        b.warcinfo()
        for i in range(5):
            b.request("http://site%d.example/%d" % (n, i))
            b.response("http://site%d.example/%d" % (n, i), page_bytes(10 * n + i))
        b.response("http://site%d.example/gone" % n, b"<html>gone</html>", status="404 Not Found")
        files["crawl/part-%d.warc.gz" % n] = b.bytes()
    b = WarcBuilder(gzip=True)
    for i in range(4):
        b.response("http://cut.example/%d" % i, page_bytes(100 + i))
    data = b.bytes()
    files["crawl/part-2.warc.gz"] = data[:len(data) - 700]  # the last record's gzip member is cut
    return files


def test_ingest_job_over_s3_matches_reading_the_same_bytes_locally(s3_server, spark, tmp_path):
    """The ingest stage with s3:// input: the driver lists the bucket and Spark's Python workers stream
    the WARC files through storage.open_read. (Output stays local: Spark's own s3a:// writer needs
    hadoop-aws jars, which local mode here does not have; on EMR, EMRFS writes s3:// natively.)"""
    from pipeline.ingest import core, spark_plan
    from pipeline.ingest.config import IngestConfig
    from pipeline.ingest.records import IngestOptions

    files = _warc_files()
    expected = {}  # the same bytes read from local files by the plain-Python reader, no Spark, no S3
    for key, data in files.items():
        s3_server.put_object(Bucket=BUCKET, Key=key, Body=data)
        local = tmp_path / key
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        for r in core.process_file(str(local), "warc", IngestOptions()):
            expected[(key, r.pos)] = r

    out = str(tmp_path / "out")
    stats = spark_plan.run(spark, IngestConfig(input=("s3://%s/crawl/" % BUCKET,), output=out))
    docs = spark.read.parquet(out + "/docs").collect()
    dropped = spark.read.parquet(out + "/ingest/dropped").collect()

    kept = [r for r in expected.values() if r.reason is None]
    assert stats["files"] == 3 and stats["records_in"] == len(expected)
    assert stats["records_out"] == len(docs) == len(kept) >= 10
    assert {"bad_record", "http_status"} <= set(stats["dropped"]) and set(stats["not_documents"]) == {"not_response"}
    src = lambda key: "s3://%s/%s" % (BUCKET, key)  # noqa: E731
    assert sorted((d.id, d.url, d.text, d.warc_date, d.source, d.pos) for d in docs) == sorted(
        (r.id, r.url, r.text, r.warc_date, src(k), r.pos) for (k, _), r in expected.items() if r.reason is None)
    assert sorted((d.source, d.record_id or "", d.reason) for d in dropped) == sorted(
        (src(k), r.id or "", r.reason) for (k, _), r in expected.items() if r.reason is not None)


@pytest.mark.parametrize("reader", ["warcio", "fastwarc"])
def test_a_read_cut_off_mid_file_fails_the_task_instead_of_ending_the_file(s3, reader):
    """The storage failed, not the data: ingest's readers let ReadInterrupted through (Spark then
    retries the task) rather than counting the rest of the file as one broken-tail drop."""
    from ingest_inputs import WarcBuilder, page_bytes

    from pipeline.ingest.records import IngestOptions
    from pipeline.ingest.warc import iter_warc

    b = WarcBuilder(gzip=False)
    for i in range(300):
        b.response("http://ex.com/%d" % i, page_bytes(i, words=1500))  # ~3 MB: more than one buffer
    path = "s3://%s/crawl.warc" % BUCKET
    s3.put_object(Bucket=BUCKET, Key="crawl.warc", Body=b.bytes())
    stream = storage.open_read(path)
    records = iter_warc(stream, path, IngestOptions(warc_reader=reader), reopen=lambda: storage.open_read(path))
    assert next(records).reason is None
    s3.put_object(Bucket=BUCKET, Key="crawl.warc", Body=b"replaced")  # the object changes...
    stream.raw._body.close()  # ...and the connection drops: the resumed read must not go on
    with pytest.raises(storage.ReadInterrupted, match="changed while it was read"):
        list(records)
    stream.close()


def test_a_jsonl_read_cut_off_mid_file_fails_the_task(s3):
    from pipeline.ingest import core, tabular
    from pipeline.ingest.records import IngestOptions

    body = b"".join(b'{"text": "document %d %s"}\n' % (i, b"x" * 1000) for i in range(3000))  # ~3 MB
    path = "s3://%s/docs.jsonl" % BUCKET
    s3.put_object(Bucket=BUCKET, Key="docs.jsonl", Body=body)
    stream = storage.open_read(path)
    records = tabular.iter_jsonl(core._buffered(stream), path, IngestOptions())
    assert next(records).reason is None
    s3.delete_object(Bucket=BUCKET, Key="docs.jsonl")
    stream.raw._body.close()
    with pytest.raises(storage.ReadInterrupted):
        list(records)
    stream.close()

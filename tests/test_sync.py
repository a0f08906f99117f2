"""Training logs and weights to S3 and back, against a moto S3 server on 127.0.0.1: `pipeline train
--sync-to` during a real (tiny, CPU) training run, `pipeline upload-logs`, `pipeline plot s3://...`."""
import os
import time

import numpy as np
import pytest

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")
torch = pytest.importorskip("torch")

from pipeline.gpt import sync  # noqa: E402
from pipeline.gpt import train as tr  # noqa: E402
from pipeline.gpt.logs import parse_log  # noqa: E402
from pipeline.shards.llmc import write_shard  # noqa: E402

BUCKET = "runs"
TINY = ["-e", "d2", "-1c", "32", "-1h", "2", "-b", "4", "-t", "32", "--device", "cpu", "--quiet"]
pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture
def s3(moto_s3_server):
    return boto3.client("s3")


def _objects(client, prefix=""):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
            for p in pages for o in p.get("Contents", [])}


def _files(d):
    return {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d))}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    stream = np.tile(np.random.default_rng(0).integers(0, 50257, size=50), 120)
    write_shard(str(d / "x_train_000001.bin"), stream[:5000])
    write_shard(str(d / "x_val_000000.bin"), stream[:1000])
    return str(d / "x_train_*.bin"), str(d / "x_val_*.bin")


def test_train_sync_to_uploads_log_and_every_checkpoint(s3, shards, tmp_path):
    s3.create_bucket(Bucket=BUCKET)
    out = str(tmp_path / "log")
    train, val = shards
    rc = tr.main(["-i", train, "-j", val, "-o", out, "-x", "6", "-n", "2", "-v", "3", "-m", "1", "-s", "0",
                  "--save-dtype", "fp32", "--sync-to", "s3://%s/g5/log" % BUCKET] + TINY)
    assert rc == 0
    local = _files(out)
    assert {"model_00000002.bin", "model_00000004.bin", "model_00000006.bin", "DONE_00000006",
            "main.log"} <= set(local)
    # Everything the run wrote is in S3, byte for byte (the final pass ran after the last step).
    assert _objects(s3, "g5/log/") == {"g5/log/" + n: data for n, data in local.items()}


def test_sync_uploads_while_training_and_retries_failures(s3, tmp_path, capsys):
    """The watcher on its own, driven pass by pass: checkpoint files wait for their DONE marker, a
    failing upload warns and is retried with backoff, and an exception never escapes."""
    run = tmp_path / "run"
    run.mkdir()
    now = [0.0]
    syncer = sync.RunSync(str(run), "s3://%s/r1/" % BUCKET, interval=5, clock=lambda: now[0])

    (run / "main.log").write_text("s:0 trl:10.9000 lr:0.000100 norm:1.00\n")
    (run / "model_00000002.bin").write_bytes(b"weights")  # being written: no DONE marker yet
    # No bucket yet: the upload fails, a warning says so, nothing raises.
    assert syncer.sync_once() == ["main.log"]
    err = capsys.readouterr().err
    assert "upload of main.log to s3://runs/r1/main.log failed" in err and "retrying in 5s" in err

    s3.create_bucket(Bucket=BUCKET)
    now[0] = 1.0  # still backing off: not retried yet
    assert syncer.sync_once() == ["main.log"] and _objects(s3) == {}
    now[0] = 6.0
    assert syncer.sync_once() == []
    assert _objects(s3) == {"r1/main.log": b"s:0 trl:10.9000 lr:0.000100 norm:1.00\n"}

    (run / "state_00000002_00000.bin").write_bytes(b"state")
    (run / "DONE_00000002").write_bytes(b"")
    with open(str(run / "main.log"), "a") as f:
        f.write("s:1 trl:9.5000 lr:0.000200 norm:1.10\n")
    assert syncer.sync_once() == []
    assert _objects(s3) == {"r1/main.log": (run / "main.log").read_bytes(),
                            "r1/model_00000002.bin": b"weights", "r1/state_00000002_00000.bin": b"state",
                            "r1/DONE_00000002": b""}
    n = syncer.uploads
    assert syncer.sync_once() == [] and syncer.uploads == n  # nothing changed, nothing sent


def test_done_marker_waits_for_its_checkpoint(s3, tmp_path, capsys):
    s3.create_bucket(Bucket=BUCKET)
    run = tmp_path / "run"
    run.mkdir()
    (run / "model_00000004.bin").write_bytes(b"w")
    (run / "DONE_00000004").write_bytes(b"")
    failing = {"model_00000004.bin"}

    def upload(path, uri):
        if os.path.basename(path) in failing:
            raise OSError("connection reset")
        from pipeline import storage
        storage.upload_file(path, uri)

    now = [0.0]
    syncer = sync.RunSync(str(run), "s3://%s/r2" % BUCKET, interval=1, upload=upload, clock=lambda: now[0])
    assert syncer.sync_once() == ["model_00000004.bin", "DONE_00000004"]
    assert _objects(s3) == {}  # a DONE marker in S3 must mean the checkpoint is there
    failing.clear()
    assert syncer.sync_once(force=True) == []
    assert set(_objects(s3)) == {"r2/model_00000004.bin", "r2/DONE_00000004"}
    assert "connection reset" in capsys.readouterr().err


def test_the_thread_uploads_during_the_run_and_close_bounds_the_wait(s3, tmp_path, capsys):
    s3.create_bucket(Bucket=BUCKET)
    run = tmp_path / "run"
    run.mkdir()
    with sync.RunSync(str(run), "s3://%s/r3" % BUCKET, interval=0.1):
        (run / "main.log").write_text("s:0 trl:1.0000 lr:0.000100 norm:1.00\n")
        deadline = time.monotonic() + 30
        while "r3/main.log" not in _objects(s3) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "r3/main.log" in _objects(s3)  # uploaded while the "run" is still going
    # An unreachable destination: close() gives up after its timeout and lists what is missing.
    syncer = sync.RunSync(str(run), "s3://no-such-bucket/x", interval=0.1).start()
    t0 = time.monotonic()
    assert syncer.close(timeout=1.0) == ["main.log"]
    assert time.monotonic() - t0 < 20
    assert "not uploaded to s3://no-such-bucket/x: main.log" in capsys.readouterr().err


def test_sync_to_needs_an_s3_uri_and_a_log_dir(shards, capsys):
    train, _ = shards
    assert tr.main(["-i", train, "-x", "1", "--sync-to", "/tmp/x", "-o", "/tmp/y"] + TINY) == 2
    assert "s3://bucket/prefix" in capsys.readouterr().err
    assert tr.main(["-i", train, "-x", "1", "--sync-to", "s3://b/p"] + TINY) == 2
    assert "--sync-to needs -o" in capsys.readouterr().err


def test_upload_logs_layout_and_plot_from_s3(s3, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from pipeline.cli import main as cli

    s3.create_bucket(Bucket=BUCKET)
    logdir = tmp_path / "log124M"
    logdir.mkdir()
    lines = ["s:%d trl:%.4f lr:0.000600 norm:1.00" % (s, 10 - s) for s in range(5)] + ["s:4 tel:5.5000"]
    (logdir / "main.log").write_text("\n".join(lines) + "\n")
    (logdir / "model_00000004.bin").write_bytes(b"w4")
    (logdir / "DONE_00000004").write_bytes(b"")
    (logdir / "model_00000008.bin").write_bytes(b"partial")  # no DONE: an interrupted write

    assert cli(["upload-logs", BUCKET, str(logdir), "g5-run1"]) == 0
    assert sorted(_objects(s3)) == ["g5-run1/log124M/DONE_00000004", "g5-run1/log124M/main.log",
                                    "g5-run1/log124M/model_00000004.bin"]
    assert capsys.readouterr().out.split() == [
        "s3://runs/g5-run1/log124M/main.log", "s3://runs/g5-run1/log124M/model_00000004.bin",
        "s3://runs/g5-run1/log124M/DONE_00000004"]

    from pipeline.gpt.plot import fetch_s3_logs
    (fetched,) = fetch_s3_logs(["s3://%s/g5-run1/log124M" % BUCKET], str(tmp_path / "scratch"))
    assert parse_log(fetched) == parse_log(str(logdir))

    png = tmp_path / "loss.png"
    assert cli(["plot", "s3://%s/g5-run1/log124M" % BUCKET, str(logdir), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert parse_log(str(logdir))["val"] == [(4, 5.5)]
    assert cli(["plot", "s3://%s/g5-run1/nothing" % BUCKET, "-o", str(png)]) == 2
    assert "no main.log in s3://runs/g5-run1/nothing" in capsys.readouterr().err
    assert cli(["upload-logs", BUCKET, str(tmp_path / "missing"), "x"]) == 1

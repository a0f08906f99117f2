"""The EMR run, rehearsed for real on loopback: bootstrap a simulated Amazon Linux 2023 node with
emr/bootstrap.sh, then spark-submit the uploaded bundle and entry script, in client mode, to a Spark
standalone cluster of two one-core workers whose executors run the Python that bootstrap built.

See tests/emr_node.py for what is real and what is simulated. Needs pyenv's Python 3.9.18, Java and
PyPI (the bootstrap pip-installs the pinned requirements; pip's cache makes reruns fast).
"""
import glob
import json
import os
import shutil
import struct

import pytest

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

from emr import launch, package, spec  # noqa: E402
from emr.config import LaunchConfig  # noqa: E402
import emr_node  # noqa: E402  (tests/ is on sys.path)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "rehearsal-bucket"
PREFIX = "s3://%s/pipeline" % BUCKET
# emr/bootstrap.sh as it was before the virtualenv: pip-installs into the node's system Python.
SYSTEM_PIP_BOOTSTRAP = os.path.join(REPO, "tests", "emr_fixtures", "bootstrap_system_pip.sh")
SAMPLE_DOCS = 240

pytestmark = [
    pytest.mark.skipif(not os.path.exists(emr_node.PY39), reason="needs Python 3.9 at %s" % emr_node.PY39),
    pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java"),
    pytest.mark.skipif(emr_node.spark_home() is None, reason="needs pyspark"),
    # Above the suite's 900 s: a cold pip cache downloads ~120 MB of wheels. Every wait inside is
    # bounded on its own (bootstrap 1500 s, spark-submit 1500 s, cluster start 180 s, stop 30 s).
    pytest.mark.timeout(3600),
]


@pytest.fixture
def s3_server(moto_s3_server):
    """The moto S3 server holding what `emr.launch upload` puts there."""
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    bpe = package.find_bpe_file()
    if not bpe:
        pytest.skip("no r50k_base rank file in the package or TIKTOKEN_CACHE_DIR")
    assert launch.main(["upload", "--s3-prefix", PREFIX, "--bpe-file", bpe]) == 0
    return moto_s3_server


def _node(tmp_path, endpoint):
    node = emr_node.Node(str(tmp_path / "node"), endpoint)
    node.build()
    return node


def _bootstrap(node, script):
    return node.bootstrap(script, PREFIX + "/code", venv=spec.NODE_VENV, tiktoken_dir=spec.NODE_TIKTOKEN_DIR)


def test_system_pip_bootstrap_fails_on_the_simulated_al2023_node(s3_server, tmp_path):
    """The simulation is faithful enough to catch what breaks on emr-7.x: pip cannot replace the
    RPM-owned urllib3 in the system Python, and the node fails."""
    node = _node(tmp_path, s3_server)
    res = _bootstrap(node, SYSTEM_PIP_BOOTSTRAP)
    assert res.returncode != 0, res.stdout
    assert "Cannot uninstall" in res.stdout and "RECORD file not found" in res.stdout, res.stdout[-3000:]


def test_bootstrap_fails_the_node_when_nothing_was_uploaded(s3_server, tmp_path):
    node = _node(tmp_path, s3_server)
    res = node.bootstrap(package.BOOTSTRAP_SH, "s3://%s/not-uploaded/code" % BUCKET,
                         venv=spec.NODE_VENV, tiktoken_dir=spec.NODE_TIKTOKEN_DIR, timeout=300)
    assert res.returncode != 0
    assert not os.path.exists(node.path(spec.NODE_VENV))


def _count_warc_records(warc_dir):
    """Independent of the pipeline: every WARC record of the sample (requests and warcinfo
    included, as ingest counts them), read with warcio."""
    from warcio.archiveiterator import ArchiveIterator

    n = 0
    for path in sorted(glob.glob(os.path.join(warc_dir, "*.warc.gz"))):
        with open(path, "rb") as f:
            n += sum(1 for _ in ArchiveIterator(f))
    return n


def _bin_tokens(path):
    """llm.c shard: a header of 256 int32 (magic 20240520, version 1, token count), uint16 tokens."""
    with open(path, "rb") as f:
        header = struct.unpack("<256i", f.read(1024))
        body = f.read()
    assert header[0] == 20240520 and header[1] == 1, path
    assert len(body) == 2 * header[2], path
    return struct.unpack("<%dH" % header[2], body)


def test_multi_worker_rehearsal_of_the_emr_run(s3_server, tmp_path):
    import pandas as pd

    node = _node(tmp_path, s3_server)
    res = _bootstrap(node, package.BOOTSTRAP_SH)
    assert res.returncode == 0, res.stdout[-5000:]
    assert "[bootstrap] done" in res.stdout and "GPT-2 BPE ok" in res.stdout, res.stdout
    # The job's Python is 3.9, like the driver's must be (Spark refuses mixed minor versions).
    ver = emr_node.run([node.path(spec.NODE_PYTHON), "-c", "import sys; print(sys.version_info[:2])"], 60,
                       env=node.env)
    assert ver.stdout.strip() == "(3, 9)", ver.stdout
    # The venv holds exactly the frozen set: constraints-emr.txt is a full freeze of the install.
    freeze = emr_node.run([node.path(spec.NODE_PYTHON), "-m", "pip", "freeze"], 120, env=node.env)
    pinned = [l.strip() for l in open(package.CONSTRAINTS) if l.strip() and not l.startswith("#")]
    assert sorted(freeze.stdout.split(), key=str.lower) == sorted(pinned, key=str.lower)
    # The node's own Python is untouched: its RPM-owned urllib3 is still 1.25.10.
    out = emr_node.run([node.python, "-c", "import urllib3; print(urllib3.__version__)"], 60, env=node.env)
    assert out.stdout.strip() == "1.25.10"

    # What the cluster's configuration tells Spark (spark-env's export), mapped onto the node.
    cfg = LaunchConfig(s3_prefix=PREFIX, input=str(tmp_path / "sample" / "warc"),
                       output=str(tmp_path / "out"))
    env_conf = [c for c in spec.configurations(cfg) if c["Classification"] == "spark-env"][0]
    exported = env_conf["Configurations"][0]["Properties"]
    spark_env = dict(node.env, **{k: node.path(v) for k, v in exported.items() if v.startswith("/opt/")})
    assert os.access(spark_env["PYSPARK_PYTHON"], os.X_OK), exported

    # The job's input, and the code exactly as the cluster gets it: bundle and entry script from S3.
    res = emr_node.run([os.sys.executable, "-m", "pipeline", "sample", "--out", str(tmp_path / "sample"),
                        "--docs", str(SAMPLE_DOCS)], 600, cwd=REPO)
    assert res.returncode == 0, res.stdout
    run_dir = tmp_path / "run"
    (run_dir / "entry").mkdir(parents=True)
    s3 = boto3.client("s3")
    s3.download_file(BUCKET, "pipeline/code/pipeline-bundle.zip", str(run_dir / "pipeline-bundle.zip"))
    s3.download_file(BUCKET, "pipeline/code/jobs/run_pipeline.py", str(run_dir / "entry" / "run_pipeline.py"))
    step = spec.spark_submit_args(cfg)
    script = [a for a in step if a.endswith("/jobs/run_pipeline.py")][0]
    job_args = step[step.index(script) + 1:]
    assert "--bpe-file" in job_args  # read from the moto S3, as on EMR

    cluster = emr_node.StandaloneCluster(emr_node.spark_home(), str(tmp_path / "spark"), spark_env)
    try:
        cluster.start()
        res = emr_node.submit(emr_node.spark_home(), [
            "--master", cluster.url, "--deploy-mode", "client",
            "--conf", "spark.ui.enabled=false", "--conf", "spark.executor.memory=768m",
            "--conf", "spark.sql.shuffle.partitions=4", "--conf", "spark.default.parallelism=4",
            "--py-files", "pipeline-bundle.zip", "entry/run_pipeline.py"] + job_args,
            env=spark_env, cwd=str(run_dir), timeout=1500)
        assert res.returncode == 0, res.stdout[-8000:] + cluster.logs()
        executor_logs = cluster.executor_logs()
    finally:
        cluster.stop()

    # Both workers ran executors, and those ran tasks.
    for work_dir, logs in executor_logs.items():
        assert logs, "no executor ran in %s" % work_dir
        assert any("Finished task" in open(p, errors="replace").read() for p in logs), work_dir

    summary = json.load(open(str(tmp_path / "out" / "summary.json")))
    dropped = sum(summary["dropped"].values())
    not_documents = sum(summary["not_documents"].values())
    assert summary["records_in"] == not_documents + summary["kept"] + summary["duplicates_removed"] + dropped
    assert summary["records_in"] == _count_warc_records(str(tmp_path / "sample" / "warc"))
    assert summary["not_documents"].get("not_response", 0) > 0
    docs = pd.read_parquet(str(tmp_path / "sample" / "parquet" / "docs.parquet"))
    assert summary["kept"] + summary["duplicates_removed"] == len(docs) == SAMPLE_DOCS
    # Near-duplicate removal against the sample's exact-Jaccard ground truth.
    from pipeline import evaluate

    report = pd.read_parquet(str(tmp_path / "out" / "dedup" / "report"))
    truth = pd.read_parquet(str(tmp_path / "sample" / "truth.parquet"))
    scores = evaluate.score(report, truth)
    assert scores["docs"]["missing"] == 0 and scores["docs"]["extra"] == 0
    assert scores["pairs"]["f1"] >= 0.95, scores
    # llm.c shards: every kept document once, introduced by <|endoftext|>; as many tokens as tokenize counted.
    shards = sorted(glob.glob(str(tmp_path / "out" / "shards" / "*.bin")))
    tokens = [t for p in shards for t in _bin_tokens(p)]
    assert tokens.count(50256) == summary["kept"]
    n_tokens = pd.read_parquet(str(tmp_path / "out" / "tokens"), columns=["n_tokens"])["n_tokens"].sum()
    assert len(tokens) == n_tokens

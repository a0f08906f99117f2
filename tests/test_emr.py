"""EMR tooling against moto: the requests a real EMR would receive, the uploaded objects, the bundle."""
import dataclasses
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import zipfile

import pytest

boto3 = pytest.importorskip("boto3")
moto = pytest.importorskip("moto")

from emr import launch, package, spec  # noqa: E402
from emr.config import LaunchConfig  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY39 = os.path.expanduser("~/.pyenv/versions/3.9.18/bin/python")
BUCKET = "emr-test-bucket"
PREFIX = "s3://%s/pipeline" % BUCKET
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"


def _bpe_file():
    path = package.find_bpe_file()
    if not path:
        pytest.skip("no r50k_base rank file in TIKTOKEN_CACHE_DIR")
    return path


@pytest.fixture
def aws(fake_aws_env):
    with moto.mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        yield s3, boto3.client("emr", region_name="us-east-1")


def _run(capsys, *argv):
    rc = launch.main(list(argv))
    out = capsys.readouterr().out
    return rc, (json.loads(out) if out.strip().startswith("{") else out)


def _keys(s3, prefix=""):
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


def _body(s3, key):
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


# --- the bundle -----------------------------------------------------------------------------------

def test_bundle_contents_and_byte_identical_rebuilds(tmp_path):
    a, b = tmp_path / "a.zip", tmp_path / "b.zip"
    assert package.build_bundle(str(a)) == package.build_bundle(str(b))
    assert a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(str(a)) as zf:
        names = zf.namelist()
        infos = zf.infolist()
    assert "pipeline/__init__.py" in names and "jobs/__init__.py" in names
    if os.path.exists(os.path.join(REPO, "jobs", "run_pipeline.py")):
        assert "jobs/run_pipeline.py" in names
    assert names == sorted(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or n.startswith(("emr/", "tests/"))]
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    with zipfile.ZipFile(str(a)) as zf:
        assert zf.read("pipeline/storage.py") == open(os.path.join(REPO, "pipeline", "storage.py"), "rb").read()


def test_bundle_ignores_mtimes_permissions_and_caches(tmp_path):
    # The same sources copied elsewhere, with other mtimes, modes and stray bytecode: same bytes.
    for pkg in package.PACKAGES:
        shutil.copytree(os.path.join(REPO, pkg), str(tmp_path / pkg),
                        ignore=shutil.ignore_patterns("__pycache__"))
    for root, _, files in os.walk(str(tmp_path)):
        for f in files:
            p = os.path.join(root, f)
            os.utime(p, (2000000000, 2000000000))
            os.chmod(p, 0o600)
    (tmp_path / "pipeline" / "__pycache__").mkdir()
    (tmp_path / "pipeline" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    (tmp_path / "pipeline" / "stray.pyc").write_bytes(b"junk")
    assert package.build_bundle_bytes(str(tmp_path)) == package.build_bundle_bytes(REPO)


@pytest.mark.skipif(not os.path.exists(PY39), reason="needs EMR's Python 3.9 at %s" % PY39)
def test_bundle_imports_and_compiles_on_python39(tmp_path):
    """What EMR's python3.9 does with the zip: every module compiles, the core ones import."""
    zpath = tmp_path / "bundle.zip"
    package.build_bundle(str(zpath))
    script = (
        "import sys, zipfile\n"
        "z = sys.argv[1]; sys.path.insert(0, z)\n"
        "bad = []\n"
        "for n in zipfile.ZipFile(z).namelist():\n"
        "    if n.endswith('.py'):\n"
        "        try: compile(zipfile.ZipFile(z).read(n), n, 'exec')\n"
        "        except SyntaxError as e: bad.append('%s: %s' % (n, e))\n"
        "assert not bad, bad\n"
        "import pipeline, pipeline.storage, pipeline.config, pipeline.accounting, jobs\n"
        "assert pipeline.storage.__file__.startswith(z), pipeline.storage.__file__\n"
        "print('ok')\n")
    res = subprocess.run([PY39, "-c", script, str(zpath)], capture_output=True, text=True,
                         cwd=str(tmp_path), timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


# --- upload ---------------------------------------------------------------------------------------

def test_upload_puts_every_artifact_under_the_prefix(aws, capsys):
    s3, _ = aws
    before = package.build_bundle_bytes()
    rc, out = _run(capsys, "upload", "--s3-prefix", PREFIX + "/", "--bpe-file", _bpe_file())
    after = package.build_bundle_bytes()  # others may be editing the tree while this runs
    assert rc == 0
    jobs = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "jobs"))
                  if f.endswith(".py") and not f.startswith("_"))
    expected = sorted(["pipeline/code/pipeline-bundle.zip", "pipeline/code/bootstrap.sh",
                       "pipeline/code/requirements-emr.txt", "pipeline/code/constraints-emr.txt",
                       "pipeline/code/bpe/r50k_base.tiktoken",
                       "pipeline/code/manifest.json", "pipeline/code/_config.json"]
                      + ["pipeline/code/jobs/%s.py" % j for j in jobs])
    assert _keys(s3) == expected
    assert _body(s3, "pipeline/code/pipeline-bundle.zip") in (before, after)
    assert _body(s3, "pipeline/code/bootstrap.sh") == open(package.BOOTSTRAP_SH, "rb").read()
    for j in jobs:
        assert _body(s3, "pipeline/code/jobs/%s.py" % j) == open(os.path.join(REPO, "jobs", j + ".py"), "rb").read()
    assert hashlib.sha256(_body(s3, "pipeline/code/bpe/r50k_base.tiktoken")).hexdigest() == R50K_SHA256
    manifest = json.loads(_body(s3, "pipeline/code/manifest.json"))
    assert manifest == out["upload"]
    for uri, entry in manifest.items():
        assert hashlib.sha256(_body(s3, uri.split("/", 3)[3])).hexdigest() == entry["sha256"], uri
    saved = json.loads(_body(s3, "pipeline/code/_config.json"))
    assert saved["job"] == "LaunchConfig" and saved["config"]["s3_prefix"] == PREFIX + "/"


def test_upload_wheelhouse_then_without_leaves_no_stale_wheels(aws, capsys, tmp_path):
    s3, _ = aws
    (tmp_path / "xxhash-3.5.0-cp39-cp39-manylinux_2_17_x86_64.whl").write_bytes(b"wheel bytes")
    (tmp_path / "notes.txt").write_text("not a wheel")
    rc, _ = _run(capsys, "upload", "--s3-prefix", PREFIX, "--bpe-file", _bpe_file(),
                 "--wheelhouse", str(tmp_path))
    assert rc == 0
    assert _keys(s3, "pipeline/code/wheels/") == [
        "pipeline/code/wheels/xxhash-3.5.0-cp39-cp39-manylinux_2_17_x86_64.whl"]
    rc, _ = _run(capsys, "upload", "--s3-prefix", PREFIX, "--bpe-file", _bpe_file())
    assert rc == 0
    assert _keys(s3, "pipeline/code/wheels/") == []


def test_upload_rejects_a_wrong_bpe_file(aws, capsys, tmp_path):
    s3, _ = aws
    fake = tmp_path / "r50k_base.tiktoken"
    fake.write_bytes(b"IQ== 0\n")
    assert launch.main(["upload", "--s3-prefix", PREFIX, "--bpe-file", str(fake)]) == 2
    assert "not tiktoken's r50k_base" in capsys.readouterr().err
    assert _keys(s3) == []


# --- the cluster and its steps, as moto's EMR records them ----------------------------------------

def _create(capsys, *extra):
    rc, out = _run(capsys, "create-cluster", "--s3-prefix", PREFIX, *extra)
    assert rc == 0, out
    return out["cluster_id"]


def test_create_cluster_requests_what_we_asked_for(aws, capsys):
    s3, emr = aws
    assert _run(capsys, "upload", "--s3-prefix", PREFIX, "--bpe-file", _bpe_file())[0] == 0
    cid = _create(capsys, "--tag", "owner=student")

    c = emr.describe_cluster(ClusterId=cid)["Cluster"]
    assert c["ReleaseLabel"] == "emr-7.7.0"
    assert [a["Name"] for a in c["Applications"]] == ["Spark"]
    assert c["LogUri"] == "s3://%s/pipeline/logs/" % BUCKET
    assert c["ServiceRole"] == "EMR_DefaultRole"
    assert c["Ec2InstanceAttributes"]["IamInstanceProfile"] == "EMR_EC2_DefaultRole"
    assert c["AutoTerminate"] is False  # KeepJobFlowAliveWhenNoSteps
    assert {t["Key"]: t["Value"] for t in c["Tags"]}["owner"] == "student"
    conf = {x["Classification"]: x for x in c["Configurations"]}
    assert conf["spark"]["Properties"] == {"maximizeResourceAllocation": "false"}
    props = conf["spark-defaults"]["Properties"]
    assert props["spark.executor.cores"] == "2"
    assert props["spark.executor.memory"] == "6g" and props["spark.executor.memoryOverhead"] == "4g"
    assert props["spark.pyspark.python"] == "/usr/bin/python3"
    env = conf["spark-env"]["Configurations"][0]["Properties"]
    assert env["PYSPARK_PYTHON"] == "/usr/bin/python3"
    # The region came from the environment (AWS_DEFAULT_REGION) and is handed to the nodes' boto3.
    assert env["AWS_DEFAULT_REGION"] == props["spark.executorEnv.AWS_DEFAULT_REGION"] == "us-east-1"

    groups = {g["InstanceGroupType"]: g for g in emr.list_instance_groups(ClusterId=cid)["InstanceGroups"]}
    assert (groups["MASTER"]["InstanceType"], groups["MASTER"]["RequestedInstanceCount"]) == ("r5.xlarge", 1)
    assert (groups["CORE"]["InstanceType"], groups["CORE"]["RequestedInstanceCount"]) == ("r5.xlarge", 7)
    assert groups["CORE"]["Market"] == "ON_DEMAND"

    actions = emr.list_bootstrap_actions(ClusterId=cid)["BootstrapActions"]
    assert [(a["ScriptPath"], a["Args"]) for a in actions] == [
        ("s3://%s/pipeline/code/bootstrap.sh" % BUCKET, ["s3://%s/pipeline/code" % BUCKET])]
    # The bootstrap action points at an object that exists and is our script.
    assert _body(s3, "pipeline/code/bootstrap.sh") == open(package.BOOTSTRAP_SH, "rb").read()
    # And what was sent is recorded next to the code.
    record = json.loads(_body(s3, "pipeline/clusters/%s/run_job_flow.json" % cid))
    assert record["ReleaseLabel"] == "emr-7.7.0" and record["Instances"]["InstanceGroups"][1]["InstanceCount"] == 7


def test_create_cluster_configurable_size_and_spot(aws, capsys):
    _, emr = aws
    _run(capsys, "upload", "--s3-prefix", PREFIX, "--bpe-file", _bpe_file())
    cid = _create(capsys, "--core-count", "3", "--core-type", "r5.2xlarge", "--core-market", "SPOT",
                  "--executor-cores", "4", "--no-keep-alive")
    groups = {g["InstanceGroupType"]: g for g in emr.list_instance_groups(ClusterId=cid)["InstanceGroups"]}
    assert (groups["CORE"]["InstanceType"], groups["CORE"]["RequestedInstanceCount"],
            groups["CORE"]["Market"]) == ("r5.2xlarge", 3, "SPOT")
    c = emr.describe_cluster(ClusterId=cid)["Cluster"]
    assert c["AutoTerminate"] is True
    props = {x["Classification"]: x for x in c["Configurations"]}["spark-defaults"]["Properties"]
    assert props["spark.executor.cores"] == "4"
    assert props["spark.sql.shuffle.partitions"] == str(4 * 3 * 8)


def test_create_cluster_before_upload_says_what_to_do(aws, capsys):
    _, emr = aws
    rc = launch.main(["create-cluster", "--s3-prefix", PREFIX])
    assert rc == 2
    assert "run `python -m emr.launch upload" in capsys.readouterr().err
    assert emr.list_clusters()["Clusters"] == []


def test_submit_step_runs_exact_spark_submit(aws, capsys):
    s3, emr = aws
    _run(capsys, "upload", "--s3-prefix", PREFIX, "--bpe-file", _bpe_file())
    cid = _create(capsys)
    rc, out = _run(capsys, "submit", "--s3-prefix", PREFIX, "--cluster-id", cid,
                   "--input", "s3://data/warc/", "--output", "s3://data/out/", "--",
                   "--min-chars", "200")
    assert rc == 0
    steps = emr.list_steps(ClusterId=cid)["Steps"]
    assert [s["Id"] for s in steps] == [out["step_id"]]
    assert steps[0]["ActionOnFailure"] == "CONTINUE"
    assert steps[0]["Config"]["Jar"] == "command-runner.jar"
    code = "s3://%s/pipeline/code" % BUCKET
    assert steps[0]["Config"]["Args"] == [
        "spark-submit", "--deploy-mode", "cluster", "--conf", "spark.yarn.maxAppAttempts=1",
        "--py-files", code + "/pipeline-bundle.zip", code + "/jobs/run_pipeline.py",
        "--input", "s3://data/warc/", "--output", "s3://data/out/",
        "--bpe-file", code + "/bpe/r50k_base.tiktoken", "--min-chars", "200"]
    # Every S3 object the step names exists.
    for arg in steps[0]["Config"]["Args"]:
        if arg.startswith(code):
            assert _body(s3, arg[len("s3://%s/" % BUCKET):]), arg


def test_submit_client_mode_single_stage_without_bpe(aws, capsys):
    _, emr = aws
    # A cluster made without our launcher: submit only needs its id.
    resp = emr.run_job_flow(Name="x", ReleaseLabel="emr-7.7.0", Instances={
        "MasterInstanceType": "r5.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
        JobFlowRole="EMR_EC2_DefaultRole", ServiceRole="EMR_DefaultRole")
    rc, _ = _run(capsys, "submit", "--s3-prefix", PREFIX, "--cluster-id", resp["JobFlowId"],
                 "--job", "dedup", "--deploy-mode", "client", "--input", "s3://d/out/docs",
                 "--output", "s3://d/out")
    assert rc == 0
    args = emr.list_steps(ClusterId=resp["JobFlowId"])["Steps"][0]["Config"]["Args"]
    assert args[:3] == ["spark-submit", "--deploy-mode", "client"]
    assert args[7:] == ["s3://%s/pipeline/code/jobs/dedup_job.py" % BUCKET, "--input", "s3://d/out/docs",
                        "--output", "s3://d/out"]


def test_run_is_a_transient_cluster_with_the_step(aws, capsys):
    s3, emr = aws
    rc, out = _run(capsys, "run", "--s3-prefix", PREFIX, "--bpe-file", _bpe_file(), "--core-count", "2",
                   "--input", "s3://data/warc/", "--output", "s3://data/out/")
    assert rc == 0
    cid = out["cluster_id"]
    assert emr.describe_cluster(ClusterId=cid)["Cluster"]["AutoTerminate"] is True
    assert "AutoTerminationPolicy" not in out["request"]
    (st,) = emr.list_steps(ClusterId=cid)["Steps"]
    assert st["Config"]["Args"][-6:] == ["--input", "s3://data/warc/", "--output", "s3://data/out/",
                                         "--bpe-file", "s3://%s/pipeline/code/bpe/r50k_base.tiktoken" % BUCKET]
    assert "pipeline/code/pipeline-bundle.zip" in _keys(s3)


def test_status_wait_terminate(aws, capsys):
    _, emr = aws
    _run(capsys, "upload", "--s3-prefix", PREFIX, "--bpe-file", _bpe_file())
    cid = _create(capsys)
    # An idle cluster with nothing to wait for is done waiting.
    cfg = LaunchConfig(cluster_id=cid, timeout=600, poll=30)
    assert launch.wait(emr, cfg)[0] == 0

    rc, out = _run(capsys, "submit", "--s3-prefix", PREFIX, "--cluster-id", cid,
                   "--input", "s3://d/w/", "--output", "s3://d/o/")
    step_id = out["step_id"]
    rc, st = _run(capsys, "status", "--cluster-id", cid)
    assert rc == 0 and st["release"] == "emr-7.7.0"
    assert [(s["step_id"], s["state"]) for s in st["steps"]] == [(step_id, "RUNNING")]

    # moto keeps the step RUNNING forever: wait must give up at --timeout, polling every --poll.
    now = [0.0]
    sleeps = []

    def sleep(s):
        sleeps.append(s)
        now[0] += s

    rc, _ = launch.wait(emr, dataclasses.replace(cfg, step_id=step_id, timeout=95), sleep=sleep,
                        clock=lambda: now[0])
    assert rc == launch.TIMEOUT_RC
    assert sleeps == [30, 30, 30, 5]

    rc, out = _run(capsys, "terminate", "--cluster-id", cid)
    assert rc == 0 and out["request"] == {"JobFlowIds": [cid]}
    assert emr.describe_cluster(ClusterId=cid)["Cluster"]["Status"]["State"] == "TERMINATED"
    # The cluster ended with the step unfinished: that is a failure, reported at once.
    assert launch.wait(emr, dataclasses.replace(cfg, step_id=step_id), sleep=sleep)[0] == 1


def test_aws_errors_are_one_line_and_exit_1(aws, capsys):
    assert launch.main(["status", "--cluster-id", "j-DOESNOTEXIST"]) == 1
    err = capsys.readouterr().err
    assert "emr.launch status:" in err and "Traceback" not in err


def test_logs_prints_step_stderr(aws, capsys):
    s3, emr = aws
    _run(capsys, "upload", "--s3-prefix", PREFIX, "--bpe-file", _bpe_file())
    cid = _create(capsys)
    _, out = _run(capsys, "submit", "--s3-prefix", PREFIX, "--cluster-id", cid,
                  "--input", "s3://d/w/", "--output", "s3://d/o/")
    rc, text = _run(capsys, "logs", "--cluster-id", cid, "--step-id", out["step_id"])
    assert rc == 0 and text.count("not there yet") == 3  # controller, stderr, stdout

    # What EMR uploads for a failed cluster-mode step: spark-submit's report in the step's stderr,
    # the Python traceback in the driver's (= application master's) container log.
    logs = "pipeline/logs/%s/" % cid
    step_err = (b"INFO Client: Submitted application application_1700000000000_0003\n"
                b"INFO Client: Application report for application_1700000000000_0003 (state: FAILED)\n"
                b"Exception in thread main: org.apache.spark.SparkException: Application finished with failed status\n")
    s3.put_object(Bucket=BUCKET, Key=logs + "steps/%s/stderr.gz" % out["step_id"], Body=gzip.compress(step_err))
    app = logs + "containers/application_1700000000000_0003/"
    s3.put_object(Bucket=BUCKET, Key=app + "container_1700000000000_0003_01_000002/stderr.gz",
                  Body=gzip.compress(b"executor noise\n"))
    s3.put_object(Bucket=BUCKET, Key=app + "container_1700000000000_0003_01_000001/stderr.gz",
                  Body=gzip.compress(b"Traceback (most recent call last):\npipeline.storage.InputError: "
                                     b"no input files match s3://d/w/\n"))
    rc, text = _run(capsys, "logs", "--cluster-id", cid, "--step-id", out["step_id"])
    assert rc == 0
    assert "Application finished with failed status" in text
    driver = text.split("==> driver stderr <==")[1]
    assert "InputError: no input files match s3://d/w/" in driver and "executor noise" not in driver


def test_driver_log_location():
    assert spec.yarn_application_ids("a application_1_0002 b application_1_0002 application_1_0003") == [
        "application_1_0002", "application_1_0003"]
    assert spec.is_driver_stderr("s3://b/l/j-1/containers/application_1_2/container_1_2_01_000001/stderr.gz")
    assert spec.is_driver_stderr("s3://b/l/j-1/containers/application_1_2/container_e05_1_2_01_000001/stderr.gz")
    assert not spec.is_driver_stderr("s3://b/l/j-1/containers/application_1_2/container_1_2_01_000002/stderr.gz")
    assert not spec.is_driver_stderr("s3://b/l/j-1/containers/application_1_2/container_1_2_01_000001/stdout.gz")


# --- pure parts and dry runs ----------------------------------------------------------------------

def test_dry_run_prints_requests_without_any_aws_call(monkeypatch, capsys, tmp_path):
    # No credentials anywhere: any real call would fail with NoCredentialsError.
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    rc, out = _run(capsys, "create-cluster", "--s3-prefix", PREFIX, "--region", "eu-west-1",
                   "--dry-run", "--ec2-price", "0.25", "--emr-price", "0.06")
    assert rc == 0
    cfg = LaunchConfig(s3_prefix=PREFIX, region="eu-west-1", dry_run=True, ec2_price=0.25, emr_price=0.06)
    assert out["request"] == json.loads(json.dumps(spec.run_job_flow_request(cfg)))
    assert out["cost_per_hour"]["per_hour"] == pytest.approx(8 * 0.31)
    rc, out = _run(capsys, "submit", "--s3-prefix", PREFIX, "--cluster-id", "j-ABC", "--input", "s3://a/",
                   "--output", "s3://b/", "--dry-run")
    assert rc == 0 and out["request"]["JobFlowId"] == "j-ABC"
    assert out["request"]["Steps"][0]["HadoopJarStep"]["Args"][0] == "spark-submit"


@pytest.mark.parametrize("core_type,cores,heap,overhead", [
    ("r5.xlarge", 2, "6g", "4g"), ("r5.2xlarge", 2, "7g", "5g"), ("m5.xlarge", 2, "3g", "2g"),
    ("r5.xlarge", 4, "13g", "8g")])
def test_executor_sizing_fits_yarn(core_type, cores, heap, overhead):
    cfg = LaunchConfig(s3_prefix=PREFIX, core_type=core_type, executor_cores=cores)
    p = spec.spark_sizing(cfg)
    assert (p["spark.executor.cores"], p["spark.executor.memory"], p["spark.executor.memoryOverhead"]) == (
        str(cores), heap, overhead)
    vcpus, yarn_mb = spec.INSTANCE_YARN[core_type]
    per_node = vcpus // cores
    container_mb = (int(heap[:-1]) + int(overhead[:-1])) * 1024
    assert per_node * container_mb <= 0.9 * yarn_mb  # room left for a cluster-mode driver


def test_sizing_errors_and_maximize():
    with pytest.raises(spec.ConfigError, match="--yarn-memory-mb"):
        spec.spark_sizing(LaunchConfig(s3_prefix=PREFIX, core_type="x9.xlarge"))
    assert spec.spark_sizing(LaunchConfig(s3_prefix=PREFIX, core_type="x9.xlarge", yarn_memory_mb=24576))[
        "spark.executor.memory"] == "6g"
    conf = spec.configurations(LaunchConfig(s3_prefix=PREFIX, maximize_resource_allocation=True))
    assert conf[0] == {"Classification": "spark", "Properties": {"maximizeResourceAllocation": "true"}}
    assert "spark.executor.memory" not in conf[1]["Properties"]


@pytest.mark.parametrize("argv,message", [
    (["create-cluster", "--dry-run"], "--s3-prefix must be an s3://"),
    (["create-cluster", "--s3-prefix", "my-bucket/x", "--dry-run"], "--s3-prefix must be an s3://"),
    (["submit", "--s3-prefix", PREFIX, "--cluster-id", "j-1", "--output", "s3://o/", "--dry-run"],
     "--input is required"),
    (["submit", "--s3-prefix", PREFIX, "--input", "s3://i/", "--output", "s3://o/", "--dry-run"],
     "--cluster-id is required"),
    (["create-cluster", "--s3-prefix", PREFIX, "--tag", "novalue", "--dry-run"], "KEY=VALUE"),
])
def test_config_errors_exit_2_with_a_message(capsys, argv, message):
    assert launch.main(argv) == 2
    assert message in capsys.readouterr().err


def test_verdict():
    def summary(state, *steps):
        return {"cluster_id": "j-1", "state": state,
                "steps": [{"step_id": "s-%d" % i, "state": s} for i, s in enumerate(steps)]}
    assert spec.verdict(summary("STARTING")) is None
    assert spec.verdict(summary("BOOTSTRAPPING", "PENDING")) is None
    assert spec.verdict(summary("RUNNING", "RUNNING", "COMPLETED")) is None
    assert spec.verdict(summary("WAITING", "COMPLETED", "COMPLETED")) is True
    assert spec.verdict(summary("RUNNING", "RUNNING", "FAILED")) is False
    assert spec.verdict(summary("RUNNING", "RUNNING", "FAILED"), step_id="s-0") is None
    assert spec.verdict(summary("TERMINATED", "COMPLETED")) is True
    assert spec.verdict(summary("TERMINATED_WITH_ERRORS", "RUNNING")) is False
    assert spec.verdict(summary("TERMINATED")) is False
    assert spec.verdict(summary("WAITING")) is True
    with pytest.raises(spec.ConfigError):
        spec.verdict(summary("WAITING", "COMPLETED"), step_id="s-9")


def test_summarize_keeps_failure_details():
    cluster = {"Id": "j-1", "Name": "n", "Status": {"State": "WAITING", "StateChangeReason": {}},
               "ReleaseLabel": "emr-7.7.0", "LogUri": "s3://b/logs/"}
    steps = [{"Id": "s-1", "Name": "pipeline", "Status": {"State": "FAILED", "FailureDetails": {
        "Reason": "Unknown Error.", "LogFile": "s3://b/logs/j-1/steps/s-1/stderr.gz"}}}]
    s = spec.summarize(cluster, steps)
    assert s["steps"] == [{"step_id": "s-1", "name": "pipeline", "state": "FAILED", "failure": {
        "Reason": "Unknown Error.", "LogFile": "s3://b/logs/j-1/steps/s-1/stderr.gz"}}]
    assert spec.verdict(s) is False


def test_bootstrap_script_is_valid_bash_and_names_uploaded_artifacts():
    subprocess.run(["bash", "-n", package.BOOTSTRAP_SH], check=True)
    text = open(package.BOOTSTRAP_SH).read()
    a = spec.artifacts(LaunchConfig(s3_prefix=PREFIX))
    for key in ("requirements", "constraints", "bpe"):
        assert a[key][len(a["code"]):] in text  # same relative key as upload writes
    assert "/wheels/" in text
    # tiktoken names its cache entry sha1(URL); the script hard-codes that name.
    from pipeline.bpe import R50K_URL
    assert hashlib.sha1(R50K_URL.encode()).hexdigest() in text
    assert spec.NODE_TIKTOKEN_DIR in text
    reqs = [l.split(">")[0].split("<")[0].split("=")[0].strip() for l in open(package.REQUIREMENTS)
            if l.strip() and not l.startswith("#")]
    assert "pyspark" not in reqs and {"pandas", "numpy", "pyarrow", "tiktoken", "warcio", "lxml",
                                      "beautifulsoup4", "xxhash", "boto3"} <= set(reqs)


# --- bootstrap.sh, executed for real against a loopback moto S3 -----------------------------------
# The node-side commands are stand-ins: `aws` is a few lines of boto3 (same S3 calls, talking to the
# moto server), `sudo` just runs the command, and the python wrapper records `pip` calls instead of
# installing (no internet here) while running everything else, including the import check, for real.

AWS_STUB = '''#!%(python)s
import os, sys, boto3
args = [a for a in sys.argv[1:] if a != "--quiet"]
recursive = "--recursive" in args
args = [a for a in args if a != "--recursive"]
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
def split(uri):
    b, _, k = uri[5:].partition("/")
    return b, k
if args[:2] == ["s3", "ls"]:
    b, k = split(args[2])
    sys.exit(0 if s3.list_objects_v2(Bucket=b, Prefix=k).get("KeyCount", 0) else 1)
assert args[:2] == ["s3", "cp"], args
(b, k), dst = split(args[2]), args[3]
keys = [o["Key"] for o in s3.list_objects_v2(Bucket=b, Prefix=k).get("Contents", [])] if recursive else [k]
try:
    for key in keys:
        target = os.path.join(dst, key[len(k):]) if recursive else dst
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        s3.download_file(b, key, target)
except Exception as e:
    print("download failed: %%s" %% e, file=sys.stderr)
    sys.exit(1)
'''

PY_STUB = '''#!/bin/bash
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
    [ "$3" = "--version" ] && { echo "pip (stub)"; exit 0; }
    echo "${*:3}" >> "%(log)s/pip.log"
    while [ $# -gt 0 ]; do
        case "$1" in
            -r) cp "$2" "%(log)s/requirements.txt" ;;
            -c) cp "$2" "%(log)s/constraints.txt" ;;
            --find-links) ls "$2" > "%(log)s/wheels.txt" ;;
        esac
        shift
    done
    exit 0
fi
exec %(python)s "$@"
'''


@pytest.fixture
def node(tmp_path, monkeypatch):
    """A fake EMR node: stub commands on PATH, a loopback moto S3, the launcher pointed at it."""
    import sys
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = "http://%s:%d" % server.get_host_and_port()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(k, v)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    stubs = {"aws": AWS_STUB % {"python": sys.executable}, "sudo": '#!/bin/sh\nexec "$@"\n',
             "python3": PY_STUB % {"python": sys.executable, "log": log}}
    for name, text in stubs.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH="%s:%s" % (bin_dir, os.environ["PATH"]),
               PIPELINE_PYTHON=str(bin_dir / "python3"),
               PIPELINE_TIKTOKEN_DIR=str(tmp_path / "opt" / "pipeline" / "tiktoken"))
    env.pop("TIKTOKEN_CACHE_DIR", None)  # the node must use what bootstrap.sh installed
    yield env, log, tmp_path
    server.stop()


def _bootstrap(env, code_uri):
    return subprocess.run(["bash", package.BOOTSTRAP_SH, code_uri], env=env, capture_output=True,
                          text=True, timeout=300)


def test_bootstrap_installs_requirements_and_offline_bpe(node, capsys):
    env, log, tmp = node
    assert launch.main(["upload", "--s3-prefix", PREFIX, "--bpe-file", _bpe_file()]) == 0
    res = _bootstrap(env, "s3://%s/pipeline/code/" % BUCKET)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (log / "pip.log").read_text().split()[:3] == ["install", "--quiet", "-r"]
    assert (log / "requirements.txt").read_bytes() == open(package.REQUIREMENTS, "rb").read()
    assert (log / "constraints.txt").read_bytes() == open(package.CONSTRAINTS, "rb").read()
    assert "-c" in (log / "pip.log").read_text().split()
    cached = tmp / "opt" / "pipeline" / "tiktoken" / "0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4"
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == R50K_SHA256
    assert "GPT-2 BPE ok" in res.stdout and "[bootstrap] done" in res.stdout


def test_bootstrap_uses_the_wheelhouse_offline(node, capsys):
    env, log, tmp = node
    wheels = tmp / "wheels"
    wheels.mkdir()
    (wheels / "xxhash-3.5.0-cp39-cp39-manylinux_2_17_x86_64.whl").write_bytes(b"w")
    assert launch.main(["upload", "--s3-prefix", PREFIX, "--bpe-file", _bpe_file(),
                        "--wheelhouse", str(wheels)]) == 0
    res = _bootstrap(env, "s3://%s/pipeline/code" % BUCKET)
    assert res.returncode == 0, res.stdout + res.stderr
    pip_args = (log / "pip.log").read_text().split()
    assert pip_args[:4] == ["install", "--quiet", "--no-index", "--find-links"]
    assert (log / "wheels.txt").read_text().split() == ["xxhash-3.5.0-cp39-cp39-manylinux_2_17_x86_64.whl"]


def test_bootstrap_fails_the_node_when_nothing_was_uploaded(node):
    env, log, _ = node
    res = _bootstrap(env, "s3://%s/not-uploaded/code" % BUCKET)
    assert res.returncode != 0
    assert not (log / "pip.log").exists()


def test_constraints_pin_every_requirement_within_its_range():
    from packaging.requirements import Requirement

    reqs = [Requirement(l.strip()) for l in open(package.REQUIREMENTS) if l.strip() and not l.startswith("#")]
    pins = dict(l.strip().split("==") for l in open(package.CONSTRAINTS) if l.strip() and not l.startswith("#"))
    for r in reqs:
        assert r.name in pins, r.name
        assert r.specifier.contains(pins[r.name]), (r, pins[r.name])

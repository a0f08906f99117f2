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
# How the course runs the job, verbatim; `--preset course` must reproduce it token by token.
COURSE_SPARK_SUBMIT = ("spark-submit --deploy-mode client --master yarn --conf spark.driver.memory=20g "
                       "--conf spark.driver.maxResultSize=15g --num-executors 7 --executor-memory 20GB")


def _bpe_file():
    # TIKTOKEN_CACHE_DIR's copy if set, else the one shipped in the pipeline package
    return package.find_bpe_file() or os.path.join(REPO, "pipeline", "resources", "r50k_base.tiktoken")


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
        "z = sys.argv[1]\n"
        "bad = []\n"
        "for n in zipfile.ZipFile(z).namelist():\n"
        "    if n.endswith('.py'):\n"
        "        try: compile(zipfile.ZipFile(z).read(n), n, 'exec')\n"
        "        except SyntaxError as e: bad.append('%s: %s' % (n, e))\n"
        "assert not bad, bad\n"
        "import pipeline, pipeline.storage, pipeline.config, pipeline.accounting, jobs\n"
        "assert pipeline.storage.__file__.startswith(z), pipeline.storage.__file__\n"
        "print('ok')\n")
    # The zip goes on the path the way spark-submit's --py-files puts it there: PYTHONPATH.
    env = dict(os.environ, PYTHONPATH=str(zpath))
    res = subprocess.run([PY39, "-c", script, str(zpath)], capture_output=True, text=True,
                         cwd=str(tmp_path), timeout=120, env=env)
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
    assert [a["Name"] for a in c["Applications"]] == ["Hadoop", "Spark", "JupyterHub"]
    assert c["LogUri"] == "s3://%s/pipeline/logs/" % BUCKET
    assert c["ServiceRole"] == "EMR_DefaultRole"
    assert c["Ec2InstanceAttributes"]["IamInstanceProfile"] == "EMR_EC2_DefaultRole"
    assert c["AutoTerminate"] is False  # KeepJobFlowAliveWhenNoSteps
    assert {t["Key"]: t["Value"] for t in c["Tags"]}["owner"] == "student"
    conf = {x["Classification"]: x for x in c["Configurations"]}
    assert conf["spark"]["Properties"] == {"maximizeResourceAllocation": "false"}
    props = conf["spark-defaults"]["Properties"]
    # The course's cluster leaves executor sizing to EMR and to the step's spark-submit flags.
    assert not [k for k in props if k.startswith(("spark.executor.cores", "spark.executor.memory"))]
    # The job's Python is the virtualenv that bootstrap.sh builds, never the OS's python3.
    assert props["spark.pyspark.python"] == props["spark.pyspark.driver.python"] == "/opt/pipeline/venv/bin/python"
    env = conf["spark-env"]["Configurations"][0]["Properties"]
    assert env["PYSPARK_PYTHON"] == env["PYSPARK_DRIVER_PYTHON"] == "/opt/pipeline/venv/bin/python"
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
    # The course's volumes and idle shutdown, as sent.
    assert record["EbsRootVolumeSize"] == 100
    primary, core = record["Instances"]["InstanceGroups"]
    assert "EbsConfiguration" not in primary  # EMR's default for the primary
    assert core["EbsConfiguration"]["EbsBlockDeviceConfigs"] == [
        {"VolumeSpecification": {"VolumeType": "gp3", "SizeInGB": 200}, "VolumesPerInstance": 1}]
    assert record["AutoTerminationPolicy"] == {"IdleTimeout": 600}
    assert record["Instances"]["KeepJobFlowAliveWhenNoSteps"] is True


def test_create_cluster_configurable_size_and_spot(aws, capsys):
    _, emr = aws
    _run(capsys, "upload", "--s3-prefix", PREFIX, "--bpe-file", _bpe_file())
    cid = _create(capsys, "--core-count", "3", "--core-type", "r5.2xlarge", "--core-market", "SPOT",
                  "--executor-cores", "4", "--cluster-sizing", "per-node", "--no-keep-alive")
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
    assert steps[0]["Config"]["Args"] == COURSE_SPARK_SUBMIT.split() + [
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
    rc, _ = _run(capsys, "submit", "--preset", "tuned", "--s3-prefix", PREFIX, "--cluster-id",
                 resp["JobFlowId"], "--job", "dedup", "--deploy-mode", "client", "--input", "s3://d/out/docs",
                 "--output", "s3://d/out")
    assert rc == 0
    args = emr.list_steps(ClusterId=resp["JobFlowId"])["Steps"][0]["Config"]["Args"]
    assert args[:5] == ["spark-submit", "--deploy-mode", "client", "--master", "yarn"]
    assert "spark.yarn.maxAppAttempts=1" not in args  # only a cluster-mode driver would be retried
    script = args.index("s3://%s/pipeline/code/jobs/dedup_job.py" % BUCKET)
    assert args[script - 2] == "--py-files"
    assert args[script:] == ["s3://%s/pipeline/code/jobs/dedup_job.py" % BUCKET, "--input", "s3://d/out/docs",
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
    # 8 nodes at the prices given, plus gp3 EBS: 8 x 100 GB root + 7 x 200 GB core at $0.08/GB-month.
    assert out["cost_per_hour"]["per_hour"] == pytest.approx(8 * 0.31 + 2200 * 0.08 / 730, abs=1e-4)
    rc, out = _run(capsys, "submit", "--s3-prefix", PREFIX, "--cluster-id", "j-ABC", "--input", "s3://a/",
                   "--output", "s3://b/", "--dry-run")
    assert rc == 0 and out["request"]["JobFlowId"] == "j-ABC"
    assert out["request"]["Steps"][0]["HadoopJarStep"]["Args"][0] == "spark-submit"


@pytest.mark.parametrize("core_type,cores,heap,overhead", [
    ("r5.xlarge", 2, "6g", "4g"), ("r5.2xlarge", 2, "7g", "5g"), ("m5.xlarge", 2, "3g", "2g"),
    ("r5.xlarge", 4, "13g", "8g")])
def test_executor_sizing_fits_yarn(core_type, cores, heap, overhead):
    cfg = LaunchConfig(s3_prefix=PREFIX, core_type=core_type, executor_cores=cores, cluster_sizing="per-node")
    p = spec.spark_sizing(cfg)
    assert (p["spark.executor.cores"], p["spark.executor.memory"], p["spark.executor.memoryOverhead"]) == (
        str(cores), heap, overhead)
    vcpus, yarn_mb = spec.INSTANCE_YARN[core_type]
    per_node = vcpus // cores
    container_mb = (int(heap[:-1]) + int(overhead[:-1])) * 1024
    assert per_node * container_mb <= 0.9 * yarn_mb  # room left for a cluster-mode driver


def test_sizing_errors_and_maximize():
    with pytest.raises(spec.ConfigError, match="--yarn-memory-mb"):
        spec.spark_sizing(LaunchConfig(s3_prefix=PREFIX, core_type="x9.xlarge", preset="tuned"))
    assert spec.spark_sizing(LaunchConfig(s3_prefix=PREFIX, core_type="x9.xlarge", yarn_memory_mb=24576,
                                          preset="tuned"))["spark.executor.memory"] == "6g"
    assert spec.spark_sizing(LaunchConfig(s3_prefix=PREFIX, core_type="x9.xlarge")) == {}  # course: EMR's
    conf = spec.configurations(LaunchConfig(s3_prefix=PREFIX, preset="tuned", cluster_sizing="maximize"))
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
    assert "\nTIKTOKEN_DIR=%s\n" % spec.NODE_TIKTOKEN_DIR in text
    assert "\nVENV=%s\n" % spec.NODE_VENV in text and spec.NODE_PYTHON == spec.NODE_VENV + "/bin/python"
    reqs = [l.split(">")[0].split("<")[0].split("=")[0].strip() for l in open(package.REQUIREMENTS)
            if l.strip() and not l.startswith("#")]
    assert "pyspark" not in reqs and {"pandas", "numpy", "pyarrow", "tiktoken", "warcio", "lxml",
                                      "beautifulsoup4", "xxhash", "boto3"} <= set(reqs)


def test_constraints_pin_every_requirement_within_its_range():
    from packaging.requirements import Requirement

    from packaging.utils import canonicalize_name

    reqs = [Requirement(l.strip()) for l in open(package.REQUIREMENTS) if l.strip() and not l.startswith("#")]
    pins = dict(l.strip().split("==") for l in open(package.CONSTRAINTS) if l.strip() and not l.startswith("#"))
    pins = {canonicalize_name(k): v for k, v in pins.items()}
    for r in reqs:
        assert canonicalize_name(r.name) in pins, r.name
        assert r.specifier.contains(pins[r.name]), (r, pins[r.name])


def test_constraints_are_a_full_freeze_of_what_requirements_resolve_to():
    """Every package the install resolves to is pinned, not only the direct requirements (the
    rehearsal compares the file with `pip freeze` of the venv bootstrap.sh built)."""
    pins = [l.strip() for l in open(package.CONSTRAINTS) if l.strip() and not l.startswith("#")]
    assert all("==" in p for p in pins), pins
    names = {p.split("==")[0].lower().replace("_", "-") for p in pins}
    assert {"resiliparse", "fastwarc"} <= names  # cp39 manylinux wheels exist for the pinned versions
    # The transitive set of the direct requirements (as resolved for CPython 3.9, manylinux x86_64).
    for dep in ("botocore", "s3transfer", "jmespath", "urllib3", "python-dateutil", "six", "soupsieve",
                "pytz", "tzdata", "regex", "requests", "idna", "certifi", "charset-normalizer",
                "fastwarc", "resiliparse", "brotli", "typing-extensions", "click", "tqdm"):
        assert dep in names, dep


# --- presets, validation against botocore's service model, the spark-submit line ------------------

def _botocore_errors(service, operation, request):
    import botocore.session
    from botocore.validate import ParamValidator

    shape = botocore.session.get_session().get_service_model(service).operation_model(operation).input_shape
    report = ParamValidator().validate(request, shape)
    return report.generate_report() if report.has_errors() else ""


@pytest.mark.parametrize("extra", [
    [], ["--preset", "tuned"], ["--preset", "tuned", "--cluster-sizing", "maximize"],
    ["--applications", "Hadoop,Spark", "--root-volume-gb", "0", "--primary-ebs-gb", "50",
     "--core-ebs-gb", "0", "--idle-timeout", "0", "--core-market", "SPOT", "--subnet-id", "subnet-1",
     "--key-name", "k", "--log-uri", "s3://elsewhere/logs"]])
def test_every_request_matches_botocores_service_model(extra):
    cfg = launch.parse(["run", "--s3-prefix", PREFIX, "--input", "s3://i/", "--output", "s3://o/",
                        "--conf", "spark.sql.adaptive.enabled=true", "--driver-cores", "2"] + extra)[1]
    requests = [("RunJobFlow", spec.run_job_flow_request(cfg)),
                ("RunJobFlow", spec.run_job_flow_request(cfg, steps=[spec.step(cfg)])),
                ("AddJobFlowSteps", spec.add_steps_request(dataclasses.replace(cfg, cluster_id="j-1"))),
                ("TerminateJobFlows", spec.terminate_request(dataclasses.replace(cfg, cluster_id="j-1")))]
    for operation, req in requests:
        assert _botocore_errors("emr", operation, req) == "", (operation, req)
        assert launch.validate_request("emr", operation, req) is req


def test_the_validation_catches_what_aws_would_reject():
    req = spec.run_job_flow_request(LaunchConfig(s3_prefix=PREFIX))
    bad = json.loads(json.dumps(req))
    bad["AutoTerminationPolicy"]["IdleTimeout"] = "600"  # a string, not a long
    bad["Instances"]["InstanceGroups"][1]["Color"] = "blue"  # no such member
    errors = _botocore_errors("emr", "RunJobFlow", bad)
    assert "IdleTimeout" in errors and "Color" in errors
    with pytest.raises(spec.ConfigError, match="botocore's model"):
        launch.validate_request("emr", "RunJobFlow", bad)


def test_course_preset_is_the_courses_cluster():
    req = spec.run_job_flow_request(LaunchConfig(s3_prefix=PREFIX))
    assert req["ReleaseLabel"] == "emr-7.7.0"
    assert req["Applications"] == [{"Name": "Hadoop"}, {"Name": "Spark"}, {"Name": "JupyterHub"}]
    primary, core = req["Instances"]["InstanceGroups"]
    assert (primary["InstanceRole"], primary["InstanceType"], primary["InstanceCount"]) == ("MASTER", "r5.xlarge", 1)
    assert (core["InstanceRole"], core["InstanceType"], core["InstanceCount"]) == ("CORE", "r5.xlarge", 7)
    assert req["EbsRootVolumeSize"] == 100
    assert "EbsConfiguration" not in primary
    assert core["EbsConfiguration"]["EbsBlockDeviceConfigs"] == [
        {"VolumeSpecification": {"VolumeType": "gp3", "SizeInGB": 200}, "VolumesPerInstance": 1}]
    assert req["AutoTerminationPolicy"] == {"IdleTimeout": 600}


def test_each_part_of_the_preset_has_its_flag():
    cfg = launch.parse(["create-cluster", "--s3-prefix", PREFIX, "--applications", "Hadoop,Spark",
                        "--root-volume-gb", "40", "--primary-ebs-gb", "32", "--core-ebs-gb", "500",
                        "--core-count", "3", "--core-type", "m5.xlarge", "--primary-type", "m5.2xlarge",
                        "--idle-timeout", "3600"])[1]
    req = spec.run_job_flow_request(cfg)
    assert req["Applications"] == [{"Name": "Hadoop"}, {"Name": "Spark"}]
    assert req["EbsRootVolumeSize"] == 40
    primary, core = req["Instances"]["InstanceGroups"]
    assert primary["InstanceType"] == "m5.2xlarge"
    assert primary["EbsConfiguration"]["EbsBlockDeviceConfigs"][0]["VolumeSpecification"]["SizeInGB"] == 32
    assert (core["InstanceType"], core["InstanceCount"]) == ("m5.xlarge", 3)
    assert core["EbsConfiguration"]["EbsBlockDeviceConfigs"][0]["VolumeSpecification"]["SizeInGB"] == 500
    assert req["AutoTerminationPolicy"] == {"IdleTimeout": 3600}
    # Unset parts still come from the preset, and the saved config shows the values used.
    assert cfg.preset == "course" and cfg.deploy_mode == "client" and cfg.executor_memory == "20GB"
    # 0 = no root volume size (EMR's default) and no auto-termination.
    req = spec.run_job_flow_request(dataclasses.replace(cfg, root_volume_gb=0, idle_timeout=0))
    assert "EbsRootVolumeSize" not in req and "AutoTerminationPolicy" not in req


@pytest.mark.parametrize("seconds,ok", [(0, True), (59, False), (60, True), (600, True),
                                        (604800, True), (604801, False), (-5, False)])
def test_idle_timeout_range(seconds, ok, capsys):
    rc = launch.main(["create-cluster", "--s3-prefix", PREFIX, "--region", "us-east-1", "--dry-run",
                      "--idle-timeout", str(seconds)])
    err = capsys.readouterr().err
    assert (rc == 0) == ok, err
    if not ok:
        assert "--idle-timeout must be 0 (never) or 60..604800 seconds" in err


@pytest.mark.parametrize("apps,message", [("Hadoop,Hive", "must include Spark"),
                                          ("Spark,Sparkle", "unknown Sparkle")])
def test_applications_are_checked(apps, message, capsys):
    assert launch.main(["create-cluster", "--s3-prefix", PREFIX, "--region", "us-east-1", "--dry-run",
                        "--applications", apps]) == 2
    assert message in capsys.readouterr().err


def test_course_step_is_the_courses_spark_submit_line_token_by_token():
    args = spec.spark_submit_args(LaunchConfig(s3_prefix=PREFIX, input="s3://i/", output="s3://o/"))
    course = COURSE_SPARK_SUBMIT.split()
    assert len(args) > len(course)
    for k, token in enumerate(course):
        assert args[k] == token, (k, args[k], token)
    code = "s3://%s/pipeline/code" % BUCKET
    assert args[len(course):] == ["--py-files", code + "/pipeline-bundle.zip", code + "/jobs/run_pipeline.py",
                                  "--input", "s3://i/", "--output", "s3://o/",
                                  "--bpe-file", code + "/bpe/r50k_base.tiktoken"]



def test_spot_core_nodes_give_dedup_reliable_checkpoints():
    base = LaunchConfig(s3_prefix=PREFIX, input="s3://i/", output="s3://o/")
    assert "--checkpoint-dir" not in spec.spark_submit_args(base)
    for job in ("run_pipeline", "dedup"):
        args = spec.spark_submit_args(dataclasses.replace(base, core_market="SPOT", job=job))
        assert args[args.index("--checkpoint-dir") + 1] == "hdfs:///tmp/pipeline-dedup-checkpoints"
    assert "--checkpoint-dir" not in spec.spark_submit_args(dataclasses.replace(base, core_market="SPOT",
                                                                                job="tokenize"))
    own = spec.spark_submit_args(dataclasses.replace(base, core_market="SPOT",
                                                     job_args=("--checkpoint-dir", "s3://b/ckpt")))
    assert own.count("--checkpoint-dir") == 1 and own[-1] == "s3://b/ckpt"

def test_spark_submit_options_from_flags():
    cfg = launch.parse(["submit", "--s3-prefix", PREFIX, "--cluster-id", "j-1", "--input", "s3://i/",
                        "--output", "s3://o/", "--deploy-mode", "cluster", "--driver-memory", "8g",
                        "--driver-max-result-size", "", "--driver-cores", "2", "--num-executors", "14",
                        "--executor-memory", "9g", "--executor-cores", "2", "--conf", "spark.a=1",
                        "--conf", "spark.b=x=y", "--", "--min-chars", "100"])[1]
    args = spec.spark_submit_args(cfg)
    script = args.index("s3://%s/pipeline/code/jobs/run_pipeline.py" % BUCKET)
    assert args[:script] == [
        "spark-submit", "--deploy-mode", "cluster", "--master", "yarn", "--conf", "spark.driver.memory=8g",
        "--driver-cores", "2", "--num-executors", "14", "--executor-memory", "9g", "--executor-cores", "2",
        "--conf", "spark.a=1", "--conf", "spark.b=x=y", "--conf", "spark.yarn.maxAppAttempts=1",
        "--py-files", "s3://%s/pipeline/code/pipeline-bundle.zip" % BUCKET]
    assert args[-2:] == ["--min-chars", "100"]
    with pytest.raises(spec.ConfigError, match="--conf wants KEY=VALUE"):
        spec.spark_submit_args(dataclasses.replace(cfg, spark_conf=("novalue",)))


def test_submit_prints_the_step_before_adding_it(aws, capsys, monkeypatch):
    _, emr = aws
    cid = emr.run_job_flow(Name="x", ReleaseLabel="emr-7.7.0", Instances={
        "MasterInstanceType": "r5.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
        JobFlowRole="EMR_EC2_DefaultRole", ServiceRole="EMR_DefaultRole")["JobFlowId"]
    printed_before_the_call = []

    def client(cfg, service):  # the launcher's own client, watched at the moment it calls AWS
        c = real_client(cfg, service)
        c.meta.events.register("before-call.emr.AddJobFlowSteps",
                               lambda **_: printed_before_the_call.append(capsys.readouterr().err))
        return c

    real_client = launch._client
    monkeypatch.setattr(launch, "_client", client)
    assert launch.main(["submit", "--s3-prefix", PREFIX, "--cluster-id", cid,
                        "--input", "s3://i/", "--output", "s3://o/"]) == 0
    (err,) = printed_before_the_call
    line = [l for l in err.splitlines() if l.startswith("step: ")][0]
    assert line[len("step: "):].startswith(COURSE_SPARK_SUBMIT + " --py-files ")
    assert line.split()[1:] == emr.list_steps(ClusterId=cid)["Steps"][0]["Config"]["Args"]


def test_dry_run_prints_the_cost_line(capsys):
    assert launch.main(["create-cluster", "--s3-prefix", PREFIX, "--region", "us-east-1", "--dry-run"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    ec2, emr_uplift = spec.PRICES["r5.xlarge"]
    assert out["cost_per_hour"]["instances"] == pytest.approx(8 * (ec2 + emr_uplift))
    assert "cost: ~$%.2f/hour: 8 x r5.xlarge" % out["cost_per_hour"]["per_hour"] in captured.err
    assert launch.main(["create-cluster", "--s3-prefix", PREFIX, "--region", "us-east-1", "--dry-run",
                        "--core-type", "x9.xlarge"]) == 0
    assert "no price known" in capsys.readouterr().err


def test_bundle_carries_every_package_data_file(tmp_path):
    for pkg in package.PACKAGES:
        shutil.copytree(os.path.join(REPO, pkg), str(tmp_path / pkg), ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "pipeline" / "gpt" / "table.json").write_text("{}")
    shipped = os.path.join(REPO, "pipeline", "resources", "r50k_base.tiktoken")
    with zipfile.ZipFile(io.BytesIO(package.build_bundle_bytes(str(tmp_path)))) as zf:
        names = set(zf.namelist())
        with open(shipped, "rb") as f:
            assert zf.read("pipeline/resources/r50k_base.tiktoken") == f.read()
    assert "pipeline/gpt/table.json" in names
    assert package.packaged_bpe_files(str(tmp_path)) == [str(tmp_path / "pipeline" / "resources" / "r50k_base.tiktoken")]


def _bootstrap_snippet(tag):
    """The Python that bootstrap.sh runs from a `<<'TAG'` heredoc, verbatim."""
    lines = open(package.BOOTSTRAP_SH).read().splitlines()
    start = [i for i, l in enumerate(lines) if l.endswith("<<'%s'" % tag)][0]
    end = lines.index(tag, start + 1)
    return "\n".join(lines[start + 1:end]) + "\n"


def _tiktoken_files(root):
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith(".tiktoken")]


@pytest.mark.parametrize("carried", [True, False])
def test_bootstrap_takes_the_bpe_ranks_from_the_bundle_when_it_carries_them(tmp_path, carried):
    """bootstrap.sh's own snippet on a bundle with (or without) the ranks as package data: found by
    content (sha256), so the package data file may have any name; without it the script falls back
    to the uploaded code/bpe/ file."""
    import sys

    src = tmp_path / "src"
    for pkg in package.PACKAGES:
        shutil.copytree(os.path.join(REPO, pkg), str(src / pkg), ignore=shutil.ignore_patterns("__pycache__"))
    for p in _tiktoken_files(str(src)):
        os.remove(p)
    (src / "pipeline" / "decoy.tiktoken").write_bytes(b"not the ranks")
    if carried:
        (src / "pipeline" / "data").mkdir(exist_ok=True)
        shutil.copyfile(_bpe_file(), str(src / "pipeline" / "data" / "gpt2_ranks.tiktoken"))
    bundle = tmp_path / "bundle.zip"
    package.build_bundle(str(bundle), root=str(src))
    out = tmp_path / "r50k_base.tiktoken"
    res = subprocess.run([sys.executable, "-", str(bundle), str(out), R50K_SHA256],
                         input=_bootstrap_snippet("PYBPE"), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    if carried:
        assert "from the bundle (pipeline/data/gpt2_ranks.tiktoken)" in res.stdout
        assert hashlib.sha256(out.read_bytes()).hexdigest() == R50K_SHA256
    else:
        assert not out.exists() and res.stdout == ""


def test_every_s3_request_of_upload_and_create_matches_botocores_model(aws, capsys):
    """The S3 (and EMR) calls the tooling makes through boto3, each checked with ParamValidator
    against its operation's input shape at the moment it is made."""
    from botocore.validate import ParamValidator

    seen, errors = [], []

    def check(params, model, **_):
        seen.append(model.name)
        report = ParamValidator().validate(params, model.input_shape)
        if report.has_errors():
            errors.append((model.name, report.generate_report()))

    session = boto3._get_default_session()
    session.events.register("before-parameter-build.s3", check)
    session.events.register("before-parameter-build.emr", check)
    try:
        assert _run(capsys, "upload", "--s3-prefix", PREFIX, "--bpe-file", _bpe_file())[0] == 0
        assert _run(capsys, "create-cluster", "--s3-prefix", PREFIX)[0] == 0
    finally:
        session.events.unregister("before-parameter-build.s3", check)
        session.events.unregister("before-parameter-build.emr", check)
    assert errors == []
    assert {"PutObject", "ListObjectsV2", "RunJobFlow"} <= set(seen), seen

"""The launcher's one frozen config: every flag of `python -m emr.launch <command>` lives here.

Commands share one dataclass so that what `create-cluster` uploaded and what `submit` points at are
derived from the same fields (`--s3-prefix` decides every S3 key, see `emr.spec.artifacts`). Each
command registers only the flags it uses (`COMMAND_FIELDS`); the rest keep their defaults.
"""
from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Optional, Tuple

from pipeline.config import JobConfig, flag

RELEASE_LABEL = "emr-7.7.0"  # Spark 3.5.3, Python 3.9 (Amazon Linux 2023)
# --job -> its spark-submit entry script in jobs/
JOB_SCRIPTS = {"run_pipeline": "run_pipeline.py", "ingest": "ingest_job.py", "dedup": "dedup_job.py",
               "tokenize": "tokenize_job.py", "shards": "shards_job.py"}
JOBS = tuple(JOB_SCRIPTS)


@dataclasses.dataclass(frozen=True)
class LaunchConfig(JobConfig):
    """Build, upload, launch and watch the pipeline on AWS EMR."""

    # where things go
    s3_prefix: str = field(default="", metadata=flag(
        "--s3-prefix", help="S3 prefix for code, bootstrap, BPE file and logs, e.g. s3://my-bucket/pipeline"))
    region: Optional[str] = field(default=None, metadata=flag(
        "--region", help="AWS region (default: your AWS config / AWS_DEFAULT_REGION)"))
    log_uri: str = field(default="", metadata=flag(
        "--log-uri", help="EMR log destination (default: <s3-prefix>/logs/)"))

    # the cluster
    name: str = field(default="webcrawl-gpt2", metadata=flag("--name", help="cluster name"))
    release_label: str = field(default=RELEASE_LABEL, metadata=flag("--release-label", help="EMR release"))
    primary_type: str = field(default="r5.xlarge", metadata=flag(
        "--primary-type", "--master-type", help="primary (master) node instance type"))
    core_type: str = field(default="r5.xlarge", metadata=flag("--core-type", help="core node instance type"))
    core_count: int = field(default=7, metadata=flag("--core-count", type=int, help="number of core nodes"))
    core_market: str = field(default="ON_DEMAND", metadata=flag(
        "--core-market", choices=("ON_DEMAND", "SPOT"), help="core nodes on demand or spot"))
    ebs_gb: int = field(default=64, metadata=flag(
        "--ebs-gb", type=int, help="gp3 GB per node for HDFS/shuffle/spill; 0 = EMR's default"))
    service_role: str = field(default="EMR_DefaultRole", metadata=flag(
        "--service-role", help="EMR service role (aws emr create-default-roles makes it)"))
    instance_profile: str = field(default="EMR_EC2_DefaultRole", metadata=flag(
        "--instance-profile", help="EC2 instance profile of the nodes (JobFlowRole)"))
    subnet_id: str = field(default="", metadata=flag("--subnet-id", help="VPC subnet (default: EMR's choice)"))
    key_name: str = field(default="", metadata=flag("--key-name", help="EC2 key pair for ssh (optional)"))
    keep_alive: bool = field(default=True, metadata=flag(
        "--keep-alive", help="keep the cluster up when it has no steps (else it ends after the last step)"))
    idle_timeout: int = field(default=3600, metadata=flag(
        "--idle-timeout", type=int, help="seconds idle before EMR terminates a kept-alive cluster; 0 = never"))
    tags: Tuple[str, ...] = field(default=(), metadata=flag(
        "--tag", dest="tags", action="append", default=[], metavar="KEY=VALUE", help="extra cluster tag (repeatable)"))

    # Spark sizing (see emr.spec.spark_sizing)
    maximize_resource_allocation: bool = field(default=False, metadata=flag(
        "--maximize-resource-allocation", help="let EMR size one executor per node instead of ours"))
    executor_cores: int = field(default=2, metadata=flag("--executor-cores", type=int, help="cores per executor"))
    yarn_memory_mb: int = field(default=0, metadata=flag(
        "--yarn-memory-mb", type=int, help="YARN memory per core node; 0 = EMR's default for --core-type"))
    driver_memory: str = field(default="3g", metadata=flag("--driver-memory", help="spark.driver.memory"))

    # the job
    cluster_id: str = field(default="", metadata=flag("--cluster-id", help="j-XXXXXXXX from create-cluster"))
    job: str = field(default="run_pipeline", metadata=flag(
        "--job", choices=JOBS, help="which job to spark-submit (its entry script in jobs/)"))
    input: str = field(default="", metadata=flag("--input", help="job --input (s3://bucket/warc/)"))
    output: str = field(default="", metadata=flag("--output", help="job --output (s3://bucket/out/)"))
    deploy_mode: str = field(default="cluster", metadata=flag(
        "--deploy-mode", choices=("cluster", "client"), help="spark-submit deploy mode"))
    action_on_failure: str = field(default="CONTINUE", metadata=flag(
        "--action-on-failure", choices=("CONTINUE", "CANCEL_AND_WAIT", "TERMINATE_CLUSTER"),
        help="what EMR does when the step fails"))
    job_args: Tuple[str, ...] = ()  # anything after `--` goes to the job unchanged

    # artifacts
    bpe_file: str = field(default="", metadata=flag(
        "--bpe-file", help="local r50k_base .tiktoken rank file (default: found in TIKTOKEN_CACHE_DIR)"))
    wheelhouse: str = field(default="", metadata=flag(
        "--wheelhouse", help="local dir of manylinux cp39 wheels; nodes then pip-install offline"))
    bundle_out: str = field(default="dist/pipeline-bundle.zip", metadata=flag(
        "--out", dest="bundle_out", help="where `bundle` writes the zip"))

    # waiting
    step_id: str = field(default="", metadata=flag("--step-id", help="step to wait for (default: all steps)"))
    timeout: int = field(default=4 * 3600, metadata=flag("--timeout", type=int, help="give up after seconds"))
    poll: int = field(default=30, metadata=flag("--poll", type=int, help="seconds between polls"))

    # cost (no prices are built in: they change and differ by region)
    ec2_price: Optional[float] = field(default=None, metadata=flag(
        "--ec2-price", type=float, help="on-demand $/hour of one instance (for the cost estimate)"))
    emr_price: Optional[float] = field(default=None, metadata=flag(
        "--emr-price", type=float, help="EMR surcharge $/hour of one instance (for the cost estimate)"))

    dry_run: bool = field(default=False, metadata=flag(
        "--dry-run", action="store_true", help="print the exact AWS requests as JSON; call nothing"))


_CLUSTER = ("s3_prefix", "region", "log_uri", "name", "release_label", "primary_type", "core_type",
            "core_count", "core_market", "ebs_gb", "service_role", "instance_profile", "subnet_id",
            "key_name", "keep_alive", "idle_timeout", "tags", "maximize_resource_allocation",
            "executor_cores", "yarn_memory_mb", "driver_memory", "ec2_price", "emr_price", "dry_run")
_STEP = ("s3_prefix", "region", "job", "input", "output", "deploy_mode", "action_on_failure", "dry_run")
_WATCH = ("region", "cluster_id")

# command -> the fields it exposes as flags
COMMAND_FIELDS = {
    "bundle": ("bundle_out",),
    "upload": ("s3_prefix", "region", "bpe_file", "wheelhouse", "dry_run"),
    "create-cluster": _CLUSTER,
    "run": _CLUSTER + tuple(f for f in _STEP if f not in _CLUSTER) + ("bpe_file", "wheelhouse"),
    "submit": _STEP + ("cluster_id",),
    "status": _WATCH,
    "wait": _WATCH + ("step_id", "timeout", "poll"),
    "logs": _WATCH + ("step_id", "s3_prefix", "log_uri"),
    "terminate": _WATCH + ("dry_run",),
}

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
IDLE_TIMEOUT_RANGE = (60, 604800)  # what EMR's AutoTerminationPolicy accepts, in seconds

# Each preset fills the fields left unset (None) on the command line; any flag overrides its part.
#   course: the course's cluster and its spark-submit line, exactly (the default).
#   tuned:  small executors sized for our Python-heavy stages (emr.spec.spark_sizing), cluster mode.
PRESETS = {
    "course": {
        "applications": "Hadoop,Spark,JupyterHub", "primary_type": "r5.xlarge", "core_type": "r5.xlarge",
        "core_count": 7, "root_volume_gb": 100, "primary_ebs_gb": 0, "core_ebs_gb": 200,
        "idle_timeout": 600, "cluster_sizing": "emr",
        "deploy_mode": "client", "driver_memory": "20g", "driver_max_result_size": "15g",
        "driver_cores": 0, "num_executors": 7, "executor_memory": "20GB", "executor_cores": 0,
    },
    "tuned": {
        "applications": "Hadoop,Spark", "primary_type": "r5.xlarge", "core_type": "r5.xlarge",
        "core_count": 7, "root_volume_gb": 0, "primary_ebs_gb": 64, "core_ebs_gb": 64,
        "idle_timeout": 3600, "cluster_sizing": "per-node",
        "deploy_mode": "cluster", "driver_memory": "3g", "driver_max_result_size": "",
        "driver_cores": 0, "num_executors": 0, "executor_memory": "", "executor_cores": 2,
    },
}


def _preset_flag(*names, **argparse_kwargs):
    """A flag whose default comes from --preset (the field stays None until __post_init__)."""
    argparse_kwargs["help"] += " (default: from --preset)"
    return flag(*names, default=None, **argparse_kwargs)
# --job -> its spark-submit entry script in jobs/
JOB_SCRIPTS = {"run_pipeline": "run_pipeline.py", "ingest": "ingest_job.py", "dedup": "dedup_job.py",
               "tokenize": "tokenize_job.py", "shards": "shards_job.py"}
JOBS = tuple(JOB_SCRIPTS)


@dataclasses.dataclass(frozen=True)
class LaunchConfig(JobConfig):
    """Build, upload, launch and watch the pipeline on AWS EMR."""

    preset: str = field(default="course", metadata=flag(
        "--preset", choices=tuple(PRESETS), help="cluster and spark-submit defaults: 'course' is the "
        "course's cluster (1 + 7 r5.xlarge, Hadoop/Spark/JupyterHub) and spark-submit line; 'tuned' "
        "sizes executors for the Python stages"))

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
    applications: Optional[str] = field(default=None, metadata=_preset_flag(
        "--applications", help="comma-separated EMR applications, e.g. Hadoop,Spark"))
    primary_type: Optional[str] = field(default=None, metadata=_preset_flag(
        "--primary-type", "--master-type", help="primary (master) node instance type"))
    core_type: Optional[str] = field(default=None, metadata=_preset_flag(
        "--core-type", help="core node instance type"))
    core_count: Optional[int] = field(default=None, metadata=_preset_flag(
        "--core-count", type=int, help="number of core nodes"))
    core_market: str = field(default="ON_DEMAND", metadata=flag(
        "--core-market", choices=("ON_DEMAND", "SPOT"), help="core nodes on demand or spot"))
    root_volume_gb: Optional[int] = field(default=None, metadata=_preset_flag(
        "--root-volume-gb", type=int, help="root (OS) EBS volume GB of every node; 0 = EMR's default"))
    primary_ebs_gb: Optional[int] = field(default=None, metadata=_preset_flag(
        "--primary-ebs-gb", type=int, help="gp3 data volume GB on the primary; 0 = EMR's default"))
    core_ebs_gb: Optional[int] = field(default=None, metadata=_preset_flag(
        "--core-ebs-gb", type=int, help="gp3 data volume GB per core node (HDFS, shuffle, spill); "
        "0 = EMR's default"))
    service_role: str = field(default="EMR_DefaultRole", metadata=flag(
        "--service-role", help="EMR service role (aws emr create-default-roles makes it)"))
    instance_profile: str = field(default="EMR_EC2_DefaultRole", metadata=flag(
        "--instance-profile", help="EC2 instance profile of the nodes (JobFlowRole)"))
    subnet_id: str = field(default="", metadata=flag("--subnet-id", help="VPC subnet (default: EMR's choice)"))
    key_name: str = field(default="", metadata=flag("--key-name", help="EC2 key pair for ssh (optional)"))
    keep_alive: bool = field(default=True, metadata=flag(
        "--keep-alive", help="keep the cluster up when it has no steps (else it ends after the last step)"))
    idle_timeout: Optional[int] = field(default=None, metadata=_preset_flag(
        "--idle-timeout", type=int, help="seconds idle (60-604800) before EMR terminates a kept-alive "
        "cluster; 0 = never"))
    tags: Tuple[str, ...] = field(default=(), metadata=flag(
        "--tag", dest="tags", action="append", default=[], metavar="KEY=VALUE", help="extra cluster tag (repeatable)"))

    # Spark sizing in the cluster's spark-defaults (see emr.spec.spark_sizing)
    cluster_sizing: Optional[str] = field(default=None, metadata=_preset_flag(
        "--cluster-sizing", choices=("emr", "per-node", "maximize"),
        help="executor defaults: EMR's own ('emr', sizing then comes from the step's flags), ours for "
        "the Python stages ('per-node'), or EMR's maximizeResourceAllocation"))
    yarn_memory_mb: int = field(default=0, metadata=flag(
        "--yarn-memory-mb", type=int, help="YARN memory per core node; 0 = EMR's default for --core-type"))

    # spark-submit's own options (the step)
    master: str = field(default="yarn", metadata=flag("--master", help="spark-submit --master"))
    deploy_mode: Optional[str] = field(default=None, metadata=_preset_flag(
        "--deploy-mode", choices=("cluster", "client"), help="spark-submit --deploy-mode"))
    driver_memory: Optional[str] = field(default=None, metadata=_preset_flag(
        "--driver-memory", help="spark.driver.memory ('' = Spark's default)"))
    driver_max_result_size: Optional[str] = field(default=None, metadata=_preset_flag(
        "--driver-max-result-size", help="spark.driver.maxResultSize ('' = Spark's default)"))
    driver_cores: Optional[int] = field(default=None, metadata=_preset_flag(
        "--driver-cores", type=int, help="spark-submit --driver-cores (0 = not passed)"))
    num_executors: Optional[int] = field(default=None, metadata=_preset_flag(
        "--num-executors", type=int, help="spark-submit --num-executors (0 = not passed)"))
    executor_memory: Optional[str] = field(default=None, metadata=_preset_flag(
        "--executor-memory", help="spark-submit --executor-memory ('' = not passed)"))
    executor_cores: Optional[int] = field(default=None, metadata=_preset_flag(
        "--executor-cores", type=int, help="cores per executor: spark-submit --executor-cores, and the "
        "per-node sizing's unit (0 = not passed)"))
    spark_conf: Tuple[str, ...] = field(default=(), metadata=flag(
        "--conf", dest="spark_conf", action="append", default=[], metavar="KEY=VALUE",
        help="extra spark-submit --conf (repeatable)"))

    # the job
    cluster_id: str = field(default="", metadata=flag("--cluster-id", help="j-XXXXXXXX from create-cluster"))
    job: str = field(default="run_pipeline", metadata=flag(
        "--job", choices=JOBS, help="which job to spark-submit (its entry script in jobs/)"))
    input: str = field(default="", metadata=flag("--input", help="job --input (s3://bucket/warc/)"))
    output: str = field(default="", metadata=flag("--output", help="job --output (s3://bucket/out/)"))
    action_on_failure: str = field(default="CONTINUE", metadata=flag(
        "--action-on-failure", choices=("CONTINUE", "CANCEL_AND_WAIT", "TERMINATE_CLUSTER"),
        help="what EMR does when the step fails"))
    job_args: Tuple[str, ...] = ()  # anything after `--` goes to the job unchanged

    # artifacts
    bpe_file: str = field(default="", metadata=flag(
        "--bpe-file", help="local r50k_base .tiktoken rank file (default: the one the pipeline package "
        "carries, else found in TIKTOKEN_CACHE_DIR)"))
    wheelhouse: str = field(default="", metadata=flag(
        "--wheelhouse", help="local dir of manylinux cp39 wheels; nodes then pip-install offline"))
    bundle_out: str = field(default="dist/pipeline-bundle.zip", metadata=flag(
        "--out", dest="bundle_out", help="where `bundle` writes the zip"))

    # waiting
    step_id: str = field(default="", metadata=flag("--step-id", help="step to wait for (default: all steps)"))
    timeout: int = field(default=4 * 3600, metadata=flag("--timeout", type=int, help="give up after seconds"))
    poll: int = field(default=30, metadata=flag("--poll", type=int, help="seconds between polls"))

    # cost: built-in list prices for a few types (emr.spec.PRICES); these override them
    ec2_price: Optional[float] = field(default=None, metadata=flag(
        "--ec2-price", type=float, help="on-demand $/hour of one instance (default: emr.spec.PRICES)"))
    emr_price: Optional[float] = field(default=None, metadata=flag(
        "--emr-price", type=float, help="EMR uplift $/hour of one instance (default: emr.spec.PRICES)"))

    dry_run: bool = field(default=False, metadata=flag(
        "--dry-run", action="store_true", help="print the exact AWS requests as JSON; call nothing"))

    def __post_init__(self) -> None:
        # Fill what the command line left unset from the preset: the saved config shows the values used.
        if self.preset not in PRESETS:
            raise ValueError("unknown preset %r (known: %s)" % (self.preset, ", ".join(PRESETS)))
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)


_CLUSTER = ("preset", "s3_prefix", "region", "log_uri", "name", "release_label", "applications",
            "primary_type", "core_type", "core_count", "core_market", "root_volume_gb", "primary_ebs_gb",
            "core_ebs_gb", "service_role", "instance_profile", "subnet_id", "key_name", "keep_alive",
            "idle_timeout", "tags", "cluster_sizing", "executor_cores", "yarn_memory_mb", "ec2_price",
            "emr_price", "dry_run")
_STEP = ("preset", "s3_prefix", "region", "job", "input", "output", "master", "deploy_mode",
         "driver_memory", "driver_max_result_size", "driver_cores", "num_executors", "executor_memory",
         "executor_cores", "spark_conf", "action_on_failure", "dry_run")
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

"""Pure functions from a LaunchConfig to the exact dicts handed to boto3 (no AWS calls here).

Everything a real EMR would receive is decided in this module, so tests and `--dry-run` see the same
requests the cluster gets. The S3 layout under `--s3-prefix`:

    <prefix>/code/pipeline-bundle.zip      pipeline/ + jobs/ (spark-submit --py-files)
    <prefix>/code/jobs/*.py                entry scripts (spark-submit's main file)
    <prefix>/code/bootstrap.sh             bootstrap action, run on every node
    <prefix>/code/requirements-emr.txt     what bootstrap.sh pip-installs
    <prefix>/code/constraints-emr.txt      ...at these exact versions
    <prefix>/code/bpe/r50k_base.tiktoken   GPT-2 BPE ranks (passed to the job as --bpe-file)
    <prefix>/code/wheels/*.whl             optional offline wheelhouse
    <prefix>/code/manifest.json            sha256 of each uploaded file
    <prefix>/logs/                         EMR logs (default --log-uri)
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence

from emr.config import IDLE_TIMEOUT_RANGE, JOB_SCRIPTS, LaunchConfig

# What bootstrap.sh makes on every node: a virtualenv for the job's Python (made from the node's
# /usr/bin/python3, Python 3.9 on emr-7.x), and the BPE ranks as a tiktoken cache directory.
NODE_VENV = "/opt/pipeline/venv"
NODE_PYTHON = NODE_VENV + "/bin/python"
NODE_TIKTOKEN_DIR = "/opt/pipeline/tiktoken"
JOBS_TAKING_BPE = ("run_pipeline", "tokenize")
JOBS_DEDUPING = ("run_pipeline", "dedup")
# Where dedup checkpoints when the core nodes are spot instances: the cluster's HDFS, which EMR
# replicates across core nodes, so the stage survives one of them being taken back.
SPOT_CHECKPOINT_DIR = "hdfs:///tmp/pipeline-dedup-checkpoints"

# (vCPUs, EMR's default yarn.nodemanager.resource.memory-mb) per instance type, as in EMR's "Task
# configuration" tables (not checked against a live cluster here). Override with --yarn-memory-mb for
# types not listed or if your release differs: `yarn node -list -showDetails` on the primary shows it.
INSTANCE_YARN = {
    "m5.xlarge": (4, 12288), "m5.2xlarge": (8, 24576), "m5.4xlarge": (16, 57344),
    "r5.xlarge": (4, 24576), "r5.2xlarge": (8, 57344), "r5.4xlarge": (16, 122880),
    "r6i.xlarge": (4, 24576), "r6i.2xlarge": (8, 57344), "r6i.4xlarge": (16, 122880),
    "c5.2xlarge": (8, 12288), "c5.4xlarge": (16, 24576),
}


# On-demand $/hour in us-east-1 (Linux): (EC2 instance, EMR uplift), the list prices published on
# aws.amazon.com/ec2/pricing/on-demand/ and aws.amazon.com/emr/pricing/ (unchanged for these types for
# years, but not re-checked automatically). Other regions and later prices differ: pass
# --ec2-price/--emr-price, or edit this table. EBS: gp3 $/GB-month, us-east-1.
PRICES = {
    "r5.xlarge": (0.252, 0.063), "r5.2xlarge": (0.504, 0.126),
    "m5.xlarge": (0.192, 0.048), "m5.2xlarge": (0.384, 0.096),
}
EBS_GP3_GB_MONTH = 0.08
HOURS_PER_MONTH = 730
# Applications an EMR 7.x release offers that this launcher passes through unchanged.
KNOWN_APPLICATIONS = ("Hadoop", "Spark", "JupyterHub", "JupyterEnterpriseGateway", "Livy", "Hive",
                      "Zeppelin", "Ganglia", "Tez", "Pig", "Hue", "HCatalog", "Presto", "Trino")


class ConfigError(ValueError):
    """A launcher flag combination that cannot work (the message says which flag to set)."""


def _prefix(cfg: LaunchConfig) -> str:
    if not cfg.s3_prefix.startswith("s3://") or len(cfg.s3_prefix.rstrip("/")) <= len("s3://"):
        raise ConfigError("--s3-prefix must be an s3://bucket[/path] URI, got %r" % cfg.s3_prefix)
    return cfg.s3_prefix.rstrip("/")


def artifacts(cfg: LaunchConfig) -> Dict[str, str]:
    """The S3 URI of every artifact, derived from --s3-prefix alone."""
    code = _prefix(cfg) + "/code"
    return {
        "code": code,
        "bundle": code + "/pipeline-bundle.zip",
        "jobs": code + "/jobs",
        "bootstrap": code + "/bootstrap.sh",
        "requirements": code + "/requirements-emr.txt",
        "constraints": code + "/constraints-emr.txt",
        "bpe": code + "/bpe/r50k_base.tiktoken",
        "wheels": code + "/wheels",
        "manifest": code + "/manifest.json",
        "logs": (cfg.log_uri.rstrip("/") if cfg.log_uri else _prefix(cfg) + "/logs") + "/",
    }


def _vcpus(instance_type: str) -> int:
    """vCPUs from the size name, true for the m/r/c families: large=2, xlarge=4, Nxlarge=4N."""
    size = instance_type.rpartition(".")[2]
    if size == "large":
        return 2
    if size.endswith("xlarge"):
        n = size[:-len("xlarge")]
        return 4 * int(n) if n.isdigit() else 4 if not n else 0
    return 0


def spark_sizing(cfg: LaunchConfig) -> Dict[str, str]:
    """Executor sizing for the core nodes, as spark-defaults properties (--cluster-sizing per-node;
    with 'emr' and 'maximize' EMR decides them, and the step's spark-submit flags override them).

    Our Python-heavy tasks (HTML parsing, MinHash, BPE) run in Python worker processes whose memory
    YARN counts as executor *overhead*, not JVM heap. So: small executors (2 cores), 40% of each
    container as overhead for the Python workers, and ~10% of the node's YARN memory left free so a
    cluster-mode driver fits beside the executors. r5.xlarge (4 vCPU, 24 GiB YARN): 2 executors of
    6g heap + 4g overhead per node. maximizeResourceAllocation would instead make one 4-core executor
    with nearly all memory as heap, starving the Python workers.
    """
    if cfg.cluster_sizing != "per-node":
        return {}
    vcpus, yarn_mb = INSTANCE_YARN.get(cfg.core_type, (_vcpus(cfg.core_type), 0))
    if cfg.yarn_memory_mb:
        yarn_mb = cfg.yarn_memory_mb
    if not yarn_mb or not vcpus:
        raise ConfigError("no YARN sizing known for %s: pass --yarn-memory-mb (see EMR's 'Task "
                          "configuration' table) or another --cluster-sizing" % cfg.core_type)
    cores = cfg.executor_cores or 2
    if cores < 1 or cores > vcpus:
        raise ConfigError("--executor-cores must be between 1 and %d for %s" % (vcpus, cfg.core_type))
    per_node = max(1, vcpus // cores)
    container_gb = int(yarn_mb * 0.9 / per_node / 1024)
    if container_gb < 2:
        raise ConfigError("%s has too little YARN memory for %d executors per node" % (cfg.core_type, per_node))
    overhead_gb = max(1, int(round(container_gb * 0.4)))
    total_cores = cfg.core_count * per_node * cores
    return {
        "spark.executor.cores": str(cores),
        "spark.executor.memory": "%dg" % (container_gb - overhead_gb),
        "spark.executor.memoryOverhead": "%dg" % overhead_gb,
        # ~4 tasks per core: enough to balance skew; AQE coalesces what turns out small.
        "spark.sql.shuffle.partitions": str(max(8, 4 * total_cores)),
        "spark.default.parallelism": str(max(8, 4 * total_cores)),
    }


def configurations(cfg: LaunchConfig) -> List[Dict]:
    """EMR configuration classifications (the `Configurations` of RunJobFlow)."""
    defaults = {
        # The job's Python: the virtualenv bootstrap.sh built (not the OS's /usr/bin/python3).
        "spark.pyspark.python": NODE_PYTHON,
        "spark.pyspark.driver.python": NODE_PYTHON,
        # Offline tiktoken for any code that asks tiktoken directly (bootstrap.sh filled the cache).
        "spark.executorEnv.TIKTOKEN_CACHE_DIR": NODE_TIKTOKEN_DIR,
        "spark.yarn.appMasterEnv.TIKTOKEN_CACHE_DIR": NODE_TIKTOKEN_DIR,
        # Speculative copies of a task would write the same llm.c shard to S3 twice, concurrently.
        "spark.speculation": "false",
    }
    defaults.update(spark_sizing(cfg))
    env = {"PYSPARK_PYTHON": NODE_PYTHON, "PYSPARK_DRIVER_PYTHON": NODE_PYTHON,
           "TIKTOKEN_CACHE_DIR": NODE_TIKTOKEN_DIR}
    if cfg.region:
        # boto3 on the nodes (storage.py) has no region otherwise and would go through S3 redirects.
        env["AWS_DEFAULT_REGION"] = cfg.region
        defaults["spark.executorEnv.AWS_DEFAULT_REGION"] = cfg.region
        defaults["spark.yarn.appMasterEnv.AWS_DEFAULT_REGION"] = cfg.region
    return [
        {"Classification": "spark",
         "Properties": {"maximizeResourceAllocation": "true" if cfg.cluster_sizing == "maximize" else "false"}},
        {"Classification": "spark-defaults", "Properties": dict(sorted(defaults.items()))},
        {"Classification": "spark-env", "Configurations": [
            {"Classification": "export", "Properties": env}]},
    ]


def _instance_group(name: str, role: str, itype: str, count: int, market: str, ebs_gb: int) -> Dict:
    group = {"Name": name, "InstanceRole": role, "Market": market, "InstanceType": itype,
             "InstanceCount": count}
    if ebs_gb:
        group["EbsConfiguration"] = {
            "EbsOptimized": True,
            "EbsBlockDeviceConfigs": [{"VolumeSpecification": {"VolumeType": "gp3", "SizeInGB": ebs_gb},
                                       "VolumesPerInstance": 1}]}
    return group


def _tags(cfg: LaunchConfig) -> List[Dict[str, str]]:
    tags = {"project": "webcrawl-gpt2", "created-by": "emr.launch"}
    for t in cfg.tags:
        if "=" not in t:
            raise ConfigError("--tag wants KEY=VALUE, got %r" % t)
        k, v = t.split("=", 1)
        tags[k] = v
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def applications(cfg: LaunchConfig) -> List[str]:
    names = [a.strip() for a in cfg.applications.split(",") if a.strip()]
    unknown = [a for a in names if a not in KNOWN_APPLICATIONS]
    if unknown:
        raise ConfigError("--applications: unknown %s (known: %s)" % (", ".join(unknown),
                                                                      ", ".join(KNOWN_APPLICATIONS)))
    if "Spark" not in names:
        raise ConfigError("--applications must include Spark")
    return names


def check_idle_timeout(seconds: int) -> None:
    lo, hi = IDLE_TIMEOUT_RANGE
    if seconds != 0 and not lo <= seconds <= hi:
        raise ConfigError("--idle-timeout must be 0 (never) or %d..%d seconds (EMR's limits), got %d"
                          % (lo, hi, seconds))


def run_job_flow_request(cfg: LaunchConfig, steps: Sequence[Dict] = ()) -> Dict:
    """The RunJobFlow request. With `steps` and --no-keep-alive it is a transient cluster that
    runs them and terminates (the cheapest way to run one pipeline)."""
    if cfg.core_count < 1:
        raise ConfigError("--core-count must be >= 1")
    for name in ("root_volume_gb", "primary_ebs_gb", "core_ebs_gb"):
        if getattr(cfg, name) < 0:
            raise ConfigError("--%s must be >= 0" % name.replace("_", "-"))
    check_idle_timeout(cfg.idle_timeout)
    a = artifacts(cfg)
    instances = {
        "InstanceGroups": [
            _instance_group("Primary", "MASTER", cfg.primary_type, 1, "ON_DEMAND", cfg.primary_ebs_gb),
            _instance_group("Core", "CORE", cfg.core_type, cfg.core_count, cfg.core_market, cfg.core_ebs_gb),
        ],
        "KeepJobFlowAliveWhenNoSteps": bool(cfg.keep_alive),
        "TerminationProtected": False,
    }
    if cfg.subnet_id:
        instances["Ec2SubnetId"] = cfg.subnet_id
    if cfg.key_name:
        instances["Ec2KeyName"] = cfg.key_name
    req = {
        "Name": cfg.name,
        "ReleaseLabel": cfg.release_label,
        "LogUri": a["logs"],
        "Applications": [{"Name": name} for name in applications(cfg)],
        "Instances": instances,
        "BootstrapActions": [{
            "Name": "pipeline python deps",
            "ScriptBootstrapAction": {"Path": a["bootstrap"], "Args": [a["code"]]}}],
        "Configurations": configurations(cfg),
        "ServiceRole": cfg.service_role,
        "JobFlowRole": cfg.instance_profile,
        "VisibleToAllUsers": True,
        "StepConcurrencyLevel": 1,
        "Tags": _tags(cfg),
    }
    if cfg.root_volume_gb:
        req["EbsRootVolumeSize"] = int(cfg.root_volume_gb)
    if cfg.keep_alive and cfg.idle_timeout > 0:
        req["AutoTerminationPolicy"] = {"IdleTimeout": int(cfg.idle_timeout)}
    if steps:
        req["Steps"] = list(steps)
    return req


def spark_submit_options(cfg: LaunchConfig) -> List[str]:
    """spark-submit's own options, in the order of the course's command line: with --preset course,
    `--deploy-mode client --master yarn --conf spark.driver.memory=20g --conf
    spark.driver.maxResultSize=15g --num-executors 7 --executor-memory 20GB`."""
    args = ["--deploy-mode", cfg.deploy_mode, "--master", cfg.master]
    if cfg.driver_memory:
        args += ["--conf", "spark.driver.memory=" + cfg.driver_memory]
    if cfg.driver_max_result_size:
        args += ["--conf", "spark.driver.maxResultSize=" + cfg.driver_max_result_size]
    if cfg.driver_cores:
        args += ["--driver-cores", str(cfg.driver_cores)]
    if cfg.num_executors:
        args += ["--num-executors", str(cfg.num_executors)]
    if cfg.executor_memory:
        args += ["--executor-memory", cfg.executor_memory]
    if cfg.executor_cores:
        args += ["--executor-cores", str(cfg.executor_cores)]
    for conf in cfg.spark_conf:
        key, eq, _ = conf.partition("=")
        if not eq or not key.strip():
            raise ConfigError("--conf wants KEY=VALUE, got %r" % conf)
        args += ["--conf", conf]
    if cfg.deploy_mode == "cluster" and not any(c.startswith("spark.yarn.maxAppAttempts=")
                                                for c in cfg.spark_conf):
        # YARN would rerun a failed cluster-mode driver from scratch: a second full run, twice the bill.
        args += ["--conf", "spark.yarn.maxAppAttempts=1"]
    return args


def spark_submit_args(cfg: LaunchConfig) -> List[str]:
    """The command line EMR's command-runner.jar runs on the primary node."""
    for name in ("input", "output"):
        value = getattr(cfg, name)
        if not value:
            raise ConfigError("--%s is required to submit a job" % name)
    a = artifacts(cfg)
    args = ["spark-submit"] + spark_submit_options(cfg) + [
        "--py-files", a["bundle"], "%s/%s" % (a["jobs"], JOB_SCRIPTS[cfg.job])]
    args += ["--input", cfg.input, "--output", cfg.output]
    if cfg.job in JOBS_TAKING_BPE and "--bpe-file" not in cfg.job_args \
            and "--tiktoken-cache" not in cfg.job_args:
        args += ["--bpe-file", a["bpe"]]
    if cfg.core_market == "SPOT" and cfg.job in JOBS_DEDUPING and "--checkpoint-dir" not in cfg.job_args:
        # Local checkpoints live on the executors: a spot node taken back mid-dedup would lose the
        # stored signatures and fail the stage. Reliable checkpoints (and recomputable persists) don't.
        args += ["--checkpoint-dir", SPOT_CHECKPOINT_DIR]
    args += list(cfg.job_args)
    return args


def step(cfg: LaunchConfig) -> Dict:
    return {
        "Name": "pipeline %s -> %s" % (cfg.job, cfg.output),
        "ActionOnFailure": cfg.action_on_failure,
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": spark_submit_args(cfg)},
    }


def add_steps_request(cfg: LaunchConfig) -> Dict:
    if not cfg.cluster_id:
        raise ConfigError("--cluster-id is required (create-cluster prints it)")
    return {"JobFlowId": cfg.cluster_id, "Steps": [step(cfg)]}


def terminate_request(cfg: LaunchConfig) -> Dict:
    if not cfg.cluster_id:
        raise ConfigError("--cluster-id is required")
    return {"JobFlowIds": [cfg.cluster_id]}


def step_log_uris(log_uri: str, cluster_id: str, step_id: str) -> Dict[str, str]:
    """Where EMR copies a step's output (a few minutes after it ends). In cluster deploy mode the
    driver's own log is a YARN container log under <log-uri>/<cluster>/containers/ instead."""
    base = "%s/%s/steps/%s/" % (log_uri.rstrip("/"), cluster_id, step_id)
    return {"stderr": base + "stderr.gz", "stdout": base + "stdout.gz", "controller": base + "controller.gz"}


def yarn_application_ids(step_stderr: str) -> List[str]:
    """YARN application ids that spark-submit reported in a step's stderr, in order, without repeats."""
    seen: List[str] = []
    for app in re.findall(r"application_\d+_\d+", step_stderr):
        if app not in seen:
            seen.append(app)
    return seen


def driver_log_prefix(log_uri: str, cluster_id: str, app_id: str) -> str:
    return "%s/%s/containers/%s/" % (log_uri.rstrip("/"), cluster_id, app_id)


def is_driver_stderr(uri: str) -> bool:
    """The first container of the first attempt is the application master, which in cluster deploy
    mode is the driver: container_<ts>_<app>_01_000001/stderr.gz."""
    return bool(re.search(r"/container_(?:e\d+_)?\d+_\d+_01_000001/stderr\.gz$", uri))


def cost_estimate(cfg: LaunchConfig, hours: float = 1.0) -> Optional[Dict]:
    """$ for `hours` of the whole cluster: EC2 + EMR uplift per node (PRICES, or --ec2-price /
    --emr-price) and the gp3 EBS volumes. None when no price is known for an instance type."""
    nodes = {cfg.primary_type: 1}
    nodes[cfg.core_type] = nodes.get(cfg.core_type, 0) + cfg.core_count
    per_hour = 0.0
    parts = []
    for itype, count in sorted(nodes.items()):
        known = PRICES.get(itype)
        ec2 = cfg.ec2_price if cfg.ec2_price is not None else (known[0] if known else None)
        emr = cfg.emr_price if cfg.emr_price is not None else (known[1] if known else None)
        if ec2 is None or emr is None:
            return None
        per_hour += count * (ec2 + emr)
        parts.append("%d x %s ($%.3f EC2 + $%.3f EMR)" % (count, itype, ec2, emr))
    n = 1 + cfg.core_count
    ebs_gb = n * cfg.root_volume_gb + cfg.primary_ebs_gb + cfg.core_count * cfg.core_ebs_gb
    ebs = ebs_gb * EBS_GP3_GB_MONTH / HOURS_PER_MONTH
    total = per_hour + ebs
    return {"nodes": n, "instances": round(per_hour, 4), "ebs_gb": ebs_gb, "ebs": round(ebs, 4),
            "per_hour": round(total, 4), "hours": hours, "total": round(total * hours, 4),
            "line": "~$%.2f/hour: %s + %d GB gp3 EBS ($%.3f)" % (total, " + ".join(parts), ebs_gb, ebs),
            "prices": "us-east-1 on-demand list prices (emr.spec.PRICES; --ec2-price/--emr-price "
                      "override); S3 requests and data transfer not included"}


# --- reading responses --------------------------------------------------------------------------

CLUSTER_DONE = ("TERMINATED", "TERMINATED_WITH_ERRORS")
STEP_DONE = ("COMPLETED", "CANCELLED", "FAILED", "INTERRUPTED")


def summarize(cluster: Dict, steps: Sequence[Dict]) -> Dict:
    """DescribeCluster's `Cluster` + ListSteps' `Steps` -> a small JSON-able status."""
    status = cluster.get("Status", {})
    out = {"cluster_id": cluster.get("Id"), "name": cluster.get("Name"), "state": status.get("State"),
           "reason": status.get("StateChangeReason", {}).get("Message", ""),
           "release": cluster.get("ReleaseLabel"), "primary_dns": cluster.get("MasterPublicDnsName"),
           "log_uri": cluster.get("LogUri"), "steps": []}
    for s in steps:
        st = s.get("Status", {})
        item = {"step_id": s.get("Id"), "name": s.get("Name"), "state": st.get("State")}
        failure = st.get("FailureDetails") or {}
        if failure:
            item["failure"] = {k: failure[k] for k in ("Reason", "Message", "LogFile") if k in failure}
        out["steps"].append(item)
    return out


def verdict(summary: Dict, step_id: str = "") -> Optional[bool]:
    """None while still going; True when the step(s) completed; False on any failure or a cluster
    that ended before they did."""
    steps = [s for s in summary["steps"] if not step_id or s["step_id"] == step_id]
    if step_id and not steps:
        raise ConfigError("cluster %s has no step %s" % (summary["cluster_id"], step_id))
    if any(s["state"] in ("FAILED", "CANCELLED", "INTERRUPTED") for s in steps):
        return False
    if steps and all(s["state"] == "COMPLETED" for s in steps):
        return True
    if summary["state"] in CLUSTER_DONE:
        return False  # ended with steps unfinished (or was never asked to run any)
    if not steps and summary["state"] == "WAITING":
        return True  # nothing to wait for: the cluster is up and idle
    return None

"""`python -m emr.launch <command>`: package, upload, launch, submit to and watch an EMR cluster.

    python -m emr.launch bundle                                   # dist/pipeline-bundle.zip
    python -m emr.launch upload         --s3-prefix s3://B/pipeline
    python -m emr.launch create-cluster --s3-prefix s3://B/pipeline [--preset course] [--dry-run]
    python -m emr.launch submit         --s3-prefix s3://B/pipeline --cluster-id j-XXX \\
                                        --input s3://B/warc/ --output s3://B/out/ \\
                                        [--executor-memory 20GB --conf k=v ...] [-- --min-chars 200]
    python -m emr.launch wait           --cluster-id j-XXX [--step-id s-XXX] [--timeout 14400]
    python -m emr.launch status | logs | terminate --cluster-id j-XXX
    python -m emr.launch run            (upload + transient cluster running one job, then terminating)

`--preset course` (the default) is the course's cluster and spark-submit line; `tuned` sizes executors
for the Python stages; every part has its own flag (emr/config.py). The requests themselves are built
by `emr.spec` (pure functions) and checked against botocore's service model; this module only calls
boto3 with them. `--dry-run` prints the requests as JSON instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import shlex
import shutil
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from emr import package, spec
from emr.config import COMMAND_FIELDS, LaunchConfig
from pipeline import storage

COMMANDS = {
    "bundle": "build the --py-files zip of pipeline/ + jobs/ (deterministic)",
    "upload": "bundle + entry scripts + bootstrap + requirements + BPE ranks -> <s3-prefix>/code/",
    "create-cluster": "start an EMR cluster (RunJobFlow) that waits for steps",
    "run": "upload, then a transient cluster that runs one job and terminates",
    "submit": "add a spark-submit step to a running cluster (AddJobFlowSteps)",
    "status": "cluster state and steps as JSON (DescribeCluster + ListSteps)",
    "wait": "poll until the step(s) finish or the cluster ends; exit 0 ok, 1 failed, 124 timeout",
    "logs": "print a step's stderr/stdout from the log URI",
    "terminate": "terminate the cluster (TerminateJobFlows)",
}
TIMEOUT_RC = 124


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m emr.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.required = True
    names = [f.name for f in dataclasses.fields(LaunchConfig)]
    for command, help_text in COMMANDS.items():
        p = sub.add_parser(command, help=help_text, description=help_text)
        LaunchConfig.add_arguments(p, skip=[n for n in names if n not in COMMAND_FIELDS[command]])
    return parser


def parse(argv: Sequence[str]) -> Tuple[str, LaunchConfig]:
    """Everything after a bare `--` is passed to the job unchanged."""
    argv = list(argv)
    job_args: Tuple[str, ...] = ()
    if "--" in argv:
        cut = argv.index("--")
        argv, job_args = argv[:cut], tuple(argv[cut + 1:])
    ns = build_parser().parse_args(argv)
    return ns.command, LaunchConfig.from_args(ns, job_args=job_args)


def _client(cfg: LaunchConfig, service: str):
    import boto3
    from botocore.config import Config

    # EMR's Describe*/List* calls are throttled hard; let botocore back off instead of failing a wait.
    return boto3.client(service, region_name=cfg.region or None,
                        config=Config(retries={"mode": "standard", "max_attempts": 10}))


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- upload ---------------------------------------------------------------------------------------

def upload_plan(cfg: LaunchConfig, bundle_path: str) -> List[Tuple[str, str]]:
    """(local file, S3 URI) for everything `upload` copies; the bundle is built beforehand."""
    a = spec.artifacts(cfg)
    plan = [(bundle_path, a["bundle"]), (package.BOOTSTRAP_SH, a["bootstrap"]),
            (package.REQUIREMENTS, a["requirements"]), (package.CONSTRAINTS, a["constraints"])]
    plan += [(path, "%s/%s.py" % (a["jobs"], job)) for job, path in package.job_scripts().items()]
    bpe = package.find_bpe_file(cfg.bpe_file)
    if not bpe or not os.path.isfile(bpe):
        raise spec.ConfigError("no GPT-2 BPE rank file: pass --bpe-file r50k_base.tiktoken or set "
                               "TIKTOKEN_CACHE_DIR to a tiktoken cache holding r50k_base")
    plan.append((bpe, a["bpe"]))
    if cfg.wheelhouse:
        wheels = sorted(f for f in os.listdir(cfg.wheelhouse) if f.endswith(".whl"))
        if not wheels:
            raise spec.ConfigError("--wheelhouse %s has no .whl files" % cfg.wheelhouse)
        plan += [(os.path.join(cfg.wheelhouse, w), "%s/%s" % (a["wheels"], w)) for w in wheels]
    return plan


def upload(cfg: LaunchConfig) -> Dict:
    from pipeline.bpe import R50K_SHA256

    a = spec.artifacts(cfg)
    scratch = storage.local_scratch_dir()
    try:
        return _upload(cfg, a, os.path.join(scratch, "pipeline-bundle.zip"), R50K_SHA256)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _upload(cfg: LaunchConfig, a: Dict[str, str], bundle_path: str, bpe_sha256: str) -> Dict:
    package.build_bundle(bundle_path)
    plan = upload_plan(cfg, bundle_path)
    manifest = {uri: {"sha256": package.sha256_file(path), "bytes": os.path.getsize(path),
                      "source": os.path.relpath(path, package.REPO_ROOT) if path != bundle_path
                      else "emr.package.build_bundle"} for path, uri in plan}
    if manifest[a["bpe"]]["sha256"] != bpe_sha256:
        bpe_path = [path for path, uri in plan if uri == a["bpe"]][0]
        raise spec.ConfigError("%s is not tiktoken's r50k_base rank file (sha256 mismatch)" % bpe_path)
    if cfg.dry_run:
        return {"upload": manifest}
    # Wheels from an older upload must not linger: bootstrap.sh installs whatever is there.
    storage.remove_tree(a["wheels"])
    for path, uri in plan:
        storage.upload_file(path, uri)
        _log("uploaded %s" % uri)
    storage.write_text(a["manifest"], json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    from pipeline.config import save_config

    save_config(cfg, a["code"])
    return {"upload": manifest}


# --- cluster --------------------------------------------------------------------------------------

def resolve_region(cfg: LaunchConfig) -> LaunchConfig:
    """Fill --region from the AWS config/environment (no network), so the cluster's nodes get it."""
    if cfg.region:
        return cfg
    import boto3

    return dataclasses.replace(cfg, region=boto3.session.Session().region_name)


def validate_request(service: str, operation: str, request: Dict) -> Dict:
    """Check a request against botocore's own service model (offline), as boto3 would before
    sending it: a --dry-run then catches what AWS would reject. Returns the request."""
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model(service)
    report = ParamValidator().validate(request, model.operation_model(operation).input_shape)
    if report.has_errors():
        raise spec.ConfigError("%s %s request does not match botocore's model:\n%s"
                               % (service, operation, report.generate_report()))
    return request


def create_cluster(cfg: LaunchConfig, steps: Sequence[Dict] = ()) -> Dict:
    req = validate_request("emr", "RunJobFlow", spec.run_job_flow_request(cfg, steps))
    out = {"request": req}
    cost = spec.cost_estimate(cfg)
    if cost:
        out["cost_per_hour"] = cost
        _log("cost: %s" % cost["line"])
    else:
        _log("cost: no price known for %s; pass --ec2-price and --emr-price"
             % ", ".join(sorted({cfg.primary_type, cfg.core_type})))
    for s in steps:
        _log("step: %s" % shlex.join(s["HadoopJarStep"]["Args"]))
    if cfg.dry_run:
        return out
    a = spec.artifacts(cfg)
    for key in ("bootstrap", "bundle"):
        if not storage.exists(a[key]):
            raise spec.ConfigError("%s is missing: run `python -m emr.launch upload --s3-prefix %s` first"
                                   % (a[key], cfg.s3_prefix))
    resp = _client(cfg, "emr").run_job_flow(**req)
    out["cluster_id"] = resp["JobFlowId"]
    # A record of exactly what was asked for, next to the logs.
    record = spec._prefix(cfg) + "/clusters/" + resp["JobFlowId"]
    storage.write_text(record + "/run_job_flow.json", json.dumps(req, indent=2, sort_keys=True) + "\n")
    from pipeline.config import save_config

    save_config(cfg, record)
    return out


def submit(cfg: LaunchConfig) -> Dict:
    req = validate_request("emr", "AddJobFlowSteps", spec.add_steps_request(cfg))
    # What will run on the primary node, before anything is added (copy-pasteable into an ssh session).
    _log("step: %s" % shlex.join(req["Steps"][0]["HadoopJarStep"]["Args"]))
    if cfg.dry_run:
        return {"request": req}
    resp = _client(cfg, "emr").add_job_flow_steps(**req)
    return {"request": req, "step_id": resp["StepIds"][0]}


def status(emr, cluster_id: str) -> Dict:
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    steps = []
    for page in emr.get_paginator("list_steps").paginate(ClusterId=cluster_id):
        steps.extend(page["Steps"])
    return spec.summarize(cluster, steps)


def wait(emr, cfg: LaunchConfig, sleep: Callable[[float], None] = time.sleep,
         clock: Callable[[], float] = time.monotonic) -> Tuple[int, Dict]:
    """Poll until `spec.verdict` decides or --timeout passes: (exit code, last status)."""
    if not cfg.cluster_id:
        raise spec.ConfigError("--cluster-id is required")
    deadline = clock() + cfg.timeout
    last_line = None
    while True:
        summary = status(emr, cfg.cluster_id)
        line = "cluster %s; %s" % (summary["state"], ", ".join(
            "%s %s" % (s["step_id"], s["state"]) for s in summary["steps"]) or "no steps")
        if line != last_line:  # only changes, so a four-hour wait is a short log
            _log("%s  %s" % (time.strftime("%H:%M:%S"), line))
            last_line = line
        ok = spec.verdict(summary, cfg.step_id)
        if ok is not None:
            return (0 if ok else 1), summary
        if clock() >= deadline:
            _log("timed out after %ds; the cluster keeps running (terminate it if you are done)" % cfg.timeout)
            return TIMEOUT_RC, summary
        sleep(max(0.0, min(float(cfg.poll), deadline - clock())))


def _read_gz(uri: str) -> Optional[str]:
    try:
        with storage.open_read(uri) as f:
            return gzip.decompress(f.read()).decode("utf-8", "replace")
    except storage.InputError:
        return None


def fetch_logs(emr, cfg: LaunchConfig) -> Dict[str, str]:
    """A step's logs from S3 (EMR uploads them a few minutes after the step ends): its stdout and
    stderr and, in cluster deploy mode, the driver's own stderr (where a Python traceback is), found
    through the YARN application id that spark-submit printed to the step's stderr."""
    summary = status(emr, cfg.cluster_id)
    step_id = cfg.step_id or (summary["steps"][0]["step_id"] if summary["steps"] else "")
    if not step_id:
        raise spec.ConfigError("cluster %s has no steps" % cfg.cluster_id)
    log_uri = (cfg.log_uri or summary["log_uri"] or spec.artifacts(cfg)["logs"]).replace("s3n://", "s3://")
    out = {}
    for name, uri in sorted(spec.step_log_uris(log_uri, cfg.cluster_id, step_id).items()):
        text = _read_gz(uri)
        out[name] = text if text is not None else (
            "(not there yet: %s; EMR copies step logs ~5 minutes after the step ends)" % uri)
    apps = spec.yarn_application_ids(out.get("stderr", ""))
    if apps:
        prefix = spec.driver_log_prefix(log_uri, cfg.cluster_id, apps[-1])
        try:
            found = storage.list_files([prefix])
        except storage.InputError:
            found = []
        drivers = [u for u in found if spec.is_driver_stderr(u)]
        text = _read_gz(drivers[0]) if drivers else None
        out["driver stderr"] = text if text is not None else (
            "(no driver log under %s yet; YARN logs arrive after the application ends)" % prefix)
    return out


# --- CLI ------------------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    command, cfg = parse(sys.argv[1:] if argv is None else argv)
    if command in ("create-cluster", "run"):
        cfg = resolve_region(cfg)
    if command == "run":  # a transient cluster: it ends after its one step
        cfg = dataclasses.replace(cfg, keep_alive=False)
    _log("config: %s" % json.dumps(cfg.to_dict(), sort_keys=True))
    try:
        if command == "bundle":
            digest = package.build_bundle(cfg.bundle_out)
            _print_json({"bundle": cfg.bundle_out, "sha256": digest,
                         "files": [arc for arc, _ in package.bundle_files()]})
        elif command == "upload":
            _print_json(upload(cfg))
        elif command == "create-cluster":
            _print_json(create_cluster(cfg))
        elif command == "run":
            result = upload(cfg)
            result.update(create_cluster(cfg, steps=[spec.step(cfg)]))
            _print_json(result)
        elif command == "submit":
            _print_json(submit(cfg))
        elif command == "terminate":
            req = validate_request("emr", "TerminateJobFlows", spec.terminate_request(cfg))
            if not cfg.dry_run:
                _client(cfg, "emr").terminate_job_flows(**req)
            _print_json({"request": req})
        elif command == "status":
            _print_json(status(_client(cfg, "emr"), cfg.cluster_id))
        elif command == "wait":
            rc, summary = wait(_client(cfg, "emr"), cfg)
            _print_json(summary)
            return rc
        elif command == "logs":
            for name, text in fetch_logs(_client(cfg, "emr"), cfg).items():
                print("==> %s <==\n%s" % (name, text[-20000:]))
    except spec.ConfigError as e:
        print("emr.launch %s: %s" % (command, e), file=sys.stderr)
        return 2
    except (BotoCoreError, ClientError, storage.InputError) as e:  # AWS said no: say what, no traceback
        print("emr.launch %s: %s" % (command, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

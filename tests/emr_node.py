"""A simulated EMR node and a Spark standalone cluster on loopback, for tests/test_emr_rehearsal.py.

What is real: `emr/bootstrap.sh` run by bash (its `pip install` goes to PyPI, through pip's cache),
Python 3.9 (pyenv's 3.9.18, as emr-7.7.0's /usr/bin/python3 is 3.9), a moto S3 server on 127.0.0.1,
and Spark: a standalone master and workers started with the pyspark wheel's `spark-class`.

What is simulated, and how:
- the node's file system is a temporary directory: "/usr/bin/python3" is a virtualenv of pyenv's 3.9
  (so its site-packages can be changed without touching pyenv's), "/opt/pipeline" is under the root;
- Amazon Linux 2023's RPM-owned Python packages: `requests` 2.25.1 and `urllib3` 1.25.10 (with their
  dependencies) are installed into that Python, then made to look as the RPMs leave them: no RECORD
  file in their dist-info (pip cannot uninstall them) and INSTALLER "rpm";
- `aws` is a few lines of boto3 doing `s3 cp [--recursive]` and `s3 ls` against AWS_ENDPOINT_URL.
  On AL2023 the AWS CLI v2 is a self-contained binary that does not use the node's Python; the test
  machine may have no AWS CLI at all, and a PyPI awscli would pin its own botocore;
- `sudo` runs the command as is (the node's hadoop user has passwordless sudo).
"""
from __future__ import annotations

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Dict, List, Optional, Sequence

PY39 = os.path.join(os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv")), "versions", "3.9.18",
                    "bin", "python")
RPM_PACKAGES = ("requests==2.25.1", "urllib3==1.25.10")

AWS_SHIM = '''#!%(python)s
"""`aws s3 cp SRC DST [--recursive] [--quiet]` and `aws s3 ls URI`, with boto3 (simulated node)."""
import os, sys
import boto3
args = [a for a in sys.argv[1:] if a != "--quiet"]
recursive = "--recursive" in args
args = [a for a in args if a != "--recursive"]
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
def split(uri):
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key
if args[:2] == ["s3", "ls"]:
    bucket, key = split(args[2])
    sys.exit(0 if s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) else 1)
if args[:2] != ["s3", "cp"] or len(args) != 4:
    sys.exit("aws shim: unsupported command %%r" %% (sys.argv[1:],))
(bucket, key), dst = split(args[2]), args[3]
keys = ([o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", [])]
        if recursive else [key])
try:
    for k in keys:
        target = os.path.join(dst, k[len(key):].lstrip("/")) if recursive else dst
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        s3.download_file(bucket, k, target)
except Exception as e:
    sys.exit("download failed: s3://%%s/%%s: %%s" %% (bucket, key, e))
'''


def run(cmd: Sequence[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    """subprocess.run in its own process group, killed as a group when it overruns."""
    with subprocess.Popen(list(cmd), start_new_session=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **kw) as p:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
            raise AssertionError("timed out after %ds: %s\n%s" % (timeout, " ".join(cmd), out[-5000:]))
    return subprocess.CompletedProcess(list(cmd), p.returncode, out, None)


class Node:
    """A simulated Amazon Linux 2023 EMR node rooted at `root`."""

    def __init__(self, root: str, endpoint: str):
        self.root = root
        self.python = os.path.join(root, "usr", "bin", "python3")
        self.bin = os.path.join(root, "node-bin")
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("PYTHONPATH", "VIRTUAL_ENV", "TIKTOKEN_CACHE_DIR", "PYTHONHOME")}
        self.env.update({"PATH": self.bin + os.pathsep + os.environ.get("PATH", ""),
                         "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                         "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                         "PIP_DISABLE_PIP_VERSION_CHECK": "1"})

    def path(self, node_path: str) -> str:
        """Where an absolute path of the real node lives in the simulation."""
        return os.path.join(self.root, node_path.lstrip("/"))

    def build(self) -> None:
        sysroot = os.path.join(self.root, "usr")
        res = run([PY39, "-m", "venv", sysroot], timeout=300)
        assert res.returncode == 0, res.stdout
        res = run([self.python, "-m", "pip", "install", "--quiet"] + list(RPM_PACKAGES), timeout=600,
                  env=self.env)
        if res.returncode != 0:
            # Two releases that have been on PyPI for years: failing to install them means no package
            # index is reachable (pip's cache is not enough), and the bootstrap would need one too.
            import pytest
            pytest.skip("needs a reachable package index for pip (PyPI or a mirror): %s" % res.stdout[-500:])
        site = glob.glob(os.path.join(sysroot, "lib", "python3.9", "site-packages"))[0]
        rpm_owned = [d for d in os.listdir(site) if d.endswith(".dist-info")
                     and not d.startswith(("pip-", "setuptools-"))]
        assert {d.split("-")[0].lower() for d in rpm_owned} >= {"requests", "urllib3"}, rpm_owned
        for d in rpm_owned:
            os.remove(os.path.join(site, d, "RECORD"))
            with open(os.path.join(site, d, "INSTALLER"), "w") as f:
                f.write("rpm\n")
        os.makedirs(self.bin)
        for name, text in (("aws", AWS_SHIM % {"python": sys.executable}),
                           ("sudo", '#!/bin/sh\nexec "$@"\n')):
            with open(os.path.join(self.bin, name), "w") as f:
                f.write(text)
            os.chmod(os.path.join(self.bin, name), 0o755)

    def bootstrap(self, script: str, code_uri: str, venv: str, tiktoken_dir: str,
                  timeout: float = 1500) -> subprocess.CompletedProcess:
        return run(["bash", script, code_uri, "--python", self.python, "--venv", self.path(venv),
                    "--tiktoken-dir", self.path(tiktoken_dir)], timeout=timeout, env=self.env, cwd=self.root)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandaloneCluster:
    """A Spark standalone master and `workers` workers (one core each, own work dirs) on 127.0.0.1."""

    def __init__(self, spark_home: str, base: str, env: Dict[str, str], workers: int = 2,
                 worker_memory: str = "1g"):
        self.spark_home, self.base, self.env = spark_home, base, dict(env, SPARK_HOME=spark_home,
                                                                     SPARK_LOCAL_IP="127.0.0.1")
        self.n_workers, self.worker_memory = workers, worker_memory
        self.port, self.ui_port = free_port(), free_port()
        self.url = "spark://127.0.0.1:%d" % self.port
        self.procs: List[subprocess.Popen] = []
        self.work_dirs = [os.path.join(base, "worker%d" % i) for i in range(workers)]

    def _start(self, name: str, args: Sequence[str], env: Dict[str, str]) -> None:
        log = open(os.path.join(self.base, name + ".log"), "wb")
        cmd = [os.path.join(self.spark_home, "bin", "spark-class")] + list(args)
        self.procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True, cwd=self.base))
        log.close()

    def start(self, timeout: float = 180) -> None:
        os.makedirs(self.base, exist_ok=True)
        self._start("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                               "--port", str(self.port), "--webui-port", str(self.ui_port)], self.env)
        for i, work in enumerate(self.work_dirs):
            os.makedirs(work)
            local = os.path.join(self.base, "local%d" % i)
            os.makedirs(local)
            self._start("worker%d" % i, [
                "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "1",
                "--memory", self.worker_memory, "--work-dir", work, "--webui-port", str(free_port()),
                self.url], dict(self.env, SPARK_LOCAL_DIRS=local))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                assert p.poll() is None, "a Spark daemon exited: %s" % self.logs()
            if self.alive_workers() == self.n_workers:
                return
            time.sleep(1)
        raise AssertionError("workers did not register within %ds: %s" % (timeout, self.logs()))

    def alive_workers(self) -> int:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/json/" % self.ui_port, timeout=5) as r:
                return int(json.load(r).get("aliveworkers", 0))
        except OSError:
            return 0

    def logs(self) -> str:
        out = []
        for path in sorted(glob.glob(os.path.join(self.base, "*.log"))):
            with open(path, errors="replace") as f:
                out.append("==> %s <==\n%s" % (path, f.read()[-3000:]))
        return "\n".join(out)

    def stop(self, timeout: float = 30) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)

    def executor_logs(self) -> Dict[str, List[str]]:
        """worker work dir -> the executors' stderr files Spark wrote there (app-*/<id>/stderr)."""
        return {w: sorted(glob.glob(os.path.join(w, "app-*", "*", "stderr"))) for w in self.work_dirs}


def submit(spark_home: str, args: Sequence[str], env: Dict[str, str], cwd: str,
           timeout: float) -> subprocess.CompletedProcess:
    return run([os.path.join(spark_home, "bin", "spark-submit")] + list(args), timeout=timeout,
               env=env, cwd=cwd)


def spark_home() -> Optional[str]:
    try:
        import pyspark
    except ImportError:
        return None
    return os.path.dirname(pyspark.__file__)

#!/bin/bash
# EMR bootstrap action: runs on every node (as user hadoop) before Spark/YARN start.
#
#   bootstrap.sh s3://bucket/prefix/code [--python PATH] [--venv DIR] [--tiktoken-dir DIR]
#
# 1. makes a virtualenv for the job's Python at /opt/pipeline/venv from the node's Python 3.9
#    (/usr/bin/python3 on emr-7.x) and pip-installs emr/requirements-emr.txt into it, at exactly the
#    versions of constraints-emr.txt, wheels only (offline from <code>/wheels/ when `upload
#    --wheelhouse` put wheels there). The cluster's `spark-env` and `spark-defaults` classifications
#    point PYSPARK_PYTHON / spark.pyspark.python at <venv>/bin/python (emr/spec.py).
#    Why a virtualenv: Amazon Linux 2023 ships requests, urllib3 & co. as RPMs without pip's RECORD
#    file, so pip cannot upgrade them in the system Python ("Cannot uninstall urllib3 ..., RECORD file
#    not found"), and must not: the OS's own tools (the AWS CLI, dnf plugins) rely on them. The venv
#    does not see the system site-packages, so nothing of the OS is touched.
# 2. puts the GPT-2 BPE ranks into /opt/pipeline/tiktoken (a tiktoken cache directory; the cluster's
#    config points TIKTOKEN_CACHE_DIR there): taken from the code bundle when it carries them as
#    package data, else from <code>/bpe/r50k_base.tiktoken. Nothing downloads them at run time.
# 3. imports everything once with the venv's Python: a broken node fails here, with a clear log, not
#    hours into a job.
# A non-zero exit fails the cluster start; the output lands in
# <log-uri>/<cluster-id>/node/<instance-id>/bootstrap-actions/1/{stdout,stderr}.gz.
#
# The flags move the node paths (the node's Python, the venv, the BPE cache dir) from EMR's; the
# rehearsal on a simulated node (tests/test_emr_rehearsal.py) uses them.
set -euo pipefail

USAGE="usage: bootstrap.sh s3://bucket/prefix/code [--python PATH] [--venv DIR] [--tiktoken-dir DIR]"
CODE="${1:?$USAGE}"
CODE="${CODE%/}"
shift
PY=/usr/bin/python3
VENV=/opt/pipeline/venv
TIKTOKEN_DIR=/opt/pipeline/tiktoken
while [ $# -gt 0 ]; do
    case "$1" in
        --python) PY="${2:?$USAGE}" ;;
        --venv) VENV="${2:?$USAGE}" ;;
        --tiktoken-dir) TIKTOKEN_DIR="${2:?$USAGE}" ;;
        *) echo "$USAGE" >&2; exit 2 ;;
    esac
    shift 2
done
# tiktoken's cache file name for r50k_base: sha1 of its download URL; and the file's sha256.
R50K_CACHE_NAME=0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4
R50K_SHA256=306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# A directory the hadoop user owns (the venv and the BPE cache are written without sudo from here on).
own_dir() {
    mkdir -p "$1" 2>/dev/null || { sudo mkdir -p "$1" && sudo chown "$(id -u):$(id -g)" "$1"; }
}

echo "[bootstrap] node python: $PY ($($PY --version 2>&1)), venv: $VENV, code: $CODE"
aws s3 cp --quiet "$CODE/requirements-emr.txt" "$WORK/requirements.txt"
aws s3 cp --quiet "$CODE/constraints-emr.txt" "$WORK/constraints.txt"
aws s3 cp --quiet "$CODE/pipeline-bundle.zip" "$WORK/bundle.zip"

own_dir "$(dirname "$VENV")"
# The system Python's venv module needs ensurepip's bundled wheels; AL2023 has them with python3-pip.
if ! "$PY" -m venv "$VENV"; then
    sudo dnf install -y -q python3-pip
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

PIP=("$VPY" -m pip install --quiet --disable-pip-version-check --only-binary=:all:
     -r "$WORK/requirements.txt" -c "$WORK/constraints.txt")
if aws s3 ls "$CODE/wheels/" >/dev/null 2>&1; then
    echo "[bootstrap] installing from the uploaded wheelhouse (no index)"
    aws s3 cp --quiet --recursive "$CODE/wheels/" "$WORK/wheels/"
    "${PIP[@]}" --no-index --find-links "$WORK/wheels"
else
    "${PIP[@]}"
fi

# The BPE ranks: any *.tiktoken in the bundle whose sha256 is r50k_base's, else the uploaded copy.
own_dir "$TIKTOKEN_DIR"
"$VPY" - "$WORK/bundle.zip" "$WORK/r50k_base.tiktoken" "$R50K_SHA256" <<'PYBPE'
import hashlib, sys, zipfile
bundle, out, sha = sys.argv[1:]
with zipfile.ZipFile(bundle) as zf:
    for name in zf.namelist():
        if name.endswith(".tiktoken"):
            data = zf.read(name)
            if hashlib.sha256(data).hexdigest() == sha:
                open(out, "wb").write(data)
                print("[bootstrap] GPT-2 BPE ranks from the bundle (%s)" % name)
                break
PYBPE
if [ ! -f "$WORK/r50k_base.tiktoken" ]; then
    aws s3 cp --quiet "$CODE/bpe/r50k_base.tiktoken" "$WORK/r50k_base.tiktoken" \
        && echo "[bootstrap] GPT-2 BPE ranks from $CODE/bpe/" \
        || echo "[bootstrap] no GPT-2 BPE ranks uploaded; jobs must get them with --bpe-file"
fi
if [ -f "$WORK/r50k_base.tiktoken" ]; then
    cp "$WORK/r50k_base.tiktoken" "$TIKTOKEN_DIR/$R50K_CACHE_NAME"
fi
# Executors run as another user (yarn): everything must be readable by all.
chmod -R a+rX "$(dirname "$VENV")" "$TIKTOKEN_DIR"

"$VPY" - <<PYCHECK
import os, sys
import bs4, boto3, fastwarc, lxml, numpy, pandas, pyarrow, resiliparse, tiktoken, warcio, xxhash
# ingest's default extractor (without it ingest falls back to bs4) and FastWARC (--warc-reader fastwarc)
from fastwarc.warc import ArchiveIterator
from resiliparse.extract.html2text import extract_plain_text
assert extract_plain_text("<p>ok</p>").strip() == "ok"
print("[bootstrap] %s: numpy %s pandas %s pyarrow %s tiktoken %s"
      % (sys.executable, numpy.__version__, pandas.__version__, pyarrow.__version__,
         tiktoken.__version__))
if os.path.exists("$TIKTOKEN_DIR/$R50K_CACHE_NAME"):
    os.environ["TIKTOKEN_CACHE_DIR"] = "$TIKTOKEN_DIR"
    assert tiktoken.get_encoding("r50k_base").n_vocab == 50257
    print("[bootstrap] GPT-2 BPE ok (offline, $TIKTOKEN_DIR)")
PYCHECK
echo "[bootstrap] done"

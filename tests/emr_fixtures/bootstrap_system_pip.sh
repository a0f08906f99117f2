#!/bin/bash
# EMR bootstrap action: runs on every node (as user hadoop) before Spark/YARN start.
#
#   bootstrap.sh s3://bucket/prefix/code
#
# 1. pip-installs emr/requirements-emr.txt at the versions in constraints-emr.txt for the Python
#    that Spark uses (/usr/bin/python3, 3.9); offline from <code>/wheels/ when
#    `upload --wheelhouse` put wheels there;
# 2. copies the GPT-2 BPE ranks to /opt/pipeline/tiktoken (a tiktoken cache dir; the cluster config
#    points TIKTOKEN_CACHE_DIR there) so nothing downloads them at run time;
# 3. imports everything once: a broken node fails here, with a clear log, not hours into a job.
# A non-zero exit fails the cluster start; the output lands in
# <log-uri>/<cluster-id>/node/<instance>/bootstrap-actions/.
set -euo pipefail

CODE="${1:?usage: bootstrap.sh s3://bucket/prefix/code [--python PATH] [--venv DIR] [--tiktoken-dir DIR]}"
CODE="${CODE%/}"
shift
PY=/usr/bin/python3
TIKTOKEN_DIR=/opt/pipeline/tiktoken
while [ $# -gt 0 ]; do  # the same flags as emr/bootstrap.sh; this variant makes no venv
    case "$1" in
        --python) PY="$2" ;;
        --tiktoken-dir) TIKTOKEN_DIR="$2" ;;
    esac
    shift 2
done
# tiktoken's cache file name for r50k_base: sha1 of its download URL.
R50K_CACHE_NAME=0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "[bootstrap] python: $($PY --version 2>&1), code: $CODE"
aws s3 cp --quiet "$CODE/requirements-emr.txt" "$WORK/requirements.txt"
aws s3 cp --quiet "$CODE/constraints-emr.txt" "$WORK/constraints.txt"

if ! "$PY" -m pip --version >/dev/null 2>&1; then
    sudo dnf install -y -q python3-pip || sudo yum install -y -q python3-pip
fi

if aws s3 ls "$CODE/wheels/" >/dev/null 2>&1; then
    echo "[bootstrap] installing from the uploaded wheelhouse (no index)"
    aws s3 cp --quiet --recursive "$CODE/wheels/" "$WORK/wheels/"
    sudo "$PY" -m pip install --quiet --no-index --find-links "$WORK/wheels" \
        -r "$WORK/requirements.txt" -c "$WORK/constraints.txt"
else
    sudo "$PY" -m pip install --quiet -r "$WORK/requirements.txt" -c "$WORK/constraints.txt"
fi

sudo mkdir -p "$TIKTOKEN_DIR"
if aws s3 cp --quiet "$CODE/bpe/r50k_base.tiktoken" "$WORK/r50k_base.tiktoken"; then
    sudo cp "$WORK/r50k_base.tiktoken" "$TIKTOKEN_DIR/$R50K_CACHE_NAME"
fi
sudo chmod -R a+rX "$(dirname "$TIKTOKEN_DIR")"

"$PY" - <<PYCHECK
import os
import bs4, lxml, numpy, pandas, pyarrow, tiktoken, warcio, xxhash, boto3
print("[bootstrap] numpy %s pandas %s pyarrow %s tiktoken %s"
      % (numpy.__version__, pandas.__version__, pyarrow.__version__, tiktoken.__version__))
if os.path.exists("$TIKTOKEN_DIR/$R50K_CACHE_NAME"):
    os.environ["TIKTOKEN_CACHE_DIR"] = "$TIKTOKEN_DIR"
    assert tiktoken.get_encoding("r50k_base").n_vocab == 50257
    print("[bootstrap] GPT-2 BPE ok (offline, $TIKTOKEN_DIR)")
PYCHECK
echo "[bootstrap] done"

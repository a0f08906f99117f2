#!/bin/bash
# The EMR step, rehearsed on this machine: EMR's Python (3.9) with exactly the packages bootstrap.sh
# installs (requirements-emr.txt + constraints-emr.txt) plus pyspark 3.5.3, then
#   spark-submit --py-files pipeline-bundle.zip <entry script outside the repo> --input ... --output ...
# so the code can only come from the bundle, as on the cluster. Needs PyPI for the venv (once).
#
#   bash emr/local_smoke.sh [python3.9] [workdir]       # default workdir: /tmp/emr-local-smoke
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY39="${1:-$HOME/.pyenv/versions/3.9.18/bin/python}"
WORK="${2:-/tmp/emr-local-smoke}"
DOCS="${SMOKE_DOCS:-200}"
VENV="$WORK/venv39"

"$PY39" -c 'import sys; assert sys.version_info[:2] == (3, 9), sys.version' \
    || { echo "need a Python 3.9 interpreter (EMR 7.x's); got $PY39" >&2; exit 2; }
mkdir -p "$WORK"
if [ ! -x "$VENV/bin/spark-submit" ]; then
    "$PY39" -m venv "$VENV"
    "$VENV/bin/pip" install -q -r "$REPO/emr/requirements-emr.txt" -c "$REPO/emr/constraints-emr.txt"
    "$VENV/bin/pip" install -q pyspark==3.5.3
fi

BPE="$(cd "$REPO" && python3 -c 'from emr.package import find_bpe_file; print(find_bpe_file() or "")')"
[ -n "$BPE" ] || { echo "set TIKTOKEN_CACHE_DIR to a tiktoken cache holding r50k_base" >&2; exit 2; }

rm -rf "$WORK/run" && mkdir -p "$WORK/run/entry"
(cd "$REPO" && python3 -m pipeline sample --out "$WORK/run/sample" --docs "$DOCS" >/dev/null)
(cd "$REPO" && python3 -m emr.launch bundle --out "$WORK/run/pipeline-bundle.zip" 2>/dev/null >/dev/null)
cp "$REPO/jobs/run_pipeline.py" "$WORK/run/entry/"

cd "$WORK/run"
env -u PYTHONPATH -u TIKTOKEN_CACHE_DIR \
    PYSPARK_PYTHON="$VENV/bin/python" PYSPARK_DRIVER_PYTHON="$VENV/bin/python" \
    "$VENV/bin/spark-submit" --master 'local[2]' --conf spark.ui.enabled=false \
    --conf spark.yarn.maxAppAttempts=1 --py-files pipeline-bundle.zip \
    entry/run_pipeline.py --input sample/warc --output out --bpe-file "$BPE" 2>spark-stderr.log
"$VENV/bin/python" - <<'PY'
import json
s = json.load(open("out/summary.json"))
assert s["records_in"] == sum(s["not_documents"].values()) + s["kept"] + s["duplicates_removed"] \
    + sum(s["dropped"].values())
print("local EMR rehearsal OK: %d records in, %d kept, %d duplicates removed" % (
    s["records_in"], s["kept"], s["duplicates_removed"]))
PY

#!/usr/bin/env bash
# Create .venv and install the pipeline into it.
#   bash scripts/setup.sh            # Spark side only (what EMR nodes and data prep need), with the
#                                    # fast extractor/WARC reader (resiliparse, fastwarc) where wheels exist
#   bash scripts/setup.sh --gpu      # + PyTorch trainer/sampler (installs torch==2.13.0 unless present)
#   bash scripts/setup.sh --dev      # + test tools and everything the test suite exercises; torch is the
#                                    # CPU build from PyTorch's CPU index when that index answers within
#                                    # 5 s, else torch==2.13.0 from the default index (CUDA build on Linux x86)
set -euo pipefail
cd "$(dirname "$0")/.."

want_gpu=0; want_dev=0
for arg in "$@"; do
  case "$arg" in
    --gpu) want_gpu=1 ;;
    --dev) want_dev=1; want_gpu=1 ;;
    *) echo "usage: $0 [--gpu] [--dev]" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-python3}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

# One quick probe instead of pip's retries: a network that reaches only PyPI (CI) falls back at once.
cpu_index_reachable() {
  .venv/bin/python - "$TORCH_CPU_INDEX/torch/" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=5).close()
PY
}
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 9), "Python >= 3.9 needed"'
if ! java -version >/dev/null 2>&1; then
  echo "Spark needs Java 17 (e.g. apt-get install openjdk-17-jre-headless)" >&2; exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel

extras="fast"
if [ "$want_gpu" = 1 ]; then
  # torch goes in before the extras, pinned, so that a torch already in .venv is kept: on a GPU box,
  # install the CUDA build that matches the driver first (any torch >= 2.4 works).
  if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
    if [ "$want_dev" = 1 ] && cpu_index_reachable; then
      # The tests need no GPU: PyTorch's CPU wheels are a fraction of the CUDA build's size.
      echo "torch: CPU build from $TORCH_CPU_INDEX"
      .venv/bin/python -m pip install -q --timeout 15 --retries 0 --index-url "$TORCH_CPU_INDEX" "torch==2.13.0" \
        || .venv/bin/python -m pip install -q "torch==2.13.0"
    else
      [ "$want_dev" = 1 ] && echo "torch: $TORCH_CPU_INDEX not reachable; torch==2.13.0 from the default index"
      .venv/bin/python -m pip install -q "torch==2.13.0"
    fi
  fi
  extras="$extras,gpu,hf"
fi
[ "$want_dev" = 1 ] && extras="$extras,dev"
# The fast extractor and WARC reader come as binary wheels only: where none fits this machine, install
# without them (ingest then uses beautifulsoup4 and warcio, and says so) rather than compile C++.
if ! .venv/bin/python -m pip install -q --only-binary=resiliparse,fastwarc -e ".[$extras]"; then
  extras="${extras#fast,}"; extras="${extras#fast}"
  echo "WARNING: no resiliparse/fastwarc wheels for this machine: installing without them; ingest" \
       "falls back to beautifulsoup4 + warcio (7-10x slower per document)" >&2
  .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
fi
echo "installed into .venv (extras: ${extras:-none})"

#!/usr/bin/env bash
# Create .venv and install the pipeline into it.
#   bash scripts/setup.sh            # Spark side only (what EMR nodes and data prep need)
#   bash scripts/setup.sh --gpu      # + PyTorch trainer/sampler (installs torch==2.13.0 unless present)
#   bash scripts/setup.sh --dev      # + test tools and everything the test suite exercises (CPU torch)
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
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 9), "Python >= 3.9 needed"'
if ! java -version >/dev/null 2>&1; then
  echo "Spark needs Java 17 (e.g. apt-get install openjdk-17-jre-headless)" >&2; exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel

extras="fast"
if [ "$want_gpu" = 1 ]; then
  # Pin torch explicitly: a bare `torch` requirement would pull a multi-GB CUDA build. On a GPU box,
  # install the CUDA build you want first; an already-installed torch >= 2.1 is kept.
  .venv/bin/python -c 'import torch' 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
  extras="$extras,gpu,hf"
fi
[ "$want_dev" = 1 ] && extras="$extras,dev"
.venv/bin/python -m pip install -q -e ".[$extras]"
echo "installed into .venv (extras: $extras)"

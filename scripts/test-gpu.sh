#!/usr/bin/env bash
# Every GPU test (`@pytest.mark.gpu`) in one pytest process: the fast kernels against their
# reference math, each fast-path plan's training step against the reference model's step, and the
# decode engine against the reference decoder. Needs a CUDA GPU (the tests skip without one);
# the cuDNN-frontend tests also need `pip install nvidia-cudnn-frontend`.
#     bash scripts/test-gpu.sh            # extra arguments go to pytest, e.g. -x or -k engine
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
if [ -x .venv/bin/python ] && [ "$PYTHON" = python ]; then
    PYTHON=.venv/bin/python
fi
exec "$PYTHON" -m pytest -q -m gpu tests/ "$@"

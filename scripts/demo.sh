#!/usr/bin/env bash
# Fresh machine -> deduplicated, tokenized, sharded sample corpus, scored against its ground truth.
#   bash scripts/demo.sh [N_DOCS]      (default 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
bash scripts/setup.sh
.venv/bin/pipeline sample --docs "$n" --out "data/sample-$n"
.venv/bin/pipeline run --input "data/sample-$n/warc" --output "out/sample-$n"
.venv/bin/pipeline evaluate --report "out/sample-$n/dedup/report" --truth "data/sample-$n/truth.parquet"
.venv/bin/pipeline check-shards "out/sample-$n/shards/*.bin"

#!/usr/bin/env bash
# Set everything up (idempotent), then, with the venv's spark-submit, run the whole pipeline on
# MovieLens-1M as one Spark application (jobs/pipeline.py: the same stage functions as the per-stage
# jobs/*.py), evaluate CDML against baselines on MovieLens-1M (its own workspace, warehouse/eval) and
# print the summary. Extra arguments go to the job, e.g. --set training.epochs=2;
# --set 'evaluation.datasets=[movielens-1m,movielens-100k]' also evaluates on MovieLens-100K (+3 min).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
start=$(date +%s)
.venv/bin/spark-submit jobs/pipeline.py --config conf/local.yaml --set 'evaluation.datasets=[movielens-1m]' "$@"
echo "=== demo finished in $(( $(date +%s) - start ))s"

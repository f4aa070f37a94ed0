#!/usr/bin/env bash
# Set everything up (idempotent), then, with the venv's spark-submit, run the whole pipeline on
# MovieLens-1M as one Spark application (jobs/pipeline.py: the same stage functions as the per-stage
# jobs/*.py), evaluate CDML (early fusion, the configured model) against baselines on MovieLens-1M (its
# own workspace, warehouse/eval; the time-split protocol) and print the summary. Extra arguments go to
# the job and win, e.g. --set 'evaluation.protocols=[time_split,user_holdout]' (+5 min),
# --set 'evaluation.fusions=[early,late]' (+2 min) or
# --set 'evaluation.datasets=[movielens-1m,movielens-100k]' (+3 min): what jobs/evaluate.py does by default.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
start=$(date +%s)
.venv/bin/spark-submit jobs/pipeline.py --config conf/local.yaml \
  --set 'evaluation.datasets=[movielens-1m]' --set 'evaluation.fusions=[early]' \
  --set 'evaluation.protocols=[time_split]' "$@"
echo "=== demo finished in $(( $(date +%s) - start ))s"

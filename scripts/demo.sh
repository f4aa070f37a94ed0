#!/usr/bin/env bash
# Set everything up (idempotent) and run the pipeline end to end on MovieLens-1M with the venv's
# spark-submit, exactly as a user would, evaluate CDML against baselines on MovieLens-1M and 100K (each in
# its own workspace, warehouse/eval) and print a summary. Extra arguments go to every job, e.g. --set training.epochs=2
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source .venv/bin/activate
start=$(date +%s)
times=()
for job in ingest_events build_graph ingest_features make_triplets train embed_catalog build_neighbors recommend evaluate summary; do
  echo "=== spark-submit jobs/$job.py"
  t=$(date +%s)
  spark-submit "jobs/$job.py" --config conf/local.yaml "$@"
  times+=("$job $(( $(date +%s) - t ))s")
done
echo "=== stage times: ${times[*]}"
echo "=== demo finished in $(( $(date +%s) - start ))s"

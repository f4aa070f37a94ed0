#!/usr/bin/env bash
# Set everything up (idempotent) and run the pipeline end to end on MovieLens-1M with the venv's
# spark-submit, exactly as a user would. Extra arguments go to every job, e.g. --set events.source=movielens-100k
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source .venv/bin/activate
start=$(date +%s)
for job in ingest_events build_graph ingest_features make_triplets train embed_catalog build_neighbors recommend summary; do
  echo "=== spark-submit jobs/$job.py"
  spark-submit "jobs/$job.py" --config conf/local.yaml "$@"
done
echo "=== demo finished in $(( $(date +%s) - start ))s"

#!/usr/bin/env bash
# Set everything up (idempotent) and run the checks: ruff, then pytest. CDML_STACK=spark4 sets up and
# tests the spark4 stack: only the tests marked spark4 (tests/conftest.py SPARK4_SET).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check cdml_spark jobs tests benchmarks notebooks
.venv/bin/ruff format --check cdml_spark jobs tests benchmarks notebooks
if [ "$(cat .venv/stack)" = spark4 ]; then set -- -m spark4 "$@"; fi
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# Set everything up (idempotent) and run the checks: ruff, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check cdml_spark jobs tests benchmarks notebooks
.venv/bin/ruff format --check cdml_spark jobs tests benchmarks notebooks
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# The README's test command: set up (idempotent), lint, then run every test (--runslow: the slow tier too).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check kpod_ops python_tests benchmarks
python -m pytest -q --runslow --durations=20 "$@"

#!/usr/bin/env bash
# The main job on its built-in default: set up (idempotent), then `kpod distill --preset quick`:
# arith-cot data, the tiny Llama-style student built in code and warmed up on arith-text, KPOD
# (mask learner, difficulties, progressive schedule, weighted fused loss), evaluation on 1,000
# held-out questions before and after, and a report in runs/quick (report.md, report.json, plots/).
# Extra arguments go to `kpod distill`, e.g. `--method standard --out runs/standard`.
# Torch runs on 1 CPU thread (`--threads 1`), as in the README's measured numbers, unless you pass
# your own `--threads N`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
threads=(--threads 1)
for arg in "$@"; do
    case "$arg" in
        --threads|--threads=*) threads=() ;;
    esac
done
kpod distill --preset quick --out runs/quick "${threads[@]}" "$@"

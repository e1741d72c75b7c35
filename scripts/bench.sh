#!/usr/bin/env bash
# The README's main command until `kpod distill` lands: set up (idempotent), then the fused-loss
# benchmark on its built-in default (N=4096, V=32000, fp32 and bf16, both allocators; pass --full
# for V=128256 too). Prints the table and saves it with the machine under benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python benchmarks/bench_loss.py "$@"

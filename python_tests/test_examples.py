"""examples/custom_loop.py runs, shortened, from warm-up to held-out accuracy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # the whole method end to end in a subprocess (past 600 s on a loaded 2-core machine)
def test_custom_loop_runs_the_whole_method(tmp_path):
    args = ["--n-train", "24", "--n-test", "6", "--n-text", "40", "--hidden", "32", "--layers", "2", "--warmup-epochs", "1",
            "--mask-examples", "16", "--mask-batch-size", "2", "--epochs", "2", "--batch-size", "8", "--accumulation", "2", "--max-new-tokens", "8"]
    # no --allow-degenerate: the example's own mask-learner settings must give informative weights
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "custom_loop.py"), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "token weights: mean" in out and "degenerate" not in out
    assert "warm-up epoch 1" in out and "ProgressiveSchedule(questions=24" in out
    assert "epoch 1:" in out and "epoch 2: 0.00 steps given on average" in out  # the last epoch trains full rationales
    assert "held-out accuracy:" in out and "(6 questions)" in out

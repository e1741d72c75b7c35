"""The package a user installs: dependencies and extras, the entry point, ``python -m kpod_ops``,
the warning when the compiled extension does not load, and optional imports that name their extra."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, *args: str, cwd: Path | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONWARNINGS")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, *args, "-c", textwrap.dedent(code)] if code else [sys.executable, *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT, env=env,
    )


def test_missing_extension_warns_once_with_the_reason():
    res = _run(
        """
        import sys, warnings
        sys.modules["kpod_ops._C"] = None
        import kpod_ops
        import importlib
        importlib.reload(kpod_ops)  # a second import of the package must not warn again
        import torch
        x = torch.randn(2, 3, 5); y = torch.randint(0, 5, (2, 3))
        kpod_ops.keypoint_cross_entropy(x, y, shift=True)
        kpod_ops.keypoint_cross_entropy(x, y, shift=True)
        print("done")
        """
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("RuntimeWarning") == 1, res.stderr
    assert "kpod_ops._C did not load" in res.stderr and "reference" in res.stderr
    assert "ModuleNotFoundError" in res.stderr  # the reason, not only the fact


def test_loaded_extension_does_not_warn():
    res = _run("import kpod_ops; print(kpod_ops.fused_available()[0])", "-W", "error")
    assert res.returncode == 0, res.stderr[-3000:]
    if res.stdout.strip() == "True":
        assert "RuntimeWarning" not in res.stderr


def test_render_png_leaves_the_matplotlib_backend_alone(tmp_path):
    pytest.importorskip("matplotlib")
    res = _run(
        f"""
        import matplotlib
        matplotlib.use("svg")
        import matplotlib.pyplot as plt
        import numpy as np
        from kpod_ops.weighting import render_png
        from kpod_ops.weighting.planted import planted_task
        task = planted_task(1, seed=3)
        ex = task.examples[0]
        png = render_png(ex, np.linspace(0.05, 0.95, ex.rationale_len), task.tokenizer, r"{tmp_path / 'w.png'}")
        assert png.read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
        print(matplotlib.get_backend(), len(plt.get_fignums()))
        """
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["svg", "0"]

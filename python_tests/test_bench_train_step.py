"""``kpod bench train-step`` (benchmarks/bench_train_step.py) on tiny models built in code.

The benchmark is only worth its ratios if every row computes the loss it claims to: the three
KPOD methods (by hand on the logits, the fused loss on the logits, the loss from the hidden
states) the same value and the same gradients, and with uniform weights Hugging Face's own loss.
No timing is asserted.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_train_step as bench  # noqa: E402

from kpod_ops.cli import main  # noqa: E402

# The losses are fp32 means of cross-entropies over V = 512 logits, summed in different orders by
# the methods: about sqrt(V) * 2**-24 ≈ 1.4e-6 relative apart. A wrong weight, shift or mask moves
# them by more than 1e-3 (see the hf rows with random weights below).
REL = 2e-5
KPOD_METHODS = ("eager-weighted", "kpod-logits", "kpod-linear")


@pytest.fixture(autouse=True)
def _threads_restored():
    """The configurations run in this process with one thread (tiny shapes: more threads only wait on each other)."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _spec(model: str, method: str, active: float | None, token_weights: str) -> dict:
    return {"model": model, "method": method, "active": active, "batch": 2, "seq": 24, "repeats": 1,
            "device": "cpu", "dtype": "fp32", "token_weights": token_weights, "threads": 1}


def _close(a: float, b: float, rel: float = REL) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b))


@pytest.mark.parametrize("model", ["tiny", "tiny-qwen2"])
@pytest.mark.parametrize("active", [1.0, 0.3])
def test_every_method_computes_the_loss_it_claims(model, active):
    ones = {m: bench.child(_spec(model, m, active, "ones")) for m in bench.LOSS_METHODS}
    for method, row in ones.items():  # uniform weights: KPOD is Hugging Face's token-mean loss on the same labels
        assert _close(row["loss"], ones["hf"]["loss"]), (method, row["loss"], ones["hf"]["loss"])
        assert _close(row["grad_norm"], ones["hf"]["grad_norm"]), (method, row["grad_norm"], ones["hf"]["grad_norm"])
    weighted = {m: bench.child(_spec(model, m, active, "random")) for m in ("hf", *KPOD_METHODS)}
    for method in KPOD_METHODS:
        row, ref = weighted[method], weighted["eager-weighted"]
        assert _close(row["loss"], ref["loss"]) and _close(row["grad_norm"], ref["grad_norm"]), (method, row, ref)
    # the weights reach the loss: hf (no weights) is far from the weighted methods
    assert not _close(weighted["hf"]["loss"], weighted["kpod-linear"]["loss"], rel=1e-3)
    # the truncation reaches the loss: the active positions are the labels from loss_start on (t >= 1)
    start = min(23, round(24 * (1 - active)))
    assert ones["kpod-linear"]["n_active"] == 2 * (24 - max(start, 1))


def test_limit_rows_measure_the_backbone_and_the_head():
    backbone = bench.child(_spec("tiny", "backbone", None, "random"))
    head = bench.child(_spec("tiny", "head", None, "random"))
    assert backbone["loss"] is None and backbone["opt_s"] > 0 and backbone["params"] > 0
    assert head["params"] is None and head["opt_s"] is None
    for row in (backbone, head):
        assert row["step_s"] > 0 and row["peak_mib"] >= 0 and len(row["step_times_s"]) == 2


@pytest.mark.slow  # an end-to-end benchmark run in a subprocess (minutes on a busy machine)
def test_train_step_end_to_end_through_kpod_bench(tmp_path):
    out, png = tmp_path / "train_step.jsonl", tmp_path / "train_step.png"
    out.write_text('{"earlier": "line"}\n')  # results are appended, never overwritten
    code = main(["bench", "--dir", str(ROOT / "benchmarks"), "train-step", "--models", "tiny", "--active", "0.3",
                 "--batch", "2", "--seq", "24", "--repeats", "1", "--rounds", "1", "--threads", "1",
                 "--out", str(out), "--plot", str(png)])
    assert code == 0
    lines = out.read_text().splitlines()
    assert json.loads(lines[0]) == {"earlier": "line"}
    rows = {r["method"]: r for r in map(json.loads, lines[1:])}
    assert sorted(rows) == sorted(bench.METHODS) and len(lines) == 1 + len(bench.METHODS)
    for method, r in rows.items():
        assert all(k in r for k in bench.REQUIRED_KEYS), method
        assert r["model"] == "tiny" and r["tokens"] == 48 and r["step_s"] > 0 and r["peak_mib"] >= 0
        assert math.isclose(r["tokens_per_s"], 48 / r["step_s"])
        assert r["machine"]["cpu"] and r["machine"]["torch_threads"] == 1
        assert r["versions"]["transformers"] and r["date"].endswith("Z") and "git_commit" in r
        assert len(r["rounds"]) == 1 and r["run_id"] == rows["hf"]["run_id"]
        assert r["active"] == (0.3 if method in bench.LOSS_METHODS else None)
    limit = rows["backbone"]["step_s"] + rows["kpod-linear"]["active_share"] * rows["head"]["step_s"]
    for method in bench.LOSS_METHODS:
        r = rows[method]
        assert math.isclose(r["limit_s"], limit) and math.isclose(r["step_vs_limit"], r["step_s"] / limit)
        assert math.isclose(r["step_vs_hf"], r["step_s"] / rows["hf"]["step_s"])
        hf_peak = rows["hf"]["peak_mib"]
        assert r["peak_vs_hf"] is None if hf_peak == 0 else math.isclose(r["peak_vs_hf"], r["peak_mib"] / hf_peak)
    ref = rows["eager-weighted"]["loss"]
    assert _close(rows["kpod-logits"]["loss"], ref) and _close(rows["kpod-linear"]["loss"], ref)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not png.exists()
    else:
        assert png.stat().st_size > 0


def test_bad_options_are_refused(capsys):
    for argv, message in ((["--active", "0"], "expected a fraction in (0, 1], got 0"),
                          (["--repeats", "0"], "expected a positive number, got 0"),
                          (["--seq", "1"], "--seq: expected at least 2 tokens"),
                          (["--models", "gpt5"], "invalid choice: 'gpt5'")):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
        assert message in capsys.readouterr().err

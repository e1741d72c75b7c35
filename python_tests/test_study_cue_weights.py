"""benchmarks/study/cue_weights.py: the test of Study 2's cue-word reading trains on rewritten weights, and only on them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from kpod_ops.cli import main
from kpod_ops.data import load_builtin, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "study"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cue_weights  # noqa: E402
from test_cli import TINY  # noqa: E402


def test_only_the_cue_words_get_the_keypoints_weight():
    pieces = {0: " rainy", 1: " day", 2: "Park", 3: " 7", 4: " Leo", 5: " gives"}
    ids = np.array([5, 3, 0, 1, 2, 4, 3])
    weights = np.array([0.1, 0.9, 0.0, 0.2, 0.3, 0.05, 0.8], np.float32)
    out, summary = cue_weights.raise_cue_words(weights, ids, lambda t: pieces[t[0]])
    np.testing.assert_array_equal(out, np.array([0.1, 0.9, 1.0, 0.2, 1.0, 1.0, 0.8], np.float32))
    assert summary["cue_tokens"] == 3 and summary["words_found"] == ["leo", "park", "rainy"]
    assert summary["cue_tokens_mean_weight_before"] == pytest.approx((0.0 + 0.3 + 0.05) / 3)
    np.testing.assert_array_equal(weights, np.array([0.1, 0.9, 0.0, 0.2, 0.3, 0.05, 0.8], np.float32))  # the input is left alone


@pytest.mark.slow
def test_a_compare_into_the_new_folder_reuses_every_shared_stage_and_trains_on_the_cue_weights(tmp_path):
    data, config = tmp_path / "data.jsonl", tmp_path / "tiny.json"
    write_jsonl(load_builtin("arith-cot", "train", n=16, seed=3, wording="varied"), data)
    config.write_text(json.dumps(TINY))
    common = ["--data", str(data), "--config", str(config), "--allow-degenerate", "--quiet", "--methods", "kpod", "--seeds", "5-5"]
    assert main(["compare", *common, "--out", str(tmp_path / "base")]) == 0
    summary = cue_weights.rewrite(tmp_path / "base" / "seed5" / "shared", tmp_path / "cue" / "seed5" / "shared")
    assert summary["cue_tokens"] > 0
    assert main(["compare", *common, "--out", str(tmp_path / "cue")]) == 0
    base, cue = (json.loads((tmp_path / f / "seed5" / "kpod" / "report.json").read_text()) for f in ("base", "cue"))
    shared = [name for name, timing in base["timings"].items() if name in ("warmup", "eval-before", "weights", "clusters")
              or name.startswith("difficulty")]
    assert "weights" in shared and all(cue["timings"][name]["reused"] for name in shared), cue["timings"]
    assert not cue["timings"]["train"]["reused"]
    a, b = (load_file(str(tmp_path / f / "seed5" / "kpod" / "student" / "model.safetensors")) for f in ("base", "cue"))
    assert any(not bool((a[k] == b[k]).all()) for k in a)  # training is deterministic: a change is the weights'
    assert base["shared_fingerprints"]["weights"] != cue["shared_fingerprints"]["weights"]
    assert base["test_accuracy"] is not None and cue["test_accuracy"] is not None
    with pytest.raises(SystemExit, match="already exists"):
        cue_weights.rewrite(tmp_path / "base" / "seed5" / "shared", tmp_path / "cue" / "seed5" / "shared")

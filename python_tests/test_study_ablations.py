"""benchmarks/study/ablations.py: the studies' per-seed table and paired contrasts from run reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "study"))

import ablations  # noqa: E402

# seed: (kpod test, standard test, kpod keypoint ROC-AUC)
RUNS = {1: (0.80, 0.70, 0.90), 2: (0.60, 0.65, 0.95), 3: (0.50, 0.40, 0.30), 4: (0.75, 0.70, 0.80)}


def _write(folder: Path) -> None:
    for seed, (kpod, standard, auc) in RUNS.items():
        for method, acc in (("kpod", kpod), ("standard", standard)):
            report = {"test_accuracy": acc, "val_accuracy": acc + 0.01}
            if method == "kpod":
                report["weights"] = {"kept_ratio": 0.4, "keypoint_ranking": {"auc": auc}}
            run = folder / f"seed{seed}" / method
            run.mkdir(parents=True)
            (run / "report.json").write_text(json.dumps(report))


def test_the_auc_restriction_keeps_only_the_seeds_whose_weights_found_keypoints(tmp_path):
    _write(tmp_path)
    runs = ablations.load([tmp_path], "test_accuracy")
    good = {s for s, r in ablations.load_reports([tmp_path], "kpod").items() if ablations.keypoint_auc(r) >= 0.7}
    assert good == {1, 2, 4}
    every = ablations.contrast(runs, "kpod", "standard")
    restricted = ablations.contrast(runs, "kpod", "standard", only=good)
    assert every["seeds"] == [1, 2, 3, 4] and restricted["seeds"] == [1, 2, 4]
    assert every["diff_mean"] == pytest.approx((10 - 5 + 10 + 5) / 4)
    assert restricted["diff_mean"] == pytest.approx((10 - 5 + 5) / 3)
    assert restricted["diffs"] == pytest.approx([10.0, -5.0, 5.0])


def test_the_seed_table_has_one_row_per_paired_seed_with_signed_differences(tmp_path):
    _write(tmp_path)
    (tmp_path / "seed5" / "kpod").mkdir(parents=True)  # an unpaired, unfinished seed is left out
    table = ablations.seed_table(ablations.load_reports([tmp_path], "kpod"),
                                 ablations.load_reports([tmp_path], "standard")).splitlines()
    assert len(table) == 2 + 4
    assert table[3] == "| 2 | 60.0 % | 65.0 % | −5.0 | 61.0 % | 66.0 % | 0.95 | 40.0 % |"
    assert table[2].split(" | ")[3] == "+10.0"

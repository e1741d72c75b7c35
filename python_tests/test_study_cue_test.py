"""benchmarks/study/cue_test.py: the cue-word test's endpoints and its reading, as the plan fixed them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "study"))

import cue_test  # noqa: E402

QUESTION = "Emma has 11 pencils. Emma is 28 years old. She gives 7 pencils away. She gives 2 pencils away."
GOLD = "First, she gives 7 away, so 11 - 7 = 4 left.\nNext, she gives 2 away, so 4 - 2 = 2 left."
RIGHT, FROM_QUESTION, ARITHMETIC = "11 - 7 = 4, then 4 - 2 = 2.", "11 - 2 = 9, then 9 - 2 = 7.", "11 - 7 = 5, then 5 - 2 = 3."


def _run(folder: Path, generations: list[str], accuracy: float) -> None:
    (folder / "data").mkdir(parents=True)
    (folder / "eval").mkdir()
    ops = [{"op": "-"}, {"op": "-"}]
    (folder / "data" / "test.jsonl").write_text("".join(
        json.dumps({"id": f"q{i}", "question": QUESTION, "rationale": GOLD, "metadata": {"operations": ops}}) + "\n"
        for i in range(len(generations))))
    (folder / "eval" / "generations.jsonl").write_text("".join(
        json.dumps({"id": f"q{i}", "generation": g, "correct": g == RIGHT}) + "\n" for i, g in enumerate(generations)))
    (folder / "report.json").write_text(json.dumps({"test_accuracy": accuracy}))


def _endpoints(share: dict[str, float], accuracy: dict[str, float]) -> dict[str, dict[str, float]]:
    return {arm: {"number_in_question": share[arm], "accuracy": accuracy[arm], "n": 100} for arm in cue_test.ARMS}


def test_the_endpoints_are_read_from_each_arms_generations_and_report(tmp_path):
    _run(tmp_path / "base" / "seed5" / "kpod", [FROM_QUESTION, FROM_QUESTION, RIGHT, ARITHMETIC], 0.25)
    _run(tmp_path / "base" / "seed5" / "standard", [FROM_QUESTION, RIGHT, RIGHT, ARITHMETIC], 0.5)
    _run(tmp_path / "cue" / "seed5" / "kpod", [RIGHT, RIGHT, RIGHT, ARITHMETIC], 0.75)
    e = cue_test.seed_endpoints(cue_test.arm_runs(tmp_path / "base", tmp_path / "cue", 5))
    assert {arm: e[arm]["number_in_question"] for arm in cue_test.ARMS} == {"kpod-cue": 0.0, "kpod": 50.0, "standard": 25.0}
    assert {arm: e[arm]["accuracy"] for arm in cue_test.ARMS} == {"kpod-cue": 75.0, "kpod": 25.0, "standard": 50.0}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "study" / "cue_test.py"), str(tmp_path / "base"),
                          str(tmp_path / "cue"), "--json", str(tmp_path / "out.json")], capture_output=True, text=True, check=True)
    assert "reading: supported" in out.stdout  # one seed: share lower and accuracy higher on 1 of 1
    assert json.loads((tmp_path / "out.json").read_text())["reading"]["deficit_appeared"] is True


@pytest.mark.parametrize("lower, higher, verdict", [
    (4, 4, "supported"), (3, 3, "supported"), (3, 2, "inconclusive"), (2, 4, "inconclusive"),
    (1, 4, "contradicted"), (0, 0, "contradicted"),
])
def test_the_reading_counts_seeds_as_the_plan_fixed(lower, higher, verdict):
    per_seed = {}
    for i in range(4):
        cue_share = 10.0 if i < lower else 30.0
        cue_accuracy = 60.0 if i < higher else 40.0
        per_seed[1010 + i] = _endpoints({"kpod-cue": cue_share, "kpod": 20.0, "standard": 15.0},
                                        {"kpod-cue": cue_accuracy, "kpod": 50.0, "standard": 55.0})
    result = cue_test.reading(per_seed)
    assert result["verdict"] == verdict
    assert (result["cue_share_lower_than_kpod"], result["cue_accuracy_higher_than_kpod"]) == (lower, higher)
    assert result["deficit_appeared"] is True


def test_a_tie_is_not_lower_and_the_deficit_needs_kpod_above_standard():
    per_seed = {s: _endpoints({"kpod-cue": 20.0, "kpod": 20.0, "standard": 25.0},
                              {"kpod-cue": 50.0, "kpod": 50.0, "standard": 50.0}) for s in range(4)}
    result = cue_test.reading(per_seed)
    assert result["verdict"] == "contradicted" and result["deficit_appeared"] is False


def test_a_folder_without_every_arms_generations_is_refused(tmp_path):
    _run(tmp_path / "base" / "seed5" / "kpod", [RIGHT], 1.0)
    _run(tmp_path / "base" / "seed5" / "standard", [RIGHT], 1.0)
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "study" / "cue_test.py"), str(tmp_path / "base"),
                          str(tmp_path / "cue")], capture_output=True, text=True)
    assert out.returncode != 0 and "no seed with test generations of all of kpod-cue, kpod, standard" in out.stderr

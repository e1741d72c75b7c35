"""benchmarks/study/step_errors.py and epoch_losses.py: what Study 2's exploratory reading is computed from."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "study"))

import epoch_losses  # noqa: E402
import step_errors  # noqa: E402

GOLD = "First, she gives 7 away, so 11 - 7 = 4 left.\nNext, she gives 2 away, so 4 - 2 = 2 left."


def test_a_step_is_right_when_its_equation_is_the_gold_one_at_that_place():
    assert step_marks("11 - 7 = 4, then 4 - 2 = 2.") == [True, True]
    assert step_marks("11 - 2 = 9, then 9 - 2 = 7.") == [False, False]
    assert step_marks("11 - 7 = 4 and then nothing") == [True, False]  # a missing step is wrong
    assert step_errors.step_marks("5 x 3 = 15", "5 * 3 = 15") == [True]  # the same operator written another way
    assert step_errors.step_marks("32 / 4 = 8.5", "32 / 4 = 8") == [False]  # a decimal result is not cut off


QUESTION = "Emma has 11 pencils. Emma is 28 years old. She gives 7 pencils away. She gives 2 pencils away."


@pytest.mark.parametrize("generation, kind", [
    ("11 - 7 = 4, then 4 - 2 = 2.", None),
    ("11 - 7 = 4, and that is all.", "missing"),
    ("12 - 7 = 5, then 5 - 2 = 3.", "carried"),
    ("11 - 7 = 4, then 5 - 2 = 3.", "carried"),  # the first step's result not carried into the second
    ("11 + 7 = 18, then 18 - 2 = 16.", "operation"),
    ("11 - 2 = 9, then 9 - 2 = 7.", "number in question"),  # the second step's number taken first
    ("11 - 28 = 3, then 3 - 2 = 1.", "number in question"),  # the distractor
    ("11 - 17 = 4, then 4 - 2 = 2.", "number not in question"),  # miscopied
    ("11 - 7 = 5, then 5 - 2 = 3.", "arithmetic"),
])
def test_the_first_wrong_step_is_classified_by_what_is_wrong_in_it(generation, kind):
    assert step_errors.first_error_kind(generation, GOLD, QUESTION) == kind


def step_marks(generation: str) -> list[bool]:
    return step_errors.step_marks(generation, GOLD)


def test_a_run_summary_counts_accuracy_by_length_and_the_first_wrong_step(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "eval").mkdir()
    gold = [{"id": "a", "question": QUESTION, "rationale": GOLD, "metadata": {"operations": ["sub", "sub"]}},
            {"id": "b", "question": "3 and 4", "rationale": "So 3 + 4 = 7.", "metadata": {"operations": ["add"]}}]
    made = [{"id": "a", "generation": "11 - 7 = 4, 4 - 3 = 1", "correct": False},
            {"id": "b", "generation": "So 3 + 4 = 7.", "correct": True}]
    (tmp_path / "data" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gold))
    (tmp_path / "eval" / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in made))
    summary = step_errors.run_summary(tmp_path)
    assert summary["accuracy_by_ops"] == {2: 0.0, 1: 1.0}
    assert summary["step_correct"] == pytest.approx((0.5 + 1.0) / 2)
    assert summary["first_wrong"] == {1: 1, None: 1} and summary["n"] == 2
    assert summary["error_kinds"] == {"number not in question": 1, None: 1}  # 4 - 3: the question has no 3
    for name in ("data/test.jsonl", "eval/generations.jsonl"):  # the repository keeps them gzipped
        path = tmp_path / name
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    assert step_errors.has_generations(tmp_path) and step_errors.run_summary(tmp_path) == summary
    (tmp_path / "eval" / "generations.jsonl.gz").unlink()
    assert not step_errors.has_generations(tmp_path)


def test_epoch_means_average_each_epochs_steps_in_order():
    history = [{"epoch": 2, "loss": 3.0}, {"epoch": 1, "loss": 10.0}, {"epoch": 1, "loss": 6.0}, {"epoch": 2, "loss": 1.0}]
    assert epoch_losses.epoch_means(history) == [8.0, 2.0]

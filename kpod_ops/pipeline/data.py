"""The data stage: train / validation / test splits of the run, written as JSONL.

The test split never depends on ``--seed``: for a built-in dataset it is the dataset's own test
split (drawn with a fixed seed), for a ``--data`` file it is the questions whose hash falls in the
first ``test_percent`` buckets. Validation comes out of the training part only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.builtin import BUILTIN_NAMES, load_builtin
from ..data.example import CoTExample
from ..data.jsonl import ReadResult, has_calculator_annotations, read_jsonl, write_jsonl
from ..data.splits import bucket
from ..data.vocabulary import oov_advice, vocabulary_report
from ..errors import KPODInputError, bad_input

DATA_SEED = 0  # the built-in splits are drawn with this seed whatever --seed is


@dataclass
class Splits:
    train: list[CoTExample]
    val: list[CoTExample]
    test: list[CoTExample]
    read: dict[str, Any] | None = None  # what reading a --data file found (read_notes); None for built-in data

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def read_notes(result: ReadResult) -> dict[str, Any]:
    """What ``read_jsonl`` found in a --data file, for the data stage's record and the report."""
    return {"n_read": len(result) + len(result.filtered), "n_disagreements": len(result.disagreements),
            "n_filtered": len(result.filtered), "n_ambiguous_markers": len(result.ambiguous_markers),
            "disagreements": [list(d) for d in result.disagreements[:10]],
            "n_calculator_annotations": sum(1 for ex in result if has_calculator_annotations(ex.rationale))}


def describe_data(splits: Splits, tokenizer: Any, config: dict[str, Any], say: Callable[[str], None]) -> dict[str, Any]:
    """Say what needs a look in the run's data, and return it for ``report.json``'s ``data``.

    A --data file: how many rationales reach another answer than their ``answer`` field (kept
    unless ``data.filter_wrong_answers``). The built-in tiny student's word-level tokenizer: how
    much of the data it does not know, with a warning above ``OOV_THRESHOLD``.
    """
    info: dict[str, Any] = {"read": splits.read, "vocabulary": None}
    read = splits.read
    if read is not None and read["n_disagreements"]:
        shown = ", ".join(f"{i!r} ({claimed} vs {gold})" for i, claimed, gold in read["disagreements"][:3])
        action = ("left out (data.filter_wrong_answers)" if read["n_filtered"]
                  else "kept and trained on; --filter-wrong-answers leaves them out")
        say(f"[data] {read['n_disagreements']} of {read['n_read']} rationales end on another answer than their answer "
            f"field (rationale vs answer: {shown}): {action}")
    if read is not None and read.get("n_calculator_annotations"):
        say(f"[data] {read['n_calculator_annotations']} of {read['n_read']} rationales carry calculator annotations "
            "(<<48/2=24>>), trained on as they are; --strip-calculator removes them")
    if config["student"]["kind"] == "tiny":
        report = vocabulary_report(splits.train + splits.val + splits.test, tokenizer)
        info["vocabulary"] = report.to_dict()
        advice = oov_advice(report)
        info["vocabulary"]["warning"] = advice
        say(f"[data] warning: {advice}" if advice else f"[data] built-in tokenizer: {report}")
    return info


def make_splits(section: dict[str, Any]) -> Splits:
    """The three splits ``data`` describes (a built-in name or a JSONL file)."""
    source = section["source"]
    n_train, n_val, n_test = section["n_train"], section["n_val"], section["n_test"]
    variant = {k: section.get(k) for k in ("max_steps", "max_distractors") if section.get(k) is not None}
    if section.get("wording", "plain") != "plain":
        variant["wording"] = section["wording"]
    if variant and source != "arith-cot":
        raise bad_input("data.max_steps/max_distractors/wording", "settings of the arith-cot data only", f"source {source!r}")
    # set by --filter-wrong-answers only (absent from the presets, so the runs' configurations and hashes stay as they were)
    filter_wrong = section.get("filter_wrong_answers", False)
    strip_calc = section.get("strip_calculator", False)
    for key, value in (("filter_wrong_answers", filter_wrong), ("strip_calculator", strip_calc)):
        if not isinstance(value, bool):
            raise bad_input(f"data.{key}", "true or false", repr(value))
    if source in BUILTIN_NAMES:
        if filter_wrong:
            raise bad_input("--filter-wrong-answers (data.filter_wrong_answers)",
                            "a --data file (every rationale of the built-in data reaches its answer)", f"source {source!r}")
        if strip_calc:
            raise bad_input("--strip-calculator (data.strip_calculator)",
                            "a --data file (the built-in data has no calculator annotations)", f"source {source!r}")
        if source == "arith-text":
            raise bad_input("data.source", "a dataset of questions with rationales", "'arith-text' (warm-up texts)")
        pool = load_builtin(source, "train", n=n_train + n_val, seed=DATA_SEED, **variant)
        test = load_builtin(source, "test", n=n_test, seed=DATA_SEED, **variant)
        return Splits(pool[:n_train], pool[n_train:], test)
    path = Path(source)
    if not path.is_file():
        raise KPODInputError(f"--data: expected an existing JSONL file or one of {BUILTIN_NAMES}, got {source}")
    items = read_jsonl(path, filter_wrong_answers=filter_wrong, strip_calculator=strip_calc)
    test_percent, val_percent = section["test_percent"], section["val_percent"]
    test = [ex for ex in items if bucket(ex.question, "kpod-test") < test_percent]
    rest = [ex for ex in items if bucket(ex.question, "kpod-test") >= test_percent]
    val = [ex for ex in rest if bucket(ex.question, "kpod-val") < val_percent]
    train = [ex for ex in rest if bucket(ex.question, "kpod-val") >= val_percent]
    if not train or not test:
        raise KPODInputError(
            f"--data {path}: expected enough questions for a train and a test split, got {len(items)} "
            f"({len(train)} train, {len(test)} test with test_percent={test_percent})"
        )
    return Splits(train[:n_train], val[:n_val], test[:n_test], read_notes(items))  # val may be empty for a tiny file


def write_splits(splits: Splits, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train", "val", "test"):
        write_jsonl(getattr(splits, name), folder / f"{name}.jsonl")


def read_splits(folder: Path) -> Splits:
    def read(name: str) -> list[CoTExample]:
        file = folder / f"{name}.jsonl"
        return list(read_jsonl(file)) if file.stat().st_size else []

    return Splits(read("train"), read("val"), read("test"))

"""The data stage: train / validation / test splits of the run, written as JSONL.

The test split never depends on ``--seed``: for a built-in dataset it is the dataset's own test
split (drawn with a fixed seed), for a ``--data`` file it is the questions whose hash falls in the
first ``test_percent`` buckets. Validation comes out of the training part only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.arith import load_arith_cot
from ..data.builtin import BUILTIN_NAMES, load_builtin
from ..data.example import CoTExample
from ..data.jsonl import read_jsonl, write_jsonl
from ..data.splits import bucket
from ..errors import KPODInputError, bad_input

DATA_SEED = 0  # the built-in splits are drawn with this seed whatever --seed is


@dataclass
class Splits:
    train: list[CoTExample]
    val: list[CoTExample]
    test: list[CoTExample]

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def make_splits(section: dict[str, Any]) -> Splits:
    """The three splits ``data`` describes (a built-in name or a JSONL file)."""
    source = section["source"]
    n_train, n_val, n_test = section["n_train"], section["n_val"], section["n_test"]
    variant = {k: section.get(k) for k in ("max_steps", "max_distractors") if section.get(k) is not None}
    if variant and source != "arith-cot":
        raise bad_input("data.max_steps/max_distractors", "settings of the arith-cot data only", f"source {source!r}")
    if source in BUILTIN_NAMES:
        if source == "arith-text":
            raise bad_input("data.source", "a dataset of questions with rationales", "'arith-text' (warm-up texts)")
        if variant:
            pool = load_arith_cot("train", n_train + n_val, DATA_SEED, **variant)
            test = load_arith_cot("test", n_test, DATA_SEED, **variant)
        else:
            pool = load_builtin(source, "train", n=n_train + n_val, seed=DATA_SEED)
            test = load_builtin(source, "test", n=n_test, seed=DATA_SEED)
        return Splits(pool[:n_train], pool[n_train:], test)
    path = Path(source)
    if not path.is_file():
        raise KPODInputError(f"--data: expected an existing JSONL file or one of {BUILTIN_NAMES}, got {source}")
    items = read_jsonl(path)
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
    return Splits(train[:n_train], val[:n_val], test[:n_test])  # val may be empty for a tiny file


def write_splits(splits: Splits, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train", "val", "test"):
        write_jsonl(getattr(splits, name), folder / f"{name}.jsonl")


def read_splits(folder: Path) -> Splits:
    def read(name: str) -> list[CoTExample]:
        file = folder / f"{name}.jsonl"
        return list(read_jsonl(file)) if file.stat().st_size else []

    return Splits(read("train"), read("val"), read("test"))

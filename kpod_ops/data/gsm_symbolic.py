"""``gsm-symbolic``: GSM8K-style questions and rationales from ``reasoning-gym``'s generator, offline."""

from __future__ import annotations

from .._optional import require
from ..steps import split_answer
from .answers import extract_answer
from .example import CoTExample
from .splits import bucket, check_count, check_split

_SUFFIX = " Give the result as your final answer. Do not include units."
_TEST = range(0, 20)


def load_gsm_symbolic(split: str = "train", n: int = 1000, seed: int = 0) -> list[CoTExample]:
    """``n`` examples of ``split`` (20 % of questions by hash are test), deterministic by ``seed``.

    The rationale is reasoning-gym's ``answer_cot`` with its ``#### n`` line split off; the gold
    answer is reasoning-gym's ``answer``. Duplicate questions are dropped.
    """
    reasoning_gym = require("reasoning_gym", extra="data", feature="the built-in gsm-symbolic data")  # lazily: many small packages

    check_split(split)
    check_count(n)
    out: list[CoTExample] = []
    seen: set[str] = set()
    size = 2 * n + 64
    while True:
        dataset = reasoning_gym.create_dataset("gsm_symbolic", size=size, seed=seed)
        out.clear()
        seen.clear()
        for index, item in enumerate(dataset):
            question = item["question"]
            if question.endswith(_SUFFIX):
                question = question[: -len(_SUFFIX)]
            if question in seen or (bucket(question, "gsm-symbolic") in _TEST) != (split == "test"):
                continue
            rationale, marker = split_answer(item["metadata"]["answer_cot"])
            if not rationale.strip():
                continue
            seen.add(question)
            meta = {"source_index": item["metadata"].get("source_index"), "teacher_answer": extract_answer(marker or "")}
            out.append(CoTExample(f"gsm-symbolic-{split}-{seed}-{index}", question, rationale, str(item["answer"]), meta))
            if len(out) == n:
                return out
        if size > 50 * n + 10_000:
            raise RuntimeError(f"gsm-symbolic: could not draw {n} distinct {split} questions")
        size *= 4

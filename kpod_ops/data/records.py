"""``TokenizedExample`` as a plain dict (for Hugging Face ``datasets``) and its validation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import KPODInputError, bad_input
from .tokenized import TokenizedExample

RECORD_KEYS = ("id", "input_ids", "prompt_len", "step_spans", "answer_start", "architecture")


def to_record(example: TokenizedExample) -> dict[str, Any]:
    """A dict of plain lists/ints that ``datasets.Dataset.from_list`` can store."""
    if not isinstance(example, TokenizedExample):
        raise bad_input("example", "a TokenizedExample", type(example).__name__)
    return {
        "id": example.id,
        "input_ids": list(example.input_ids),
        "prompt_len": example.prompt_len,
        "step_spans": [list(s) for s in example.step_spans],
        "answer_start": example.answer_start,
        "architecture": example.architecture,
        "steps": list(example.steps),
    }


def validate_tokenized(example: TokenizedExample, argument: str = "example") -> TokenizedExample:
    """Check the span invariants (non-empty, contiguous, partition ``[prompt_len, answer_start)``)."""
    if not isinstance(example, TokenizedExample):
        raise bad_input(argument, "a TokenizedExample", type(example).__name__)
    where = f"{argument} {example.id!r}"
    n = len(example.input_ids)
    if not example.step_spans:
        raise KPODInputError(f"{where}: step_spans: expected at least one step, got none")
    if not 0 <= example.prompt_len < example.answer_start < n + 1 or example.answer_start >= n:
        raise KPODInputError(
            f"{where}: expected 0 <= prompt_len < answer_start < len(input_ids), got prompt_len={example.prompt_len}, "
            f"answer_start={example.answer_start}, len(input_ids)={n}"
        )
    pos = example.prompt_len
    for k, (a, b) in enumerate(example.step_spans):
        if a != pos or b <= a:
            raise KPODInputError(f"{where}: step_spans[{k}]: expected a non-empty span starting at {pos}, got ({a}, {b})")
        pos = b
    if pos != example.answer_start:
        raise KPODInputError(f"{where}: step_spans: expected to end at answer_start={example.answer_start}, got {pos}")
    return example


def as_tokenized(feature: TokenizedExample | Mapping[str, Any], argument: str = "features") -> TokenizedExample:
    """A ``TokenizedExample`` from itself or from a dict made by ``to_record`` (validated)."""
    if isinstance(feature, TokenizedExample):
        return validate_tokenized(feature, argument)
    if not isinstance(feature, Mapping):
        raise bad_input(argument, "TokenizedExample items or dicts from to_record()", type(feature).__name__)
    missing = [k for k in RECORD_KEYS if k not in feature and k != "architecture"]
    if missing:
        raise bad_input(argument, f"dicts with keys {list(RECORD_KEYS)}", f"a dict without {missing}")
    try:
        example = TokenizedExample(
            id=str(feature["id"]),
            input_ids=tuple(int(i) for i in feature["input_ids"]),
            prompt_len=int(feature["prompt_len"]),
            step_spans=tuple((int(a), int(b)) for a, b in feature["step_spans"]),
            answer_start=int(feature["answer_start"]),
            architecture=str(feature.get("architecture", "decoder")),
            steps=tuple(feature.get("steps") or ()),
        )
    except (TypeError, ValueError) as exc:
        raise bad_input(argument, "dicts with int ids, int lengths and (start, end) spans", f"{exc}") from None
    return validate_tokenized(example, argument)

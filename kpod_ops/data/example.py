"""``CoTExample``: one question with its teacher rationale and gold answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import bad_input


@dataclass(frozen=True)
class CoTExample:
    """A question, a teacher rationale without the answer sentence, and the gold answer.

    ``rationale`` holds only the reasoning (the ``#### n`` / "Therefore, the answer is …" part is
    split off when reading); ``metadata`` carries optional extras, e.g. arith-cot's distractors.
    """

    id: str
    question: str
    rationale: str
    answer: str
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("id", "question", "rationale", "answer"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise bad_input(f"CoTExample.{name}", "a str", type(value).__name__)
            if not value.strip():
                raise bad_input(f"CoTExample.{name}", "a non-empty string", repr(value))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the JSONL format ``read_jsonl`` reads back)."""
        out: dict[str, Any] = {"id": self.id, "question": self.question, "rationale": self.rationale, "answer": self.answer}
        if self.metadata:
            out["metadata"] = self.metadata
        return out

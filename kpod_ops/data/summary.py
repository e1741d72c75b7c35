"""What a dataset looks like once split into steps: which step rule was used, and how many steps."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import bad_input
from ..steps import RULES, resolve_rule, split_steps
from .checks import example_list
from .example import CoTExample


@dataclass(frozen=True)
class DataSummary:
    """Step statistics of a list of examples under one ``step_rule``.

    ``rules`` counts the examples per concrete rule (``"auto"`` resolves per rationale to
    ``"period"``, ``"newline"`` or ``"paragraph"``), so the split a dataset actually got is visible.
    """

    n_examples: int
    step_rule: str
    rules: dict[str, int] = field(default_factory=dict)
    steps_min: int = 0
    steps_mean: float = 0.0
    steps_max: int = 0
    single_step: int = 0
    ambiguous_markers: int | None = None

    def __str__(self) -> str:
        rules = ", ".join(f"{name} {count}" for name, count in sorted(self.rules.items(), key=lambda kv: -kv[1]))
        text = (f"{self.n_examples} examples; step_rule={self.step_rule!r} -> {rules}; steps per rationale "
                f"min {self.steps_min}, mean {self.steps_mean:.1f}, max {self.steps_max}; "
                f"{self.single_step} with a single step")
        if self.ambiguous_markers is not None:
            text += f"; {self.ambiguous_markers} with an answer marker inside the reasoning"
        return text


def summarize_examples(examples: Sequence[CoTExample], step_rule: str = "auto", *,
                       ambiguous_markers: int | None = None) -> DataSummary:
    """Split every rationale with ``step_rule`` and summarise. A ``ReadResult`` from ``read_jsonl``
    brings its count of ambiguous answer markers along."""
    if step_rule not in RULES:
        raise bad_input("step_rule", f"one of {RULES}", repr(step_rule))
    if ambiguous_markers is None and hasattr(examples, "ambiguous_markers"):
        ambiguous_markers = len(examples.ambiguous_markers)
    items = example_list(examples, "examples", CoTExample)
    rules = Counter(resolve_rule(ex.rationale, step_rule) for ex in items)
    counts = np.array([len(split_steps(ex.rationale, step_rule)) for ex in items], dtype=np.int64)
    return DataSummary(len(items), step_rule, dict(rules), int(counts.min()), float(counts.mean()), int(counts.max()),
                       int((counts == 1).sum()), ambiguous_markers)

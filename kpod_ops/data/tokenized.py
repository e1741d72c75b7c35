"""The token-level view of one example that every KPOD component indexes.

The data layer (``kpod_ops.data``) builds it, the mask learner weights its rationale tokens, the
difficulty is computed per step over its spans, and the collator places ``loss_start`` at the first
token of step ``c_i + 1``. Keeping one structure is what makes all of them agree on the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import bad_input


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids of one example with its rationale steps located.

    ``input_ids`` is the full training sequence: prompt tokens, then the rationale tokens, then the
    answer tokens (ending with EOS). For decoder-only students these are the ids of the full text
    (steps located through the fast tokenizer's offsets); for encoder–decoder students each segment
    is tokenised on its own and concatenated, so a step's tokens do not depend on where the split
    between encoder and decoder falls.

    ``step_spans[k] = (start, end)`` is the half-open range of step ``k`` (0-based) in
    ``input_ids``; the spans are non-empty, contiguous and partition
    ``[prompt_len, answer_start)``. The answer runs from ``answer_start`` to ``len(input_ids)``.
    """

    id: str
    input_ids: tuple[int, ...]
    prompt_len: int
    step_spans: tuple[tuple[int, int], ...]
    answer_start: int
    architecture: str = "decoder"  # "decoder" or "encoder-decoder"
    steps: tuple[str, ...] = field(default=(), compare=False)

    @property
    def n_steps(self) -> int:
        return len(self.step_spans)

    @property
    def rationale_len(self) -> int:
        return self.answer_start - self.prompt_len

    @property
    def rationale_ids(self) -> tuple[int, ...]:
        return self.input_ids[self.prompt_len : self.answer_start]

    @property
    def answer_ids(self) -> tuple[int, ...]:
        return self.input_ids[self.answer_start :]

    @property
    def prompt_ids(self) -> tuple[int, ...]:
        return self.input_ids[: self.prompt_len]

    def step_ids(self) -> np.ndarray:
        """0-based step index of every rationale token (length ``rationale_len``)."""
        out = np.empty(self.rationale_len, dtype=np.int64)
        for k, (a, b) in enumerate(self.step_spans):
            out[a - self.prompt_len : b - self.prompt_len] = k
        return out

    def loss_start(self, given_steps: int) -> int:
        """Position in ``input_ids`` of the first token of step ``given_steps + 1``.

        With ``given_steps == 0`` the first rationale token; with ``given_steps == n_steps`` the
        first answer token.
        """
        if isinstance(given_steps, np.integer):
            given_steps = int(given_steps)
        if isinstance(given_steps, bool) or not isinstance(given_steps, int) or not 0 <= given_steps <= self.n_steps:
            raise bad_input("given_steps", f"an int in [0, {self.n_steps}]", repr(given_steps))
        return self.answer_start if given_steps == self.n_steps else self.step_spans[given_steps][0]

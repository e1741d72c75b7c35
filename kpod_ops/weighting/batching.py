"""Turning TokenizedExample sequences into the tensors the mask learner reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..data.tokenized import TokenizedExample
from ..errors import bad_input


@dataclass
class MaskBatch:
    """Padded rationale ids and per-example question/answer ids of a batch of examples."""

    ids: list[str]
    rationale: torch.Tensor  # [B, L] int64, 0 at padding
    attention_mask: torch.Tensor  # [B, L] bool
    lengths: list[int]
    prompts: list[torch.Tensor]
    answers: list[torch.Tensor]


def check_examples(examples: Sequence[TokenizedExample], argument: str = "examples", *, need_answer: bool = False) -> None:
    """Fail early, naming the example, on anything the mask learner cannot use."""
    if isinstance(examples, (str, bytes)) or not hasattr(examples, "__len__"):
        raise bad_input(argument, "a sequence of TokenizedExample", type(examples).__name__)
    seen: set[str] = set()
    for n, ex in enumerate(examples):
        for attr in ("id", "input_ids", "prompt_len", "answer_start"):
            if not hasattr(ex, attr):
                raise bad_input(f"{argument}[{n}]", "a TokenizedExample", type(ex).__name__)
        if not 0 <= ex.prompt_len <= ex.answer_start <= len(ex.input_ids):
            raise bad_input(
                f"{argument}[{n}] (id {ex.id!r})",
                "0 <= prompt_len <= answer_start <= len(input_ids)",
                (ex.prompt_len, ex.answer_start, len(ex.input_ids)),
            )
        if need_answer and ex.answer_start == len(ex.input_ids):
            raise bad_input(f"{argument}[{n}] (id {ex.id!r})", "at least one answer token", "an empty answer")
        if ex.id in seen:
            raise bad_input(f"{argument}[{n}].id", "unique example ids", f"duplicate {ex.id!r}")
        seen.add(ex.id)


def make_batch(examples: Sequence[TokenizedExample], device: torch.device | str = "cpu") -> MaskBatch:
    lengths = [ex.rationale_len for ex in examples]
    width = max(lengths, default=0)
    rat = torch.zeros(len(examples), width, dtype=torch.long)
    for b, ex in enumerate(examples):
        rat[b, : lengths[b]] = torch.tensor(ex.rationale_ids, dtype=torch.long)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths, dtype=torch.long)[:, None]
    as_t = lambda ids: torch.tensor(ids, dtype=torch.long, device=device)  # noqa: E731
    return MaskBatch(
        ids=[ex.id for ex in examples],
        rationale=rat.to(device),
        attention_mask=mask.to(device),
        lengths=lengths,
        prompts=[as_t(ex.prompt_ids) for ex in examples],
        answers=[as_t(ex.answer_ids) for ex in examples],
    )

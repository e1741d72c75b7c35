"""Evaluation: batched greedy generation from exactly the training prompt tokens, answer matching.

Each prompt is ``input_ids[:prompt_len]`` of the example tokenised as for training (same template,
same tokenizer call, so the same tokens — a prompt tokenised on its own can differ at the
boundary). Prompts are left-padded into batches of similar length; generation is greedy with the
KV cache and stops at EOS or after ``max_new_tokens``. The answer is the number after the last
answer marker of the generated text (``kpod_ops.data.extract_answer``) compared numerically with
the gold answer (``answers_match``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .._optional import require
from ..data.answers import answers_match, extract_answer
from ..data.example import CoTExample
from ..data.tokenize import tokenize_examples
from ..errors import bad_input


@dataclass
class EvalResult:
    accuracy: float
    n: int
    n_correct: int
    generations: list[dict[str, Any]] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "n": self.n, "n_correct": self.n_correct}


def prompt_ids(examples: Sequence[CoTExample], tokenizer: Any, **tokenize_options: Any) -> list[list[int]]:
    """The training prompt tokens of every example (``input_ids[:prompt_len]`` of its full sequence)."""
    return [list(te.input_ids[: te.prompt_len]) for te in tokenize_examples(list(examples), tokenizer, **tokenize_options)]


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    pad_id: int,
    eos_id: int,
    max_new_tokens: int = 200,
    batch_size: int = 64,
    progress: bool = True,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> list[list[int]]:
    """Greedy continuations (without the prompt, cut at the first EOS) of every prompt, in order.

    ``do_sample=True`` samples instead (``temperature``, ``top_p``; seed torch's generator first
    for repeatable samples), e.g. for teacher rationales.
    """
    require("tqdm", extra="all", feature="kpod evaluation")
    from tqdm.auto import tqdm

    if max_new_tokens < 1 or batch_size < 1:
        raise bad_input("max_new_tokens/batch_size", "positive ints", (max_new_tokens, batch_size))
    if do_sample and not (temperature > 0 and 0 < top_p <= 1):
        raise bad_input("temperature/top_p", "temperature > 0 and top_p in (0, 1]", (temperature, top_p))
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {"do_sample": False}
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for s in tqdm(range(0, len(order), batch_size), desc="generate", unit="batch", disable=None if progress else True):  # None: only on a terminal
            chunk = order[s : s + batch_size]
            width = max(len(prompts[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, i in enumerate(chunk):  # left padding: every prompt ends at the last column
                ids[r, width - len(prompts[i]) :] = torch.tensor(prompts[i], dtype=torch.long)
                mask[r, width - len(prompts[i]) :] = 1
            generated = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                num_beams=1, use_cache=True, pad_token_id=pad_id, eos_token_id=eos_id, **sampling,
            )[:, width:].cpu()
            for r, i in enumerate(chunk):
                row = generated[r].tolist()
                out[i] = row[: row.index(eos_id)] if eos_id in row else row
    finally:
        model.train(was_training)
    return out


def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[CoTExample],
    *,
    max_new_tokens: int = 200,
    batch_size: int = 64,
    progress: bool = True,
    **tokenize_options: Any,
) -> EvalResult:
    """Accuracy of ``model`` on ``examples``, with every generation kept (id, text, predicted, gold, correct)."""
    if not examples:
        raise bad_input("examples", "at least one example to evaluate", "none")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = prompt_ids(examples, tokenizer, **tokenize_options)
    outputs = generate(model, prompts, pad_id=pad, eos_id=tokenizer.eos_token_id, max_new_tokens=max_new_tokens,
                       batch_size=batch_size, progress=progress)
    generations = []
    for ex, ids in zip(examples, outputs):
        text = tokenizer.decode(ids, skip_special_tokens=True)
        predicted = extract_answer(text)
        generations.append({"id": ex.id, "question": ex.question, "generation": text, "predicted": predicted,
                            "gold": ex.answer, "correct": bool(answers_match(predicted, ex.answer))})
    n_correct = sum(g["correct"] for g in generations)
    return EvalResult(n_correct / len(generations), len(generations), n_correct, generations)

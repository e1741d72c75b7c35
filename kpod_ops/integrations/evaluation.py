"""Answer accuracy by generation: the student answers each question from its training prompt tokens.

Used by ``KPODTrainer(answer_accuracy=True)`` so that ``trainer.evaluate()`` reports
``eval_answer_accuracy``; callable on its own in any loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..data.answers import answers_match, extract_answer
from ..data.records import as_tokenized
from ..data.tokenized import TokenizedExample
from ..errors import bad_input


@torch.no_grad()
def answer_accuracy(
    model: Any,
    tokenizer: Any,
    examples: Sequence[TokenizedExample | dict],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    answers: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """Greedy-decode a rationale and answer from each example's prompt tokens and compare the final
    answer (``extract_answer``) with the example's gold answer **string**: ``answers[id]`` when
    ``answers`` is given, else the example's ``"answer"`` entry (a record from ``to_record`` with an
    ``"answer"`` key added, e.g. ``{**to_record(te), "answer": ex.answer}``). The gold answer is never
    re-read from decoded answer tokens (a tokenizer need not decode "21" back to "21"); an example
    with no gold answer string is an error.

    Returns ``{"answer_accuracy": correct / n, "answered": fraction with any answer}``. Decoder-only
    models (PEFT-wrapped ones too); the batch is left-padded with the tokenizer's pad (or EOS) token.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise bad_input("max_new_tokens", "a positive int", repr(max_new_tokens))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise bad_input("batch_size", "a positive int", repr(batch_size))
    if answers is not None and not isinstance(answers, Mapping):
        raise bad_input("answers", "a mapping example id -> gold answer string, or None", type(answers).__name__)
    items = [as_tokenized(e, "examples") for e in examples]
    if not items:
        raise bad_input("examples", "at least one example", "none")
    golds = [_gold(e, ex, answers) for e, ex in zip(examples, items)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = answered = 0
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            width = max(ex.prompt_len for ex in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.int64)
            mask = torch.zeros((len(chunk), width), dtype=torch.int64)
            for b, ex in enumerate(chunk):
                ids[b, width - ex.prompt_len:] = torch.tensor(ex.prompt_ids)
                mask[b, width - ex.prompt_len:] = 1
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad,
                                 eos_token_id=tokenizer.eos_token_id)
            for b, gold in enumerate(golds[start:start + batch_size]):
                predicted = extract_answer(tokenizer.decode(out[b, width:], skip_special_tokens=True))
                answered += predicted is not None
                correct += predicted is not None and answers_match(predicted, gold)
    finally:
        model.train(was_training)
    return {"answer_accuracy": correct / len(items), "answered": answered / len(items)}


def _gold(example: Any, tokenized: TokenizedExample, answers: Mapping[str, str] | None) -> str:
    """The gold answer string of one example: ``answers[id]``, else its ``answer`` entry / attribute."""
    if answers is not None and tokenized.id in answers:
        gold = answers[tokenized.id]
    elif isinstance(example, Mapping) and example.get("answer") is not None:
        gold = example["answer"]
    elif getattr(example, "answer", None) is not None:
        gold = example.answer
    else:
        raise bad_input(
            "examples", "each example's gold answer string (answers={id: answer}, or records with an 'answer' key)",
            f"none for example {tokenized.id!r}",
        )
    if not isinstance(gold, str) or not gold.strip():
        raise bad_input(f"answers[{tokenized.id!r}]", "a non-empty gold answer string", repr(gold))
    return gold

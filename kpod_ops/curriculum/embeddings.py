"""Question embeddings for clustering: by default the mean of the student's input embeddings over the
question's tokens (``input_ids[:prompt_len]``). The paper averages GloVe word vectors; any other
embedding plugs in through ``embed_fn``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..data.checks import example_list
from ..data.tokenized import TokenizedExample
from ..errors import bad_input
from .convert import plain_int

EmbedFn = Callable[[Sequence[TokenizedExample]], object]


def mean_input_embeddings(model: torch.nn.Module, examples: Sequence[TokenizedExample]) -> np.ndarray:
    """Mean input-embedding vector over each example's question (prompt) tokens, float32 ``[n, H]``."""
    examples = example_list(examples, "examples", TokenizedExample)
    if not hasattr(model, "get_input_embeddings"):
        raise bad_input("model", "a model with get_input_embeddings() (e.g. a transformers model)", type(model).__name__)
    table = model.get_input_embeddings().weight.detach()
    out = torch.zeros(len(examples), table.shape[1], dtype=torch.float32)
    for i, ex in enumerate(examples):
        if ex.prompt_len == 0:
            raise bad_input(f"examples[{i}] (id {ex.id!r})", "at least one question token", "prompt_len 0")
        ids = torch.tensor(ex.prompt_ids, dtype=torch.long, device=table.device)
        out[i] = table.index_select(0, ids).float().mean(0).cpu()
    return out.numpy()


def question_embeddings(
    examples: Sequence[TokenizedExample],
    model: torch.nn.Module | None = None,
    *,
    embed_fn: EmbedFn | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """One vector per question (rows in the order of ``examples``), float32 ``[n, H]``.

    Give ``model`` for the default (mean student input embedding) or ``embed_fn(batch) -> [b, H]``
    for your own (e.g. mean GloVe, a sentence encoder); it is called on batches of examples.
    """
    examples = example_list(examples, "examples", TokenizedExample)
    batch_size = plain_int("batch_size", batch_size, "an int >= 1", minimum=1)
    if (model is None) == (embed_fn is None):
        raise bad_input("model/embed_fn", "exactly one of them", "both" if model is not None else "neither")
    fn = embed_fn if embed_fn is not None else (lambda batch: mean_input_embeddings(model, batch))
    parts = []
    for s in range(0, len(examples), batch_size):
        batch = examples[s : s + batch_size]
        e = fn(batch)
        e = np.asarray(e.detach().cpu().float().numpy() if hasattr(e, "detach") else e, dtype=np.float32)
        if e.ndim != 2 or e.shape[0] != len(batch):
            raise bad_input("embed_fn", f"an array of shape ({len(batch)}, H)", f"shape {e.shape}")
        parts.append(e)
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(parts)

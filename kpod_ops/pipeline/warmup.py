"""The warm-up stage: language-model pre-training of a small student on plain text.

A student distilled from scratch has no per-token losses worth calling difficulties; KPOD assumes
a pre-trained student. ``warm_up`` gives a tiny one that start (``arith-text`` by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .._optional import require
from ..errors import bad_input
from ..losses import keypoint_cross_entropy
from .optim import autocast, lr_at, make_optimizer, set_lr


def pack(rows: Sequence[Sequence[int]], block: int) -> list[list[int]]:
    """Concatenate token rows (each already ending with EOS) and cut them into blocks of ``block``
    tokens: no padding, so every token of a batch is trained on (standard LM pre-training)."""
    flat = [t for row in rows for t in row]
    return [flat[s : s + block] for s in range(0, len(flat), block) if len(flat[s : s + block]) > 1]


def _batches(ids: list[list[int]], order: np.ndarray, size: int, pad: int):
    for s in range(0, len(order), size):
        rows = [ids[i] for i in order[s : s + size]]
        width = max(len(r) for r in rows)
        x = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            x[b, : len(r)] = torch.tensor(r)
            labels[b, : len(r)] = x[b, : len(r)]
            mask[b, : len(r)] = 1
        yield x, mask, labels


def warm_up(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    epochs: int = 2,
    batch_size: int = 32,
    lr: float = 3e-3,
    max_length: int = 256,
    seed: int = 0,
    precision: str = "fp32",
    progress: bool = True,
) -> list[float]:
    """Train ``model`` in place as a causal LM on ``texts``; returns the loss per step.

    The texts (each followed by EOS) are packed into blocks of ``max_length`` tokens; mean token
    cross-entropy (the fused op, ``shift=True``), AdamW, linear warm-up then cosine decay.
    """
    require("tqdm", extra="all", feature="the warm-up")
    from tqdm.auto import tqdm

    if not texts:
        raise bad_input("texts", "at least one warm-up text", "none")
    eos = tokenizer.eos_token_id
    ids = pack([row + [eos] for row in tokenizer(list(texts), add_special_tokens=False)["input_ids"]], max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    steps_per_epoch = (len(ids) + batch_size - 1) // batch_size
    total = steps_per_epoch * epochs
    optimizer = make_optimizer(model, lr)
    model.train()
    losses: list[float] = []
    bar = tqdm(total=total, desc="warm-up", unit="step", disable=None if progress else True)  # None: only on a terminal
    step = 0
    for epoch in range(epochs):
        order = np.random.default_rng([seed, 7, epoch]).permutation(len(ids))
        for x, mask, labels in _batches(ids, order, batch_size, pad):
            set_lr(optimizer, lr_at(step, total, lr, 0.05))
            with autocast(model.device, precision):
                logits = model(input_ids=x.to(model.device), attention_mask=mask.to(model.device)).logits
            loss = keypoint_cross_entropy(logits, labels.to(model.device), shift=True, reduction="mean")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    model.eval()
    return losses

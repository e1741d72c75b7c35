"""Dataset-level step difficulty: run the pre-trained student over the examples, then Eq. 8 per step.

Teacher-forced on the full question + rationale, so token j is scored given everything before it
(docs/method.md §7). The per-token NLL comes from the fused op with ``reduction="none"``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch

from .._optional import require
from ..data.checks import example_list
from ..data.tokenized import TokenizedExample
from ..errors import bad_input
from ..losses import keypoint_cross_entropy
from .convert import plain_int
from .difficulty import step_difficulty

IGNORE = -100


def _pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), max(width, 1)), value, dtype=torch.long)
    for b, r in enumerate(rows):
        out[b, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def _scoring_batch(examples: Sequence[TokenizedExample], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Tensors to score the rationale tokens of ``examples`` (all decoder-only or all encoder–decoder).

    Decoder-only: ``input_ids``/``attention_mask`` of the full sequence (right-padded) and ``labels``
    equal to the ids on rationale tokens, -100 elsewhere (use with ``shift=True``).
    Encoder–decoder: the prompt as encoder input, ``decoder_targets`` = rationale + answer ids
    (-100 padded) and ``labels`` = the rationale part of it (aligned with the decoder logits).
    """
    examples = example_list(examples, "examples", TokenizedExample)
    pad_id = plain_int("pad_id", pad_id, "an int token id >= 0", minimum=0)
    archs = {ex.architecture for ex in examples}
    if len(archs) > 1:
        raise bad_input("examples", "one architecture per batch", sorted(archs))
    if archs == {"encoder-decoder"}:
        targets = [ex.input_ids[ex.prompt_len :] for ex in examples]
        labels = _pad([list(ex.rationale_ids) for ex in examples], IGNORE)
        dec = _pad(targets, IGNORE)
        full = torch.full_like(dec, IGNORE)
        full[:, : labels.shape[1]] = labels[:, : dec.shape[1]]
        prompts = [ex.prompt_ids for ex in examples]
        return {"input_ids": _pad(prompts, pad_id), "attention_mask": _pad([[1] * len(p) for p in prompts], 0),
                "decoder_targets": dec, "labels": full}
    rows = [ex.input_ids for ex in examples]
    labels = torch.full((len(rows), max(len(r) for r in rows)), IGNORE, dtype=torch.long)
    for b, ex in enumerate(examples):
        labels[b, ex.prompt_len : ex.answer_start] = torch.tensor(ex.rationale_ids, dtype=torch.long)
    return {"input_ids": _pad(rows, pad_id), "attention_mask": _pad([[1] * len(r) for r in rows], 0), "labels": labels}


def _forward_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
    if "decoder_targets" in batch:
        dec_in = model.prepare_decoder_input_ids_from_labels(labels=batch["decoder_targets"].to(device))
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_in).logits
        return keypoint_cross_entropy(logits, labels, reduction="none", shift=False)
    logits = model(input_ids=ids, attention_mask=mask).logits
    return keypoint_cross_entropy(logits, labels, reduction="none", shift=True)


def rationale_nll(
    model: torch.nn.Module,
    examples: Sequence[TokenizedExample],
    *,
    batch_size: int = 8,
    pad_id: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[Hashable, np.ndarray]:
    """Per-token NLL of every example's rationale tokens under ``model`` (``{id: float64[rationale_len]}``).

    Examples are batched by length (less padding); the model runs in eval mode without gradients and
    its training flag is restored afterwards.
    """
    tqdm = require("tqdm.auto", extra="curriculum", feature="difficulty scoring").tqdm  # lazily: `import kpod_ops` needs only torch, numpy

    examples = example_list(examples, "examples", TokenizedExample)
    batch_size = plain_int("batch_size", batch_size, "an int >= 1", minimum=1)
    if not isinstance(model, torch.nn.Module):
        raise bad_input("model", "a torch.nn.Module (the student)", type(model).__name__)
    if pad_id is None:
        pad_id = getattr(getattr(model, "config", None), "pad_token_id", None) or 0
    device = torch.device(device) if device is not None else next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    out: dict[Hashable, np.ndarray] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for s in tqdm(range(0, len(order), batch_size), desc="step difficulty", disable=None if progress else True, unit="batch"):  # None: only on a terminal
                chunk = [examples[i] for i in order[s : s + batch_size]]
                batch = _scoring_batch(chunk, pad_id)
                nll = _forward_nll(model, batch, device).float().cpu().numpy()
                for b, ex in enumerate(chunk):
                    if "decoder_targets" in batch:
                        out[ex.id] = nll[b, : ex.rationale_len].astype(np.float64)
                    else:
                        out[ex.id] = nll[b, ex.prompt_len : ex.answer_start].astype(np.float64)
    finally:
        model.train(was_training)
    return out


def combine_step_difficulties(
    examples: Sequence[TokenizedExample],
    nll: Mapping[Hashable, np.ndarray],
    token_weights: Mapping[Hashable, object] | None = None,
    *,
    normalisation: str = "softmax",
) -> dict[Hashable, np.ndarray]:
    """Eq. 8 per example from per-token NLL and token weights (both over the rationale tokens)."""
    examples = example_list(examples, "examples", TokenizedExample)
    if not isinstance(nll, Mapping):
        raise bad_input("nll", "a dict {example id: per-token NLL}", type(nll).__name__)
    if token_weights is not None and not isinstance(token_weights, Mapping):
        raise bad_input("token_weights", "a dict {example id: weights} or None", type(token_weights).__name__)
    out = {}
    for ex in examples:
        if ex.id not in nll:
            raise bad_input("nll", "a per-token NLL array for every example", f"none for {ex.id!r}")
        w = None
        if normalisation != "uniform":
            if token_weights is None or ex.id not in token_weights:
                raise bad_input("token_weights", f"weights for every example (normalisation={normalisation!r})",
                                f"none for {ex.id!r}")
            w = token_weights[ex.id]
            w = np.asarray(w.detach().cpu().numpy() if hasattr(w, "detach") else w, dtype=np.float64)
            if w.shape != (ex.rationale_len,):
                raise bad_input(f"token_weights[{ex.id!r}]", f"shape ({ex.rationale_len},) (rationale_len)", f"shape {w.shape}")
        x = np.asarray(nll[ex.id], dtype=np.float64)
        if x.shape != (ex.rationale_len,):
            raise bad_input(f"nll[{ex.id!r}]", f"shape ({ex.rationale_len},) (rationale_len)", f"shape {x.shape}")
        out[ex.id] = step_difficulty(x, ex.step_ids(), w, normalisation=normalisation, n_steps=ex.n_steps)
    return out


def dataset_step_difficulties(
    model: torch.nn.Module,
    examples: Sequence[TokenizedExample],
    token_weights: Mapping[Hashable, object] | None = None,
    *,
    normalisation: str = "softmax",
    batch_size: int = 8,
    pad_id: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[Hashable, np.ndarray]:
    """``{id: d_k for k = 1..n_i}``: score the rationale with the pre-trained student, then Eq. 8."""
    nll = rationale_nll(model, examples, batch_size=batch_size, pad_id=pad_id, device=device, progress=progress)
    return combine_step_difficulties(examples, nll, token_weights, normalisation=normalisation)

"""Plain reference of the fused linear keypoint cross-entropy: ``linear`` then the keypoint CE.

It builds the full ``[N, V]`` logits (what the fused path avoids) and hands them to the
pure-PyTorch reference of :func:`kpod_ops.keypoint_cross_entropy`, so the tests compare the fused
linear loss with an independent composition of well-understood pieces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import keypoint_cross_entropy_reference


def keypoint_linear_cross_entropy_reference(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    token_weights: torch.Tensor | None = None,
    loss_start: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch: int | torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    shift: bool = False,
    validate: bool = True,
    logit_softcap: float | None = None,
) -> torch.Tensor:
    """``keypoint_cross_entropy_reference(F.linear(hidden, lm_head_weight, bias), labels, ...)``, the
    logits soft-capped first (``cap·tanh(logits/cap)``) when ``logit_softcap`` is given."""
    logits = F.linear(hidden, lm_head_weight, bias)
    if logit_softcap is not None:
        logits = torch.tanh(logits / logit_softcap) * logit_softcap
    return keypoint_cross_entropy_reference(
        logits, labels, token_weights, loss_start, ignore_index=ignore_index, reduction=reduction,
        num_items_in_batch=num_items_in_batch, label_smoothing=label_smoothing, shift=shift, validate=validate,
    )

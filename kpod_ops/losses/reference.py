"""Pure-PyTorch reference of the keypoint-weighted, step-truncated cross-entropy.

This is the executable specification the fused kernels are tested against, and the path the
public API takes when the compiled extension is missing. It is written for clarity, not speed:
it builds masked ``N×V`` copies. Masking is done with ``torch.where`` (never by multiplying),
so inactive rows that hold ``inf``/``NaN`` contribute exactly zero loss and zero gradient.

It indexes differently from the fused path on purpose (the causal shift is done by slicing the
logits, the fused path re-aims the labels), so the two cross-check each other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .inputs import accumulation_dtype, check_arguments, live_rows, safe_divide
from .validation import checked_labels
from .zero_weights import zero_weight_rows


def keypoint_cross_entropy_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    token_weights: torch.Tensor | None = None,
    loss_start: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch: int | torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    shift: bool = False,
    validate: bool = True,
) -> torch.Tensor:
    """Reference semantics of :func:`kpod_ops.keypoint_cross_entropy` (see its docstring)."""
    check_arguments(logits, labels, token_weights, loss_start, reduction, num_items_in_batch, label_smoothing, shift)
    acc = accumulation_dtype(logits)
    lead = tuple(logits.shape[:-1])
    V = logits.shape[-1]
    zero = torch.zeros((), dtype=acc, device=logits.device)
    z = logits if logits.dim() == 3 else logits.unsqueeze(0)
    y = labels.reshape(z.shape[:2])
    w = torch.ones(y.shape, dtype=acc, device=y.device) if token_weights is None else token_weights.reshape(y.shape).to(acc)
    B, T = y.shape
    t = torch.arange(T, device=y.device).expand(B, T)
    active = y != ignore_index
    if loss_start is not None:
        active = active & (t >= loss_start.unsqueeze(1))
    if shift:
        active = active & (t >= 1)
        # prediction for label position t is logits row t-1; position 0 gets a dummy row
        z = torch.cat([z[:, :1], z[:, :-1]], dim=1) if T > 0 else z
    if validate:
        check_w = w if (reduction == "weighted_mean" and token_weights is not None) else None
        y = checked_labels(y, active, check_w, V, ignore_index, 0, logits.dim() == 2)
    if reduction in ("none", "sum"):
        den = None
    elif num_items_in_batch is not None:
        n = num_items_in_batch
        den = n.detach().to(device=z.device, dtype=acc) if isinstance(n, torch.Tensor) else float(n)
    elif reduction == "mean":
        den = active.sum().to(acc)
    else:
        den = torch.where(active, w, zero).sum()
    live = live_rows(active, den)  # no row counts when the divisor is 0
    use = live & (w != 0)  # rows whose loss counts; all others are masked out before the softmax
    weights_need_grad = token_weights is not None and token_weights.requires_grad and torch.is_grad_enabled()
    read = live if weights_need_grad else use  # ω = 0 rows still give the weights a gradient (ℓ, where finite)
    bad = read & ((y < 0) | (y >= V))  # only without validation: a NaN row, whatever the label

    def row_losses(rows: torch.Tensor) -> torch.Tensor:
        """ℓ on ``rows`` (from a copy of the logits masked to them), log V elsewhere."""
        ok = rows & ~bad
        zf = torch.where(ok.unsqueeze(-1), z.to(acc), zero)
        if zf.numel() == 0:
            return zf.sum(-1)  # empty, but still connected to the logits for autograd
        target = torch.where(ok, y, torch.zeros_like(y))
        ell = F.cross_entropy(
            zf.reshape(-1, V), target.reshape(-1), reduction="none", label_smoothing=float(label_smoothing)
        ).reshape(B, T)
        if not validate:
            # NaN loss and NaN gradient on those rows only (the factor is 0 elsewhere, so is its gradient)
            poison = torch.where(rows & bad, float("nan"), 0.0).to(acc).unsqueeze(-1)
            ell = torch.where(rows & bad, (z.to(acc) * poison).sum(-1), ell)
        return ell

    contribution = torch.where(use, w * row_losses(use), zero)
    if weights_need_grad:
        # ω = 0 rows: value 0, d/dω = ℓ, from their own masked copy, so that nothing (not even a NaN
        # row's 0·NaN) flows from them into the logits' first-order gradient
        zero_rows = read & (w == 0)
        contribution = contribution + zero_weight_rows(w, row_losses(zero_rows), zero_rows)
    if reduction == "none":
        return contribution.reshape(lead)
    return safe_divide(contribution.sum(), den)

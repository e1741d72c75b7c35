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

from .inputs import accumulation_dtype, check_arguments, safe_divide
from .inputs import plan_rows as _plan_rows
from .inputs import validate_values as _validate_values


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
    if validate:
        _validate_values(_plan_rows(logits, labels, token_weights, loss_start, ignore_index, shift), reduction, ignore_index)
    acc = accumulation_dtype(logits)
    lead = tuple(logits.shape[:-1])
    V = logits.shape[-1]
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
    use = active & (w != 0)  # rows whose loss counts; all others are masked out before the softmax
    zf = torch.where(use.unsqueeze(-1), z.to(acc), torch.zeros((), dtype=acc, device=z.device))
    target = torch.where(use, y, torch.zeros_like(y))
    if zf.numel() > 0:
        ell = F.cross_entropy(
            zf.reshape(-1, V), target.reshape(-1), reduction="none", label_smoothing=float(label_smoothing)
        ).reshape(B, T)
    else:
        ell = zf.sum(-1)  # empty, but still connected to the logits for autograd
    contribution = torch.where(use, w * ell, torch.zeros((), dtype=acc, device=z.device))
    if reduction == "none":
        return contribution.reshape(lead)
    total = contribution.sum()
    if reduction == "sum":
        return total
    if num_items_in_batch is not None:
        den = torch.as_tensor(num_items_in_batch, device=z.device).detach().to(acc)
    elif reduction == "mean":
        den = active.sum().to(acc)
    else:
        den = torch.where(active, w, torch.zeros((), dtype=acc, device=z.device)).sum()
    return safe_divide(total, den)

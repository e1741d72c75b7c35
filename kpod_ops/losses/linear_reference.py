"""Plain reference of the fused linear keypoint cross-entropy: ``linear`` then the keypoint CE.

It builds the full ``[N, V]`` logits (what the fused path avoids) and hands them to the
pure-PyTorch reference of :func:`kpod_ops.keypoint_cross_entropy`, so the tests compare the fused
linear loss with an independent composition of well-understood pieces. The one departure from a
plain ``F.linear``: rows whose logits get no gradient (inactive, ``ω = 0``) take no part in the
gradient products, as in the fused path, so a non-finite hidden state there cannot turn ``0·inf``
into NaN in the LM head's gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import keypoint_cross_entropy_reference


class _Linear(torch.autograd.Function):
    """``F.linear`` whose gradients skip the rows with a zero upstream gradient (differentiable again)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias):
        ctx.save_for_backward(hidden, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return F.linear(hidden, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        hidden, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        h = hidden.reshape(-1, hidden.shape[-1])
        live = (g != 0).any(-1, keepdim=True)  # rows that receive a gradient
        grad_hidden = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_hidden = (g @ weight.to(g.dtype)).to(hidden.dtype).reshape(hidden.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = (g.t() @ torch.where(live, h, 0.0).to(g.dtype)).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = g.sum(0).to(ctx.bias_dtype)
        return grad_hidden, grad_weight, grad_bias


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
    logits = _Linear.apply(hidden, lm_head_weight, bias)
    if logit_softcap is not None:
        logits = torch.tanh(logits / logit_softcap) * logit_softcap
    return keypoint_cross_entropy_reference(
        logits, labels, token_weights, loss_start, ignore_index=ignore_index, reduction=reduction,
        num_items_in_batch=num_items_in_batch, label_smoothing=label_smoothing, shift=shift, validate=validate,
    )

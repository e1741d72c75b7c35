"""The weights' gradient on rows whose weight is 0.

An active position with ``ω = 0`` contributes exactly 0 to the loss and nothing to the logits'
gradient, whatever its logits hold; but ``d(ω·ℓ)/dω = ℓ`` there, so weights that start at 0 or pass
through a clamp/ReLU must still learn. :func:`zero_weight_rows` is a term that is 0 in value and
carries exactly that gradient (and the second derivatives, for double backward) where ``ℓ`` is
finite. Where it is not (inf/NaN logits), ``ω·ℓ`` has no derivative at 0 and the row gives 0 to
every gradient, ``ω``'s included: a non-finite row a weight has switched off never reaches training.
"""

from __future__ import annotations

import torch


class _ZeroWeightRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weights, nll, mask):
        ctx.save_for_backward(weights, nll, mask)
        return torch.zeros_like(nll)

    @staticmethod
    def backward(ctx, grad):
        weights, nll, mask = ctx.saved_tensors
        mask = mask & torch.isfinite(nll)  # a non-finite ℓ at ω = 0: 0 to every gradient
        zero = torch.zeros((), dtype=nll.dtype, device=nll.device)
        # a zero upstream gradient flows nowhere, even where ℓ is not finite (0·inf would be NaN)
        grad_weights = torch.where(mask & (grad != 0), grad * nll, zero)
        grad_nll = None  # ω·g = 0: nothing flows into the logits' gradient from these rows
        if torch.is_grad_enabled():
            # create_graph: still 0 in value, but its derivative w.r.t. ω is g, which gives the mixed
            # second derivative d²(ω·ℓ)/dω dz = dℓ/dz exactly
            grad_nll = torch.where(mask, grad * (weights - weights.detach()), zero)
        return grad_weights, grad_nll, None


def zero_weight_rows(weights: torch.Tensor, nll: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """0 everywhere in value, with ``d/dweights = nll`` on ``mask`` (active rows where ω = 0) where it is finite."""
    return _ZeroWeightRows.apply(weights, nll, mask)

"""Differentiable Bernoulli masks (binary concrete / Gumbel-sigmoid) applied to embeddings.

``m = sigmoid((logit(w) + g1 - g2) / tau)`` with ``g1, g2 ~ Gumbel(0, 1)``: the "keep" component
of a two-class Gumbel-softmax over ``[log(1-w), log w]`` (paper Eq. 4). A hard sample
``1[m > 0.5]`` is Bernoulli(w) for any ``tau``; ``hard=True`` returns it with the soft sample's
gradient (straight-through).
"""

from __future__ import annotations

import torch

from ..errors import bad_input


def gumbel_sigmoid(
    logits: torch.Tensor, tau: float = 1.0, *, hard: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sample a relaxed keep mask in ``[0, 1]`` from pre-sigmoid keep logits (``-inf`` gives 0)."""
    if not tau > 0:
        raise bad_input("tau", "a positive temperature", tau)
    u = torch.rand((2, *logits.shape), generator=generator, dtype=torch.float32, device="cpu").to(logits.device)
    tiny = torch.finfo(torch.float32).tiny
    g = -torch.log((-torch.log(u.clamp_min(tiny))).clamp_min(tiny))  # two Gumbel(0,1) draws
    soft = torch.sigmoid((logits + (g[0] - g[1]).to(logits.dtype)) / tau)
    if not hard:
        return soft
    hard_mask = (soft > 0.5).to(soft.dtype)
    return hard_mask - soft.detach() + soft


def apply_mask(embeddings: torch.Tensor, mask: torch.Tensor, mask_embedding: torch.Tensor) -> torch.Tensor:
    """``m * e + (1 - m) * e_mask``: masking on embeddings keeps the gradient to ``m`` (ids would cut it)."""
    m = mask.unsqueeze(-1).to(embeddings.dtype)
    return m * embeddings + (1 - m) * mask_embedding.to(embeddings.dtype)


def anneal_tau(tau: float, tau_final: float | None, progress: float) -> float:
    """Geometric annealing from ``tau`` to ``tau_final`` as ``progress`` goes from 0 to 1."""
    if tau_final is None:
        return tau
    p = min(max(progress, 0.0), 1.0)
    return tau * (tau_final / tau) ** p

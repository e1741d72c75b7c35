"""Comparing two trained models in a way that holds on every CPU.

Adam divides each gradient by its own running RMS, so a last-bit difference in a near-zero
gradient (another vector width, another thread count, another summation order) can move one
weight by a visible fraction of an update. An element-wise tolerance on the weights after Adam
steps therefore only holds on the machine that set it. What the runs being compared must share is
where training took them: per tensor, the distance between the two results is a small fraction of
how far training moved that tensor.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def assert_trained_alike(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor],
                         start: Mapping[str, torch.Tensor], *, rel: float = 1e-3) -> None:
    """Per tensor: ``‖got − want‖ ≤ rel · ‖want − start‖`` (and every tensor moved, so the check can fail)."""
    assert got.keys() == want.keys() and set(want) <= set(start)
    for name in want:
        g, w, s = (t[name].detach().double().flatten() for t in (got, want, start))
        moved = float((w - s).norm())
        off = float((g - w).norm())
        assert off <= rel * moved + 1e-12, f"{name}: runs differ by {off:.3g}, {off / max(moved, 1e-30):.3g} of the {moved:.3g} training moved it"


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the model's trainable parameters by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

"""The interface every stage solver implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ..value import StageProblem


@runtime_checkable
class Solver(Protocol):
    """Chooses S(t) ⊆ items with Σ δ ≤ ΔD, maximising KPOD's F (Eq. 13).

    ``guarantee`` is the proven ratio ρ with f(Ŝ) ≥ ρ·f(S*) for the shifted objective
    f = F + ΔD (``None``: no guarantee). ``__call__`` returns the sorted selected item indices.
    """

    name: str

    @property
    def guarantee(self) -> float | None: ...

    def __call__(self, problem: StageProblem) -> np.ndarray: ...


EMPTY = np.zeros(0, dtype=np.int64)

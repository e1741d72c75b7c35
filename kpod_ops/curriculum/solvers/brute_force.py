"""Exact maximisation by enumerating every subset: for tests and tiny instances."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import bad_input
from ..value import StageProblem
from .base import EMPTY


@dataclass(frozen=True)
class BruteForce:
    """The optimum over all 2^n subsets (guarantee 1). Refuses more than ``max_items`` items.

    ΔD ≤ 0 selects nothing (invariant C5). Ties go to the subset with the smallest bitmask, to which
    every zero-cost item is added (f is monotone, so the result stays optimal, as with the other solvers).
    """

    max_items: int = 18
    name: str = "brute_force"

    @property
    def guarantee(self) -> float:
        return 1.0

    def __call__(self, problem: StageProblem) -> np.ndarray:
        n = problem.n_items
        if n > self.max_items:
            raise bad_input("problem", f"at most {self.max_items} items for brute force", f"{n} items")
        if problem.budget <= 0 or n == 0:
            return EMPTY
        masks = np.arange(2**n, dtype=np.int64)
        bits = ((masks[:, None] >> np.arange(n)) & 1).astype(np.float64)
        cost = bits @ problem.costs
        onehot = np.zeros((n, problem.n_clusters))
        onehot[np.arange(n), problem.clusters] = 1.0
        value = cost + problem.beta * np.sqrt(bits @ onehot).sum(axis=1)
        value[cost > problem.budget] = -np.inf
        best = int(np.argmax(value))
        return np.flatnonzero(((best >> np.arange(n)) & 1).astype(bool) | (problem.costs == 0)).astype(np.int64)

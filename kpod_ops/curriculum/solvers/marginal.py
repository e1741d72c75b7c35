"""Plain marginal-gain greedy (what the public re-implementation does): a baseline with no guarantee."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..value import StageProblem
from .base import EMPTY
from .layout import prepare, sqrt_gap


@dataclass(frozen=True)
class MarginalGreedy:
    """Repeatedly add the fitting item with the largest marginal gain δ + β·g(n_k).

    No approximation guarantee for the shifted objective f = F + ΔD (it favours large δ and can be
    arbitrarily bad against a knapsack optimum of many small items); kept as a baseline. In a cluster
    the best fitting item is the most expensive one with δ ≤ remaining budget, and the items between
    it and the previous pick can never fit again, so one pointer per cluster suffices. One Python
    step per selected item: O(|S|·K·log n).
    """

    name: str = "marginal_greedy"

    @property
    def guarantee(self) -> None:
        return None

    def __call__(self, problem: StageProblem) -> np.ndarray:
        layout = prepare(problem)
        if layout is None:
            return EMPTY
        beta, z = problem.beta, layout.z.copy()
        costs = [layout.cluster_costs(k) for k in range(layout.n_clusters)]
        hi = [c.size for c in costs]  # candidates of cluster k are ranks < hi[k]
        remaining, chosen = layout.budget, []
        while True:
            best_gain, best_k, best_r = -np.inf, -1, -1
            for k, c in enumerate(costs):
                r = int(np.searchsorted(c[: hi[k]], remaining, side="right")) - 1
                if r >= 0:
                    gain = c[r] + beta * float(sqrt_gap(z[k]))
                    if gain > best_gain:
                        best_gain, best_k, best_r = gain, k, r
            if best_k < 0:
                break
            chosen.append(layout.starts[best_k] + best_r)
            remaining -= costs[best_k][best_r]
            z[best_k] += 1
            hi[best_k] = best_r
        return layout.answer(np.asarray(chosen, dtype=np.int64))

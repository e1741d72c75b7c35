"""Plain marginal-gain greedy (what the public re-implementation does): a baseline with no guarantee."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..value import StageProblem
from .base import EMPTY
from .layout import SegmentSearch, prepare, sqrt_gap


@dataclass(frozen=True)
class MarginalGreedy:
    """Repeatedly add the fitting item with the largest marginal gain δ + β·g(n_k).

    No approximation guarantee for the shifted objective f = F + ΔD (it favours large δ and can be
    arbitrarily bad against a knapsack optimum of many small items); kept as a baseline. In a cluster
    the best fitting item is the most expensive one with δ ≤ remaining budget, and the items between
    it and the previous pick can never fit again, so one pointer per cluster suffices. One vectorised
    step (all clusters at once) per selected item: O(|S|·K·log n) array work.
    """

    name: str = "marginal_greedy"

    @property
    def guarantee(self) -> None:
        return None

    def __call__(self, problem: StageProblem) -> np.ndarray:
        layout = prepare(problem)
        if layout is None:
            return EMPTY
        beta, z = problem.beta, layout.z.copy().astype(np.float64)
        search = SegmentSearch(layout.costs, layout.cluster_of, layout.starts)
        clusters = np.flatnonzero(np.diff(layout.starts) > 0)
        hi = np.diff(layout.starts)[clusters]  # candidates of cluster k are ranks < hi
        first = layout.starts[clusters]
        remaining, chosen = layout.budget, []
        while clusters.size:
            r = np.minimum(search.count_le(clusters, remaining), hi) - 1  # most expensive fitting candidate
            gain = np.where(r >= 0, layout.costs[first + np.maximum(r, 0)] + beta * sqrt_gap(z[clusters]), -np.inf)
            best = int(np.argmax(gain))
            if gain[best] == -np.inf:
                break
            pos = int(first[best] + r[best])
            chosen.append(pos)
            remaining -= layout.costs[pos]
            z[clusters[best]] += 1
            hi[best] = r[best]
        return layout.answer(np.asarray(chosen, dtype=np.int64))

"""One stage's selection problem: KPOD's value function (Eq. 12–13) under the knapsack budget ΔD.

Items are the eligible questions (c_i(t−1) > 0); item i costs δ_i ≥ 0, the difficulty of the Δs steps
it would move from input to output, and belongs to cluster k_i. With n_k(S) = |C_k ∩ S|,

    F(S) = −(ΔD − Σ_{i∈S} δ_i) + β Σ_k sqrt(n_k(S)),   maximised subject to Σ_{i∈S} δ_i ≤ ΔD.

F(∅) = −ΔD < 0, so approximation guarantees are stated for the shifted, non-negative, normalised,
monotone submodular f(S) = F(S) + ΔD = Σ_{i∈S} δ_i + β Σ_k sqrt(n_k(S)). Same argmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import bad_input


def _selection_mask(selection: object, n: int) -> np.ndarray:
    s = np.asarray(selection)
    if s.dtype == bool:
        if s.shape != (n,):
            raise bad_input("selection", f"a boolean mask of shape ({n},)", f"shape {s.shape}")
        return s
    s = s.astype(np.int64).ravel()
    if s.size and (s.min() < 0 or s.max() >= n):
        raise bad_input("selection", f"item indices in [0, {n})", f"range [{s.min()}, {s.max()}]")
    mask = np.zeros(n, dtype=bool)
    mask[s] = True
    if np.count_nonzero(mask) != s.size:
        raise bad_input("selection", "distinct item indices", "a repeated index")
    return mask


@dataclass(frozen=True)
class StageProblem:
    """Costs δ (float64 ≥ 0), cluster labels (ints in [0, K)), budget ΔD and β for one stage."""

    costs: np.ndarray
    clusters: np.ndarray
    budget: float
    beta: float = 12.0
    n_clusters: int = field(default=0)

    def __post_init__(self) -> None:
        costs = np.ascontiguousarray(self.costs, dtype=np.float64)
        clusters = np.ascontiguousarray(self.clusters, dtype=np.int64)
        if costs.ndim != 1:
            raise bad_input("costs", "a 1-D array", f"shape {costs.shape}")
        if clusters.shape != costs.shape:
            raise bad_input("clusters", f"shape {costs.shape} (that of costs)", f"shape {clusters.shape}")
        if costs.size and (not np.all(np.isfinite(costs)) or costs.min() < 0):
            raise bad_input("costs", "finite values >= 0", f"min {costs.min()}, finite {bool(np.all(np.isfinite(costs)))}")
        if clusters.size and clusters.min() < 0:
            raise bad_input("clusters", "labels >= 0", f"min {clusters.min()}")
        if not math.isfinite(self.budget):
            raise bad_input("budget", "a finite ΔD", self.budget)
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise bad_input("beta", "a finite β >= 0", self.beta)
        k = int(clusters.max()) + 1 if clusters.size else 0
        n_clusters = max(int(self.n_clusters), k)
        object.__setattr__(self, "costs", costs)
        object.__setattr__(self, "clusters", clusters)
        object.__setattr__(self, "budget", float(self.budget))
        object.__setattr__(self, "beta", float(self.beta))
        object.__setattr__(self, "n_clusters", n_clusters)

    @property
    def n_items(self) -> int:
        return int(self.costs.size)

    def cluster_counts(self, selection: object) -> np.ndarray:
        """n_k(S) for every cluster k."""
        mask = _selection_mask(selection, self.n_items)
        return np.bincount(self.clusters[mask], minlength=self.n_clusters)

    def cost(self, selection: object) -> float:
        """ΔH(S) = Σ_{i∈S} δ_i."""
        return float(self.costs[_selection_mask(selection, self.n_items)].sum())

    def feasible(self, selection: object, rtol: float = 1e-9) -> bool:
        """Σ_{i∈S} δ_i ≤ ΔD (within ``rtol``·max(1, |ΔD|)); with ΔD ≤ 0 only ∅ is feasible."""
        mask = _selection_mask(selection, self.n_items)
        if self.budget <= 0:
            return not mask.any()
        return self.cost(mask) <= self.budget + rtol * max(1.0, abs(self.budget))

    def shifted_value(self, selection: object) -> float:
        """f(S) = F(S) + ΔD = Σ δ + β Σ_k sqrt(n_k): non-negative, f(∅) = 0, monotone submodular."""
        mask = _selection_mask(selection, self.n_items)
        return float(self.costs[mask].sum() + self.beta * np.sqrt(self.cluster_counts(mask)).sum())

    def value(self, selection: object) -> float:
        """KPOD's F(S) = −(ΔD − ΔH(S)) + β Σ_k sqrt(|C_k ∩ S|) (Eq. 12)."""
        return self.shifted_value(selection) - self.budget

    def marginal_gain(self, item: int, selection: object) -> float:
        """F(S ∪ {x}) − F(S) = δ_x + β(sqrt(n_k + 1) − sqrt(n_k)) for x ∉ S in cluster k (F3)."""
        mask = _selection_mask(selection, self.n_items)
        if not 0 <= item < self.n_items:
            raise bad_input("item", f"an index in [0, {self.n_items})", item)
        if mask[item]:
            return 0.0
        n_k = int(self.cluster_counts(mask)[self.clusters[item]])
        return float(self.costs[item] + self.beta * (math.sqrt(n_k + 1) - math.sqrt(n_k)))

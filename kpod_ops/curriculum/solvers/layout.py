"""Ground-set hygiene and the per-cluster sorted layout every fast solver works on.

Hygiene (docs/method.md §8): ΔD ≤ 0 selects nothing; items with δ > ΔD can never fit and are dropped;
items with δ = 0 cost nothing and f is monotone, so they are pre-selected and the rest is solved for
the residual objective (cluster counts start at z_k) — a ρ-approximation of the residual problem is a
ρ-approximation of the whole one. The remaining items are laid out cluster by cluster in ascending δ.

Why the layout: the marginal gain of item i in cluster k is δ_i + β·g(n_k) with g(n) = √(n+1) − √n,
so its density is 1 + β·g(n_k)/δ_i. Within a cluster the densest remaining item is the cheapest one,
so every density-ordered solver takes each cluster's items as a prefix of its sorted list and the
count n_k equals the rank: no marginal gain ever has to be re-evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..value import StageProblem


def sqrt_gap(n: np.ndarray | float) -> np.ndarray:
    """g(n) = √(n+1) − √n, computed without cancellation."""
    n = np.asarray(n, dtype=np.float64)
    return 1.0 / (np.sqrt(n + 1.0) + np.sqrt(n))


def stable_argsort(x: np.ndarray) -> np.ndarray:
    """Ascending order, ties by index: a fast unstable sort, redone stably only if ties exist.

    The result is the same as ``argsort(kind="stable")`` (so platform independent) at ~3× the speed
    on tie-free data such as real-valued difficulties.
    """
    order = np.argsort(x)
    xs = x[order]
    if xs.size > 1 and np.any(xs[1:] == xs[:-1]):
        return np.argsort(x, kind="stable")
    return order


@dataclass
class Layout:
    """Residual items of one stage, grouped by cluster, ascending δ inside each cluster."""

    problem: StageProblem
    preselected: np.ndarray  # item indices with δ = 0 (always in the answer)
    z: np.ndarray  # [K] pre-selected count per cluster
    items: np.ndarray  # item index at each layout position
    costs: np.ndarray  # δ at each layout position (> 0, ascending inside a cluster)
    starts: np.ndarray  # [K+1] cluster k occupies positions starts[k]:starts[k+1]
    cluster_of: np.ndarray  # cluster at each position

    @property
    def budget(self) -> float:
        return self.problem.budget

    @property
    def n_clusters(self) -> int:
        return self.z.size

    def cluster_costs(self, k: int) -> np.ndarray:
        return self.costs[self.starts[k] : self.starts[k + 1]]

    def ranks(self) -> np.ndarray:
        """Rank of each position inside its cluster (0 = cheapest)."""
        return np.arange(self.costs.size) - np.repeat(self.starts[:-1], np.diff(self.starts))

    def density_keys(self) -> np.ndarray:
        """Density of each position given that the cheaper items of its cluster are taken: 1 + β·g(z_k + r)/δ."""
        if self.problem.beta == 0:
            return np.ones(self.costs.size)
        counts = self.z[self.cluster_of] + self.ranks()
        return 1.0 + self.problem.beta * sqrt_gap(counts) / self.costs

    def base_value(self) -> float:
        """f(Z) of the pre-selected zero-cost items."""
        return float(self.problem.beta * np.sqrt(self.z).sum())

    def answer(self, positions: np.ndarray) -> np.ndarray:
        """Sorted item indices: the pre-selected ones plus those at ``positions``."""
        return np.sort(np.concatenate([self.preselected, self.items[positions]]))


def prepare(problem: StageProblem) -> Layout | None:
    """Apply the hygiene rules; ``None`` when ΔD ≤ 0 (nothing may be selected)."""
    if problem.budget <= 0:
        return None
    costs, clusters, k = problem.costs, problem.clusters, problem.n_clusters
    zero = costs == 0
    preselected = np.flatnonzero(zero)
    z = np.bincount(clusters[preselected], minlength=k).astype(np.int64)
    keep = np.flatnonzero(~zero & (costs <= problem.budget))
    # ascending δ, then stable by cluster (a radix sort on small ints): cluster-major, cheap first
    by_cost = keep[stable_argsort(costs[keep])]
    cl = clusters[by_cost]
    small = cl.astype(np.int16) if k < 2**15 else cl
    items = by_cost[np.argsort(small, kind="stable")]
    cluster_of = clusters[items]
    starts = np.zeros(k + 1, dtype=np.int64)
    np.cumsum(np.bincount(cluster_of, minlength=k), out=starts[1:])
    return Layout(problem, preselected, z, items, costs[items], starts, cluster_of)


def best_augmented(layout: Layout, sequence: np.ndarray) -> tuple[np.ndarray, float]:
    """The best of G and every greedy prefix G_j plus its best single extra fitting item (Greedy+Max).

    ``sequence`` holds layout positions in the order a solver accepted them; each cluster's accepted
    items must be a prefix of its sorted list (true for every density-ordered solver). For prefix j
    and cluster k, the best extra item is the most expensive untaken one with δ ≤ ΔD − C_j (found by
    ``searchsorted``); its gain is δ + β·g(z_k + cnt_j[k]). Vectorised over j: O(m·K·log n).
    Returns (layout positions of the answer, its shifted value f).
    """
    beta, budget, z = layout.problem.beta, layout.budget, layout.z
    m = sequence.size
    prefix_cost = np.zeros(m + 1)
    np.cumsum(layout.costs[sequence], out=prefix_cost[1:])
    seq_cluster = layout.cluster_of[sequence]
    counts = []
    root_sum = np.zeros(m + 1)
    for k in range(layout.n_clusters):
        cnt = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(seq_cluster == k, out=cnt[1:])
        counts.append(cnt)
        root_sum += np.sqrt(z[k] + cnt)
    prefix_value = prefix_cost + beta * root_sum
    best_value, best_j, best_pos = float(prefix_value[m]), m, -1
    room = budget - prefix_cost
    for k in range(layout.n_clusters):
        costs_k = layout.cluster_costs(k)
        if costs_k.size == 0:
            continue
        r = np.searchsorted(costs_k, room, side="right") - 1
        valid = r >= counts[k]
        if not valid.any():
            continue
        gain = np.where(valid, costs_k[np.maximum(r, 0)] + beta * sqrt_gap(z[k] + counts[k]), -np.inf)
        total = prefix_value + gain
        j = int(np.argmax(total))
        if total[j] > best_value:
            best_value, best_j, best_pos = float(total[j]), j, int(layout.starts[k] + r[j])
    positions = sequence[:best_j] if best_pos < 0 else np.append(sequence[:best_j], best_pos)
    return positions, best_value  # root_sum already counts the pre-selected z

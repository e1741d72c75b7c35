"""Density-ordered greedy solvers: exact Greedy+Max (guarantee 1/2) and density greedy + best singleton (≈0.405)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..value import StageProblem
from .base import EMPTY
from .layout import Layout, best_augmented, prepare, sqrt_gap, stable_argsort


def density_greedy_sequence(layout: Layout) -> np.ndarray:
    """Exact cost-benefit greedy: repeatedly add the densest item that still fits. O(n log n).

    Densities per cluster are non-increasing in rank, so the greedy order is one stable sort of the
    keys (ties: lower cluster, then cheaper). Walking it with a running cost, the first item that
    overflows closes its cluster (its later items cost more); the walk resumes without that cluster
    and without every item costlier than the budget left (each would overflow and close its own
    cluster when reached). At most K such rounds, usually a few. Returns layout positions in
    acceptance order.
    """
    order = stable_argsort(-layout.density_keys())
    budget, used, parts = layout.budget, 0.0, []
    while order.size:
        running = used + np.cumsum(layout.costs[order])
        stop = int(np.searchsorted(running, budget, side="right"))
        parts.append(order[:stop])
        if stop == order.size:
            break
        if stop:
            used = float(running[stop - 1])
        closed = layout.cluster_of[order[stop]]
        rest = order[stop + 1 :]
        order = rest[(layout.cluster_of[rest] != closed) & (layout.costs[rest] <= budget - used)]
    return np.concatenate(parts) if parts else EMPTY


@dataclass(frozen=True)
class GreedyMax:
    """Exact Greedy+Max (Yaroslavtsev, Zhou & Avdiukhin 2020): every prefix of the density greedy plus
    its best fitting extra item, best of all. Guarantee f(Ŝ) ≥ 1/2·f(S*) for the shifted objective
    f = F + ΔD; it is FTGP's ε → 0 limit. O(n log n + m·K·log n) per stage."""

    name: str = "greedy_max"

    @property
    def guarantee(self) -> float:
        return 0.5

    def __call__(self, problem: StageProblem) -> np.ndarray:
        layout = prepare(problem)
        if layout is None:
            return EMPTY
        positions, _ = best_augmented(layout, density_greedy_sequence(layout))
        return layout.answer(positions)


@dataclass(frozen=True)
class DensityGreedy:
    """Modified density greedy: the cost-benefit greedy set or the best single item, whichever is
    better. Guarantee ≈0.405 for the shifted objective f = F + ΔD (Feldman, Nutov & Shoham,
    "Practical budgeted submodular maximization", 2021; it cannot reach 1/2). O(n log n)."""

    name: str = "density_greedy"

    @property
    def guarantee(self) -> float:
        return 0.405

    def __call__(self, problem: StageProblem) -> np.ndarray:
        layout = prepare(problem)
        if layout is None:
            return EMPTY
        sequence = density_greedy_sequence(layout)
        beta, z = problem.beta, layout.z
        counts = z + np.bincount(layout.cluster_of[sequence], minlength=layout.n_clusters)
        greedy_value = layout.costs[sequence].sum() + beta * np.sqrt(counts).sum()
        best_single, best_pos = -np.inf, -1
        nonempty = np.flatnonzero(np.diff(layout.starts) > 0)
        if nonempty.size:  # the most expensive item of a cluster is its best singleton
            last = layout.starts[nonempty + 1] - 1
            singles = layout.costs[last] + beta * sqrt_gap(z[nonempty])
            best = int(np.argmax(singles))
            best_single, best_pos = float(singles[best]), int(last[best])
        if best_pos >= 0 and layout.base_value() + best_single > greedy_value:
            return layout.answer(np.array([best_pos]))
        return layout.answer(sequence)

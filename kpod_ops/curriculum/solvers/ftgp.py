"""FTGP: the threshold greedy of Li, Feldman, Kazemi & Karbasi ("Submodular maximization in clean
linear time", NeurIPS 2022), KPOD's solver, in a reconstructed form (docs/method.md, R18).

The paper's own knapsack pseudo-code was not recovered; this is an FTGP-*style* algorithm with its
own proof: density thresholds falling geometrically by (1 − ε) from the largest singleton density
down to τ_min = ε·v_max/ΔD, then the single-item augmentation of every greedy prefix (Greedy+Max).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...errors import bad_input
from ..value import StageProblem
from .base import EMPTY
from .layout import Layout, best_augmented, prepare, sqrt_gap


def threshold_sequence(layout: Layout, epsilon: float) -> np.ndarray:
    """Threshold-greedy passes, accepting items in layout positions; returns them in acceptance order.

    Within one level and one cluster the accepted items form one contiguous block (an item failing
    the threshold keeps failing in that level since its cluster count is unchanged; one failing the
    budget keeps failing since the used budget only grows), so each block is two ``searchsorted``
    calls. A level that accepts nothing jumps to the grid level just below the largest fitting
    density — exactly what running the empty levels would do. O(L·K·log n), L ≤ 1 + ln(τ₀/τ_min)/ε.
    """
    beta, budget, z = layout.problem.beta, layout.budget, layout.z
    keys = layout.density_keys()
    clusters = [k for k in range(layout.n_clusters) if layout.starts[k + 1] > layout.starts[k]]
    if not clusters:
        return EMPTY
    neg_keys = {k: -keys[layout.starts[k] : layout.starts[k + 1]] for k in clusters}
    prefix = {}
    for k in clusters:
        cum = np.zeros(layout.starts[k + 1] - layout.starts[k] + 1)
        np.cumsum(layout.cluster_costs(k), out=cum[1:])
        prefix[k] = cum
    size = {k: int(layout.starts[k + 1] - layout.starts[k]) for k in clusters}
    v_max = max(float(layout.cluster_costs(k)[-1] + beta * sqrt_gap(z[k])) for k in clusters)
    tau = max(-float(neg_keys[k][0]) for k in clusters)
    tau_min = epsilon * v_max / budget
    taken = dict.fromkeys(clusters, 0)
    used, blocks = 0.0, []
    while True:
        accepted = False
        for k in clusters:
            p = taken[k]
            if p == size[k]:
                continue
            above = int(np.searchsorted(neg_keys[k], -tau, side="right"))  # ranks with key >= τ
            fits = int(np.searchsorted(prefix[k], budget - used + prefix[k][p], side="right")) - 1
            end = min(above, fits)
            if end > p:
                blocks.append(np.arange(layout.starts[k] + p, layout.starts[k] + end))
                used += float(prefix[k][end] - prefix[k][p])
                taken[k] = end
                accepted = True
        if tau <= tau_min:
            break
        nxt = max((1.0 - epsilon) * tau, tau_min)
        if not accepted:
            fitting = [-float(neg_keys[k][taken[k]]) for k in clusters
                       if taken[k] < size[k] and prefix[k][taken[k] + 1] - prefix[k][taken[k]] <= budget - used]
            if not fitting:
                break
            top = max(fitting)
            if top < nxt:  # skip empty levels: smallest l >= 1 with τ(1−ε)^l <= top
                level = max(1, math.ceil(math.log(top / tau) / math.log1p(-epsilon)))
                while level > 1 and tau * (1.0 - epsilon) ** (level - 1) <= top:
                    level -= 1
                nxt = max(tau * (1.0 - epsilon) ** level, tau_min)
        tau = nxt
    return np.concatenate(blocks) if blocks else EMPTY


@dataclass(frozen=True)
class FTGP:
    """FTGP-style threshold greedy with Greedy+Max augmentation (KPOD's choice; the default solver).

    Guarantee for the shifted objective f = F + ΔD: f(Ŝ) ≥ (1 − ε)/(2 − ε)·f(S*) ≥ (1/2 − ε/2)·f(S*)
    (docs/method.md, R18) — at least KPOD's quoted (1/2 − ε). ε = 0.1 by default (KPOD does not report its
    ε), i.e. ρ = 0.9/1.9 ≈ 0.474. O(n log n) per stage for KPOD's objective.
    """

    epsilon: float = 0.1
    name: str = "ftgp"

    def __post_init__(self) -> None:
        if not (isinstance(self.epsilon, (int, float)) and 0 < self.epsilon <= 0.5):
            raise bad_input("epsilon", "a float in (0, 0.5]", self.epsilon)

    @property
    def guarantee(self) -> float:
        return (1.0 - self.epsilon) / (2.0 - self.epsilon)

    def __call__(self, problem: StageProblem) -> np.ndarray:
        layout = prepare(problem)
        if layout is None:
            return EMPTY
        positions, _ = best_augmented(layout, threshold_sequence(layout, self.epsilon))
        return layout.answer(positions)

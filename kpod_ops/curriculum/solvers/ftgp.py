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
from ..convert import plain_float
from ..value import StageProblem
from .base import EMPTY
from .layout import Layout, SegmentSearch, best_augmented, blocks_to_positions, prepare, sqrt_gap


def threshold_sequence(layout: Layout, epsilon: float) -> np.ndarray:
    """Threshold-greedy passes, accepting items in layout positions; returns them in acceptance order.

    Within one level and one cluster the accepted items form one contiguous block (an item failing
    the threshold keeps failing in that level since its cluster count is unchanged; one failing the
    budget keeps failing since the used budget only grows). A level visits the clusters in order:
    the threshold ends of all clusters come from one :class:`SegmentSearch` call, the blocks that fit
    whole are taken at once through a running sum, and the first block that overflows is cut where
    the budget ends — which closes its cluster for good (its next item never fits again; clusters
    whose next item does not fit are closed on sight), so there are at most K cuts in the whole run. A level that accepts nothing jumps to the grid level just
    below the largest fitting density — exactly what running the empty levels would do.
    O(L·K) array work plus O(L·K·log n) in ``searchsorted``, L ≤ 1 + ln(τ₀/τ_min)/ε levels.
    """
    beta, budget, z = layout.problem.beta, layout.budget, layout.z
    starts, costs = layout.starts, layout.costs
    active = np.flatnonzero(np.diff(starts) > 0)
    if active.size == 0:
        return EMPTY
    keys = layout.density_keys()
    search = SegmentSearch(-keys, layout.cluster_of, starts)
    prefix = np.zeros(costs.size + 1)
    np.cumsum(costs, out=prefix[1:])
    seg_end = starts[active + 1]
    pos = starts[active].copy()  # next untaken position of every non-empty cluster
    open_ = np.ones(active.size, dtype=bool)  # False once a block of the cluster overflowed the budget
    v_max = float(np.max(costs[seg_end - 1] + beta * sqrt_gap(z[active])))
    tau = float(keys[pos].max())
    tau_min = epsilon * v_max / budget
    used = 0.0
    firsts: list[np.ndarray] = []
    lasts: list[np.ndarray] = []
    while True:
        above = starts[active] + search.count_le(active, -tau)  # ends of the blocks with key >= τ
        ends = np.where(open_, np.maximum(above, pos), pos)
        accepted = False
        i = 0
        while True:
            cand = i + np.flatnonzero(ends[i:] > pos[i:])
            short = costs[pos[cand]] > budget - used  # not even the next item fits: closed for good
            if short.any():
                open_[cand[short]] = False
                cand = cand[~short]
            if cand.size == 0:
                break
            cum = np.cumsum(prefix[ends[cand]] - prefix[pos[cand]])
            whole = int(np.searchsorted(cum, budget - used, side="right"))
            if whole:
                full = cand[:whole]
                firsts.append(pos[full].copy())
                lasts.append(ends[full].copy())
                used += float(cum[whole - 1])
                pos[full] = ends[full]
                accepted = True
            if whole == cand.size:
                break
            k = int(cand[whole])  # its block overflows: take what fits, then the cluster is closed
            cut = min(int(np.searchsorted(prefix, budget - used + prefix[pos[k]], side="right")) - 1, int(ends[k]))
            if cut > pos[k]:
                firsts.append(pos[k : k + 1].copy())
                lasts.append(np.array([cut]))
                used += float(prefix[cut] - prefix[pos[k]])
                pos[k] = cut
                accepted = True
            open_[k] = False
            i = k + 1
        if tau <= tau_min:
            break
        nxt = max((1.0 - epsilon) * tau, tau_min)
        if not accepted:
            waiting = np.flatnonzero(open_ & (pos < seg_end))
            fitting = waiting[costs[pos[waiting]] <= budget - used]
            if fitting.size == 0:
                break
            top = float(keys[pos[fitting]].max())
            if top < nxt:  # skip empty levels: smallest l >= 1 with τ(1−ε)^l <= top
                level = max(1, math.ceil(math.log(top / tau) / math.log1p(-epsilon)))
                while level > 1 and tau * (1.0 - epsilon) ** (level - 1) <= top:
                    level -= 1
                nxt = max(tau * (1.0 - epsilon) ** level, tau_min)
        tau = nxt
    return blocks_to_positions(firsts, lasts)


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
        epsilon = plain_float("epsilon", self.epsilon, "a float in (0, 0.5]", minimum=0.0, maximum=0.5)
        if epsilon == 0:
            raise bad_input("epsilon", "a float in (0, 0.5]", self.epsilon)
        object.__setattr__(self, "epsilon", epsilon)

    @property
    def guarantee(self) -> float:
        return (1.0 - self.epsilon) / (2.0 - self.epsilon)

    def __call__(self, problem: StageProblem) -> np.ndarray:
        layout = prepare(problem)
        if layout is None:
            return EMPTY
        positions, _ = best_augmented(layout, threshold_sequence(layout, self.epsilon))
        return layout.answer(positions)

"""The per-cluster loop forms of FTGP's threshold pass and of Greedy+Max's augmentation, kept as the
reference the vectorised solvers are tested against (straightforward, O(K) Python work per level)."""

from __future__ import annotations

import math

import numpy as np

from kpod_ops.curriculum.solvers.base import EMPTY
from kpod_ops.curriculum.solvers.layout import Layout, sqrt_gap


def threshold_sequence_loop(layout: Layout, epsilon: float) -> np.ndarray:
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
            above = int(np.searchsorted(neg_keys[k], -tau, side="right"))
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
            if top < nxt:
                level = max(1, math.ceil(math.log(top / tau) / math.log1p(-epsilon)))
                while level > 1 and tau * (1.0 - epsilon) ** (level - 1) <= top:
                    level -= 1
                nxt = max(tau * (1.0 - epsilon) ** level, tau_min)
        tau = nxt
    return np.concatenate(blocks) if blocks else EMPTY


def best_augmented_loop(layout: Layout, sequence: np.ndarray) -> tuple[np.ndarray, float]:
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
    return positions, best_value

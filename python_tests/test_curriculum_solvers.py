"""Value function and stage solvers: invariants F1–F4 plus the hygiene rules of docs/method.md §8."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpod_ops.curriculum import FTGP, SOLVERS, BruteForce, GreedyMax, StageProblem, get_solver
from kpod_ops.errors import KPODInputError

FAST = [name for name in SOLVERS if name != "brute_force"]


def random_problem(seed: int, n_max: int = 12, zeros: bool = True, beta: float | None = None) -> StageProblem:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, n_max + 1))
    k = int(rng.integers(1, 4))
    scale = rng.choice([0.01, 1.0, 30.0])
    costs = rng.gamma(rng.choice([0.5, 2.0]), 0.5, n) * scale
    if zeros and n and rng.random() < 0.3:
        costs[rng.integers(0, n, size=int(rng.integers(1, 3)))] = 0.0
    if n and rng.random() < 0.2:  # an item that alone fills the budget
        costs[0] = costs.sum() * 0.6
    total = costs.sum() if n else 1.0
    budget = float(rng.choice([-0.2, 0.0, 0.05, 0.3, 0.6, 1.1]) * total) if rng.random() < 0.9 else float(rng.uniform(0, total))
    b = float(rng.choice([0.0, 0.3, 2.0, 12.0])) if beta is None else beta
    return StageProblem(costs, rng.integers(0, k, n), budget, b, k)


seeds = st.integers(0, 2**32 - 1)


@settings(max_examples=100, deadline=None)
@given(seeds)
def test_f1_f2_monotone_and_submodular(seed):
    p = random_problem(seed, n_max=14)
    rng = np.random.default_rng(seed + 1)
    n = p.n_items
    if n == 0:
        return
    big = rng.random(n) < 0.6
    small = big & (rng.random(n) < 0.5)
    assert p.value(small) <= p.value(big) + 1e-9  # F1
    outside = np.flatnonzero(~big)
    for x in outside[:3]:  # F2
        gain_small = p.value(small | (np.arange(n) == x)) - p.value(small)
        gain_big = p.value(big | (np.arange(n) == x)) - p.value(big)
        assert gain_small >= gain_big - 1e-9
    assert p.value(np.zeros(n, bool)) == pytest.approx(-p.budget)
    assert p.shifted_value([]) == 0


@settings(max_examples=100, deadline=None)
@given(seeds)
def test_f3_marginal_gain_formula(seed):
    p = random_problem(seed)
    rng = np.random.default_rng(seed + 2)
    if p.n_items == 0:
        return
    sel = rng.random(p.n_items) < 0.5
    for x in np.flatnonzero(~sel):
        n_k = int(p.cluster_counts(sel)[p.clusters[x]])
        formula = p.costs[x] + p.beta * (math.sqrt(n_k + 1) - math.sqrt(n_k))
        with_x = sel.copy()
        with_x[x] = True
        assert p.marginal_gain(int(x), sel) == pytest.approx(formula, abs=1e-12)
        assert p.value(with_x) - p.value(sel) == pytest.approx(formula, rel=1e-9, abs=1e-9)


@settings(max_examples=150, deadline=None)
@given(seeds)
def test_f4_feasible_and_within_guarantee_of_brute_force(seed):
    p = random_problem(seed)
    optimum = p.shifted_value(BruteForce()(p))
    for name in SOLVERS:
        solver = get_solver(name)
        chosen = solver(p)
        assert chosen.dtype.kind == "i" and np.all(np.diff(chosen) > 0)  # sorted, no duplicates
        assert p.feasible(chosen)
        if p.budget <= 0:
            assert chosen.size == 0  # C5
            continue
        assert np.all(np.isin(np.flatnonzero(p.costs == 0), chosen))  # free items always in
        assert not np.any(p.costs[chosen] > p.budget)
        value = p.shifted_value(chosen)
        assert value <= optimum * (1 + 1e-9) + 1e-9
        if solver.guarantee is not None:
            assert value >= solver.guarantee * optimum - 1e-9, (name, value, optimum)


@pytest.mark.parametrize("epsilon", [0.05, 0.3, 0.5])
def test_ftgp_guarantee_for_other_epsilons(epsilon):
    solver = FTGP(epsilon=epsilon)
    assert solver.guarantee == pytest.approx((1 - epsilon) / (2 - epsilon))
    for seed in range(150):
        p = random_problem(seed)
        value = p.shifted_value(solver(p))
        assert p.feasible(solver(p))
        assert value >= solver.guarantee * p.shifted_value(BruteForce()(p)) - 1e-9


def literal_greedy_max(p: StageProblem) -> float:
    """Greedy+Max (Yaroslavtsev, Zhou & Avdiukhin 2020) calling f as a black box (positive costs only)."""
    chosen: list[int] = []
    best = 0.0
    while True:
        used = p.costs[chosen].sum()
        fits = [u for u in range(p.n_items) if u not in chosen and used + p.costs[u] <= p.budget]
        if not fits:
            break
        base = p.shifted_value(chosen)
        values = {u: p.shifted_value(chosen + [u]) for u in fits}
        best = max(best, base, max(values.values()))
        chosen.append(max(fits, key=lambda u: (values[u] - base) / p.costs[u]))
    return max(best, p.shifted_value(chosen))


@settings(max_examples=100, deadline=None)
@given(seeds)
def test_greedy_max_equals_literal_black_box_version(seed):
    p = random_problem(seed, zeros=False, beta=float(np.random.default_rng(seed).choice([0.3, 2.0, 12.0])))
    if p.budget <= 0:
        return
    assert p.shifted_value(GreedyMax()(p)) == pytest.approx(literal_greedy_max(p), rel=1e-9, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(seeds)
def test_density_solvers_take_cheapest_items_per_cluster(seed):
    """Inside a cluster the selection is its cheapest items, plus at most one augmented item."""
    p = random_problem(seed, n_max=30, zeros=False)
    for name in ("ftgp", "greedy_max", "density_greedy"):
        chosen = get_solver(name)(p)
        for k in range(p.n_clusters):
            idx = np.flatnonzero(p.clusters == k)
            costs = np.sort(p.costs[idx])
            picked = np.sort(p.costs[np.intersect1d(idx, chosen)])
            prefix = sum(1 for a, b in zip(picked, costs) if a == b)
            assert picked.size - prefix <= 1


def test_beta_zero_fills_the_budget_as_a_knapsack():
    p = StageProblem(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0, 1, 0, 1]), 6.0, beta=0.0)
    for name in SOLVERS:
        chosen = get_solver(name)(p)
        assert p.feasible(chosen)
        assert p.shifted_value(chosen) == pytest.approx(p.cost(chosen))
    assert p.cost(BruteForce()(p)) == pytest.approx(6.0)
    assert p.cost(GreedyMax()(p)) >= 3.0


def test_large_instance_is_feasible_and_near_greedy_max():
    rng = np.random.default_rng(7)
    n = 200_000
    p = StageProblem(rng.gamma(2, 0.5, n), rng.integers(0, 5, n), 0.05 * n, 12.0)
    values = {}
    for name in ("ftgp", "greedy_max", "density_greedy"):
        chosen = get_solver(name)(p)
        assert p.feasible(chosen)
        values[name] = p.shifted_value(chosen)
    assert values["ftgp"] >= 0.99 * values["greedy_max"]


def test_errors():
    with pytest.raises(KPODInputError, match="solver"):
        get_solver("fastest")
    with pytest.raises(KPODInputError, match="epsilon"):
        FTGP(epsilon=0.0)
    with pytest.raises(KPODInputError, match="problem"):
        BruteForce(max_items=4)(StageProblem(np.ones(5), np.zeros(5, int), 3.0))
    with pytest.raises(KPODInputError, match="costs"):
        StageProblem(np.array([1.0, -1.0]), np.zeros(2, int), 1.0)
    with pytest.raises(KPODInputError, match="clusters"):
        StageProblem(np.ones(2), np.zeros(3, int), 1.0)
    with pytest.raises(KPODInputError, match="selection"):
        StageProblem(np.ones(2), np.zeros(2, int), 1.0).value([0, 0])


def _many_cluster_problem(seed: int) -> StageProblem:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 400))
    k = int(rng.choice([1, 3, 17, 120]))
    costs = rng.gamma(rng.choice([0.5, 2.0]), 0.5, n)
    if n and rng.random() < 0.3:
        costs[rng.integers(0, n, size=3)] = 0.0
    budget = float(rng.choice([0.02, 0.1, 0.4, 0.9, 1.2]) * (costs.sum() if n else 1.0))
    return StageProblem(costs, rng.integers(0, k, n), budget, float(rng.choice([0.0, 0.5, 12.0])), k)


@settings(max_examples=60, deadline=None)
@given(seeds, st.sampled_from([0.05, 0.1, 0.5]))
def test_vectorised_solvers_match_the_per_cluster_loops(seed, epsilon):
    from curriculum_reference import best_augmented_loop, threshold_sequence_loop

    from kpod_ops.curriculum.solvers.ftgp import threshold_sequence
    from kpod_ops.curriculum.solvers.greedy import density_greedy_sequence
    from kpod_ops.curriculum.solvers.layout import best_augmented, prepare

    problem = _many_cluster_problem(seed)
    layout = prepare(problem)
    if layout is None:
        return
    sequence = threshold_sequence(layout, epsilon)
    np.testing.assert_array_equal(sequence, threshold_sequence_loop(layout, epsilon))
    for seq in (sequence, density_greedy_sequence(layout)):
        positions, value = best_augmented(layout, seq)
        ref_positions, ref_value = best_augmented_loop(layout, seq)
        np.testing.assert_array_equal(positions, ref_positions)
        assert value == pytest.approx(ref_value, rel=1e-12)


def _work(problem: StageProblem, solver) -> tuple[int, int]:
    """(numpy.searchsorted calls, peak traced bytes) of one solve."""
    import tracemalloc
    from unittest import mock

    calls = 0
    real = np.searchsorted

    def counting(*args, **kwargs):
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)

    tracemalloc.start()
    try:
        with mock.patch.object(np, "searchsorted", counting):
            solver(problem)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return calls, peak


@pytest.mark.parametrize("name", ["ftgp", "greedy_max"])
def test_many_clusters_cost_no_more_calls_or_memory_than_few(name):
    rng = np.random.default_rng(3)
    n = 20_000
    costs = rng.gamma(2.0, 0.5, n)
    work = {}
    for k in (5, 1000):
        problem = StageProblem(costs, rng.integers(0, k, n), 0.05 * costs.sum(), 12.0, k)
        work[k] = _work(problem, get_solver(name))
    assert work[1000][0] <= 2 * work[5][0] + 50, work  # per-cluster Python loops would scale with K
    assert work[1000][1] <= 2 * work[5][1], work  # no (prefix × cluster) tables

"""The offline plan: the initial given steps c_i(0) and the selection S(t) of every stage t = 1..T (Eq. 11–13).

Stage t: ΔD(t) = D(t) − Σ_i h_i(c(t−1)) (measured against what was actually reached, so shortfalls
carry over); the items are the questions with c_i(t−1) > 0, costing δ_i(t) = the difficulty of the
Δs steps that would move from input to output; the solver picks S(t); c_i(t) = max(0, c_i(t−1) − Δs)
for i ∈ S(t).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import bad_input
from .budget import DifficultyBudget
from .solvers import Solver
from .table import StepTable
from .value import StageProblem

logger = logging.getLogger(__name__)

INITS = ("rounds", "last_steps")
"""c_i(0): ``"rounds"`` — start from c_i = n_i (answer only) and run selection rounds with target C0
until nothing more is selected (docs/method.md, R12); ``"last_steps"`` — c_i = n_i − Δs for every i."""


@dataclass(frozen=True)
class StageRecord:
    """What happened at one stage (stage 0 is the initial state)."""

    stage: int
    target: float  # D(t)
    headroom: float  # ΔD(t) before the selection (for stage 0: C0 before the first round)
    realised: float  # Σ_i h_i(c(t)) after it
    eligible: int  # questions with c_i(t−1) > 0 (stage 0: at the first round)
    selected: int  # |S(t)| (stage 0: moves over all rounds)
    per_cluster: tuple[int, ...]  # selected per cluster
    shifted_value: float  # f(S(t)) = F(S(t)) + ΔD(t)
    rounds: int = 1

    @property
    def value(self) -> float:
        """KPOD's F(S(t)) = f(S(t)) − ΔD(t) (for stage 0, f summed over the rounds minus C0)."""
        return self.shifted_value - self.headroom

    def to_dict(self) -> dict:
        d = asdict(self)
        d["per_cluster"] = list(self.per_cluster)
        return d


@dataclass
class Plan:
    given0: np.ndarray  # c_i(0)
    selections: list[np.ndarray]  # S(1) … S(T), question indices
    records: list[StageRecord]  # stage 0 … T


def _select(table: StepTable, clusters: np.ndarray, n_clusters: int, given: np.ndarray, headroom: float,
            beta: float, delta_s: int, solver: Solver) -> tuple[np.ndarray, np.ndarray, float, int]:
    """One selection: (selected questions, their costs, f(S), number eligible)."""
    eligible = np.flatnonzero(given > 0)
    if headroom <= 0 or eligible.size == 0:
        return eligible[:0], np.zeros(0), 0.0, int(eligible.size)
    costs = table.moving_cost(eligible, given[eligible], delta_s)
    problem = StageProblem(costs, clusters[eligible], headroom, beta, n_clusters)
    chosen = solver(problem)
    return eligible[chosen], costs[chosen], problem.shifted_value(chosen), int(eligible.size)


def plan_schedule(table: StepTable, clusters: np.ndarray, budget: DifficultyBudget, *, beta: float, delta_s: int,
                  solver: Solver, init: str = "rounds", progressive: bool = True, n_clusters: int = 1) -> Plan:
    """Compute c(0) and S(1..T). Deterministic: no randomness anywhere (invariant C6)."""
    if init not in INITS:
        raise bad_input("init", f"one of {INITS}", repr(init))
    n = table.n_steps
    k = max(n_clusters, int(clusters.max()) + 1 if clusters.size else 1)
    c0 = budget.c0
    if not progressive:  # w.o.-prog ablation: the full rationale from the first epoch
        given = np.zeros_like(n)
        realised = table.total()
        records = [StageRecord(0, c0, c0, realised, 0, 0, (0,) * k, 0.0, 0)]
    elif init == "last_steps":
        given = np.maximum(n - delta_s, 0)
        realised = float(table.remaining(given).sum())
        moved = np.flatnonzero(n > 0)
        per = tuple(np.bincount(clusters[moved], minlength=k).tolist())
        records = [StageRecord(0, c0, c0, realised, int(moved.size), int(moved.size), per, 0.0, 0)]
    else:
        given, realised, rounds, moved, shifted = n.copy(), 0.0, 0, np.zeros(k, dtype=np.int64), 0.0
        first_eligible = int(np.count_nonzero(n))
        while True:
            chosen, costs, f_val, _ = _select(table, clusters, k, given, c0 - realised, beta, delta_s, solver)
            if chosen.size == 0:
                break
            given[chosen] = np.maximum(given[chosen] - delta_s, 0)
            realised += float(costs.sum())
            moved += np.bincount(clusters[chosen], minlength=k)
            shifted += f_val
            rounds += 1
        records = [StageRecord(0, c0, c0, realised, first_eligible, int(moved.sum()), tuple(moved.tolist()), shifted, rounds)]
    given0 = given.copy()
    index_dtype = np.int32 if n.size < 2**31 else np.int64
    selections = []
    for t in range(1, budget.n_stages + 1):
        target = float(budget(t))
        headroom = target - realised
        chosen, costs, f_val, n_eligible = _select(table, clusters, k, given, headroom, beta, delta_s, solver)
        given[chosen] = np.maximum(given[chosen] - delta_s, 0)
        realised += float(costs.sum())
        per = tuple(np.bincount(clusters[chosen], minlength=k).tolist())
        records.append(StageRecord(t, target, headroom, realised, n_eligible, int(chosen.size), per, f_val))
        selections.append(np.sort(chosen).astype(index_dtype))
    left = given > 0
    if left.any():
        logger.info("stage %d (T+1): %d questions still given steps at T jump to c = 0 (%d steps, difficulty %.4g)",
                    budget.n_stages + 1, int(left.sum()), int(given[left].sum()), table.total() - realised)
    return Plan(given0, selections, records)

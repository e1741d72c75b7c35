"""Stage solvers behind one interface: ``solver(problem) -> selected item indices``.

| name | guarantee on f = F + ΔD | cost per stage |
|---|---|---|
| ``"ftgp"`` (default) | (1 − ε)/(2 − ε), ε = 0.1 → 0.474 | O(n log n) |
| ``"greedy_max"`` | 1/2 | O(n log n) |
| ``"density_greedy"`` | ≈0.405 | O(n log n) |
| ``"marginal_greedy"`` | none (baseline) | O(|S|·K·log n), one vectorised step per selected item |
| ``"brute_force"`` | 1 (exact) | O(2^n), n ≤ 18 |
"""

from __future__ import annotations

from ...errors import bad_input
from .base import Solver
from .brute_force import BruteForce
from .ftgp import FTGP
from .greedy import DensityGreedy, GreedyMax
from .marginal import MarginalGreedy

SOLVERS = {
    "ftgp": FTGP,
    "greedy_max": GreedyMax,
    "density_greedy": DensityGreedy,
    "marginal_greedy": MarginalGreedy,
    "brute_force": BruteForce,
}
DEFAULT_SOLVER = "ftgp"


def get_solver(solver: str | Solver = DEFAULT_SOLVER, **options: object) -> Solver:
    """A solver instance from its name (with options, e.g. ``epsilon=0.05`` for FTGP) or as given."""
    if isinstance(solver, str):
        if solver not in SOLVERS:
            raise bad_input("solver", f"one of {sorted(SOLVERS)} or a Solver instance", repr(solver))
        return SOLVERS[solver](**options)
    if options:
        raise bad_input("options", "no options with a Solver instance", sorted(options))
    if not isinstance(solver, Solver):
        raise bad_input("solver", "a solver name or an object with name, guarantee and __call__(problem)", type(solver).__name__)
    return solver


__all__ = ["DEFAULT_SOLVER", "FTGP", "SOLVERS", "BruteForce", "DensityGreedy", "GreedyMax", "MarginalGreedy", "Solver", "get_solver"]

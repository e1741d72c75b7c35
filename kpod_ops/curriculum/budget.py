"""The overall difficulty budget D(t) of KPOD (Eq. 10)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import bad_input
from .convert import plain_float


@dataclass(frozen=True)
class DifficultyBudget:
    """D(t) = C0 + (B − C0)·(t/T)^(p+1), the total difficulty allowed at stage t.

    It solves dD/dt = u·t^p with D(0) = C0 and D(T) = B, so u = (B − C0)(p+1)/T^(p+1): growth is slow
    at first and faster later (convex for p > 0). Stages past T are held at B. Defaults are the
    paper's: p = 0.5, C0 = 30 % of B (pass ``c0=None`` and ``c0_ratio``).
    """

    total: float
    n_stages: int
    p: float = 0.5
    c0_ratio: float = 0.3
    c0: float | None = None

    def __post_init__(self) -> None:
        for name in ("total", "p", "c0_ratio", "c0"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, plain_float(name, value, "a finite number"))
        if not (math.isfinite(self.total) and self.total >= 0):
            raise bad_input("total", "a finite B >= 0", self.total)
        if isinstance(self.n_stages, bool) or int(self.n_stages) != self.n_stages or self.n_stages < 1:
            raise bad_input("n_stages", "an int T >= 1", self.n_stages)
        if not (math.isfinite(self.p) and self.p >= 0):
            raise bad_input("p", "a finite p >= 0", self.p)
        if self.c0 is None:
            if not 0 <= self.c0_ratio <= 1:
                raise bad_input("c0_ratio", "a ratio in [0, 1]", self.c0_ratio)
            object.__setattr__(self, "c0", self.c0_ratio * self.total)
        elif not (math.isfinite(self.c0) and 0 <= self.c0 <= self.total):
            raise bad_input("c0", f"a value in [0, B={self.total}]", self.c0)

    @property
    def u(self) -> float:
        """Growth coefficient u = (B − C0)(p+1)/T^(p+1)."""
        return (self.total - self.c0) * (self.p + 1) / self.n_stages ** (self.p + 1)

    def __call__(self, t: float | np.ndarray) -> float | np.ndarray:
        """D(t); accepts a scalar or an array of stages (t < 0 is an error, t > T gives B)."""
        arr = np.asarray(t, dtype=np.float64)
        if np.any(arr < 0) or not np.all(np.isfinite(arr)):
            raise bad_input("t", "stages t >= 0", t)
        frac = np.minimum(arr / self.n_stages, 1.0)
        out = self.c0 + (self.total - self.c0) * frac ** (self.p + 1)
        out = np.where(arr >= self.n_stages, self.total, out)
        return float(out) if out.ndim == 0 else out

    def curve(self) -> np.ndarray:
        """D(0), D(1), …, D(T)."""
        return np.asarray(self(np.arange(self.n_stages + 1)), dtype=np.float64)

"""Per-step difficulties of a whole dataset as one flat array (ragged rows), so schedules scale to millions."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import bad_input
from .convert import plain_id


@dataclass(frozen=True)
class StepTable:
    """Question ids, step counts n_i and the step difficulties d_k^(i) laid end to end.

    Ids are kept as plain Python values (NumPy/torch integers become ``int``).

    Row i occupies ``values[offsets[i] : offsets[i] + n_steps[i]]`` (step 1 first).
    """

    ids: tuple[Hashable, ...]
    n_steps: np.ndarray
    values: np.ndarray
    _offsets: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", tuple(plain_id(i) for i in self.ids))
        n = np.ascontiguousarray(self.n_steps, dtype=np.int64)
        v = np.ascontiguousarray(self.values, dtype=np.float64)
        if n.ndim != 1 or v.ndim != 1:
            raise bad_input("n_steps/values", "1-D arrays", f"shapes {n.shape} and {v.shape}")
        if len(self.ids) != n.size:
            raise bad_input("ids", f"{n.size} ids (one per question)", f"{len(self.ids)}")
        if n.size and n.min() < 0:
            raise bad_input("n_steps", "step counts >= 0", f"minimum {n.min()} (question {self.ids[int(np.argmin(n))]!r})")
        if int(n.sum()) != v.size:
            raise bad_input("values", f"{int(n.sum())} difficulties (Σ n_steps)", f"{v.size}")
        bad = ~np.isfinite(v) | (v < 0)
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            row = int(np.searchsorted(np.cumsum(n), pos, side="right"))
            raise bad_input("difficulties", "finite values >= 0 (Eq. 8 is a weighted mean NLL)",
                            f"{v[pos]} for question {self.ids[row]!r}")
        if len(set(self.ids)) != n.size:
            raise bad_input("ids", "distinct question ids", "a repeated id")
        object.__setattr__(self, "n_steps", n)
        object.__setattr__(self, "values", v)
        offsets = np.zeros(n.size, dtype=np.int64)
        np.cumsum(n[:-1], out=offsets[1:])
        object.__setattr__(self, "_offsets", offsets)

    @classmethod
    def from_rows(cls, difficulties: Mapping[Hashable, object] | Sequence[object]) -> StepTable:
        """From ``{id: per-step difficulties}`` or a sequence of them (ids 0..n−1)."""
        if isinstance(difficulties, Mapping):
            ids, rows = tuple(difficulties.keys()), list(difficulties.values())
        elif isinstance(difficulties, (str, bytes)) or not isinstance(difficulties, (Sequence, np.ndarray)):
            raise bad_input("difficulties", "a dict {id: per-step difficulties}, a list of them or a StepTable",
                            type(difficulties).__name__)
        else:
            rows = list(difficulties)
            ids = tuple(range(len(rows)))
        arrays = []
        for key, row in zip(ids, rows):
            try:
                a = np.asarray(row.detach().cpu().double().numpy() if hasattr(row, "detach") else row, dtype=np.float64)
            except (TypeError, ValueError):
                raise bad_input(f"difficulties[{key!r}]", "a 1-D array of per-step difficulties (numbers)", repr(row)[:60]) from None
            if a.ndim != 1:
                raise bad_input(f"difficulties[{key!r}]", "a 1-D array of per-step difficulties", f"shape {a.shape}")
            arrays.append(a)
        n = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
        values = np.concatenate(arrays) if arrays else np.zeros(0)
        return cls(ids, n, values)

    @classmethod
    def from_flat(cls, values: object, n_steps: object, ids: Sequence[Hashable] | None = None) -> StepTable:
        """From the flat difficulties and the step count of every question (the scalable form)."""
        n = np.asarray(n_steps, dtype=np.int64)
        return cls(tuple(range(n.size)) if ids is None else tuple(ids), n, np.asarray(values, dtype=np.float64))

    @property
    def n_questions(self) -> int:
        return int(self.n_steps.size)

    @property
    def offsets(self) -> np.ndarray:
        """Start of every row in ``values``."""
        return self._offsets

    def total(self) -> float:
        """B = Σ_i Σ_k d_k^(i)."""
        return float(self.values.sum())

    def row(self, i: int) -> np.ndarray:
        o = int(self.offsets[i])
        return self.values[o : o + int(self.n_steps[i])]

    def remaining(self, given: np.ndarray) -> np.ndarray:
        """h_i(c_i) = Σ_{k > c_i} d_k^(i) for every question (Eq. 9)."""
        given = np.asarray(given, dtype=np.int64)
        step = np.arange(self.values.size) - np.repeat(self.offsets, self.n_steps)
        out_mask = step >= np.repeat(given, self.n_steps)
        return np.bincount(np.repeat(np.arange(self.n_questions), self.n_steps), weights=np.where(out_mask, self.values, 0.0),
                           minlength=self.n_questions)

    def moving_cost(self, questions: np.ndarray, given: np.ndarray, delta_s: int) -> np.ndarray:
        """δ_i = difficulty of steps max(0, c_i − Δs)+1 … c_i (the ones that move from input to output)."""
        base = self.offsets[questions]
        out = np.zeros(questions.size)
        for s in range(delta_s):
            k = given - 1 - s  # 0-based step index
            ok = k >= 0
            out[ok] += self.values[base[ok] + k[ok]]
        return out

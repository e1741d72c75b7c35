"""Plain Python values at the curriculum's boundary.

Users hand over NumPy and torch scalars (``np.int64`` question ids, ``np.float32(12.0)`` for β,
a 0-d tensor for ε). They are accepted and stored as ``int`` / ``float`` / ``str``, so that a
schedule's ``state_dict()`` holds only plain Python and tensors and loads with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

import numpy as np
import torch

from ..errors import bad_input


def _scalar(value: object) -> object:
    """The Python scalar inside a NumPy scalar, a 0-d array or a one-element-free 0-d tensor."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.ndim == 0 else value
    if isinstance(value, np.ndarray):
        return value.item() if value.ndim == 0 else value
    if isinstance(value, np.generic):
        return value.item()
    return value


def plain_int(name: str, value: object, expected: str, *, minimum: int | None = None) -> int:
    """``value`` as an ``int`` (ints, integral NumPy/torch scalars); bools, fractions and non-numbers refused."""
    v = _scalar(value)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or isinstance(v, float) and not v.is_integer():
        raise bad_input(name, expected, repr(value))
    v = int(v)
    if minimum is not None and v < minimum:
        raise bad_input(name, expected, repr(value))
    return v


def plain_float(name: str, value: object, expected: str, *, minimum: float | None = None,
                maximum: float | None = None) -> float:
    """``value`` as a finite ``float`` within the bounds (NumPy/torch scalars accepted, bools refused)."""
    v = _scalar(value)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise bad_input(name, expected, repr(value))
    v = float(v)
    if not math.isfinite(v) or (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise bad_input(name, expected, repr(value))
    return v


def plain_id(value: Hashable) -> Hashable:
    """A question id as plain Python: NumPy/torch integers → int, NumPy strings → str, tuples element-wise."""
    v = _scalar(value)
    if isinstance(v, np.ndarray | torch.Tensor):
        raise bad_input("ids", "hashable scalars (str, int, ...)", f"an array of shape {tuple(v.shape)}")
    if isinstance(v, tuple):
        return tuple(plain_id(x) for x in v)
    return v

"""Detecting learned weights that carry no information (a collapsed mask learner).

A mask learner can fail by driving every keep probability to 0 (the mask pressure won before the
answer predictor could read anything), to 1 (the answer loss dwarfs the mask pressure), or to
one flat value. Weights like that are not a result: rescaled to mean 1 they are uniform, and KPOD
silently becomes plain cross-entropy. One check, used by ``fit``, ``weight_stats`` and
``renormalize_mean_one``:

- kept ratio (fraction of tokens with ``w > 0.5``) below ``KEPT_MIN`` = 1 %: almost every token
  is masked;
- kept ratio above ``KEPT_MAX`` = 99 %: almost nothing is masked;
- relative spread ``std(w) / mean(w)`` below ``SPREAD_MIN`` = 0.05: after mean-1 rescaling every
  token's weight is within about 5 % of 1, i.e. the weighting is practically uniform.

All weights of a data set are pooled (one short rationale may legitimately be flat).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import bad_input


class DegenerateWeightsWarning(UserWarning):
    """The mask learner's weights carry no keypoint information (see :func:`is_degenerate`)."""


KEPT_MIN = 0.01
KEPT_MAX = 0.99
SPREAD_MIN = 0.05
KEEP_THRESHOLD = 0.5


def finite_weights(weights: Mapping[str, np.ndarray], argument: str = "weights") -> dict[str, np.ndarray]:
    """``weights`` as float64 1-D arrays; ``KPODInputError`` on a non-mapping, non-numbers, NaN or inf."""
    if not isinstance(weights, Mapping):
        raise bad_input(argument, "a mapping {example id: array of weights}", type(weights).__name__)
    out = {}
    for key, w in weights.items():
        try:
            arr = np.asarray(w, dtype=np.float64)
        except (TypeError, ValueError):
            raise bad_input(f"{argument}[{key!r}]", "an array of numbers", type(w).__name__) from None
        if arr.ndim != 1:
            raise bad_input(f"{argument}[{key!r}]", "a 1-D array (one weight per rationale token)", f"shape {arr.shape}")
        bad = ~np.isfinite(arr)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise bad_input(f"{argument}[{key!r}]", "finite weights", f"{arr[j]} at token {j} ({int(bad.sum())} non-finite)")
        out[key] = arr
    return out


def degeneracy(weights: Mapping[str, np.ndarray] | np.ndarray) -> str | None:
    """Why ``weights`` are degenerate (see the module doc), or ``None`` when they are informative.

    ``weights`` is ``{example id: weights}`` or one array; all tokens are pooled.
    """
    if not isinstance(weights, Mapping):
        weights = {"weights": weights}
    arrays = list(finite_weights(weights).values())
    flat = np.concatenate(arrays) if arrays else np.zeros(0)
    if flat.size == 0:
        raise bad_input("weights", "at least one token weight", "none")
    kept = float((flat > KEEP_THRESHOLD).mean())
    mean = float(flat.mean())
    spread = float(flat.std() / mean) if mean > 0 else 0.0
    summary = f"kept ratio {kept:.2%}, mean {mean:.3g}, relative spread {spread:.3g} over {flat.size} tokens"
    if kept < KEPT_MIN:
        return f"almost every token is masked ({summary}; kept ratio < {KEPT_MIN:.0%})"
    if kept > KEPT_MAX:
        return f"almost no token is masked ({summary}; kept ratio > {KEPT_MAX:.0%})"
    if spread < SPREAD_MIN:
        return f"the weights are practically uniform ({summary}; relative spread < {SPREAD_MIN})"
    return None


def is_degenerate(weights: Mapping[str, np.ndarray] | np.ndarray) -> bool:
    """True when learned ``weights`` carry no keypoint information (thresholds in the module doc)."""
    return degeneracy(weights) is not None

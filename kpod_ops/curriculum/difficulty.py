"""Step difficulty (KPOD Eq. 8) from per-token NLL, step ids and token weights — pure array code.

``d_k = Σ_{j∈step k} ŵ_j · nll_j`` where ``ŵ`` are the token weights normalised *within* step k, so
``d_k`` is a weighted mean NLL of the step (long steps are not harder just for being long).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import bad_input

NORMALISATIONS = ("softmax", "softmax_logits", "proportional", "uniform")
"""Per-step weight normalisations: ``"softmax"`` over w (the paper's literal reading, default),
``"softmax_logits"`` over logit(w), ``"proportional"`` w/Σw, ``"uniform"`` 1/|step| (w.o.-sig-dif)."""


def _as_array(x: object, name: str, dtype: type) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise bad_input(name, f"an array convertible to {np.dtype(dtype).name}", type(x).__name__) from exc


def _segment_softmax(values: np.ndarray, seg: np.ndarray, n_seg: int) -> np.ndarray:
    seg_max = np.full(n_seg, -np.inf)
    np.maximum.at(seg_max, seg, values)
    e = np.exp(values - seg_max[seg])
    return e / np.bincount(seg, weights=e, minlength=n_seg)[seg]


def normalise_step_weights(
    step_ids: object, weights: object | None = None, normalisation: str = "softmax"
) -> np.ndarray:
    """Normalised weights ŵ per token (0 outside the rationale, where ``step_ids == -1``).

    Within every step ŵ > 0 and Σŵ = 1 (invariant W2). ``step_ids`` and ``weights`` share a shape
    (1-D for one example or 2-D ``[B, T]`` for a batch; steps are separate per row).
    """
    sid = _as_array(step_ids, "step_ids", np.int64)
    if normalisation not in NORMALISATIONS:
        raise bad_input("normalisation", f"one of {NORMALISATIONS}", repr(normalisation))
    if sid.ndim not in (1, 2):
        raise bad_input("step_ids", "a 1-D or 2-D array", f"shape {sid.shape}")
    if sid.size and sid.min() < -1:
        raise bad_input("step_ids", "step indices >= 0 (or -1 outside the rationale)", f"minimum {sid.min()}")
    inside = sid >= 0
    if normalisation == "uniform":
        w = np.ones(sid.shape)
    else:
        if weights is None:
            raise bad_input("weights", f"token weights for normalisation={normalisation!r}", None)
        w = _as_array(weights, "weights", np.float64)
        if w.shape != sid.shape:
            raise bad_input("weights", f"shape {sid.shape} (that of step_ids)", f"shape {w.shape}")
        wi = w[inside]
        if not np.all(np.isfinite(wi)):
            raise bad_input("weights", "finite values on rationale tokens", "NaN or inf")
        if normalisation in ("softmax_logits", "proportional") and wi.size and (wi.min() <= 0 or
                                                                                (normalisation == "softmax_logits" and wi.max() >= 1)):
            rng = "(0, 1)" if normalisation == "softmax_logits" else "> 0"
            raise bad_input("weights", f"values in {rng} for normalisation={normalisation!r}", f"range [{wi.min()}, {wi.max()}]")
    out = np.zeros(sid.shape)
    if not inside.any():
        return out
    n_steps = int(sid.max()) + 1
    row = np.broadcast_to(np.arange(sid.shape[0])[:, None], sid.shape)[inside] if sid.ndim == 2 else 0
    seg = row * n_steps + sid[inside]
    n_seg = (sid.shape[0] if sid.ndim == 2 else 1) * n_steps
    wi = w[inside]
    if normalisation == "softmax":
        out[inside] = _segment_softmax(wi, seg, n_seg)
    elif normalisation == "softmax_logits":
        out[inside] = _segment_softmax(np.log(wi) - np.log1p(-wi), seg, n_seg)
    else:  # proportional / uniform
        out[inside] = wi / np.bincount(seg, weights=wi, minlength=n_seg)[seg]
    return out


def step_difficulty(
    nll: object,
    step_ids: object,
    weights: object | None = None,
    *,
    normalisation: str = "softmax",
    n_steps: int | None = None,
    fill_value: float = np.nan,
) -> np.ndarray:
    """Per-step difficulty d_k (Eq. 8) from per-token NLL, 0-based step ids and token weights.

    Args:
        nll: per-token negative log-likelihood (``reduction="none"`` output), 1-D or ``[B, T]``.
        step_ids: same shape; the 0-based step of each token, -1 outside the rationale.
        weights: token weights w ∈ (0,1) of the same shape (ignored for ``"uniform"``).
        normalisation: one of :data:`NORMALISATIONS`.
        n_steps: number of steps (default: ``max(step_ids) + 1``); every step must own a token.
        fill_value: for 2-D input, the value of steps a row does not have.

    Returns:
        float64 ``[n_steps]`` (1-D input) or ``[B, n_steps]``. Each d_k is a convex combination of
        its tokens' NLL (invariant D1); ``"uniform"`` gives the mean NLL (D2).
    """
    sid = _as_array(step_ids, "step_ids", np.int64)
    x = _as_array(nll, "nll", np.float64)
    if x.shape != sid.shape:
        raise bad_input("nll", f"shape {sid.shape} (that of step_ids)", f"shape {x.shape}")
    w_hat = normalise_step_weights(sid, weights, normalisation)
    inside = sid >= 0
    if not np.all(np.isfinite(x[inside])):
        raise bad_input("nll", "finite values on rationale tokens", "NaN or inf")
    found = int(sid.max()) + 1 if inside.any() else 0
    if n_steps is None:
        n_steps = found
    elif n_steps < found:
        raise bad_input("n_steps", f">= {found} (the largest step id + 1)", n_steps)
    rows = sid.shape[0] if sid.ndim == 2 else 1
    row = np.broadcast_to(np.arange(rows)[:, None], sid.shape)[inside] if sid.ndim == 2 else np.zeros(int(inside.sum()), np.int64)
    seg = row * n_steps + sid[inside]
    d = np.bincount(seg, weights=w_hat[inside] * x[inside], minlength=rows * n_steps).reshape(rows, n_steps)
    counts = np.bincount(seg, minlength=rows * n_steps).reshape(rows, n_steps)
    if sid.ndim == 1:
        empty = np.flatnonzero(counts[0] == 0)
        if empty.size:
            raise bad_input("step_ids", f"at least one token for every step 0..{n_steps - 1}", f"no token for step {int(empty[0])}")
        return d[0]
    present = counts > 0
    # rows must have contiguous steps 0..n_r-1
    n_r = present.sum(axis=1)
    if np.any(present != (np.arange(n_steps)[None, :] < n_r[:, None])):
        bad_row = int(np.flatnonzero(np.any(present != (np.arange(n_steps)[None, :] < n_r[:, None]), axis=1))[0])
        raise bad_input("step_ids", "steps numbered 0..n-1 without gaps in every row", f"a gap in row {bad_row}")
    return np.where(present, d, fill_value)


def remaining_difficulty(difficulties: object, given_steps: int) -> float:
    """h(c) = Σ_{k>c} d_k: the difficulty of the steps still to generate when c steps are given (Eq. 9)."""
    d = _as_array(difficulties, "difficulties", np.float64)
    if d.ndim != 1:
        raise bad_input("difficulties", "a 1-D array of per-step difficulties", f"shape {d.shape}")
    if not 0 <= given_steps <= d.size:
        raise bad_input("given_steps", f"an int in [0, {d.size}]", given_steps)
    if given_steps == d.size:
        return 0.0
    # one suffix sum from the end, so h is exactly non-increasing in c (D3) despite rounding
    return float(np.cumsum(d[::-1])[d.size - 1 - given_steps])


def total_difficulty(difficulties: Mapping[object, object] | Sequence[object]) -> float:
    """B = Σ_i Σ_k d_k^(i), the dataset's maximum difficulty (the budget's end point)."""
    values = difficulties.values() if isinstance(difficulties, Mapping) else difficulties
    return float(sum(float(np.sum(_as_array(v, "difficulties", np.float64))) for v in values))

"""Sampling rationale prefix lengths for the answer loss L_p.

The paper's ``L_p = sum_{k=1..L} NLL(answer | question, first k masked rationale tokens)`` needs L
answer-prediction passes per rationale. We estimate it from P prefix lengths per example: the
full length L always (coefficient 1), plus one length drawn uniformly from each of P-1 near-equal
strata of ``{1, ..., L-1}``, each weighted by the size of its stratum. With equal strata that is the
``(L-1)/(P-1)`` scaling, i.e. the L/P scaling of a P-sample mean back to an L-term sum: the
estimate is unbiased for the paper's sum, so ``alpha`` keeps its meaning against
``L_m = sum_j m_j``. The first stratum guarantees a short prefix in every draw, the paper's guard
against reading the answer off the last step. When ``L <= P`` every prefix is used exactly.
"""

from __future__ import annotations

import numpy as np

from ..errors import bad_input


def sample_prefix_lengths(length: int, num_prefixes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Prefix lengths (ascending, in ``[1, length]``) and their estimator coefficients.

    ``sum(coef * f(k))`` is an unbiased estimate of ``sum_{k=1..length} f(k)``; ``sum(coef) == length``.
    With ``num_prefixes == 1`` only the full rationale is used, scaled by ``length`` (not unbiased).
    """
    if length < 1:
        raise bad_input("length", "a rationale length >= 1", length)
    if num_prefixes < 1:
        raise bad_input("num_prefixes", "an int >= 1", num_prefixes)
    if length <= num_prefixes:
        return np.arange(1, length + 1, dtype=np.int64), np.ones(length, dtype=np.float64)
    if num_prefixes == 1:
        return np.array([length], dtype=np.int64), np.array([float(length)])
    edges = np.linspace(1, length, num_prefixes, dtype=np.float64).round().astype(np.int64)  # strata of [1, L)
    lows, highs = edges[:-1], edges[1:]
    ks = np.array([rng.integers(lo, hi) for lo, hi in zip(lows, highs)] + [length], dtype=np.int64)
    coef = np.concatenate([(highs - lows).astype(np.float64), [1.0]])
    return ks, coef

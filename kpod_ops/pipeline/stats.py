"""Paired statistics for ``kpod compare``: one difference per seed, method minus ``standard``.

With a handful of seeds a percentile bootstrap only returns the smallest and largest difference,
so the interval here is the paired t interval, and the test is the exact sign-flip (permutation)
test: under "no effect" each paired difference is as likely to have either sign, so the p-value is
the share of the 2^n sign assignments whose mean is at least as far from 0 as the observed one.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._optional import require
from ..errors import bad_input

EXACT_UP_TO = 20  # pairs; beyond, the sign-flip p-value is estimated from MONTE_CARLO random flips
MONTE_CARLO = 200_000


def _t_quantile(q: float, dof: int) -> float:
    require("scipy", extra="curriculum", feature="kpod compare's paired t interval")
    from scipy.stats import t

    return float(t.ppf(q, dof))


def sign_flip_p(diffs: Sequence[float], *, seed: int = 0) -> float:
    """Two-sided p-value of the sign-flip test of "mean difference = 0" (exact up to 20 pairs)."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        raise bad_input("diffs", "at least one paired difference", "none")
    observed = abs(d.mean())
    if d.size <= EXACT_UP_TO:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(MONTE_CARLO, d.size))
    means = np.abs(signs @ d) / d.size
    return float(np.mean(means >= observed - 1e-12 * max(1.0, observed)))


def paired_summary(diffs: Sequence[float], *, alpha: float = 0.05, power: float = 0.8) -> dict[str, Any]:
    """Mean paired difference, its SD, the paired t ``1 − alpha`` interval, the sign-flip p-value and
    the smallest true difference the design detects with probability ``power`` (two-sided t test at
    ``alpha``, normal-theory approximation ``(t_{1−α/2} + t_{power}) · sd / √n``)."""
    d = np.asarray(diffs, dtype=np.float64)
    n = int(d.size)
    if n == 0:
        raise bad_input("diffs", "at least one paired difference", "none")
    out: dict[str, Any] = {"n_pairs": n, "diff_mean": float(d.mean()), "p_sign_flip": sign_flip_p(d),
                           "diff_sd": None, "diff_ci95": None, "mde80": None}
    if n < 2:
        return out
    sd = float(d.std(ddof=1))
    se = sd / np.sqrt(n)
    t_crit = _t_quantile(1 - alpha / 2, n - 1)
    out.update({"diff_sd": sd, "diff_ci95": [float(d.mean() - t_crit * se), float(d.mean() + t_crit * se)],
                "mde80": float((t_crit + _t_quantile(power, n - 1)) * se)})
    return out

"""The difficulty budget D(t): invariant B1."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpod_ops.curriculum import DifficultyBudget
from kpod_ops.errors import KPODInputError


@settings(max_examples=80, deadline=None)
@given(st.floats(0.0, 1e6), st.integers(1, 60), st.floats(0.0, 3.0), st.floats(0.0, 1.0))
def test_b1(total, T, p, ratio):
    b = DifficultyBudget(total, T, p=p, c0_ratio=ratio)
    c0 = ratio * total
    assert b(0) == pytest.approx(c0)
    assert b(T) == pytest.approx(total)
    assert b.u == pytest.approx((total - c0) * (p + 1) / T ** (p + 1))
    t = np.linspace(0, T, 41)
    curve = b(t)
    np.testing.assert_allclose(curve, c0 + (total - c0) * (t / T) ** (p + 1), rtol=1e-12, atol=1e-9)
    assert np.all(np.diff(curve) >= -1e-9)
    if p > 0:  # convex: second differences on a uniform grid are non-negative
        assert np.all(np.diff(curve, 2) >= -1e-7 * max(1.0, total))
    assert b(T + 5) == pytest.approx(total)
    np.testing.assert_allclose(b.curve(), b(np.arange(T + 1)))


def test_paper_curve_for_T_10():
    b = DifficultyBudget(1.0, 10)
    expected = [0.300, 0.322, 0.363, 0.415, 0.477, 0.547, 0.625, 0.710, 0.801, 0.898, 1.000]
    np.testing.assert_allclose(b.curve(), expected, atol=6e-4)


def test_bad_arguments():
    with pytest.raises(KPODInputError, match="n_stages"):
        DifficultyBudget(1.0, 0)
    with pytest.raises(KPODInputError, match="c0_ratio"):
        DifficultyBudget(1.0, 5, c0_ratio=1.5)
    with pytest.raises(KPODInputError, match="c0"):
        DifficultyBudget(1.0, 5, c0=2.0)
    with pytest.raises(KPODInputError, match="t"):
        DifficultyBudget(1.0, 5)(-1)

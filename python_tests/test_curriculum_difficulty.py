"""Step difficulty (Eq. 8) and remaining difficulty: invariants D1–D3 and the weight normalisations (W2, W3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kpod_ops.curriculum import (
    NORMALISATIONS,
    StepTable,
    normalise_step_weights,
    remaining_difficulty,
    step_difficulty,
    total_difficulty,
)
from kpod_ops.errors import KPODInputError


@st.composite
def example(draw):
    """Per-token NLL, step ids (with -1 outside the rationale) and weights in (0,1)."""
    sizes = draw(st.lists(st.integers(1, 6), min_size=1, max_size=6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    step_ids = np.concatenate([np.full(s, k) for k, s in enumerate(sizes)])
    pre, post = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    step_ids = np.concatenate([np.full(pre, -1), step_ids, np.full(post, -1)])
    nll = rng.exponential(2.0, step_ids.size)
    weights = rng.uniform(1e-4, 1 - 1e-4, step_ids.size)
    return nll, step_ids, weights, sizes


@settings(max_examples=60, deadline=None)
@given(example(), st.sampled_from(NORMALISATIONS))
def test_d1_convex_combination_of_token_nll(ex, normalisation):
    nll, sid, w, sizes = ex
    d = step_difficulty(nll, sid, w, normalisation=normalisation)
    assert d.shape == (len(sizes),)
    for k in range(len(sizes)):
        tok = nll[sid == k]
        assert d[k] >= 0
        assert tok.min() - 1e-12 <= d[k] <= tok.max() + 1e-12


@settings(max_examples=60, deadline=None)
@given(example(), st.sampled_from(NORMALISATIONS))
def test_w2_normalised_weights_sum_to_one_per_step(ex, normalisation):
    _, sid, w, sizes = ex
    w_hat = normalise_step_weights(sid, w, normalisation)
    assert np.all(w_hat[sid < 0] == 0)
    for k in range(len(sizes)):
        assert np.all(w_hat[sid == k] > 0)
        assert abs(w_hat[sid == k].sum() - 1) < 1e-12
    if normalisation == "softmax":  # W3: the literal softmax over probabilities is nearly flat
        for k in range(len(sizes)):
            assert w_hat[sid == k].max() / w_hat[sid == k].min() <= math.e + 1e-9


@settings(max_examples=40, deadline=None)
@given(example())
def test_d2_uniform_is_mean_nll_and_constant_weights_too(ex):
    nll, sid, w, sizes = ex
    means = np.array([nll[sid == k].mean() for k in range(len(sizes))])
    np.testing.assert_allclose(step_difficulty(nll, sid, normalisation="uniform"), means, rtol=1e-12)
    const = np.full_like(w, 0.37)
    for normalisation in ("softmax", "softmax_logits", "proportional"):
        np.testing.assert_allclose(step_difficulty(nll, sid, const, normalisation=normalisation), means, rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(example())
def test_matches_naive_eq8_for_every_normalisation(ex):
    nll, sid, w, sizes = ex
    for normalisation in NORMALISATIONS:
        expected = []
        for k in range(len(sizes)):
            wk, xk = w[sid == k], nll[sid == k]
            if normalisation == "softmax":
                a = np.exp(wk) / np.exp(wk).sum()
            elif normalisation == "softmax_logits":
                lg = np.log(wk / (1 - wk))
                a = np.exp(lg - lg.max()) / np.exp(lg - lg.max()).sum()
            elif normalisation == "proportional":
                a = wk / wk.sum()
            else:
                a = np.full(wk.size, 1 / wk.size)
            expected.append(float((a * xk).sum()))
        np.testing.assert_allclose(step_difficulty(nll, sid, w, normalisation=normalisation), expected, rtol=1e-10)


@settings(max_examples=25, deadline=None)
@given(st.lists(example(), min_size=1, max_size=4))
def test_batched_rows_equal_single_rows(examples):
    width = max(e[1].size for e in examples)
    n_steps = max(len(e[3]) for e in examples)
    nll = np.zeros((len(examples), width))
    sid = np.full((len(examples), width), -1)
    w = np.full((len(examples), width), 0.5)
    for b, (x, s, ww, _) in enumerate(examples):
        nll[b, : x.size], sid[b, : s.size], w[b, : ww.size] = x, s, ww
    batched = step_difficulty(torch.from_numpy(nll), torch.from_numpy(sid), torch.from_numpy(w), n_steps=n_steps)
    for b, (x, s, ww, sizes) in enumerate(examples):
        np.testing.assert_allclose(batched[b, : len(sizes)], step_difficulty(x, s, ww), rtol=1e-12)
        assert np.all(np.isnan(batched[b, len(sizes) :]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=8))
def test_d3_remaining_difficulty(d):
    d = np.array(d)
    assert remaining_difficulty(d, 0) == pytest.approx(d.sum())
    assert remaining_difficulty(d, d.size) == 0
    h = [remaining_difficulty(d, c) for c in range(d.size + 1)]
    assert all(a >= b for a, b in zip(h, h[1:]))
    table = StepTable.from_rows([d, d[::-1]])
    for c in range(d.size + 1):
        np.testing.assert_allclose(table.remaining(np.array([c, c])), [h[c], remaining_difficulty(d[::-1], c)], atol=1e-12)
    assert total_difficulty({"a": d, "b": d}) == pytest.approx(2 * d.sum())
    assert table.total() == pytest.approx(2 * d.sum())


def test_errors_name_the_argument():
    sid = np.array([0, 0, 1])
    with pytest.raises(KPODInputError, match="nll"):
        step_difficulty(np.zeros(2), sid, np.full(3, 0.5))
    with pytest.raises(KPODInputError, match="weights"):
        step_difficulty(np.zeros(3), sid, None)
    with pytest.raises(KPODInputError, match="weights"):
        step_difficulty(np.zeros(3), sid, np.array([0.5, 1.0, 0.5]), normalisation="softmax_logits")
    with pytest.raises(KPODInputError, match="nll"):
        step_difficulty(np.array([0, np.nan, 1]), sid, np.full(3, 0.5))
    with pytest.raises(KPODInputError, match="step 1"):
        step_difficulty(np.zeros(3), np.array([0, 0, 2]), np.full(3, 0.5))
    with pytest.raises(KPODInputError, match="normalisation"):
        step_difficulty(np.zeros(3), sid, np.full(3, 0.5), normalisation="bogus")
    with pytest.raises(KPODInputError, match="given_steps"):
        remaining_difficulty([1.0, 2.0], 3)
    with pytest.raises(KPODInputError, match="difficulties"):
        StepTable.from_rows({"a": [1.0, -0.5]})

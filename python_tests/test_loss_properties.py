"""Fused keypoint cross-entropy vs its PyTorch reference, on random inputs (hypothesis).

Every test runs on each device of ``loss_helpers.DEVICES``; the dtype (fp32, bf16, fp16) is drawn with the
rest of the problem, so that a device's examples cover the three without multiplying them."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_helpers import (
    FLOAT_DTYPES,
    GradProbe,
    check_against_reference,
    fused,
    on_devices,
    on_devices_and_dtypes,
    reference,
    run,
    weight_grad_rounding,
)

import kpod_ops

pytestmark = pytest.mark.skipif(not kpod_ops.fused_available("cpu"), reason="kpod_ops._C not built")

DTYPES = FLOAT_DTYPES
REDUCTIONS = ["none", "sum", "mean", "weighted_mean"]


@st.composite
def problems(draw, max_v=50_257):
    """A random problem: shapes, dtype, labels with ignored rows, weights of any sign, starts."""
    V = draw(st.one_of(st.integers(1, 70), st.integers(71, 4099), st.sampled_from([31_999, 50_257]).filter(lambda v: v <= max_v)))
    budget = max(1, 200_000 // V)  # keep B·T·V small enough for a fast test
    B = draw(st.integers(0, 3))
    T = draw(st.integers(0, max(0, min(9, budget // max(B, 1)))))
    dtype = draw(st.sampled_from(DTYPES))
    reduction = draw(st.sampled_from(REDUCTIONS))
    shift = draw(st.booleans())
    two_d = draw(st.booleans()) and not shift
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([1.0, 4.0, 20.0]))
    pad = draw(st.sampled_from([0, 3]))  # pad > 0: row-strided (non-contiguous) logits
    full = torch.randn(B, T, V + pad, generator=g) * scale
    logits = full[..., :V].to(dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    ignored = torch.rand(B, T, generator=g) < draw(st.sampled_from([0.0, 0.3, 1.0]))
    labels = torch.where(ignored, torch.full_like(labels, -100), labels)
    weight_kind = draw(st.sampled_from(["none", "positive", "any", "zeros"]))
    weights = None
    if weight_kind == "positive" or (weight_kind == "any" and reduction == "weighted_mean"):
        weights = torch.rand(B, T, generator=g) * 2
        weights = torch.where(torch.rand(B, T, generator=g) < 0.2, torch.zeros_like(weights), weights)
    elif weight_kind == "any":
        weights = torch.randn(B, T, generator=g)
    elif weight_kind == "zeros":
        weights = torch.zeros(B, T)
    loss_start = None
    if draw(st.booleans()) and not two_d:
        loss_start = torch.randint(0, T + 3, (B,), generator=g)
    # non-finite logits on rows that are inactive must not leak into anything
    if B * T > 0 and V > 0 and draw(st.booleans()):
        logits = logits.clone()
        t = torch.arange(T).unsqueeze(0).expand(B, T)
        start = torch.zeros(B, 1, dtype=torch.long) if loss_start is None else loss_start.unsqueeze(1)
        if shift:  # row t predicts label position t + 1
            nxt = torch.cat([labels[:, 1:], torch.full((B, 1), -100)], dim=1)
            used = (t + 1 < T) & (nxt != -100) & (t + 1 >= start)
        else:
            used = (labels != -100) & (t >= start)
        unused = ~used
        logits[unused] = torch.tensor(float("nan"), dtype=dtype)
        if unused.any():
            b0, t0 = unused.nonzero()[0].tolist()
            logits[b0, t0, 0] = float("inf")
    smoothing = draw(st.sampled_from([0.0, 0.0, 0.1]))
    num_items = None
    if reduction in ("mean", "weighted_mean") and draw(st.booleans()):
        num_items = draw(st.sampled_from([0, 7, torch.tensor(5.0)]))
    if two_d:
        logits = logits.reshape(B * T, V)
        labels = labels.reshape(B * T)
        weights = None if weights is None else weights.reshape(B * T)
    kwargs = dict(reduction=reduction, shift=shift, label_smoothing=smoothing, num_items_in_batch=num_items)
    return logits, labels, weights, loss_start, kwargs


def _to(x: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """``x`` on ``device`` with its strides kept (``Tensor.to`` would make row-padded logits contiguous)."""
    if x is None or x.device == device:
        return x
    y = torch.empty_strided(x.size(), x.stride(), dtype=x.dtype, device=device)
    return y.copy_(x)


def _on(problem, device):
    """The problem (drawn on the CPU) with every tensor on ``device``."""
    logits, labels, weights, loss_start, kwargs = problem
    move = [_to(x, device) for x in (logits, labels, weights, loss_start)]
    if isinstance(kwargs["num_items_in_batch"], torch.Tensor):
        kwargs = {**kwargs, "num_items_in_batch": kwargs["num_items_in_batch"].to(device)}
    return (*move, kwargs)


@on_devices
@given(problems())
def test_fused_matches_reference(device, problem):
    logits, labels, weights, loss_start, kwargs = _on(problem, device)
    check_against_reference(logits, labels, weights, loss_start, **kwargs)


_INPLACE_TOL = {torch.float16: dict(rtol=2.0**-10, atol=1e-7)}


@on_devices
@given(problems(max_v=4099), st.sampled_from(["sum", "mean", "weighted_mean"]))
@settings(max_examples=25)
def test_inplace_matches_functional(device, problem, reduction):
    logits, labels, weights, loss_start, kwargs = _on(problem, device)
    kwargs["reduction"] = reduction
    if reduction == "sum":
        kwargs["num_items_in_batch"] = None
    if weights is not None and reduction == "weighted_mean":
        weights = weights.abs()
    ref = run(fused, logits, labels, weights, loss_start, **kwargs)
    x = GradProbe.apply(torch.zeros((), requires_grad=True, device=device), logits.detach().contiguous())
    w = None if weights is None else weights.clone().requires_grad_(True)
    loss = kpod_ops.keypoint_cross_entropy(x, labels, w, loss_start, inplace_backward=True, impl="fused", **kwargs)
    loss.backward()
    # fp16: the in-place mode computes the gradient in backward (as the functional mode's two-kernel
    # path does) but folds the per-row scale in another order: equal up to fp32 rounding
    tol = _INPLACE_TOL.get(logits.dtype, dict(rtol=0, atol=0))
    torch.testing.assert_close(loss.detach(), ref[0], equal_nan=True, **tol)
    torch.testing.assert_close(GradProbe.captured.reshape(ref[1].shape), ref[1], equal_nan=True, **tol)
    if w is not None:
        if tol["atol"]:
            # weighted_mean: d/dw_i = (l_i - L) / S, two losses that nearly cancel, so the order of the fp32 roundings
            # shows (found: 9e-7 on an fp16 case with L ~ 8, S 1.27; 2e-6 with one active row)
            slack = weight_grad_rounding(logits, labels, weights, loss_start, **kwargs)
            slack = torch.as_tensor(slack)
            tol = {**tol, "atol": tol["atol"] + (float(slack.max()) if slack.numel() else 0.0)}
        torch.testing.assert_close(w.grad, ref[2], equal_nan=True, **tol)


@on_devices
@given(problems(max_v=4099))
@settings(max_examples=25)
def test_no_grad_forward_matches_reference(device, problem):
    logits, labels, weights, loss_start, kwargs = _on(problem, device)
    with torch.no_grad():
        got = kpod_ops.keypoint_cross_entropy(logits, labels, weights, loss_start, impl="fused", **kwargs)
        ref = reference(logits.double(), labels, None if weights is None else weights.double(), loss_start, **kwargs)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-3 if logits.dtype != torch.float32 else 1e-4, equal_nan=True)


@on_devices_and_dtypes(DTYPES)
def test_long_rows_in_blocks_match_reference(monkeypatch, device, dtype):
    """Rows longer than the L2 budget go block by block (forced on the CPU here with a 16 KiB budget; on CUDA
    a row this long runs the widest kernel configuration, and in fp32 overflows its shared-memory row cache):
    loss and gradients as the reference, non-finite logits included, in place as functional."""
    monkeypatch.setenv("KPOD_CPU_ROW_BUDGET_KB", "16")
    g = torch.Generator().manual_seed(3)
    B, T, V = 2, 3, 40_000  # several 32 KiB blocks per row
    logits = (torch.randn(B, T, V, generator=g) * 4).to(dtype)
    logits[1, 2, 30_000] = 40.0  # the row's maximum in a late block
    logits = logits.to(device)
    labels = torch.randint(0, V, (B, T), generator=g).to(device)
    weights = (torch.rand(B, T, generator=g) + 0.5).to(device)
    for smoothing in (0.0, 0.1):
        check_against_reference(logits, labels, weights, reduction="sum", label_smoothing=smoothing)
    ref = run(fused, logits, labels, weights, reduction="mean")
    x = GradProbe.apply(torch.zeros((), requires_grad=True, device=device), logits.clone())
    loss = kpod_ops.keypoint_cross_entropy(x, labels, weights, reduction="mean", inplace_backward=True, impl="fused")
    loss.backward()
    # fp32: the functional op stores each block's exp values, the in-place mode recomputes them
    tol = _INPLACE_TOL.get(dtype, dict(rtol=1e-5, atol=1e-9))
    torch.testing.assert_close(loss.detach(), ref[0], **tol)
    torch.testing.assert_close(GradProbe.captured, ref[1], **tol)
    special = logits.clone()
    special[0, 1, 35_000] = float("inf")  # an active row with +inf in a late block: the exact path
    special[1, 0, 5] = float("nan")
    check_against_reference(special, labels, weights, reduction="sum")

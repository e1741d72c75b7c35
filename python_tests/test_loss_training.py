"""The fused loss under real training conditions: exact gradients with learned weights at ω = 0,
retained graphs, GradScaler-sized upstream scales in fp16/bf16, zero denominators, unvalidated
labels, double backward, the in-place mode's guards, torch.compile with validation on, and no
N×V tensor kept after backward. Every test runs on each device of ``DEVICES``."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from loss_helpers import DEVICES, IMPLS, needs_fused

from kpod_ops import KeypointCrossEntropy, KPODInputError, keypoint_cross_entropy

devices = pytest.mark.parametrize("device", DEVICES, ids=str)


def _problem(device, B=2, T=6, V=11, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, 1] = -100
    weights = torch.rand(B, T, generator=g) + 0.1
    return logits.to(device), labels.to(device), weights.to(device)


def _exact(logits, labels, weights, reduction, num_items=None):
    """float64 loss of the contract for ω ≥ 0 without loss_start/shift (plain autograd)."""
    V = logits.shape[-1]
    active = labels != -100
    ell = F.cross_entropy(logits.reshape(-1, V), labels.clamp(min=0).reshape(-1), reduction="none").reshape(labels.shape)
    c = torch.where(active, weights * ell, 0.0)
    if reduction == "none":
        return c
    den = {"sum": None, "mean": active.sum(), "weighted_mean": torch.where(active, weights, 0.0).sum()}[reduction]
    den = num_items if num_items is not None else den
    return c.sum() if den is None else c.sum() / den


# ---------------------------------------------------------------- 1. ω = 0 with learned weights


@devices
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "weighted_mean"])
def test_zero_weights_get_their_exact_gradient(device, impl, reduction):
    logits, labels, weights = _problem(device)
    weights[0, 2] = 0.0
    weights[1, 4] = 0.0
    x = logits.clone().requires_grad_(True)
    w = weights.clone().requires_grad_(True)
    seed = torch.linspace(0.5, 1.5, 12, device=device).reshape(2, 6)
    out = keypoint_cross_entropy(x, labels, w, reduction=reduction, impl=impl)
    (out * seed if reduction == "none" else out).sum().backward()
    xr = logits.double().requires_grad_(True)
    wr = weights.double().requires_grad_(True)
    ref = _exact(xr, labels, wr, reduction)
    (ref * seed.double() if reduction == "none" else ref).sum().backward()
    torch.testing.assert_close(w.grad.double(), wr.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-5, atol=1e-6)
    assert w.grad[0, 2] != 0 and w.grad[1, 4] != 0  # ℓ (or (ℓ − L)/Σω), not 0


@devices
@pytest.mark.parametrize("impl", IMPLS)
def test_zero_weight_non_finite_row_stays_out_of_loss_and_logits_gradient(device, impl):
    logits, labels, weights = _problem(device)
    weights[1, 3] = 0.0
    logits[1, 3] = float("nan")
    x = logits.clone().requires_grad_(True)
    w = weights.clone().requires_grad_(True)
    per = keypoint_cross_entropy(x, labels, w, reduction="none", impl=impl)
    assert torch.isfinite(per).all() and per[1, 3] == 0
    loss = keypoint_cross_entropy(x, labels, w, reduction="sum", impl=impl)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad).all() and torch.count_nonzero(x.grad[1, 3]) == 0
    assert w.grad[1, 3] == 0  # ℓ = NaN there: ω·ℓ has no derivative at 0, and the row gives 0 to every gradient
    assert torch.isfinite(w.grad[0]).all()


# ---------------------------------------------------------------- 2. retained graphs, no aliasing


def _leaf_and_input(logits, inplace):
    """(tensor whose gradient we read, input of the loss, getter of its gradient)."""
    if not inplace:
        x = logits.clone().requires_grad_(True)
        return x, lambda: x.grad
    leaf = logits.clone().requires_grad_(True)
    return leaf * 1.0, lambda: leaf.grad  # a non-leaf copy the in-place mode may overwrite


@devices
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_retained_graph_backward_is_exact_every_time(device, impl, inplace, dtype):
    if impl == "reference" and inplace:
        pytest.skip("the reference has no in-place mode")
    logits, labels, weights = _problem(device, dtype=dtype)
    kw = dict(reduction="mean", impl=impl, inplace_backward=inplace)
    x0 = logits.clone().requires_grad_(True)
    keypoint_cross_entropy(x0, labels, weights, reduction="mean", impl=impl).backward()
    once = x0.grad.double()
    x, grad = _leaf_and_input(logits, inplace)
    loss = keypoint_cross_entropy(x, labels, weights, **kw)
    for _ in range(3):
        loss.backward(retain_graph=True)
    tol = dict(rtol=1e-3, atol=1e-5) if dtype == torch.float16 else dict(rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad().double(), 3 * once, **tol)
    grad().zero_()
    (loss * 0.5).backward(retain_graph=True)
    torch.testing.assert_close(grad().double(), 0.5 * once, **tol)
    g1 = torch.autograd.grad(loss, x, retain_graph=True)[0]
    g1.mul_(100.0)  # the caller owns what autograd.grad returns
    g2 = torch.autograd.grad(loss, x)[0]
    torch.testing.assert_close(g2.double(), once, **tol)


# ---------------------------------------------------------------- 3. upstream scales in fp16/bf16


def _exact_grad(logits, labels, scale):
    """d(scale · mean CE)/d logits in float64, for fp16/bf16 logits taken exactly."""
    z = logits.double()
    p = torch.softmax(z, -1)
    return scale * (p - F.one_hot(labels, z.shape[-1]).double()) / labels.numel()


def _fused_grad(logits, labels, scale, inplace):
    x, grad = _leaf_and_input(logits, inplace)
    loss = keypoint_cross_entropy(x, labels, reduction="mean", inplace_backward=inplace, impl="fused")
    (loss * scale).backward()
    return grad()


@needs_fused
@devices
@pytest.mark.parametrize("inplace", [False, True])
def test_fp16_gradient_under_grad_scaler_is_rounded_once(device, inplace):
    """GradScaler-sized scales: fp16 gradients are the exact gradient rounded once (no flush to
    zero before the scale is applied, no inf from casting the scale to fp16)."""
    g = torch.Generator().manual_seed(0)
    N, V = 2048, 1024
    logits = (torch.randn(N, V, generator=g) * 2).half().to(device)
    labels = torch.randint(0, V, (N,), generator=g).to(device)
    for scale in (32768.0, 65536.0):
        got = _fused_grad(logits, labels, scale, inplace).double()
        exact = _exact_grad(logits, labels, scale)
        assert torch.isfinite(got).all()
        normal = (exact.abs() >= 2.0**-14) & (exact.abs() <= 65504)
        assert int((got[normal] == 0).sum()) == 0, "fp16 gradients flushed to zero"
        rel = ((got - exact).abs() / exact.abs())[normal]
        assert rel.median() <= 1e-3, f"median relative error {rel.median():.3g}"
        assert rel.max() <= 2.0**-10, f"worst relative error {rel.max():.3g}: more than one rounding"


@needs_fused
@devices
@pytest.mark.parametrize("inplace", [False, True])
def test_bf16_gradient_has_no_bias_from_the_upstream_scale(device, inplace):
    g = torch.Generator().manual_seed(1)
    N, V = 512, 4096
    logits = (torch.randn(N, V, generator=g) * 2).bfloat16().to(device)
    labels = torch.randint(0, V, (N,), generator=g).to(device)
    got = _fused_grad(logits, labels, 1 / 3, inplace).double()
    exact = _exact_grad(logits, labels, 1 / 3)
    nonzero = exact != 0
    mean_rel = ((got - exact) / exact)[nonzero].mean().item()
    assert abs(mean_rel) <= 1e-3, f"systematic gradient bias {mean_rel:.2e}"


@needs_fused
@devices
def test_scale_op_multiplies_in_fp32(device):
    """scale_ never rounds the scale to the tensor's dtype (65536 is inf in fp16; 1/3 in bf16 is
    biased), whatever the layout."""
    for layout in ("contiguous", "row_strided", "transposed"):
        base = torch.full((4, 6, 1000), 2.0**-20, dtype=torch.float16, device=device)
        x = {"contiguous": base, "row_strided": base[:, :5, :999], "transposed": base.transpose(0, 1)}[layout]
        torch.ops.kpod.scale_(x, torch.tensor(65536.0, device=device))
        assert torch.isfinite(x).all() and x.eq(2.0**-4).all(), layout
        y = torch.ones(4, 1000, dtype=torch.bfloat16, device=device)
        y = y if layout == "contiguous" else y.t()
        torch.ops.kpod.scale_(y, torch.tensor(1 / 3, device=device))
        assert y.eq(torch.tensor(1 / 3).bfloat16().to(device)).all(), layout


# ---------------------------------------------------------------- 4. zero denominator


@devices
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", ["num_items_int", "num_items_tensor", "all_weights_zero"])
def test_zero_denominator_with_non_finite_active_row_is_zero_with_zero_gradient(device, impl, case):
    logits, labels, weights = _problem(device)
    logits[1, 2] = float("nan")
    logits[0, 3, 4] = float("inf")
    kw = dict(reduction="mean", impl=impl)
    if case == "num_items_int":
        kw["num_items_in_batch"] = 0
    elif case == "num_items_tensor":
        kw["num_items_in_batch"] = torch.tensor(0, device=device)
    else:
        kw["reduction"] = "weighted_mean"
        weights = torch.zeros_like(weights)
    for weight_grad in (False, True):
        x = logits.clone().requires_grad_(True)
        w = weights.clone().requires_grad_(weight_grad)
        loss = keypoint_cross_entropy(x, labels, w, **kw)
        loss.backward()
        assert loss.item() == 0.0
        assert torch.count_nonzero(x.grad) == 0
        if weight_grad:
            assert torch.count_nonzero(w.grad) == 0


# ---------------------------------------------------------------- 5. validate=False


@devices
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad", [-1, -7, 11])
def test_unvalidated_bad_label_is_a_nan_row_whatever_its_value(device, impl, bad):
    logits, labels, _ = _problem(device)
    labels[1, 3] = bad
    per = keypoint_cross_entropy(logits, labels, reduction="none", validate=False, impl=impl)
    assert torch.isnan(per[1, 3]) and int(torch.isnan(per).sum()) == 1
    x = logits.clone().requires_grad_(True)
    loss = keypoint_cross_entropy(x, labels, reduction="mean", validate=False, impl=impl)
    loss.backward()
    assert torch.isnan(loss)
    assert torch.isnan(x.grad[1, 3]).all() and torch.isfinite(x.grad[0]).all()


# ---------------------------------------------------------------- 6. double backward


@needs_fused
@devices
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("inplace", [False, True])
def test_double_backward_is_refused_clearly(device, reduction, inplace):
    if inplace and reduction == "none":
        pytest.skip("in place needs a scalar reduction")
    logits, labels, weights = _problem(device)
    x, _ = _leaf_and_input(logits, inplace)
    w = weights.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "autograd kernel was not registered" warning either
        out = keypoint_cross_entropy(x, labels, w, reduction=reduction, inplace_backward=inplace, impl="fused")
        gx, gw = torch.autograd.grad(out.sum(), (x, w), create_graph=True)
    with pytest.raises(RuntimeError, match="do not support double backward.*impl='reference'"):
        (gx.pow(2).sum() + gw.pow(2).sum()).backward()


@devices
@pytest.mark.parametrize("reduction", ["none", "weighted_mean"])
def test_reference_double_backward_is_exact(device, reduction):
    logits, labels, weights = _problem(device, B=1, T=4, V=4, dtype=torch.float64)
    weights[0, 3] = 0.0
    x = logits.clone().requires_grad_(True)
    w = weights.double().requires_grad_(True)

    def f(x, w):
        # validate=False: the numerical Jacobian moves the zero weight below 0
        return keypoint_cross_entropy(
            x, labels, w, reduction=reduction, label_smoothing=0.1, validate=False, impl="reference"
        )

    assert torch.autograd.gradgradcheck(f, (x, w), eps=1e-6, atol=1e-5, fast_mode=True)


# ---------------------------------------------------------------- 7. in-place guards


@needs_fused
@devices
def test_inplace_refuses_a_view_of_a_leaf(device):
    logits, labels, _ = _problem(device, B=1, T=6, V=5)
    x = logits[0].clone().requires_grad_(True)
    before = x.detach().clone()
    with pytest.raises(KPODInputError, match="inplace_backward.*a view of a leaf tensor"):
        keypoint_cross_entropy(x.view(6, 5), labels[0], inplace_backward=True)
    assert torch.equal(x.detach(), before)


# ---------------------------------------------------------------- 8. torch.compile with validate=True


@devices
@pytest.mark.parametrize("impl", IMPLS)
def test_compile_fullgraph_with_default_validation(device, impl):
    logits, labels, weights = _problem(device, V=33)
    start = torch.tensor([1, 0], device=device)
    module = KeypointCrossEntropy(shift=True, impl=impl)

    def step(x, y, w):
        return module(x, y, w, start) + keypoint_cross_entropy(x, y, w, start, reduction="weighted_mean", impl=impl)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    outs = []
    for fn in (step, compiled):
        x = logits.clone().requires_grad_(True)
        w = weights.clone().requires_grad_(True)
        loss = fn(x, labels, w)
        loss.backward()
        outs.append((loss.detach(), x.grad, w.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    bad = labels.clone()
    bad[1, 4] = 40
    messages = []
    for fn in (step, compiled):
        with pytest.raises(KPODInputError, match=r"got 40 at position \(1, 4\)") as info:
            fn(logits, bad, weights)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    negative = weights.clone()
    negative[0, 5] = -1.0
    with pytest.raises(KPODInputError, match=r"token_weights: expected non-negative.*position \(0, 5\)"):
        compiled(logits, labels, negative)


# ---------------------------------------------------------------- 9. nothing N×V outlives backward


def _reachable_tensors(root):
    """Every tensor reachable from a graph: saved tensors, ctx attributes, next functions."""
    seen, stack, found = set(), [root], []
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        for name in dir(node):
            if not (name.startswith("_saved_") or name in ("saved_tensors", "to_save")):
                continue
            try:
                value = getattr(node, name)
            except RuntimeError:  # freed after backward
                continue
            values = value if isinstance(value, (tuple, list)) else (value,)
            found += [v for v in values if isinstance(v, torch.Tensor)]
        for value in getattr(node, "__dict__", {}).values():
            values = value.__dict__.values() if hasattr(value, "__dataclass_fields__") else (value,)
            found += [v for v in values if isinstance(v, torch.Tensor)]
        stack += [fn for fn, _ in getattr(node, "next_functions", ())]
    return found


@needs_fused
@devices
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_no_gradient_sized_tensor_outlives_backward(device, inplace, dtype):
    logits, labels, weights = _problem(device, B=2, T=8, V=64, dtype=dtype)
    head = torch.nn.Linear(64, 64, device=device, dtype=dtype)
    x = head(logits)  # an lm_head output
    loss = keypoint_cross_entropy(x, labels, weights, inplace_backward=inplace, impl="fused")
    big = [t for t in _reachable_tensors(loss.grad_fn) if t.numel() >= 2 * 8 * 64]
    loss.backward()
    del x
    big = [t for t in _reachable_tensors(loss.grad_fn) if t.numel() >= 2 * 8 * 64]
    assert not big, [tuple(t.shape) for t in big]


# ---------------------------------------------------------------- the returned loss scaled in place


@devices
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reduction", ["sum", "mean", "weighted_mean"])
@pytest.mark.parametrize("inplace", [False, True])
def test_loss_scaled_in_place_before_backward(device, impl, reduction, inplace):
    """Trainer does ``loss *= num_processes`` before backward: the graph must not depend on the output's version."""
    if inplace and impl == "reference":
        pytest.skip("the in-place mode is a fused-kernel mode")
    logits, labels, weights = _problem(device)
    w = weights.clone().requires_grad_(True)
    x0 = logits.clone().requires_grad_(True)
    x = x0 * 1.0  # an op output, as lm_head logits are (the in-place mode refuses leaves)
    loss = keypoint_cross_entropy(x, labels, w, reduction=reduction, impl=impl, inplace_backward=inplace)
    loss *= 3.0
    loss.backward()
    xr = logits.double().requires_grad_(True)
    wr = weights.double().requires_grad_(True)
    (3.0 * _exact(xr, labels, wr, reduction)).backward()
    torch.testing.assert_close(x0.grad.double(), xr.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w.grad.double(), wr.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("reduction", ["mean", "weighted_mean"])
def test_compiled_loss_repeats_exactly_with_retained_graph(reduction):
    """torch.compile (inductor) on the defaults: a second backward of a retained graph repeats the first."""
    logits, labels, weights = _problem("cpu", T=12, V=50)
    start = torch.tensor([5, 3])
    crit = KeypointCrossEntropy(reduction=reduction, shift=True)
    x = logits.clone().requires_grad_(True)
    torch._dynamo.reset()
    with torch._inductor.config.patch(force_disable_caches=True):  # compiled here, not read from an old cache
        loss = torch.compile(lambda z: crit(z, labels, weights, start))(x)
        loss.backward(retain_graph=True)  # the backward graph is compiled at its first call
        first = x.grad.clone()
        x.grad.zero_()
        loss.backward()
    torch.testing.assert_close(x.grad, first)
    xe = logits.clone().requires_grad_(True)
    crit(xe, labels, weights, start).backward()
    torch.testing.assert_close(first, xe.grad)

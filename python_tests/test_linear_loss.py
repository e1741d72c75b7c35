"""The fused linear keypoint cross-entropy against ``F.linear`` + the keypoint CE reference.

Every test that runs the fused loss runs on each device of ``loss_helpers.DEVICES`` (the CPU, and
CUDA where a GPU and the CUDA kernels are present); those comparing numerics also run in each dtype
(fp32, bf16, fp16), the reference computed in fp64 on the same rounded inputs."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_helpers import LOW_PRECISION, dtype_tolerance, on_devices, on_devices_and_dtypes, weighted_mean_rounding

import kpod_ops
from kpod_ops import KPODInputError, keypoint_linear_cross_entropy
from kpod_ops.losses import linear_ops
from kpod_ops.losses.linear_reference import keypoint_linear_cross_entropy_reference

pytestmark = pytest.mark.skipif(
    not kpod_ops.fused_available("cpu"), reason="the compiled extension is needed for the fused linear loss"
)

REDUCTIONS = ["none", "sum", "mean", "weighted_mean"]


def _problem(seed, B, T, H, V, dtype=torch.float32, *, p_ignore=0.2, p_zero_w=0.2, bias=True, starts=True,
             device="cpu"):
    """``[hidden, weight, bias, token_weights]`` in ``dtype``, labels and loss_start, on ``device``
    (drawn on the CPU: the same problem on every device)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64) * H**-0.5 * 2
    b = torch.randn(V, generator=g, dtype=torch.float64) if bias else None
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[torch.rand(B, T, generator=g) < p_ignore] = -100
    w = torch.rand(B, T, generator=g, dtype=torch.float64) + 0.05
    w[torch.rand(B, T, generator=g) < p_zero_w] = 0.0
    loss_start = torch.randint(0, T + 1, (B,), generator=g) if starts else None
    cast = [x if x is None else x.to(device=device, dtype=dtype) for x in (hidden, weight, b, w)]
    return cast, labels.to(device), None if loss_start is None else loss_start.to(device)


def _leaves(tensors):
    return [None if x is None else x.detach().clone().requires_grad_() for x in tensors]


def _run(fn, tensors, labels, loss_start, upstream, **kw):
    hidden, weight, bias, w = _leaves(tensors)
    out = fn(hidden, weight, labels, w, loss_start, bias, **kw)
    g = upstream if out.dim() else upstream.reshape(())
    out.backward(g.to(device=out.device, dtype=out.dtype))
    return out.detach(), [None if x is None else x.grad for x in (hidden, weight, bias, w)]


def _per_position_loss(tensors, labels, loss_start, **kw):
    """ℓ at every active position (weights 1), from the reference: for the ω = 0 weight gradients."""
    hidden, weight, bias, _ = (None if x is None else x.detach().double() for x in tensors)
    return keypoint_linear_cross_entropy_reference(hidden, weight, labels, None, loss_start, bias, reduction="none", **kw)


def _weight_grad_rounding(tensors, labels, loss_start, upstream, **kw):
    """``loss_helpers.weighted_mean_rounding`` for this problem, times the upstream gradient: the allowance
    for d/dω under ``weighted_mean`` without ``num_items_in_batch`` (0 otherwise)."""
    hidden, weight, _, w = tensors
    if kw.get("reduction") != "weighted_mean" or kw.get("num_items_in_batch") is not None or weight.shape[0] < 2:
        return torch.zeros(labels.shape, dtype=torch.float64, device=labels.device)
    common = {"shift": kw.get("shift", False), "label_smoothing": kw.get("label_smoothing", 0.0)}
    ell = _per_position_loss(tensors, labels, loss_start, **common)
    w = w.detach().double()
    # S from zero logits, where every active row's loss is log V
    zero_h, zero_w = torch.zeros_like(hidden, dtype=torch.float64), torch.zeros_like(weight, dtype=torch.float64)
    total = keypoint_linear_cross_entropy_reference(zero_h, zero_w, labels, w, loss_start, None, reduction="sum", **common)
    slack = weighted_mean_rounding(ell, w, float(total) / math.log(weight.shape[0]))
    return slack * float(torch.as_tensor(upstream).abs().max())


@on_devices
@given(
    seed=st.integers(0, 2**16),
    B=st.integers(1, 3),
    T=st.integers(1, 9),
    H=st.integers(1, 6),
    V=st.integers(1, 13),
    reduction=st.sampled_from(REDUCTIONS),
    shift=st.booleans(),
    starts=st.booleans(),
    bias=st.booleans(),
    smoothing=st.sampled_from([0.0, 0.1]),
    chunk=st.integers(1, 8),
    items=st.sampled_from([None, 7]),
)
def test_matches_reference_outputs_and_all_gradients(device, seed, B, T, H, V, reduction, shift, starts, bias, smoothing,
                                                     chunk, items):
    """fp32 (the low-precision dtypes have their own test below) on every device."""
    tensors, labels, loss_start = _problem(seed, B, T, H, V, bias=bias, starts=starts, device=device)
    nib = items if reduction in ("mean", "weighted_mean") else None
    kw = dict(reduction=reduction, shift=shift, label_smoothing=smoothing, num_items_in_batch=nib)
    upstream = torch.randn(B, T, generator=torch.Generator().manual_seed(seed)) if reduction == "none" else torch.tensor(1.7)
    out, grads = _run(keypoint_linear_cross_entropy, tensors, labels, loss_start, upstream, chunk_size=chunk, **kw)
    ref, ref_grads = _run(
        keypoint_linear_cross_entropy_reference, [None if x is None else x.double() for x in tensors], labels,
        loss_start, upstream.double(), **kw,
    )
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    w = tensors[3]
    for name, got, want in zip(["hidden", "weight", "bias", "token_weights"], grads, ref_grads):
        if want is None:
            assert got is None, name
            continue
        atol = 1e-5
        if name == "token_weights":  # ω = 0 entries are checked against ℓ in their own test
            keep = w != 0
            got, want = got[keep], want[keep]
            slack = _weight_grad_rounding(tensors, labels, loss_start, upstream, **kw)[keep]
            atol += float(slack.max()) if slack.numel() else 0.0
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=atol, msg=name)


@on_devices_and_dtypes()
@pytest.mark.parametrize("reduction", ["sum", "mean", "weighted_mean", "none"])
def test_zero_weight_rows_give_their_weight_a_gradient(reduction, device, dtype):
    tensors, labels, loss_start = _problem(3, 2, 6, 4, 7, dtype, p_ignore=0.0, p_zero_w=0.4, starts=False, device=device)
    upstream = torch.randn(2, 6, generator=torch.Generator().manual_seed(1)) if reduction == "none" else torch.tensor(1.0)
    out, grads = _run(keypoint_linear_cross_entropy, tensors, labels, None, upstream, reduction=reduction)
    upstream = upstream.to(device)
    w = tensors[3].double()
    ell = _per_position_loss(tensors, labels, None)
    zero = w == 0
    assert zero.any()
    if reduction == "none":
        expected = upstream.double() * ell
    elif reduction == "sum":
        expected = ell
    elif reduction == "mean":
        expected = ell / ell.numel()
    else:
        expected = (ell - (w * ell).sum() / w.sum()) / w.sum()
    # ℓ of the same rounded inputs, in fp64: the fused ℓ differs by the roundings of its logits (and of the gradient)
    torch.testing.assert_close(grads[3].double()[zero], expected[zero], **dtype_tolerance(dtype, 0.1))
    assert bool((out.double()[zero] == 0).all()) if reduction == "none" else True


@on_devices
@settings(max_examples=15)
@given(
    seed=st.integers(0, 2**16),
    T=st.integers(1, 12),
    V=st.integers(2, 40),
    reduction=st.sampled_from(REDUCTIONS),
    shift=st.booleans(),
    chunk=st.integers(1, 8),
    dtype=st.sampled_from(LOW_PRECISION),
)
def test_low_precision_matches_reference_within_the_flash_rule(device, seed, T, V, reduction, shift, chunk, dtype):
    """bf16 / fp16 (drawn, so that the dtypes share the examples): error vs float64 at most 2x that of plain
    PyTorch in that dtype, plus a small floor."""
    tensors, labels, loss_start = _problem(seed, 2, T, 8, V, dtype, device=device)
    upstream = torch.randn(2, T, generator=torch.Generator().manual_seed(seed)) if reduction == "none" else torch.tensor(1.3)
    kw = dict(reduction=reduction, shift=shift)
    out, grads = _run(keypoint_linear_cross_entropy, tensors, labels, loss_start, upstream, chunk_size=chunk, **kw)
    ref, ref_grads = _run(
        keypoint_linear_cross_entropy_reference, [x.double() for x in tensors], labels, loss_start, upstream.double(), **kw
    )
    low, low_grads = _run(keypoint_linear_cross_entropy_reference, tensors, labels, loss_start, upstream, **kw)
    for name, got, plain, want in zip(["loss", "hidden", "weight", "bias", "token_weights"], [out, *grads],
                                      [low, *low_grads], [ref, *ref_grads]):
        slack = 0.0
        if name == "token_weights":
            keep = tensors[3] != 0  # ω = 0 entries: checked against ℓ in their own test
            got, plain, want = got[keep], plain[keep], want[keep]
            rounding = _weight_grad_rounding(tensors, labels, loss_start, upstream, **kw)[keep]
            slack = float(rounding.max()) if rounding.numel() else 0.0
        if want.numel() == 0:
            continue
        err = float((got.double() - want).abs().max())
        bound = 2 * float((plain.double() - want).abs().max()) + 1e-2 * (float(want.abs().max()) + 1e-3) + slack
        assert err <= bound, f"{name}: {err} > {bound}"


@on_devices_and_dtypes(LOW_PRECISION)
def test_low_precision_close_to_fp64_reference(device, dtype):
    tensors, labels, loss_start = _problem(5, 2, 16, 8, 64, dtype, device=device)
    out, grads = _run(keypoint_linear_cross_entropy, tensors, labels, loss_start, torch.tensor(1.0), chunk_size=5)
    assert out.dtype == torch.float32
    ref, ref_grads = _run(
        keypoint_linear_cross_entropy_reference, [x.double() for x in tensors], labels, loss_start, torch.tensor(1.0)
    )
    low, low_grads = _run(keypoint_linear_cross_entropy_reference, tensors, labels, loss_start, torch.tensor(1.0))
    # flash-attention rule: within 2x the error of plain PyTorch in that dtype, plus a small floor
    assert abs(out.double() - ref) <= 2 * abs(low.double() - ref) + 1e-2
    for got, plain, want in zip(grads, low_grads, ref_grads):
        err = (got.double() - want).abs().max()
        assert err <= 2 * (plain.double() - want).abs().max() + 2e-3


@on_devices
def test_fp16_gradient_is_scaled_before_rounding(device):
    """fp16 with a GradScaler-sized upstream scale: no gradient flushed to zero, rounded once."""
    g = torch.Generator().manual_seed(0)
    N, H, V = 64, 8, 512
    hidden = torch.randn(N, H, generator=g).to(device)
    weight = (torch.randn(V, H, generator=g) * 0.3).to(device)
    labels = torch.randint(0, V, (N,), generator=g).to(device)
    h16 = hidden.half().requires_grad_()
    w16 = weight.half().requires_grad_()
    loss = keypoint_linear_cross_entropy(h16, w16, labels, chunk_size=16)
    (loss * 32768.0).backward()
    h64 = h16.detach().double().requires_grad_()
    w64 = w16.detach().double().requires_grad_()
    (keypoint_linear_cross_entropy_reference(h64, w64, labels) * 32768.0).backward()
    for got, want in ((h16.grad, h64.grad), (w16.grad, w64.grad)):
        assert torch.isfinite(got).all()
        normal = want.abs() > 6.2e-5
        assert not bool((got[normal] == 0).any())
        rel = ((got.double() - want).abs() / want.abs())[normal]
        assert float(rel.median()) <= 1e-3


@on_devices_and_dtypes()
def test_all_inactive_gives_zero_loss_and_zero_gradients(device, dtype):
    tensors, labels, _ = _problem(1, 2, 5, 4, 9, dtype, device=device)
    loss_start = torch.tensor([5, 5], device=device)
    for reduction in REDUCTIONS:
        upstream = torch.ones(2, 5) if reduction == "none" else torch.tensor(1.0)
        out, grads = _run(keypoint_linear_cross_entropy, tensors, labels, loss_start, upstream, reduction=reduction)
        assert float(out.abs().sum()) == 0.0
        for x in grads:
            assert float(x.abs().sum()) == 0.0


@on_devices_and_dtypes()
def test_non_finite_inactive_or_zero_weight_rows_do_not_leak(device, dtype):
    tensors, labels, _ = _problem(2, 1, 6, 4, 9, dtype, p_ignore=0.0, p_zero_w=0.0, starts=False, device=device)
    hidden, weight, bias, w = tensors
    hidden[0, 0] = float("nan")  # before loss_start
    hidden[0, 3] = float("inf")  # ω = 0
    w[0, 3] = 0.0
    labels[0, 4] = -100
    hidden[0, 4] = float("nan")  # ignore_index
    out, grads = _run(keypoint_linear_cross_entropy, (hidden, weight, bias, w.detach()), labels,
                      torch.tensor([1], device=device), torch.tensor(1.0), reduction="sum")
    assert torch.isfinite(out)
    for x in grads[:3]:
        assert torch.isfinite(x).all()


@on_devices_and_dtypes()
def test_zero_divisor_with_non_finite_active_row_gives_zero(device, dtype):
    tensors, labels, _ = _problem(2, 1, 4, 3, 5, dtype, p_ignore=0.0, p_zero_w=0.0, starts=False, device=device)
    tensors[0][0, 1] = float("inf")
    out, grads = _run(keypoint_linear_cross_entropy, tensors, labels, None, torch.tensor(1.0), num_items_in_batch=0)
    assert float(out) == 0.0
    for x in grads:
        assert float(x.abs().sum()) == 0.0


@on_devices
def test_inactive_rows_never_reach_the_matmul(monkeypatch, device):
    """Only active rows go through the LM head, in chunks of at most chunk_size rows."""
    seen = []
    real = linear_ops._logits

    def spy(h, weight, bias):
        seen.append(h.shape[0])
        return real(h, weight, bias)

    monkeypatch.setattr(linear_ops, "_logits", spy)
    tensors, labels, _ = _problem(4, 2, 10, 4, 11, p_ignore=0.0, p_zero_w=0.0, device=device)
    loss_start = torch.tensor([7, 4], device=device)  # 3 + 6 active positions
    for reduction in ("mean", "none"):
        seen.clear()
        upstream = torch.ones(2, 10) if reduction == "none" else torch.tensor(1.0)
        _run(keypoint_linear_cross_entropy, tensors, labels, loss_start, upstream, reduction=reduction, chunk_size=4)
        assert sum(seen) == 9 * (1 if reduction == "mean" else 2)  # "none" recomputes in backward
        assert max(seen) <= 4
    seen.clear()
    w = tensors[3].detach()
    w[1, 5:] = 0.0  # ω = 0 rows need nothing while the weights need no gradient
    loss = keypoint_linear_cross_entropy(tensors[0], tensors[1], labels, w, loss_start, chunk_size=64)
    assert sum(seen) == 4 and torch.isfinite(loss)


@on_devices_and_dtypes()
def test_retain_graph_gives_exact_repeated_gradients(device, dtype):
    tensors, labels, loss_start = _problem(6, 2, 7, 5, 11, dtype, device=device)
    # fp32: the recomputed gradients equal the forward's buffers up to fp32 rounding; bf16/fp16: one rounding of
    # the gradient to the dtype, and the sums of repeated backwards accumulated in it
    tol = dtype_tolerance(dtype, 0.1) if dtype in LOW_PRECISION else dict(rtol=1e-6, atol=1e-7)
    hidden, weight, bias, w = _leaves(tensors)
    loss = keypoint_linear_cross_entropy(hidden, weight, labels, w, loss_start, bias, chunk_size=3)
    first = [x.detach().clone() for x in torch.autograd.grad(loss, (hidden, weight, bias, w), retain_graph=True)]
    again = torch.autograd.grad(loss, (hidden, weight, bias, w), retain_graph=True)
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, **tol)
        b.mul_(100.0)  # mutating a returned gradient must not change a later one
    for _ in range(3):
        loss.backward(retain_graph=True)
    tol3 = tol if dtype in LOW_PRECISION else dict(rtol=1e-5, atol=1e-6)
    for x, a in zip((hidden, weight, bias, w), first):
        torch.testing.assert_close(x.grad, 3 * a, **tol3)
        x.grad.zero_()
    loss.backward(torch.tensor(2.0, device=device))
    for x, a in zip((hidden, weight, bias, w), first):
        torch.testing.assert_close(x.grad, 2 * a, **tol3)


@on_devices
def test_gradient_buffers_are_released_after_backward(device):
    tensors, labels, loss_start = _problem(7, 2, 6, 4, 9, device=device)
    hidden, weight, bias, w = _leaves(tensors)
    loss = keypoint_linear_cross_entropy(hidden, weight, labels, w, loss_start, bias)
    node = loss.grad_fn
    assert node.buffers is not None
    loss.backward()
    assert node.buffers is None


@on_devices
def test_validation_names_value_and_position(device):
    tensors, labels, _ = _problem(8, 2, 5, 3, 6, p_ignore=0.0, device=device)
    labels[1, 3] = 6
    with pytest.raises(KPODInputError, match=r"got 6 at position \(1, 3\)"):
        keypoint_linear_cross_entropy(tensors[0], tensors[1], labels)
    labels[1, 3] = -1  # not ignore_index: without validation a NaN row, never silently skipped
    assert torch.isnan(keypoint_linear_cross_entropy(tensors[0], tensors[1], labels, validate=False))
    with pytest.raises(KPODInputError, match="non-negative"):
        w = torch.ones(2, 5, device=device)
        w[0, 2] = -1.0
        labels[1, 3] = 0
        keypoint_linear_cross_entropy(tensors[0], tensors[1], labels, w, reduction="weighted_mean")


@pytest.mark.parametrize(
    "case, match",
    [
        ("hidden_1d", "hidden"),
        ("weight_shape", "lm_head_weight"),
        ("weight_dtype", "lm_head_weight"),
        ("bias_shape", "bias"),
        ("chunk", "chunk_size"),
        ("labels_shape", "labels"),
        ("loss_start_2d", "loss_start"),
    ],
)
@on_devices
def test_bad_inputs_name_the_argument(case, match, device):
    h, W, b = torch.randn(2, 3, 4, device=device), torch.randn(5, 4, device=device), torch.randn(5, device=device)
    y = torch.zeros(2, 3, dtype=torch.long, device=device)
    kw = {}
    if case == "hidden_1d":
        h = torch.randn(4, device=device)
    elif case == "weight_shape":
        W = torch.randn(5, 3, device=device)
    elif case == "weight_dtype":
        W = W.double()
    elif case == "bias_shape":
        b = torch.randn(4, device=device)
    elif case == "chunk":
        kw["chunk_size"] = 0
    elif case == "labels_shape":
        y = torch.zeros(2, 4, dtype=torch.long, device=device)
    elif case == "loss_start_2d":
        h, y = h.reshape(6, 4), y.reshape(6)
        kw["loss_start"] = torch.zeros(2, dtype=torch.long, device=device)
    with pytest.raises(KPODInputError, match=match):
        keypoint_linear_cross_entropy(h, W, y, bias=b, **kw)


@on_devices
def test_module_form_matches_function(device):
    tensors, labels, loss_start = _problem(9, 2, 6, 4, 9, device=device)
    hidden, weight, bias, w = tensors
    module = kpod_ops.KeypointLinearCrossEntropy(reduction="weighted_mean", shift=True, chunk_size=3)
    got = module(hidden, weight, labels, w, loss_start, bias)
    want = keypoint_linear_cross_entropy(hidden, weight, labels, w, loss_start, bias, reduction="weighted_mean", shift=True)
    torch.testing.assert_close(got, want)
    assert "chunk_size=3" in repr(module)


@on_devices
def test_opcheck_registered_ops(device):
    g = torch.Generator().manual_seed(0)
    N, H, V = 10, 4, 7
    h, W, b = (torch.randn(*shape, generator=g).to(device) for shape in ((N, H), (V, H), (V,)))
    target = torch.randint(0, V, (N,), generator=g).to(device)
    use = (torch.rand(N, generator=g) > 0.3).to(device)
    scale = torch.rand(N, generator=g).to(device)
    check = [5, 0, 0]
    torch.library.opcheck(
        linear_ops.nll, (h.requires_grad_(), W.requires_grad_(), b.requires_grad_(), target, use, 0.1, 3, check)
    )
    d = (h.detach(), W.detach(), b.detach())
    torch.library.opcheck(linear_ops.forward_backward, (*d, target, use, scale, 0.1, 3, check, [True, True, True]))
    torch.library.opcheck(linear_ops.backward, (*d, target, use, scale, 0.0, 4, [True, False, True]))


@pytest.mark.slow
@on_devices
def test_torch_compile_fullgraph_scalar_and_none(device):
    tensors, labels, loss_start = _problem(10, 2, 6, 4, 9, device=device)

    def scalar(hidden, weight, w, bias):
        return keypoint_linear_cross_entropy(hidden, weight, labels, w, loss_start, bias, reduction="weighted_mean", shift=True)

    def per_position(hidden, weight, w, bias):
        return keypoint_linear_cross_entropy(hidden, weight, labels, w, loss_start, bias, reduction="none")

    for fn in (scalar, per_position):
        compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
        got_leaves, want_leaves = _leaves(tensors), _leaves(tensors)
        h, W, b, w = got_leaves
        got = compiled(h, W, w, b)
        h2, W2, b2, w2 = want_leaves
        want = fn(h2, W2, w2, b2)
        torch.testing.assert_close(got, want)
        upstream = torch.randn_like(got)
        got.backward(upstream)
        want.backward(upstream)
        for a, c in zip(got_leaves, want_leaves):
            torch.testing.assert_close(a.grad, c.grad, rtol=1e-5, atol=1e-6)


@on_devices
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_double_backward_is_refused_clearly(reduction, device):
    tensors, labels, loss_start = _problem(11, 2, 5, 3, 7, device=device)
    hidden, weight, bias, w = _leaves(tensors)
    out = keypoint_linear_cross_entropy(hidden, weight, labels, w, loss_start, bias, reduction=reduction)
    with pytest.raises(RuntimeError, match="second derivatives"):
        torch.autograd.grad(out.sum(), hidden, create_graph=True)


@on_devices_and_dtypes()
@pytest.mark.parametrize("fn", ["linear", "logits"])
def test_output_scaled_in_place_before_backward(fn, device, dtype):
    """``loss /= accumulation_steps`` on the returned loss gives the same gradients as ``loss / steps``."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 8, generator=g).to(device=device, dtype=dtype).requires_grad_()
    weight = torch.randn(11, 8, generator=g).to(device=device, dtype=dtype).requires_grad_()
    labels, weights = torch.randint(0, 11, (6,), generator=g).to(device), torch.rand(6, generator=g).to(device)

    def loss():
        if fn == "linear":
            return keypoint_linear_cross_entropy(hidden, weight, labels, weights)
        return kpod_ops.keypoint_cross_entropy(hidden @ weight.T, labels, weights)

    expected = torch.autograd.grad(loss() / 4, (hidden, weight))
    scaled = loss()
    scaled /= 4
    got = torch.autograd.grad(scaled, (hidden, weight))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)

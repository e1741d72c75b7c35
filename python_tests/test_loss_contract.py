"""The op's contract: registration (opcheck, gradcheck, torch.compile), invariants K1–K9 of
docs/method.md, edge cases and bad-input errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_helpers import DEVICES, IMPLS, GradProbe, needs_fused
from loss_helpers import FUSED_CPU as FUSED

import kpod_ops
from kpod_ops import KeypointCrossEntropy, KPODInputError, keypoint_cross_entropy
from kpod_ops.losses.reference import keypoint_cross_entropy_reference

devices = pytest.mark.parametrize("device", DEVICES, ids=str)


def _problem(B=2, T=6, V=11, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, 1] = -100
    weights = torch.rand(B, T, generator=g) + 0.1
    start = torch.tensor([2, 0])[:B]
    return logits.to(device), labels.to(device), weights.to(device), start.to(device)


# ---------------------------------------------------------------- registration


@needs_fused
@devices
def test_opcheck_all_ops(device):
    logits, labels, weights, _ = _problem(V=37, device=device)
    target = torch.where(labels < 0, torch.full_like(labels, -1), labels)
    scale = torch.rand(2, 6, device=device)
    scale[1, 2] = 0
    for requires_grad in (False, True):
        x = logits.clone().requires_grad_(requires_grad)
        torch.library.opcheck(torch.ops.kpod.kce_forward.default, (x, target, 0.1))
    nll, lse = torch.ops.kpod.kce_forward(logits, target, 0.0)
    gn, gl = torch.rand(2, 6, device=device), torch.zeros(2, 6, device=device)
    torch.library.opcheck(torch.ops.kpod.kce_backward.default, (logits, target, lse, gn, gl, 0.0))
    torch.library.opcheck(torch.ops.kpod.kce_backward_inplace.default, (logits.clone(), target, lse, gn, gl, 0.1))
    torch.library.opcheck(torch.ops.kpod.kce_forward_backward.default, (logits, target, scale, 0.1))
    torch.library.opcheck(torch.ops.kpod.kce_forward_backward_inplace.default, (logits.clone(), target, scale, 0.0))
    torch.library.opcheck(torch.ops.kpod.scale_.default, (logits.clone(), torch.tensor(0.5, device=device)))
    # strided (row-padded) logits and an all-skipped batch
    wide = torch.randn(2, 6, 40, device=device)[..., :37]
    torch.library.opcheck(torch.ops.kpod.kce_forward.default, (wide.requires_grad_(), target, 0.0))
    torch.library.opcheck(torch.ops.kpod.kce_forward.default, (logits, torch.full_like(target, -1), 0.0))


@needs_fused
@devices
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "weighted_mean"])
@pytest.mark.parametrize("shift", [False, True])
def test_gradcheck_float64(reduction, shift, device):
    logits, labels, weights, start = _problem(V=13, dtype=torch.float64, device=device)
    x = logits.clone().requires_grad_(True)
    w = weights.double().requires_grad_(True)

    def f(x, w):
        return keypoint_cross_entropy(x, labels, w, start, reduction=reduction, shift=shift, label_smoothing=0.1, impl="fused")

    assert torch.autograd.gradcheck(f, (x, w), eps=1e-6, atol=1e-6)


@needs_fused
@devices
def test_gradcheck_through_registered_backward(device):
    """reduction='none' and the lse output go through kce_backward (the 3-pass path)."""
    logits, labels, _, _ = _problem(V=9, dtype=torch.float64, device=device)
    target = torch.where(labels < 0, torch.full_like(labels, -1), labels)

    def f(x):
        nll, lse = torch.ops.kpod.kce_forward(x, target, 0.2)
        return nll * 1.5 + lse * 0.5

    assert torch.autograd.gradcheck(f, (logits.clone().requires_grad_(True),), eps=1e-6, atol=1e-6)


@needs_fused
@devices
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_compile_fullgraph(dtype, device):
    logits, labels, weights, start = _problem(B=2, T=5, V=33, dtype=dtype, device=device)
    loss_fn = KeypointCrossEntropy(reduction="mean", shift=True, validate=False)

    def step(x, w):
        return loss_fn(x, labels, w, start)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    outs = []
    for fn in (step, compiled):
        x = logits.clone().requires_grad_(True)
        w = weights.clone().requires_grad_(True)
        loss = fn(x, w)
        loss.backward()
        outs.append((loss.detach(), x.grad, w.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-6)


@needs_fused
@devices
def test_torch_compile_inductor_forward_backward(device):
    logits, labels, weights, start = _problem(V=17, device=device)
    compiled = torch.compile(lambda x, w: keypoint_cross_entropy(x, labels, w, start, reduction="sum"), fullgraph=True)
    x = logits.clone().requires_grad_(True)
    loss = compiled(x, weights)
    loss.backward()
    ref_x = logits.clone().requires_grad_(True)
    ref = keypoint_cross_entropy_reference(ref_x, labels, weights, start, reduction="sum")
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-5, atol=1e-6)


@needs_fused
def test_autocast_bf16_logits_accepted():
    lin = torch.nn.Linear(8, 19)
    h = torch.randn(2, 5, 8)
    labels = torch.randint(0, 19, (2, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lin(h)
        assert logits.dtype == torch.bfloat16
        loss = keypoint_cross_entropy(logits, labels, impl="fused")
    loss.backward()
    assert torch.isfinite(lin.weight.grad).all() and lin.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- invariants K1–K9


@devices
@pytest.mark.parametrize("impl", IMPLS)
def test_k1_unit_weights_equal_token_ce(impl, device):
    """ω ≡ 1, start at the first rationale token: the 'sum' loss is plain token-level CE (Eq. 1)."""
    logits, labels, _, _ = _problem(B=2, T=8, V=50, device=device)
    labels[:] = torch.randint(0, 50, labels.shape)
    start = torch.tensor([3, 5], device=device)
    got = keypoint_cross_entropy(logits, labels, None, start, reduction="sum", impl=impl)
    masked = labels.clone()
    for b, s in enumerate(start.tolist()):
        masked[b, :s] = -100
    want = F.cross_entropy(logits.reshape(-1, 50), masked.reshape(-1), reduction="sum")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@devices
@pytest.mark.parametrize("impl", IMPLS)
def test_k3_inactive_rows_exactly_zero(impl, device):
    logits, labels, weights, start = _problem(V=21, device=device)
    logits[0, :2] = float("nan")  # before loss_start
    logits[0, 1] = float("inf")  # ignored label
    weights[1, 3] = 0.0
    logits[1, 3] = float("nan")  # zero weight
    x = logits.clone().requires_grad_(True)
    per = keypoint_cross_entropy(x, labels, weights, start, reduction="none", impl=impl)
    assert torch.isfinite(per).all()
    assert per[0, :2].eq(0).all() and per[1, 3].eq(0)
    per.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[0, :2].eq(0).all() and x.grad[1, 3].eq(0).all()


def _poison(z: torch.Tensor, label: int, kind: str) -> None:
    """Non-finite logits in one row: all NaN, one +inf (ℓ = NaN), or the target at −inf (ℓ = +inf)."""
    if kind == "nan":
        z.fill_(float("nan"))
    elif kind == "inf":
        z[(label + 1) % z.numel()] = float("inf")
    else:
        z[label] = float("-inf")


def _loss_and_grads(loss_fn, tensors, reduction):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = loss_fn(*leaves)
    if out.dim():  # per-position losses: a distinct upstream gradient for each
        out.backward(torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype, device=out.device).reshape(out.shape))
    else:
        out.backward()
    return out.detach(), [x.grad for x in leaves]


ZERO_WEIGHT_CASES = pytest.mark.parametrize("kind", ["nan", "inf", "target_neg_inf"])


@devices
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "weighted_mean"])
@ZERO_WEIGHT_CASES
def test_zero_weight_rows_contribute_zero_to_every_gradient_whatever_their_logits(device, impl, reduction, kind):
    """An active ω = 0 row with inf/NaN logits: 0 to the loss and to every gradient, ω's included.

    Every output equals the run where that row holds finite logits, except the row's own weight
    gradient: ℓ there (the exact derivative, so weights at 0 still learn), 0 for the non-finite row.
    """
    logits, labels, weights, start = _problem(V=21, device=device)
    weights[1, 3] = 0.0
    weights[0, 4] = 0.0  # a finite ω = 0 row: its weight keeps the exact gradient ℓ
    poisoned = logits.clone()
    _poison(poisoned[1, 3], int(labels[1, 3]), kind)

    def loss(x, w):
        return keypoint_cross_entropy(x, labels, w, start, reduction=reduction, impl=impl)

    clean_out, (clean_gx, clean_gw) = _loss_and_grads(loss, (logits, weights), reduction)
    out, (gx, gw) = _loss_and_grads(loss, (poisoned, weights), reduction)
    assert torch.isfinite(out).all() and torch.isfinite(gx).all() and torch.isfinite(gw).all()
    torch.testing.assert_close(out, clean_out, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(gx, clean_gx, rtol=1e-6, atol=1e-7)
    assert torch.count_nonzero(gx[1, 3]) == 0
    # the row's weight: ℓ·(1/den) for a finite ℓ (as linearity requires), nothing from a non-finite one;
    # weighted_mean adds −L/Σω to every active weight (the divisor's term, which no logit enters)
    T = labels.shape[1]
    active = (labels != -100) & (torch.arange(T, device=device) >= start[:, None])
    divisor_term = -out / weights[active].sum() if reduction == "weighted_mean" else torch.zeros(())
    torch.testing.assert_close(gw[1, 3], divisor_term.to(gw), rtol=1e-6, atol=1e-7)
    assert clean_gw[1, 3] != gw[1, 3]
    keep = torch.ones_like(gw, dtype=torch.bool)
    keep[1, 3] = False
    torch.testing.assert_close(gw[keep], clean_gw[keep], rtol=1e-6, atol=1e-7)
    assert gw[0, 4] != 0


@devices
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reduction", ["none", "sum", "weighted_mean"])
@ZERO_WEIGHT_CASES
def test_zero_weight_rows_of_the_linear_loss_contribute_zero_to_every_gradient(device, impl, reduction, kind):
    """The same contract for keypoint_linear_cross_entropy: hidden, LM head, bias and weight gradients."""
    g = torch.Generator().manual_seed(3)
    B, T, H, V = 2, 6, 8, 21
    hidden = torch.randn(B, T, H, generator=g).to(device)
    head = (0.5 * torch.randn(V, H, generator=g)).to(device)
    bias = (0.1 * torch.randn(V, generator=g)).to(device)
    labels = torch.randint(0, V, (B, T), generator=g).to(device)
    weights = (torch.rand(B, T, generator=g) + 0.1).to(device)
    weights[1, 3] = 0.0
    weights[0, 4] = 0.0
    poisoned = hidden.clone()
    if kind == "nan":
        poisoned[1, 3] = float("nan")
    else:  # an inf hidden state: ±inf and NaN logits in that row
        poisoned[1, 3, 0] = float("inf") if kind == "inf" else float("-inf")

    def loss(h, w_head, b, w):
        return kpod_ops.keypoint_linear_cross_entropy(h, w_head, labels, w, bias=b, reduction=reduction, impl=impl)

    clean_out, clean = _loss_and_grads(loss, (hidden, head, bias, weights), reduction)
    out, grads = _loss_and_grads(loss, (poisoned, head, bias, weights), reduction)
    assert torch.isfinite(out).all() and all(torch.isfinite(x).all() for x in grads)
    torch.testing.assert_close(out, clean_out, rtol=1e-5, atol=1e-6)
    for name, got, want in zip(("hidden", "lm_head_weight", "bias"), grads[:3], clean[:3]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
    gw, clean_gw = grads[3], clean[3]
    divisor_term = -out / weights.sum() if reduction == "weighted_mean" else torch.zeros(())  # every row is active
    torch.testing.assert_close(gw[1, 3], divisor_term.to(gw), rtol=1e-5, atol=1e-6)
    assert clean_gw[1, 3] != gw[1, 3] and gw[0, 4] != 0
    keep = torch.ones_like(gw, dtype=torch.bool)
    keep[1, 3] = False
    torch.testing.assert_close(gw[keep], clean_gw[keep], rtol=1e-5, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(st.floats(-3, 3), st.floats(-3, 3), st.integers(0, 1000))
def test_k4_linear_in_weights(a, b, seed):
    logits, labels, _, start = _problem(V=29, seed=seed)
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.rand(2, 6, generator=g), torch.randn(2, 6, generator=g)
    L = lambda w: keypoint_cross_entropy(logits, labels, w, start, reduction="sum")  # noqa: E731
    torch.testing.assert_close(L(a * w1 + b * w2), a * L(w1) + b * L(w2), rtol=1e-4, atol=1e-4)
    assert L(torch.zeros(2, 6)).item() == 0.0
    assert L(w1).item() >= 0.0


@devices
@pytest.mark.parametrize("impl", IMPLS)
def test_k5_gradient_formula_and_rows_sum_to_zero(impl, device):
    logits, labels, weights, start = _problem(V=23, device=device)
    x = logits.clone().requires_grad_(True)
    keypoint_cross_entropy(x, labels, weights, start, reduction="sum", impl=impl).backward()
    active = (labels != -100) & (torch.arange(6, device=device).unsqueeze(0) >= start.unsqueeze(1))
    expected = weights.unsqueeze(-1) * (torch.softmax(logits, -1) - F.one_hot(labels.clamp(min=0), 23))
    expected = torch.where(active.unsqueeze(-1), expected, torch.zeros(()))
    torch.testing.assert_close(x.grad, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(x.grad.sum(-1), torch.zeros(2, 6, device=device), rtol=0, atol=1e-5)


@devices
@pytest.mark.parametrize("impl", IMPLS)
def test_k6_shift_invariance(impl, device):
    logits, labels, weights, start = _problem(V=31, device=device)
    base = keypoint_cross_entropy(logits, labels, weights, start, reduction="none", impl=impl)
    moved = keypoint_cross_entropy(logits + torch.randn(2, 6, 1, device=device) * 5, labels, weights, start, reduction="none", impl=impl)
    torch.testing.assert_close(base, moved, rtol=1e-4, atol=1e-4)


@devices
@pytest.mark.parametrize("impl", IMPLS)
def test_k7_earlier_start_never_decreases_loss(impl, device):
    logits, labels, weights, _ = _problem(B=2, T=9, V=17, device=device)
    losses = [
        keypoint_cross_entropy(logits, labels, weights, torch.tensor([c, c], device=device), reduction="sum", shift=True, impl=impl).item()
        for c in range(10, -1, -1)
    ]
    assert all(b >= a - 1e-6 for a, b in zip(losses, losses[1:]))


@devices
@pytest.mark.parametrize("impl", IMPLS)
def test_k8_reductions_consistent(impl, device):
    logits, labels, weights, start = _problem(V=19, device=device)
    kw = dict(impl=impl)
    s = keypoint_cross_entropy(logits, labels, weights, start, reduction="sum", **kw)
    m = keypoint_cross_entropy(logits, labels, weights, start, reduction="mean", **kw)
    wm = keypoint_cross_entropy(logits, labels, weights, start, reduction="weighted_mean", **kw)
    active = (labels != -100) & (torch.arange(6, device=device).unsqueeze(0) >= start.unsqueeze(1))
    torch.testing.assert_close(m, s / active.sum(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(wm, s / weights[active].sum(), rtol=1e-6, atol=1e-6)
    n = keypoint_cross_entropy(logits, labels, weights, start, reduction="mean", num_items_in_batch=torch.tensor(3), **kw)
    torch.testing.assert_close(n, s / 3, rtol=1e-6, atol=1e-6)
    n_int = keypoint_cross_entropy(logits, labels, weights, start, reduction="mean", num_items_in_batch=3, **kw)
    torch.testing.assert_close(n_int, s / 3, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_k9_none_then_per_step_softmax_is_eq8(impl):
    """Per-token NLL from reduction='none', combined per step by softmax(w), equals Eq. 8 done naively."""
    logits, labels, _, _ = _problem(B=1, T=8, V=40)
    labels[:] = torch.randint(0, 40, (1, 8))
    w = torch.rand(1, 8)
    steps = [[1, 2, 3], [4, 5], [6, 7]]  # label positions of three steps (shift=True: 0 has no prediction)
    nll = keypoint_cross_entropy(logits, labels, None, None, reduction="none", shift=True, impl=impl)[0]
    logp = torch.log_softmax(logits[0].double(), -1)
    for step in steps:
        idx = torch.tensor(step)
        got = (torch.softmax(w[0, idx], 0) * nll[idx]).sum()
        naive = sum(
            torch.exp(w[0, j]) / torch.exp(w[0, idx]).sum() * -logp[j - 1, labels[0, j]] for j in step
        )
        torch.testing.assert_close(got.double(), naive.double(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- edges


@devices
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "weighted_mean"])
def test_empty_and_all_inactive_give_zero_not_nan(impl, reduction, device):
    for logits, labels in [
        (torch.randn(0, 5, 7), torch.zeros(0, 5, dtype=torch.long)),
        (torch.randn(3, 4, 7), torch.full((3, 4), -100)),
        (torch.randn(0, 7), torch.zeros(0, dtype=torch.long)),
    ]:
        logits, labels = logits.to(device), labels.to(device)
        x = logits.clone().requires_grad_(True)
        loss = keypoint_cross_entropy(x, labels, reduction=reduction, impl=impl)
        assert torch.isfinite(loss).all() and loss.abs().sum() == 0
        loss.sum().backward()
        assert x.grad is not None and x.grad.abs().sum() == 0


@devices
@pytest.mark.parametrize("impl", IMPLS)
def test_loss_start_beyond_sequence_and_zero(impl, device):
    logits, labels, weights, _ = _problem(V=12, device=device)
    beyond = keypoint_cross_entropy(logits, labels, weights, torch.tensor([100, 6], device=device), reduction="sum", impl=impl)
    assert beyond.item() == 0.0
    zero = keypoint_cross_entropy(logits, labels, weights, torch.tensor([0, 0], device=device), reduction="sum", impl=impl)
    none = keypoint_cross_entropy(logits, labels, weights, None, reduction="sum", impl=impl)
    torch.testing.assert_close(zero, none)


@needs_fused
@devices
def test_zero_denominator_from_num_items_gives_zero_gradient(device):
    logits, labels, weights, start = _problem(V=12, device=device)
    x = logits.clone().requires_grad_(True)
    w = weights.clone().requires_grad_(True)
    loss = keypoint_cross_entropy(x, labels, w, start, reduction="weighted_mean", num_items_in_batch=0, impl="fused")
    loss.backward()
    assert loss.item() == 0.0 and x.grad.abs().sum() == 0 and w.grad.abs().sum() == 0


@needs_fused
@devices
def test_inplace_writes_gradient_and_guards_reuse(device):
    logits, labels, weights, start = _problem(V=15, device=device)
    ref_x = logits.clone().requires_grad_(True)
    ref = keypoint_cross_entropy(ref_x, labels, weights, start, reduction="mean", impl="fused")
    ref.backward()
    lin_in = torch.randn(2, 6, 4, requires_grad=True, device=device)
    head = torch.nn.Linear(4, 15, device=device)
    x = head(lin_in)
    probe = x.sin()  # saves x for its backward: reusing x after the in-place write must fail loudly
    loss = keypoint_cross_entropy(x, labels, weights, start, reduction="mean", inplace_backward=True, impl="fused")
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + probe.sum()).backward()
    # without another reader the gradient reaches the head through the overwritten buffer
    x2 = GradProbe.apply(torch.zeros((), requires_grad=True, device=device), logits)
    loss2 = keypoint_cross_entropy(x2, labels, weights, start, reduction="mean", inplace_backward=True, impl="fused")
    (loss2 * 3).backward()
    torch.testing.assert_close(loss2.detach(), ref.detach())
    torch.testing.assert_close(GradProbe.captured, ref_x.grad * 3)
    assert GradProbe.captured.data_ptr() == x2.data_ptr()  # no extra N×V buffer


def test_inplace_rejects_leaf_logits_and_none_reduction():
    logits, labels, _, _ = _problem(V=10)
    if FUSED:
        with pytest.raises(KPODInputError, match="inplace_backward"):
            keypoint_cross_entropy(logits.clone().requires_grad_(True), labels, inplace_backward=True)
    with pytest.raises(KPODInputError, match="inplace_backward"):
        keypoint_cross_entropy(logits, labels, reduction="none", inplace_backward=True)


def test_fused_available_is_a_bool_and_fused_status_says_why():
    ok, why = kpod_ops.fused_status()
    assert isinstance(ok, bool) and why
    assert kpod_ops.fused_available() is ok  # a bool, so `if kpod_ops.fused_available():` means what it says
    ok_meta, why_meta = kpod_ops.fused_status("meta")
    assert not ok_meta and "meta" in why_meta
    assert kpod_ops.fused_available("meta") is False


# ---------------------------------------------------------------- bad input


@devices
@pytest.mark.parametrize("impl", IMPLS)
def test_bad_input_errors_name_argument_expected_and_actual(impl, device):
    logits, labels, weights, start = _problem(V=10, device=device)
    cases = [
        (dict(labels=labels.clone().index_put_((torch.tensor(1), torch.tensor(4)), torch.tensor(10, device=device))), r"labels: expected values in \[0, 10\).*got 10 at position \(1, 4\)"),
        (dict(labels=labels[:, :5]), r"labels: expected shape \(2, 6\)"),
        (dict(labels=labels.int()), r"labels: expected dtype torch.int64.*torch.int32"),
        (dict(logits=logits.int()), r"logits: expected dtype float32"),
        (dict(logits=logits[0]), None),  # 2-D logits with [2, 6] labels: shape error
        (dict(token_weights=weights[:, :3]), r"token_weights: expected shape \(2, 6\)"),
        (dict(token_weights=weights.long()), r"token_weights: expected a floating-point dtype"),
        (dict(loss_start=start.int()), r"loss_start: expected dtype torch.int64"),
        (dict(loss_start=torch.tensor([1, 2, 3], device=device)), r"loss_start: expected shape \(2,\)"),
        (dict(reduction="avg"), r"reduction: expected one of"),
        (dict(num_items_in_batch=5, reduction="sum"), r"num_items_in_batch: expected None unless"),
        (dict(token_weights=-weights, reduction="weighted_mean"), r"token_weights: expected non-negative weights.*got -"),
        (dict(label_smoothing=1.5), r"label_smoothing: expected a float in \[0, 1\]"),
    ]
    for override, pattern in cases:
        kw = dict(logits=logits, labels=labels, token_weights=weights, loss_start=start, reduction="mean")
        kw.update(override)
        with pytest.raises(KPODInputError, match=pattern or "labels: expected shape"):
            keypoint_cross_entropy(
                kw.pop("logits"), kw.pop("labels"), kw.pop("token_weights"), kw.pop("loss_start"), impl=impl, **kw
            )
    with pytest.raises(KPODInputError, match=r"loss_start: expected None with 2-D"):
        keypoint_cross_entropy(logits.reshape(12, 10), labels.reshape(12), None, start, impl=impl)
    with pytest.raises(KPODInputError, match="impl: expected one of"):
        keypoint_cross_entropy(logits, labels, impl="triton")


@needs_fused
@devices
def test_validate_false_out_of_range_label_gives_nan_not_a_crash(device):
    """Without validation an out-of-range label cannot be reported; the kernels make it loud (NaN),
    never read out of bounds, and never throw from inside a kernel (same on CPU and CUDA)."""
    logits, labels, _, _ = _problem(V=10, device=device)
    labels[1, 2] = 12
    per = keypoint_cross_entropy(logits, labels, validate=False, reduction="none", impl="fused")
    assert torch.isnan(per[1, 2]) and torch.isfinite(per[0]).all()
    x = logits.clone().requires_grad_(True)
    keypoint_cross_entropy(x, labels, validate=False, reduction="sum", impl="fused").backward()
    assert torch.isnan(x.grad[1, 2]).all() and torch.isfinite(x.grad[0]).all()


def test_module_repr_and_forward():
    m = KeypointCrossEntropy(reduction="sum", shift=True)
    assert "reduction='sum'" in repr(m)
    logits, labels, weights, start = _problem(V=8)
    torch.testing.assert_close(
        m(logits, labels, weights, start),
        keypoint_cross_entropy(logits, labels, weights, start, reduction="sum", shift=True),
    )


@needs_fused
@devices
def test_backward_twice_with_retain_graph(device):
    logits, labels, weights, start = _problem(V=14, device=device)
    x = logits.clone().requires_grad_(True)
    loss = keypoint_cross_entropy(x, labels, weights, start, reduction="mean", impl="fused")
    (loss * 2).backward(retain_graph=True)
    first = x.grad.clone()
    (loss * 0.5).backward()
    torch.testing.assert_close(x.grad, first * 1.25, rtol=1e-6, atol=1e-7)


def test_missing_extension_degrades_to_reference():
    """Without kpod_ops._C the API still works (reference) and fused_status() says why."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['kpod_ops._C'] = None\n"
        "import torch, kpod_ops\n"
        "ok, why = kpod_ops.fused_status()\n"
        "assert kpod_ops.fused_available() is False\n"
        "assert not ok and 'did not load' in why, why\n"
        "x = torch.randn(2, 3, 5, requires_grad=True); y = torch.randint(0, 5, (2, 3))\n"
        "loss = kpod_ops.keypoint_cross_entropy(x, y, shift=True); loss.backward()\n"
        "from kpod_ops.losses.reference import keypoint_cross_entropy_reference\n"
        "ref = keypoint_cross_entropy_reference(x.detach(), y, shift=True)\n"
        "assert torch.allclose(loss, ref) and x.grad is not None\n"
        "try:\n"
        "    kpod_ops.keypoint_cross_entropy(x, y, impl='fused')\n"
        "    raise SystemExit('impl=fused should fail without the extension')\n"
        "except RuntimeError as e:\n"
        "    assert 'did not load' in str(e)\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]

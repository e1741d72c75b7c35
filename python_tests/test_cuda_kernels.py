"""CUDA kernels of the fused keypoint cross-entropy vs the PyTorch reference (GPU only).

Tolerances follow the flash-attention rule: the fused error against a float64 computation is at
most twice the error of the fp32-accumulating PyTorch reference on the same inputs, plus a small
floor. Sized to run in about a minute on one H100/H200.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import kpod_ops
from kpod_ops._extension import cuda_kernels_built
from kpod_ops.losses.reference import keypoint_cross_entropy_reference

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.skipif(not cuda_kernels_built(), reason="kpod_ops._C was built without CUDA kernels"),
]

DEV = "cuda"
# floor relative to the largest reference magnitude: losses are fp32 for every input dtype
GRAD_FLOOR = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}
LOSS_FLOOR = 1e-5


def _check(name, fused, ref, gold, floor):
    """fused, ref: results under test and of the fp32 reference; gold: float64 reference."""
    if gold is None:
        assert fused is None and ref is None, name
        return
    fused, ref, gold = fused.double(), ref.double(), gold.double()
    assert fused.shape == gold.shape, (name, fused.shape, gold.shape)
    assert torch.equal(torch.isnan(fused), torch.isnan(gold)), f"{name}: NaN pattern differs"
    fin = torch.isfinite(gold)
    assert torch.equal(fused[~fin & ~torch.isnan(gold)], gold[~fin & ~torch.isnan(gold)]), f"{name}: inf differs"
    if not fin.any():
        return
    err_f = (fused[fin] - gold[fin]).abs().max().item()
    err_r = (ref[fin] - gold[fin]).abs().max().item()
    # the floor scales with the result's magnitude, but never below 1 (V = 1 gives exact zeros in
    # fp64 and ~1e-7 from fp32 exp/log)
    bound = 2 * err_r + floor * max(gold[fin].abs().max().item(), 1.0) + 1e-12
    assert err_f <= bound, f"{name}: fused error {err_f:.3e} > bound {bound:.3e} (reference error {err_r:.3e})"


def _run(fn, logits, labels, weights, upstream, inplace=False, **kw):
    base = logits.detach().clone().requires_grad_(True)
    w = None if weights is None else weights.detach().clone().requires_grad_(True)
    x = base.clone() if inplace else base  # in-place needs a non-leaf
    if inplace:
        kw["inplace_backward"] = True
    out = fn(x, labels, w, **kw)
    out.backward(upstream if out.dim() else upstream.reshape(()))
    return out.detach(), base.grad, None if w is None else w.grad


def _compare(logits, labels, weights, *, inplace=False, **kw):
    red = kw.get("reduction", "mean")
    lead = labels.shape
    gen = torch.Generator(device=DEV).manual_seed(1)
    upstream = (
        torch.randn(lead, device=DEV, generator=gen) if red == "none" else torch.tensor(0.75, device=DEV)
    )

    def fused(*a, **k):
        return kpod_ops.keypoint_cross_entropy(*a, impl="fused", **k)

    ref_fn = keypoint_cross_entropy_reference
    f = _run(fused, logits, labels, weights, upstream, inplace=inplace, **kw)
    r = _run(ref_fn, logits, labels, weights, upstream, **kw)
    g = _run(ref_fn, logits.double(), labels, None if weights is None else weights.double(), upstream.double(), **kw)
    gf = GRAD_FLOOR[logits.dtype]
    _check("loss", f[0], r[0], g[0], LOSS_FLOOR)
    _check("grad_logits", f[1], r[1], g[1], gf)
    _check("grad_weights", f[2], r[2], g[2], LOSS_FLOOR)
    return f


def _inputs(B, T, V, dtype, *, ignore_frac=0.2, weights=True, seed=0, scale=3.0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    logits = (torch.randn(B, T, V, device=DEV, generator=g) * scale).to(dtype)
    labels = torch.randint(0, V, (B, T), device=DEV, generator=g)
    labels[torch.rand(B, T, device=DEV, generator=g) < ignore_frac] = -100
    w = None
    if weights:
        w = torch.rand(B, T, device=DEV, generator=g) * 2 - 0.5
        w[torch.rand(B, T, device=DEV, generator=g) < 0.2] = 0.0
    return logits, labels, w


DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [1, 7, 33, 1000, 2047, 2049, 16385, 50257])
def test_shapes_and_dtypes(dtype, V):
    B, T = (2, 9) if V > 10000 else (3, 17)
    logits, labels, w = _inputs(B, T, V, dtype, seed=V)
    _compare(logits, labels, w, reduction="sum")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_llama3_vocab(dtype):
    logits, labels, w = _inputs(2, 24, 128256, dtype)
    _compare(logits, labels, w, reduction="mean")
    _compare(logits, labels, None, reduction="mean", inplace=True)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "weighted_mean"])
@pytest.mark.parametrize("inplace", [False, True])
def test_reductions_loss_start_shift(reduction, inplace):
    if inplace and reduction == "none":
        pytest.skip("in place needs a scalar reduction")
    logits, labels, w = _inputs(3, 40, 3001, torch.bfloat16, seed=5)
    if reduction == "weighted_mean":
        w = w.abs()
    loss_start = torch.tensor([0, 17, 45], device=DEV)
    for shift in (False, True):
        _compare(logits, labels, w, loss_start=loss_start, reduction=reduction, shift=shift, inplace=inplace)


@pytest.mark.parametrize("dtype", DTYPES)
def test_label_smoothing_and_num_items(dtype):
    logits, labels, w = _inputs(2, 33, 4099, dtype, seed=7)
    _compare(logits, labels, w, reduction="mean", label_smoothing=0.1)
    _compare(logits, labels, w, reduction="sum", label_smoothing=0.2, inplace=True)
    _compare(logits, labels, w.abs(), reduction="weighted_mean", num_items_in_batch=torch.tensor(11.0, device=DEV))


def test_all_inactive_and_non_finite_inactive_rows():
    logits, labels, w = _inputs(2, 16, 5003, torch.bfloat16, seed=9)
    labels[:] = -100
    logits[0, 3] = float("nan")
    logits[1, 5] = float("inf")
    for red in ("mean", "sum", "none"):
        loss, grad, _ = _compare(logits, labels, w, reduction=red)
        assert torch.count_nonzero(loss) == 0 and torch.count_nonzero(grad) == 0
    # non-finite logits on rows excluded by loss_start or ignore_index, other rows active
    logits, labels, w = _inputs(2, 16, 5003, torch.float32, seed=10)
    labels[0, 4] = -100
    logits[0, 4] = float("nan")
    logits[1, :3] = float("-inf")
    logits[1, 3, 7] = float("inf")
    loss_start = torch.tensor([0, 4], device=DEV)
    loss, grad, _ = _compare(logits, labels, w, loss_start=loss_start, reduction="sum")
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    _compare(logits, labels, w, loss_start=loss_start, reduction="mean", inplace=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_strided_and_misaligned_logits(dtype):
    B, T, V = 2, 21, 3001
    g = torch.Generator(device=DEV).manual_seed(3)
    big = torch.randn(B, T + 1, V + 3, device=DEV, generator=g).to(dtype)
    labels = torch.randint(0, V, (B, T), device=DEV, generator=g)
    _compare(big[:, :-1, :V], labels, None, reduction="mean")  # row stride V + 3: every row misaligned
    _compare(big[:, 1:, 1:V + 1], labels, None, reduction="sum", shift=True)
    flat = torch.randn(B * T * 64 + 1, device=DEV, generator=g).to(dtype)
    _compare(flat[1:].view(B, T, 64), labels % 64, None, reduction="mean")  # storage offset of 1 element


def test_inf_nan_on_active_rows_propagate():
    logits, labels, _ = _inputs(1, 6, 2500, torch.float32, ignore_frac=0.0, seed=11)
    logits[0, 0, 5] = float("nan")
    logits[0, 1, 9] = float("inf")
    logits[0, 2, :] = float("-inf")
    logits[0, 3, labels[0, 3]] = float("-inf")
    f = kpod_ops.keypoint_cross_entropy(logits, labels, reduction="none", impl="fused")
    r = keypoint_cross_entropy_reference(logits, labels, reduction="none")
    assert not torch.isfinite(f[0, :4]).any() and not torch.isfinite(r[0, :4]).any(), (f, r)
    for i in (0, 2, 3):  # NaN logit, all -inf row, -inf target logit (+inf row: NaN or inf, as torch's kernel has it)
        assert torch.isnan(f[0, i]) == torch.isnan(r[0, i]) and torch.isinf(f[0, i]) == torch.isinf(r[0, i]), (i, f, r)
    torch.testing.assert_close(f[0, 4:], r[0, 4:])


# ---- direct op tests ----------------------------------------------------------------------------
def _op_inputs(B, T, V, dtype, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = (torch.randn(B, T, V, device=DEV, generator=g) * 2).to(dtype)
    t = torch.randint(0, V, (B, T), device=DEV, generator=g)
    t[0, 0] = -1
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    s = torch.randn(B, T, device=DEV, generator=g, dtype=acc)
    s[0, 1] = 0.0
    return x, t, s


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("V", [5, 3000, 40000])
def test_forward_backward_matches_split_ops(dtype, V):
    x, t, s = _op_inputs(2, 7, V, dtype, seed=V)
    eps = 0.1
    nll, lse = torch.ops.kpod.kce_forward(x, t, eps)
    nll2, grad = torch.ops.kpod.kce_forward_backward(x, t, s, eps)
    grad2 = torch.ops.kpod.kce_backward(x, t, lse, s, torch.zeros_like(s), eps)
    torch.testing.assert_close(nll, nll2)
    tol = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(grad.double(), grad2.double(), rtol=tol, atol=tol)
    # against F.cross_entropy in float64
    z = x.double().reshape(-1, V)
    tt = t.reshape(-1).clamp_min(0)
    ref_nll = F.cross_entropy(z, tt, reduction="none", label_smoothing=eps).reshape(t.shape)
    act = t >= 0
    torch.testing.assert_close(nll[act].double(), ref_nll[act], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse[act].double(), torch.logsumexp(z, -1).reshape(t.shape)[act], rtol=1e-5, atol=1e-5)
    assert nll[0, 0] == 0 and lse[0, 0] == 0
    assert torch.count_nonzero(grad[0, 0]) == 0 and torch.count_nonzero(grad[0, 1]) == 0
    # in place gives the functional result
    xi = x.clone()
    nll3 = torch.ops.kpod.kce_forward_backward_inplace(xi, t, s, eps)
    torch.testing.assert_close(nll3, nll2)
    torch.testing.assert_close(xi, grad)


def test_backward_zero_upstream_rows_and_lse_gradient():
    x, t, _ = _op_inputs(2, 5, 3000, torch.float32)
    x[1, 2] = float("nan")  # zero upstream gradients: the row is not read
    nll, lse = torch.ops.kpod.kce_forward(x, t, 0.0)
    gn = torch.rand_like(lse)
    gl = torch.rand_like(lse)
    gn[1, 2] = 0.0
    gl[1, 2] = 0.0
    grad = torch.ops.kpod.kce_backward(x, t, lse, gn, gl, 0.0)
    assert torch.count_nonzero(grad[1, 2]) == 0 and torch.count_nonzero(grad[0, 0]) == 0
    p = torch.softmax(x.double(), -1)
    ref = (gn + gl).double()[..., None] * p - gn.double()[..., None] * F.one_hot(t.clamp_min(0), 3000).double()
    act = t >= 0
    act[1, 2] = False
    torch.testing.assert_close(grad[act].double(), ref[act], rtol=1e-5, atol=1e-7)


def test_out_of_range_label_gives_nan_without_fault():
    x, t, s = _op_inputs(1, 4, 3000, torch.float32)
    t[0, 2] = 3000
    t[0, 3] = -7
    nll, _ = torch.ops.kpod.kce_forward(x, t, 0.0)
    nll2, grad = torch.ops.kpod.kce_forward_backward(x, t, torch.ones_like(s), 0.0)
    torch.cuda.synchronize()
    assert torch.isnan(nll[0, 2:]).all() and torch.isnan(nll2[0, 2:]).all() and torch.isnan(grad[0, 2:]).all()
    assert torch.isfinite(nll[0, 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scale(dtype):
    x = torch.randn(3, 5, 1001, device=DEV).to(dtype)
    x[0, 0, 0] = float("nan")
    y = x.clone()
    torch.ops.kpod.scale_(y, torch.tensor(1.0, device=DEV))
    assert torch.equal(y.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                       x.view(torch.int16 if dtype == torch.bfloat16 else torch.int32))
    torch.ops.kpod.scale_(y, torch.tensor(-2.5, device=DEV))
    torch.testing.assert_close(y, x * -2.5, equal_nan=True)
    big = x.clone()
    view = big[:, :4, :1000]  # row-strided
    torch.ops.kpod.scale_(view, torch.tensor(0.5, device=DEV))
    torch.testing.assert_close(view, x[:, :4, :1000] * 0.5, equal_nan=True)
    assert torch.equal(big[:, 4], x[:, 4])
    assert torch.equal(big[:, :4, 1000], x[:, :4, 1000])


def test_opcheck():
    x, t, s = _op_inputs(2, 3, 37, torch.float32)
    x.requires_grad_(True)
    opcheck = torch.library.opcheck
    opcheck(torch.ops.kpod.kce_forward.default, (x, t, 0.1))
    nll, lse = torch.ops.kpod.kce_forward(x.detach(), t, 0.1)
    opcheck(torch.ops.kpod.kce_backward.default, (x.detach(), t, lse, s, torch.rand_like(s), 0.1))
    opcheck(torch.ops.kpod.kce_forward_backward.default, (x.detach(), t, s, 0.1))
    opcheck(torch.ops.kpod.kce_forward_backward_inplace.default, (x.detach().clone(), t, s, 0.0))
    opcheck(torch.ops.kpod.kce_backward_inplace.default, (x.detach().clone(), t, lse, s, torch.rand_like(s), 0.1))
    opcheck(torch.ops.kpod.scale_.default, (x.detach().clone(), torch.tensor(2.0, device=DEV)))


def test_torch_compile_fullgraph():
    logits, labels, w = _inputs(2, 12, 3001, torch.bfloat16, seed=4)
    loss_start = torch.tensor([2, 0], device=DEV)

    def f(x, y, ww):
        return kpod_ops.keypoint_cross_entropy(x, y, ww, loss_start, reduction="mean", validate=False, impl="fused")

    compiled = torch.compile(f, fullgraph=True)
    x1 = logits.detach().clone().requires_grad_(True)
    w1 = w.detach().clone().requires_grad_(True)
    out = compiled(x1, labels, w1)
    out.backward()
    x2 = logits.detach().clone().requires_grad_(True)
    w2 = w.detach().clone().requires_grad_(True)
    ref = keypoint_cross_entropy_reference(x2, labels, w2, loss_start, reduction="mean")
    ref.backward()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x1.grad.float(), x2.grad.float(), rtol=2e-2, atol=1e-4)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-4, atol=1e-5)


def test_beyond_int32_elements():
    """N·V > 2^31 in bf16 (about 4.4 GB): sampled rows, including the last ones, vs float64."""
    V = 128256
    N = (2**31) // V + 300
    free, _ = torch.cuda.mem_get_info()
    if free < 3 * N * V * 2:
        pytest.skip(f"needs about {3 * N * V * 2 / 2**30:.1f} GiB free, have {free / 2**30:.1f}")
    g = torch.Generator(device=DEV).manual_seed(0)
    x = torch.randn(1, N, V, device=DEV, dtype=torch.bfloat16, generator=g)
    t = torch.randint(0, V, (1, N), device=DEV, generator=g)
    t[0, -2] = -1
    s = torch.full((1, N), 0.5, device=DEV)
    rows = torch.tensor([0, 1, N // 2, N - 300, N - 3, N - 2, N - 1], device=DEV)
    z = x[0, rows].double()
    tt = t[0, rows]
    ref_nll = F.cross_entropy(z, tt.clamp_min(0), reduction="none")
    ref_grad = 0.5 * (torch.softmax(z, -1) - F.one_hot(tt.clamp_min(0), V).double())
    act = tt >= 0
    ref_nll = torch.where(act, ref_nll, 0.0)
    ref_grad = torch.where(act[:, None], ref_grad, 0.0)
    nll, lse = torch.ops.kpod.kce_forward(x, t, 0.0)
    torch.testing.assert_close(nll[0, rows].double(), ref_nll, rtol=1e-5, atol=1e-5)
    nll2 = torch.ops.kpod.kce_forward_backward_inplace(x, t, s, 0.0)
    torch.testing.assert_close(nll2[0, rows].double(), ref_nll, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x[0, rows].double(), ref_grad, rtol=1e-2, atol=1e-6)
    del x
    torch.cuda.empty_cache()


# ---- synchronisation and CUDA graphs ------------------------------------------------------------
def _sync_warnings(fn):
    """Run fn under torch.cuda.set_sync_debug_mode('warn'); the number of synchronising calls."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.parametrize("inplace", [False, True])
def test_no_host_sync_without_validation(inplace):
    """validate=False: nothing synchronises (an int num_items_in_batch is no host→device copy)."""
    logits, labels, w = _inputs(2, 16, 3001, torch.bfloat16, seed=12)
    w = w.abs()
    n_tensor = torch.tensor(5.0, device=DEV)
    leaf = logits.clone().requires_grad_(True)
    cases = [("mean", 7), ("mean", n_tensor), ("weighted_mean", None), ("weighted_mean", 0), ("sum", None)]
    if not inplace:
        cases.append(("none", None))

    def body():
        for reduction, n in cases:
            x = leaf * 1.0 if inplace else leaf
            loss = kpod_ops.keypoint_cross_entropy(x, labels, w, reduction=reduction, num_items_in_batch=n,
                                                   validate=False, inplace_backward=inplace, impl="fused")
            (loss.sum() * 0.5).backward()

    assert _sync_warnings(body) == 0


def test_validation_synchronises_once():
    logits, labels, w = _inputs(2, 16, 3001, torch.bfloat16, seed=13)
    x = logits.clone().requires_grad_(True)
    w = w.abs()

    def body():
        loss = kpod_ops.keypoint_cross_entropy(x, labels, w, reduction="weighted_mean", impl="fused")
        loss.backward()

    assert _sync_warnings(body) == 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_graph_capture_forward_backward(dtype):
    """validate=False: the op's forward and backward capture in a CUDA graph and replay exactly."""
    logits, labels, w = _inputs(2, 24, 5003, dtype, seed=14)
    w = w.abs()
    x = logits.clone().requires_grad_(True)

    def step():
        loss = kpod_ops.keypoint_cross_entropy(x, labels, w, reduction="mean", num_items_in_batch=30,
                                               validate=False, impl="fused")
        loss.backward()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            x.grad = None
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    x.grad = None
    with torch.cuda.graph(graph):
        static_loss = step()
    fresh, _, _ = _inputs(2, 24, 5003, dtype, seed=15)
    with torch.no_grad():
        x.copy_(fresh)
    graph.replay()
    torch.cuda.synchronize()
    y = fresh.clone().requires_grad_(True)
    want = kpod_ops.keypoint_cross_entropy(y, labels, w, reduction="mean", num_items_in_batch=30, validate=False,
                                           impl="fused")
    want.backward()
    torch.testing.assert_close(static_loss, want)
    torch.testing.assert_close(x.grad, y.grad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
def test_linear_loss_weight_gradient_accumulates_over_chunks(dtype, bias):
    """The CUDA linear path: the LM head's fp32 gradient summed over many chunks (one accumulator)."""
    from kpod_ops.losses.linear_reference import keypoint_linear_cross_entropy_reference

    g = torch.Generator().manual_seed(5)
    B, T, H, V = 2, 96, 64, 1000
    hidden = torch.randn(B, T, H, generator=g).to(DEV)
    head = (0.3 * torch.randn(V, H, generator=g)).to(DEV)
    b = (0.1 * torch.randn(V, generator=g)).to(DEV) if bias else None
    labels = torch.randint(0, V, (B, T), generator=g).to(DEV)
    weights = (torch.rand(B, T, generator=g) + 0.1).to(DEV)
    weights[0, 5] = 0.0

    def grads(fn, cast, **kw):
        leaves = [t.detach().to(cast).requires_grad_(True) for t in (hidden, head)]
        bl = None if b is None else b.detach().to(cast).requires_grad_(True)
        out = fn(leaves[0], leaves[1], labels, weights, bias=bl, reduction="sum", **kw)
        out.backward()
        return [out.detach(), leaves[0].grad, leaves[1].grad, None if bl is None else bl.grad]

    fused = grads(kpod_ops.keypoint_linear_cross_entropy, dtype, chunk_size=16, impl="fused")  # 12 chunks
    ref = grads(keypoint_linear_cross_entropy_reference, dtype)
    gold = grads(keypoint_linear_cross_entropy_reference, torch.float64)
    for name, f, r, o in zip(("loss", "hidden", "lm_head_weight", "bias"), fused, ref, gold):
        if o is None:
            continue
        assert f.dtype == r.dtype, (name, f.dtype, r.dtype)
        _check(f"{name} {dtype}", f, r, o, LOSS_FLOOR if name == "loss" else GRAD_FLOOR[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean", "weighted_mean"])
def test_linear_loss_reductions_shift_and_weight_gradients(dtype, reduction):
    """The CUDA linear path with loss_start, the causal shift, ignored labels and learned weights."""
    from kpod_ops.losses.linear_reference import keypoint_linear_cross_entropy_reference

    g = torch.Generator().manual_seed(6)
    B, T, H, V = 3, 40, 48, 777
    hidden = torch.randn(B, T, H, generator=g).to(DEV)
    head = (0.3 * torch.randn(V, H, generator=g)).to(DEV)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, :3] = -100
    labels = labels.to(DEV)
    weights = (torch.rand(B, T, generator=g) + 0.1).to(DEV)
    weights[1, 10] = 0.0
    start = torch.tensor([5, 0, 17], device=DEV)
    upstream = torch.rand(B, T, generator=g).to(DEV) if reduction == "none" else torch.ones((), device=DEV)

    def grads(fn, cast, **kw):
        h = hidden.detach().to(cast).requires_grad_(True)
        w_head = head.detach().to(cast).requires_grad_(True)
        w = weights.detach().to(torch.float64 if cast == torch.float64 else torch.float32).requires_grad_(True)
        out = fn(h, w_head, labels, w, start, reduction=reduction, shift=True, **kw)
        out.backward(upstream.to(out.dtype) if out.dim() else None)
        return [out.detach(), h.grad, w_head.grad, w.grad]

    fused = grads(kpod_ops.keypoint_linear_cross_entropy, dtype, chunk_size=32, impl="fused")
    ref = grads(keypoint_linear_cross_entropy_reference, dtype)
    gold = grads(keypoint_linear_cross_entropy_reference, torch.float64)
    for name, f, r, o in zip(("loss", "hidden", "lm_head_weight", "token_weights"), fused, ref, gold):
        floor = LOSS_FLOOR if name in ("loss", "token_weights") else GRAD_FLOOR[dtype]
        _check(f"{name} {dtype} {reduction}", f, r, o, floor)

"""Shared helpers for the loss tests: running an implementation with gradients, and the
flash-attention tolerance rule (fused error ≤ 2× the error of fp32-accumulating PyTorch, both
measured against an fp64 reference, plus a small absolute floor)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import pytest
import torch

import kpod_ops
from kpod_ops import keypoint_cross_entropy
from kpod_ops._extension import cuda_kernels_built
from kpod_ops.losses.reference import keypoint_cross_entropy_reference

# Every device-parametrised loss test runs on the CPU, and also on CUDA where a GPU is present
# and the extension has CUDA kernels (as torch_scatter/testing.py does with its `devices`).
DEVICES = [torch.device("cpu")]
if torch.cuda.is_available() and cuda_kernels_built():
    DEVICES.append(torch.device("cuda"))
FUSED_CPU = kpod_ops.fused_available("cpu")
needs_fused = pytest.mark.skipif(not FUSED_CPU, reason="kpod_ops._C not built")
IMPLS = ["fused", "reference"] if FUSED_CPU else ["reference"]


def run(fn, logits, labels, weights=None, loss_start=None, *, weight_grad=True, **kw):
    """Loss value and gradients (logits, weights) of one implementation on fresh leaves."""
    x = logits.detach().clone().requires_grad_(True)
    w = None
    if weights is not None:
        w = weights.detach().clone().requires_grad_(weight_grad)
    loss = fn(x, labels, w, loss_start, **kw)
    seed = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=loss.device)
    seed = seed.reshape(loss.shape) if loss.dim() else None
    if loss.dim():
        (loss * seed).sum().backward()
    else:
        loss.backward()
    gw = None if (w is None or w.grad is None) else w.grad.detach()
    gx = x.grad.detach() if x.grad is not None else torch.zeros_like(x)
    return loss.detach(), gx, gw


class GradProbe(torch.autograd.Function):
    """A non-leaf copy of ``data`` (as an lm_head output would be) that records its gradient."""

    captured: torch.Tensor | None = None

    @staticmethod
    def forward(ctx, anchor, data):
        return data.clone()

    @staticmethod
    def backward(ctx, grad):
        GradProbe.captured = grad
        return torch.zeros_like(grad).sum() * 0, None


def fused(*a, **k):
    return keypoint_cross_entropy(*a, impl="fused", **k)


def reference(*a, **k):
    return keypoint_cross_entropy_reference(*a, **k)


def assert_flash_close(name, got, ref_lowp, ref64, floor, rel=0.0):
    """|got - ref64| ≤ 2·|ref_lowp - ref64| + floor + rel·|ref64|, elementwise (NaN/inf must match);
    ``floor`` a number or a tensor of ``ref64``'s shape."""
    got = got.double()
    ref_lowp = ref_lowp.double()
    ref64 = ref64.double()
    floor = torch.as_tensor(floor, dtype=torch.float64, device=ref64.device).expand_as(ref64)
    finite = torch.isfinite(ref64)
    assert torch.equal(torch.isfinite(got), finite), f"{name}: non-finite pattern differs"
    if not finite.all():
        assert torch.equal(torch.isnan(got), torch.isnan(ref64)), f"{name}: NaN pattern differs"
    err = (got - ref64).abs()[finite]
    floor = floor[finite]
    bound = (2 * (ref_lowp - ref64).abs())[finite] + floor + (rel * ref64.abs())[finite]
    if err.numel():
        worst = (err - bound).argmax()
        assert bool((err <= bound).all()), (
            f"{name}: error {err[worst].item():.3e} exceeds bound {bound[worst].item():.3e} (floor {floor[worst].item():.1e})"
        )


_EPS32 = torch.finfo(torch.float32).eps


def weighted_mean_rounding(ell: torch.Tensor, weights: torch.Tensor, weight_sum: float, factor: float = 16.0):
    """Elementwise allowance for d/dω_i = (ℓ_i − L)/S under ``weighted_mean`` without ``num_items_in_batch``.

    When one row carries most of the active weight S, ℓ_i ≈ L and the two nearly cancel: a kernel that
    holds ℓ_i and L in fp32 is then off by about eps32·(|ℓ_i| + |L|)/S however exact the rest is (found:
    4.7e-5 with ℓ ≈ 20 and S = 0.08). ``ell``: fp64 per-position losses, 0 where inactive; ``weights``
    the token weights; ``weight_sum`` S, the sum of the active ones. ``factor`` allows that many roundings.
    """
    if weight_sum == 0:
        return torch.zeros_like(ell)
    mean = float((weights.double() * ell).sum()) / weight_sum
    return factor * _EPS32 * (ell.abs() + abs(mean)) / abs(weight_sum)


def weight_grad_rounding(logits, labels, weights, loss_start=None, **kw):
    """:func:`weighted_mean_rounding` for the loss on ``logits`` (0 for other reductions, where d/dω_i is
    ℓ_i over a fixed divisor and nothing cancels)."""
    if weights is None or kw.get("reduction") != "weighted_mean" or kw.get("num_items_in_batch") is not None:
        return 0.0
    V = logits.shape[-1]
    if V < 2:  # every ℓ is 0
        return 0.0
    common = {"shift": kw.get("shift", False), "label_smoothing": kw.get("label_smoothing", 0.0)}
    w = weights.detach().double()
    ell = reference(logits.detach().double(), labels, torch.ones_like(w), loss_start, reduction="none", **common)
    ell = torch.nan_to_num(ell, nan=0.0, posinf=0.0, neginf=0.0)
    # S from uniform logits, where every active row's loss is log V (label smoothing or not)
    uniform = torch.zeros(logits.shape, dtype=torch.float64, device=logits.device)
    weight_sum = float(reference(uniform, labels, w, loss_start, reduction="sum", **common)) / math.log(V)
    return weighted_mean_rounding(ell, w, weight_sum)


def check_against_reference(logits, labels, weights=None, loss_start=None, floor_scale=1.0, **kw):
    """Fused vs the reference in the input dtype and in fp64: loss and both gradients."""
    got = run(fused, logits, labels, weights, loss_start, **kw)
    low = run(reference, logits, labels, weights, loss_start, **kw)
    ref = run(
        reference, logits.double(), labels, None if weights is None else weights.double(), loss_start, **kw
    )
    lowp = logits.dtype in (torch.bfloat16, torch.float16)
    # the fused kernels use a 20-ulp vector exp, hence the small relative allowance
    floor_loss, rel = (1e-3 * floor_scale, 1e-5) if lowp else (1e-5 * floor_scale, 1e-5)
    floor_grad = (1e-4 if lowp else 1e-6) * floor_scale
    assert_flash_close("loss", got[0], low[0], ref[0], floor_loss, rel)
    # a gradient rounded to bf16/fp16 may land one ulp away from the reference's rounding
    rel_grad = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}.get(logits.dtype, 1e-5)
    assert_flash_close("grad_logits", got[1], low[1], ref[1], floor_grad, rel_grad)
    if weights is not None:
        assert got[2] is not None and ref[2] is not None
        slack = weight_grad_rounding(logits, labels, weights, loss_start, **kw)
        assert_flash_close("grad_weights", got[2], low[2], ref[2], floor_loss + slack, rel)
    return got


# ---------------------------------------------------------------- device × dtype parametrisation
# (as torch_scatter/testing.py: `devices`, `dtypes`, itertools.product); the CUDA instances exist only
# where DEVICES has CUDA, so a machine without a GPU collects none (nothing is skipped)

FLOAT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]  # every dtype both devices' kernels take
LOW_PRECISION = (torch.bfloat16, torch.float16)

on_devices = pytest.mark.parametrize("device", DEVICES, ids=str)


def on_devices_and_dtypes(dtypes: Sequence[torch.dtype] = tuple(FLOAT_DTYPES)) -> pytest.MarkDecorator:
    """``parametrize("device, dtype", DEVICES × dtypes)`` with ids such as ``cpu-bfloat16``."""
    cases = [
        pytest.param(device, dtype, id=f"{device}-{str(dtype).removeprefix('torch.')}")
        for device, dtype in itertools.product(DEVICES, dtypes)
    ]
    return pytest.mark.parametrize(("device", "dtype"), cases)


def dtype_tolerance(dtype: torch.dtype, scale: float = 1.0) -> dict[str, float]:
    """``assert_close`` tolerances for a result computed from ``dtype`` inputs (fp32 accumulation)
    against an fp64 reference on the same rounded inputs.

    fp32: 1e-5 (a few roundings grown by the sums). bf16/fp16: 4 units of the dtype's epsilon, the
    LM-head logits and the returned gradients being rounded to ``dtype`` once each, the difference
    of two such values (``z_y − lse``) adding a third; ``scale`` widens ``atol`` for results of
    larger magnitude.
    """
    if dtype in LOW_PRECISION:
        eps = torch.finfo(dtype).eps
        return dict(rtol=4 * eps, atol=4 * eps * scale)
    if dtype == torch.float32:
        return dict(rtol=1e-5, atol=1e-5 * scale)
    if dtype == torch.float64:
        return dict(rtol=1e-10, atol=1e-12 * scale)
    raise ValueError(f"dtype_tolerance: expected a float dtype, got {dtype}")

"""Shared helpers for the loss tests: running an implementation with gradients, and the
flash-attention tolerance rule (fused error ≤ 2× the error of fp32-accumulating PyTorch, both
measured against an fp64 reference, plus a small absolute floor)."""

from __future__ import annotations

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
    """|got - ref64| ≤ 2·|ref_lowp - ref64| + floor + rel·|ref64|, elementwise (NaN/inf must match)."""
    got = got.double()
    ref_lowp = ref_lowp.double()
    ref64 = ref64.double()
    finite = torch.isfinite(ref64)
    assert torch.equal(torch.isfinite(got), finite), f"{name}: non-finite pattern differs"
    if not finite.all():
        assert torch.equal(torch.isnan(got), torch.isnan(ref64)), f"{name}: NaN pattern differs"
    err = (got - ref64).abs()[finite]
    bound = (2 * (ref_lowp - ref64).abs() + floor + rel * ref64.abs())[finite]
    if err.numel():
        worst = (err - bound).argmax()
        assert bool((err <= bound).all()), (
            f"{name}: error {err[worst].item():.3e} exceeds bound {bound[worst].item():.3e} (floor {floor:.1e})"
        )


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
        assert_flash_close("grad_weights", got[2], low[2], ref[2], floor_loss, rel)
    return got

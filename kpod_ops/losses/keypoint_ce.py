"""Public API of the fused keypoint-weighted, step-truncated cross-entropy."""

from __future__ import annotations

import torch
from torch import nn

from .._extension import fused_available
from ..errors import bad_input
from . import registration
from .inputs import (
    RowPlan,
    accumulation_dtype,
    check_arguments,
    denominator,
    plan_rows,
    safe_divide,
    validate_values,
)
from .reference import keypoint_cross_entropy_reference

IMPLS = ("auto", "fused", "reference")


def _compiling() -> bool:
    return torch.compiler.is_compiling()


class _ScalarLossFromGradient(torch.autograd.Function):
    """A scalar reduction whose logits gradient was already produced in the forward pass.

    ``grad_buffer`` holds ``row_scale·(softmax − (1−ε)·onehot − ε/V)``; backward scales it by the
    upstream gradient on the device (untouched when that is 1) and hands it to ``logits``.
    ``weights_eff`` is ω on active rows and 0 elsewhere (detached); the gradient w.r.t. the caller's
    weights is returned through ``weights_in``.
    """

    @staticmethod
    def forward(ctx, logits, weights_in, grad_buffer, nll, target, active, weights_eff, inv, den_is_weight_sum):
        use = weights_eff != 0
        loss = torch.where(use, weights_eff * nll, 0.0).sum() * inv
        # kept as an attribute, not saved: in the in-place mode it aliases the logits, whose version
        # counter is bumped after this Function so that every *other* saved use of them fails loudly
        ctx.grad_buffer = grad_buffer
        ctx.save_for_backward(nll, target, active, inv, loss)
        ctx.den_is_weight_sum = den_is_weight_sum
        ctx.logits_shape = logits.shape
        ctx.weights_dtype = None if weights_in is None else weights_in.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        nll, target, active, inv, loss = ctx.saved_tensors
        grad_logits = grad_weights = None
        if ctx.needs_input_grad[0]:
            g = grad_loss.detach().to(torch.float32).reshape(())
            grad = ctx.grad_buffer
            if getattr(ctx, "applied_scale", None) is None:
                # first backward: scale in place, on the device, untouched when g == 1
                torch.ops.kpod.scale_(grad, g)
                ctx.applied_scale = g
                grad_logits = grad.view(ctx.logits_shape)
            else:
                # a later backward (retain_graph, gradcheck): the buffer holds grad·g₁, so rescale
                # out of place; after a first backward with g₁ = 0 this yields NaN rather than a
                # silently wrong gradient
                grad_logits = (grad * (g / ctx.applied_scale).to(grad.dtype)).view(ctx.logits_shape)
        if ctx.needs_input_grad[1]:
            # d/dω of where(ω != 0, ω·ℓ, 0) is ℓ where ω != 0 and 0 where ω == 0 (the masked definition);
            # weighted_mean adds -L/Σω on every active row through its divisor
            term = torch.where(target >= 0, nll, torch.zeros_like(nll))
            if ctx.den_is_weight_sum:
                term = term - torch.where(active, loss, torch.zeros_like(loss))
            grad_weights = (term * inv * grad_loss).to(ctx.weights_dtype)
        return grad_logits, grad_weights, None, None, None, None, None, None, None


def _fused_scalar_with_gradient(
    logits: torch.Tensor,
    plan: RowPlan,
    weights_in: torch.Tensor | None,
    target: torch.Tensor,
    weights_eff: torch.Tensor,
    den: torch.Tensor | None,
    label_smoothing: float,
    den_is_weight_sum: bool,
    inplace: bool,
) -> torch.Tensor:
    """Scalar reduction with the logits gradient produced in the same pass as the loss."""
    one = torch.ones((), dtype=weights_eff.dtype, device=logits.device)
    inv = safe_divide(one, den)  # 1/den, or 0 (with zero gradient) when den == 0; 1 without a divisor
    row_scale = (weights_eff * inv).contiguous()
    if inplace:
        # The gradient overwrites the logits. Their version counter is bumped once the graph edge
        # exists (what mark_dirty does), so any other saved use of them fails loudly in backward.
        # Autograd's history is not rebased: for logits that are a view (a reshaped lm_head output)
        # a rebase would make backward allocate and copy the whole base, undoing the in-place mode.
        with torch.no_grad():
            nll = torch.ops.kpod.kce_forward_backward_inplace(plan.logits3, target, row_scale, label_smoothing)
        loss = _ScalarLossFromGradient.apply(
            logits, weights_in, logits.detach(), nll, target, plan.active, weights_eff, inv, den_is_weight_sum
        )
        torch.autograd.graph.increment_version(logits)
        return loss
    with torch.no_grad():
        nll, grad = torch.ops.kpod.kce_forward_backward(plan.logits3, target, row_scale, label_smoothing)
    return _ScalarLossFromGradient.apply(
        logits, weights_in, grad, nll, target, plan.active, weights_eff, inv, den_is_weight_sum
    )


def _fused(
    logits: torch.Tensor,
    plan: RowPlan,
    token_weights: torch.Tensor | None,
    reduction: str,
    num_items_in_batch: object,
    label_smoothing: float,
    inplace_backward: bool,
) -> torch.Tensor:
    logits3 = plan.logits3
    acc = accumulation_dtype(logits3)
    weights = None if plan.weights is None else plan.weights.to(acc)  # None means ω ≡ 1
    weights_need_grad = token_weights is not None and token_weights.requires_grad and torch.is_grad_enabled()
    logits_need_grad = logits.requires_grad and torch.is_grad_enabled()
    # rows whose loss counts: active with ω != 0 (ω = 0 rows have zero loss and, by the masked
    # definition, zero gradient for both logits and weights); every other row is never read
    use = plan.active if weights is None else plan.active & (weights != 0)
    target = torch.where(use, plan.labels, -1).contiguous()
    if reduction != "none" and logits_need_grad and not _compiling():
        weights_eff = plan.active.to(acc) if weights is None else torch.where(plan.active, weights.detach(), 0.0)
        den = denominator(plan, weights_eff, reduction, num_items_in_batch, acc)
        return _fused_scalar_with_gradient(
            logits, plan, plan.weights if weights_need_grad else None, target, weights_eff, den,
            float(label_smoothing), reduction == "weighted_mean" and num_items_in_batch is None, inplace_backward,
        )
    nll, _lse = torch.ops.kpod.kce_forward(logits3, target, float(label_smoothing))
    contribution = torch.where(use, nll if weights is None else weights * nll, 0.0)
    if reduction == "none":
        return plan.to_label_positions(contribution)
    total = contribution.sum()
    if reduction == "sum":
        return total
    den_weights = plan.active.to(acc) if weights is None else weights
    return safe_divide(total, denominator(plan, den_weights, reduction, num_items_in_batch, acc))


def keypoint_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    token_weights: torch.Tensor | None = None,
    loss_start: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch: int | torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    shift: bool = False,
    validate: bool = True,
    inplace_backward: bool = False,
    impl: str = "auto",
) -> torch.Tensor:
    """Keypoint-weighted, step-truncated cross-entropy, fused (C++/CUDA) with a PyTorch fallback.

    Position ``t`` of sequence ``b`` is *active* when ``labels[b, t] != ignore_index`` and
    ``t >= loss_start[b]`` (and ``t >= 1`` under ``shift``). Its loss is
    ``ℓ = lse(z) − (1−ε)·z_y − (ε/V)·Σ_v z_v`` (torch's label smoothing ε) and its contribution
    ``c = ω·ℓ``; inactive positions and ``ω = 0`` contribute exactly 0 whatever their logits hold.

    Args:
        logits: ``[B, T, V]`` or ``[N, V]``, float32/bfloat16/float16 (float64 for gradcheck);
            any strides with the vocabulary dimension contiguous (``logits[:, :-1]`` is free).
        labels: int64 of the leading shape, indexed by *label position* (also under ``shift``).
        token_weights: per-position weights ω of the leading shape, any sign; None means 1.
            Their gradient is exact (the paper treats them as constants; you may learn them).
        loss_start: int64 ``[B]``, label position of the first token whose loss counts (the first
            token of step ``c_i + 1``). Only with 3-D logits.
        reduction: ``"none"`` (fp32 per position), ``"sum"``, ``"mean"`` (÷ active positions) or
            ``"weighted_mean"`` (÷ Σ active ω, which needs ω ≥ 0).
        num_items_in_batch: replaces the divisor of ``"mean"``/``"weighted_mean"`` (Hugging Face's
            gradient-accumulation / DDP convention). A zero divisor gives 0 with zero gradient.
        shift: causal-LM convention (logits at ``t−1`` predict label ``t``), done without copies.
        validate: check that active labels lie in ``[0, V)`` (and ω ≥ 0 for ``weighted_mean``);
            one device→host synchronisation on CUDA. ``False`` skips it (CUDA graphs).
        inplace_backward: eager, scalar reductions: the gradient is computed in the forward pass
            and written over ``logits`` (no extra ``N×V`` memory). **The logits must not be used
            afterwards**; autograd's version counter makes any saved use fail loudly. Falls back
            to the functional op under ``torch.compile``.
        impl: ``"auto"`` (fused where a kernel exists for the device), ``"fused"`` or
            ``"reference"``.
    """
    check_arguments(logits, labels, token_weights, loss_start, reduction, num_items_in_batch, label_smoothing, shift)
    if impl not in IMPLS:
        raise bad_input("impl", f"one of {IMPLS}", repr(impl))
    if inplace_backward and reduction == "none":
        raise bad_input("inplace_backward", "False with reduction='none' (it needs a scalar reduction)", True)
    ok, why = fused_available(logits.device)
    if impl == "fused" and not ok:
        raise RuntimeError(f"impl='fused' requested but {why}")
    if impl == "reference" or not ok or not registration.REGISTERED:
        return keypoint_cross_entropy_reference(
            logits, labels, token_weights, loss_start, ignore_index=ignore_index, reduction=reduction,
            num_items_in_batch=num_items_in_batch, label_smoothing=label_smoothing, shift=shift, validate=validate,
        )
    plan = plan_rows(logits, labels, token_weights, loss_start, ignore_index, shift)
    if validate:
        validate_values(plan, reduction, ignore_index)
    inplace = bool(inplace_backward) and logits.requires_grad and torch.is_grad_enabled() and not _compiling()
    inplace = inplace and logits.numel() > 0  # nothing to write into an empty tensor
    if inplace and (logits.is_leaf or plan.logits3.data_ptr() != logits.data_ptr() or not logits.is_contiguous()):
        raise bad_input(
            "inplace_backward",
            "contiguous logits produced by an op (e.g. the lm_head output): autograd forbids writing into a leaf "
            "tensor that requires grad; pass inplace_backward=False for this input",
            "a leaf tensor" if logits.is_leaf else "a non-contiguous tensor",
        )
    return _fused(logits, plan, token_weights, reduction, num_items_in_batch, label_smoothing, inplace)


class KeypointCrossEntropy(nn.Module):
    """``nn.Module`` form of :func:`keypoint_cross_entropy` with the options fixed at construction."""

    def __init__(
        self,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        shift: bool = False,
        validate: bool = True,
        inplace_backward: bool = False,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.shift = shift
        self.validate = validate
        self.inplace_backward = inplace_backward
        self.impl = impl

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        token_weights: torch.Tensor | None = None,
        loss_start: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        return keypoint_cross_entropy(
            logits, labels, token_weights, loss_start, ignore_index=self.ignore_index, reduction=self.reduction,
            num_items_in_batch=num_items_in_batch, label_smoothing=self.label_smoothing, shift=self.shift,
            validate=self.validate, inplace_backward=self.inplace_backward, impl=self.impl,
        )

    def extra_repr(self) -> str:
        return (
            f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, "
            f"shift={self.shift}, inplace_backward={self.inplace_backward}, impl={self.impl!r}"
        )

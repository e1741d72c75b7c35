"""Public API of the fused keypoint-weighted, step-truncated cross-entropy."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import bad_input
from . import registration
from .fallback import IMPLS, use_fused
from .fused_scalar import fused_scalar_loss
from .inputs import (
    RowPlan,
    accumulation_dtype,
    check_arguments,
    denominator,
    inverse,
    live_rows,
    plan_rows,
    row_targets,
    safe_divide,
    validated_labels,
)
from .reference import keypoint_cross_entropy_reference
from .zero_weights import zero_weight_rows

__all__ = ["IMPLS", "KeypointCrossEntropy", "keypoint_cross_entropy"]


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _fused(
    logits: torch.Tensor,
    plan: RowPlan,
    labels: torch.Tensor,
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
    den = denominator(plan, weights, reduction, num_items_in_batch, acc)
    live = live_rows(plan.active, den)  # active rows; none when the divisor is 0
    nonzero = live if weights is None else live & (weights != 0)  # rows whose loss counts
    # rows read: those that count, plus ω = 0 rows when the weights need their gradient (ℓ);
    # every other row is never read
    read = live if weights_need_grad else nonzero
    target = row_targets(labels, read, logits3.shape[-1])
    eps = float(label_smoothing)
    fp16_functional = logits3.dtype == torch.float16 and not inplace_backward
    if reduction != "none" and logits_need_grad and not _compiling() and not fp16_functional:
        inv = inverse(den.detach() if isinstance(den, torch.Tensor) else den)  # d/dω is done by hand
        w_eff = nonzero.to(acc) if weights is None else torch.where(nonzero, weights.detach(), 0.0)
        row_scale = (w_eff * inv).contiguous()
        return fused_scalar_loss(
            logits, logits3, plan.weights if weights_need_grad else None, target, row_scale, read, nonzero, live, inv,
            eps, reduction == "weighted_mean" and num_items_in_batch is None and weights is not None, inplace_backward,
        )
    # the registered op: loss (and lse) now, the gradient in backward with the upstream gradient known
    # (the path under torch.compile, for reduction="none" and for fp16 logits)
    nll, _lse = torch.ops.kpod.kce_forward(logits3, target, eps)
    # ℓ masked before the product too: where()'s zero gradient times a NaN ℓ would be NaN in d/dω
    nll_counted = torch.where(nonzero, nll, 0.0)
    contribution = torch.where(nonzero, nll_counted if weights is None else weights * nll_counted, 0.0)
    if weights_need_grad:
        contribution = contribution + zero_weight_rows(weights, nll, read & ~nonzero)
    if reduction == "none":
        return plan.to_label_positions(contribution)
    return safe_divide(contribution.sum(), den)


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
            gradient-accumulation / DDP convention). A zero divisor gives 0 with zero gradient,
            whatever the logits hold. A Python number is used as such (no host→device copy).
        shift: causal-LM convention (logits at ``t−1`` predict label ``t``), done without copies.
        validate: check that active labels lie in ``[0, V)`` (and ω ≥ 0 for ``weighted_mean``) and
            raise :class:`~kpod_ops.KPODInputError` naming the value and its position, in eager mode
            and under ``torch.compile(fullgraph=True)`` alike; one device→host synchronisation on
            CUDA. ``False`` skips it (CUDA graphs): an active label outside ``[0, V)`` then gives a
            NaN loss and gradient row, whatever its value.
        inplace_backward: eager, scalar reductions: the gradient is computed in the forward pass
            (for fp16 logits: in backward, once the upstream gradient is known) and written over
            ``logits`` (no extra ``N×V`` memory). **The logits must not be used afterwards**;
            autograd's version counter makes any saved use fail loudly. The logits must be produced
            by an op (not a leaf, nor a view of one). Falls back to the functional op under
            ``torch.compile``.
        impl: ``"auto"`` (fused where a kernel exists for the device; otherwise the reference, with
            a ``RuntimeWarning`` once per process that states why), ``"fused"`` (the fused kernel or
            a ``RuntimeError`` stating why not) or ``"reference"``.
    """
    check_arguments(logits, labels, token_weights, loss_start, reduction, num_items_in_batch, label_smoothing, shift)
    if impl not in IMPLS:
        raise bad_input("impl", f"one of {IMPLS}", repr(impl))
    if inplace_backward and reduction == "none":
        raise bad_input("inplace_backward", "False with reduction='none' (it needs a scalar reduction)", True)
    if not use_fused("keypoint_cross_entropy", logits.device, impl, registration.REGISTERED):
        return keypoint_cross_entropy_reference(
            logits, labels, token_weights, loss_start, ignore_index=ignore_index, reduction=reduction,
            num_items_in_batch=num_items_in_batch, label_smoothing=label_smoothing, shift=shift, validate=validate,
        )
    plan = plan_rows(logits, labels, token_weights, loss_start, ignore_index, shift)
    checked = validated_labels(plan, reduction, ignore_index) if validate else plan.labels
    inplace = bool(inplace_backward) and logits.requires_grad and torch.is_grad_enabled() and not _compiling()
    inplace = inplace and logits.numel() > 0  # nothing to write into an empty tensor
    if inplace:
        _check_inplace_target(logits, plan)
    return _fused(logits, plan, checked, token_weights, reduction, num_items_in_batch, label_smoothing, inplace)


def _check_inplace_target(logits: torch.Tensor, plan: RowPlan) -> None:
    base = logits._base
    if logits.is_leaf:
        got = "a leaf tensor"
    elif base is not None and base.is_leaf and base.requires_grad:
        got = "a view of a leaf tensor that requires grad"
    elif plan.logits3.data_ptr() != logits.data_ptr() or not logits.is_contiguous():
        got = "a non-contiguous tensor"
    else:
        return
    raise bad_input(
        "inplace_backward",
        "contiguous logits produced by an op (e.g. the lm_head output): the gradient would overwrite a leaf "
        "tensor's data; pass inplace_backward=False for this input",
        got,
    )


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

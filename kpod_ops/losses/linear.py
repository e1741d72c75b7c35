"""Fused linear keypoint cross-entropy: the LM head and the loss without the ``[N, V]`` logits.

``keypoint_linear_cross_entropy(hidden, lm_head_weight, labels, ...)`` equals
``keypoint_cross_entropy(F.linear(hidden, lm_head_weight, bias), labels, ...)`` (same options,
same contract) but

* rows that need nothing (before ``loss_start``, ``ignore_index``, the last row under ``shift``,
  and ``ω = 0`` while the weights need no gradient) are dropped before the matmul — one
  device→host synchronisation per call (plus one more for ``validate=True``);
* the remaining rows go through the LM head in chunks of ``chunk_size`` rows: logits chunk →
  the fused CE kernel (gradient written over the chunk in the same pass) → ``dlogits @ W`` for
  the hidden states and ``dlogitsᵀ @ hidden`` (fp32 accumulation) for the weight. Peak extra
  memory is ``O(chunk_size × V)``, never ``N × V``.

Scalar reductions compute the gradients during the forward pass and apply the upstream gradient
in fp32 in backward (the buffers are handed to autograd, not copied). fp16 inputs, and
``reduction="none"`` with any upstream gradient, compute the gradients in backward with the
upstream gradient already known (the chunk logits are recomputed): exact, and no fp16 gradient is
rounded before its scale is applied. A retained graph gives the same gradients every time (the
second and later backwards recompute). Second derivatives are not supported.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import bad_input
from . import linear_ops
from .fallback import use_fused
from .inputs import accumulation_dtype, check_arguments, denominator, plan_rows, safe_divide, validated_labels
from .linear_reference import keypoint_linear_cross_entropy_reference

HIDDEN_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
AUTO_CHUNK_BYTES = 256 * 2**20  # the largest logits chunk "auto" picks (counted in fp32 elements)
AUTO_CHUNK_FRACTION = 5  # "auto" uses at most 1/5 of the rows per chunk ...
AUTO_CHUNK_MIN_ROWS = 64  # ... but never fewer than 64 rows (GEMMs slow down on thin operands)


def auto_chunk_size(n_rows: int, hidden_size: int, vocab_size: int) -> int:
    """Rows per chunk for ``chunk_size="auto"``: ``N/5`` rows, at most a 256 MiB logits chunk,
    at least 64 rows.

    The chunk (its gradient is written over it) is then a fifth of the ``N × V`` logits, which
    an unfused loss holds about three times over (under a tenth of its extra memory), while each
    chunk's GEMMs are thick enough to run at full speed: on a 2-core CPU, 256-row chunks made the
    GEMMs of N = 2048 rows ~1.3x slower than one unchunked GEMM, 1024-row chunks did not
    (``benchmarks/bench_linear_loss.py`` measures the whole loss).
    """
    by_bytes = AUTO_CHUNK_BYTES // (4 * max(1, vocab_size))
    rows = min(n_rows // AUTO_CHUNK_FRACTION, by_bytes)
    return int(max(1, min(max(n_rows, 1), max(AUTO_CHUNK_MIN_ROWS, rows))))


def _check_linear(hidden: object, weight: object, bias: object, chunk_size: object) -> None:
    if not isinstance(hidden, torch.Tensor):
        raise bad_input("hidden", "a torch.Tensor", type(hidden).__name__)
    if hidden.dim() not in (2, 3) or hidden.shape[-1] < 1:
        raise bad_input("hidden", "a [B, T, H] or [N, H] tensor with H >= 1", f"shape {tuple(hidden.shape)}")
    if hidden.dtype not in HIDDEN_DTYPES:
        raise bad_input("hidden", "dtype float32, bfloat16, float16 or float64", hidden.dtype)
    if not isinstance(weight, torch.Tensor):
        raise bad_input("lm_head_weight", "a torch.Tensor", type(weight).__name__)
    H = hidden.shape[-1]
    if weight.dim() != 2 or weight.shape[1] != H or weight.shape[0] < 1:
        raise bad_input("lm_head_weight", f"a [V, {H}] tensor (nn.Linear layout, V >= 1)", f"shape {tuple(weight.shape)}")
    if weight.dtype != hidden.dtype or weight.device != hidden.device:
        raise bad_input(
            "lm_head_weight", f"dtype {hidden.dtype} on {hidden.device} (hidden's)", f"{weight.dtype} on {weight.device}"
        )
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise bad_input("bias", "a torch.Tensor or None", type(bias).__name__)
        if tuple(bias.shape) != (weight.shape[0],) or bias.dtype != weight.dtype or bias.device != weight.device:
            raise bad_input(
                "bias", f"shape ({weight.shape[0]},), dtype {weight.dtype} on {weight.device}",
                f"shape {tuple(bias.shape)}, {bias.dtype} on {bias.device}",
            )
    if chunk_size != "auto" and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise bad_input("chunk_size", "'auto' or an int >= 1", repr(chunk_size))


class _WeightedContribution(torch.autograd.Function):
    """``c = ω·ℓ`` on rows where it counts, exactly 0 elsewhere, with ``∂c/∂ω = ℓ`` on every used row
    (0 on an ω = 0 row whose ``ℓ`` is not finite: ``ω·ℓ`` has no derivative there).

    ``torch.where(ω != 0, ω·ℓ, 0)`` would give ``∂c/∂ω = 0`` at ``ω = 0``; the exact derivative
    of the sum is ``ℓ`` there, and the value must stay 0 even for a non-finite ``ℓ``.
    """

    @staticmethod
    def forward(ctx, weights: torch.Tensor, nll: torch.Tensor, use: torch.Tensor) -> torch.Tensor:
        nonzero = use & (weights != 0)
        ctx.save_for_backward(weights, nll, use, nonzero)
        return torch.where(nonzero, weights * nll, 0.0)

    @staticmethod
    def backward(ctx, grad):
        weights, nll, use, nonzero = ctx.saved_tensors
        # ℓ on every used row, but 0 on an ω = 0 row whose ℓ is not finite (no derivative there)
        grad_rows = use & (nonzero | torch.isfinite(nll))
        grad_w = torch.where(grad_rows, grad * nll, 0.0) if ctx.needs_input_grad[0] else None
        grad_nll = torch.where(nonzero, grad * weights, 0.0) if ctx.needs_input_grad[1] else None
        return grad_w, grad_nll, None


class _ScalarLinearLoss(torch.autograd.Function):
    """A scalar reduction whose gradients are produced in the forward pass and scaled in backward.

    The forward runs ``kpod_linear::forward_backward`` with ``row_scale = ω_eff / den`` (fp32).
    Backward multiplies by the upstream gradient in fp32. In eager mode the first backward scales
    the buffers in place and hands them to autograd (so the weight gradient is not copied) and
    forgets them; a later backward of a retained graph recomputes them from the saved inputs with
    the new upstream gradient, so every backward is exact. Under ``torch.compile`` the buffers are
    saved tensors and every backward scales them out of place.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, weights_in, target, use, active, weights_eff, den, den_is_weight_sum,
                label_smoothing, chunk_size, check, softcap):
        acc = weights_eff.dtype
        inv = safe_divide(torch.ones((), dtype=acc, device=hidden.device), den)
        row_scale = (weights_eff * inv).contiguous()
        needs = [bool(x) for x in ctx.needs_input_grad[:3]]
        nll, gh, gw, gb = linear_ops.forward_backward(
            hidden, weight, bias, target, use, row_scale, label_smoothing, chunk_size, check, needs, softcap
        )
        total = torch.where(weights_eff != 0, weights_eff * nll, 0.0).sum()
        loss = safe_divide(total, den)
        ctx.compiled = torch.compiler.is_compiling()
        ctx.meta = (label_smoothing, chunk_size, den_is_weight_sum, hidden.dtype, weight.dtype,
                    None if bias is None else bias.dtype, None if weights_in is None else weights_in.dtype, softcap)
        # a copy of the loss, not the output itself: a caller may scale the output in place (loss /= accumulation)
        saved_loss = loss.detach().clone()
        if ctx.compiled:
            ctx.save_for_backward(hidden, weight, bias, target, row_scale, nll, use, active, inv, saved_loss, gh, gw, gb)
        else:
            ctx.save_for_backward(hidden, weight, bias, target, row_scale, nll, use, active, inv, saved_loss)
            ctx.buffers = (gh, gw, gb)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if torch.is_grad_enabled():  # backward(create_graph=True): refused, never silently wrong
            raise RuntimeError(
                "keypoint_linear_cross_entropy: second derivatives (create_graph=True, gradient penalties) are not "
                "supported by the fused linear loss; pass impl='reference' for them"
            )
        saved = ctx.saved_tensors
        hidden, weight, bias, target, row_scale, nll, use, active, inv, loss = saved[:10]
        active = use if active is None else active
        label_smoothing, chunk_size, den_is_weight_sum, h_dtype, w_dtype, b_dtype, ww_dtype, softcap = ctx.meta
        acc = row_scale.dtype
        g = grad_loss.detach().to(acc).reshape(())
        needs = [bool(x) for x in ctx.needs_input_grad[:3]]
        if ctx.compiled:
            gh, gw, gb = (x * g for x in saved[10:])
        elif getattr(ctx, "buffers", None) is not None:
            gh, gw, gb = ctx.buffers
            ctx.buffers = None  # handed to autograd: a later backward recomputes
            for x in (gh, gw, gb):
                x.mul_(g)
        else:
            gh, gw, gb = linear_ops.backward(
                hidden, weight, bias, target, use, (row_scale * g).contiguous(), label_smoothing, chunk_size, needs,
                softcap,
            )
        grad_h = gh.to(h_dtype) if needs[0] else None
        grad_w = gw.to(w_dtype) if needs[1] else None
        grad_b = gb.to(b_dtype) if needs[2] and bias is not None else None
        grad_weights = None
        if ctx.needs_input_grad[3]:
            # ℓ on used rows; 0 on an ω = 0 row (row_scale 0) whose ℓ is not finite
            term = torch.where(use & ((row_scale != 0) | torch.isfinite(nll)), nll, 0.0)
            if den_is_weight_sum:
                term = term - torch.where(active, loss, 0.0)
            grad_weights = (term * inv * g).to(ww_dtype)
        return grad_h, grad_w, grad_b, grad_weights, None, None, None, None, None, None, None, None, None, None


def keypoint_linear_cross_entropy(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    token_weights: torch.Tensor | None = None,
    loss_start: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch: int | torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    shift: bool = False,
    validate: bool = True,
    chunk_size: int | str = "auto",
    impl: str = "auto",
    logit_softcap: float | None = None,
) -> torch.Tensor:
    """Keypoint cross-entropy of ``hidden @ lm_head_weightᵀ (+ bias)`` without building the logits.

    Same result and gradients (w.r.t. ``hidden``, ``lm_head_weight``, ``bias`` and
    ``token_weights``) as ``keypoint_cross_entropy(F.linear(hidden, lm_head_weight, bias), ...)``.

    Args:
        hidden: ``[B, T, H]`` (needed for ``loss_start``) or ``[N, H]``; float32, bfloat16,
            float16 (or float64).
        lm_head_weight: ``[V, H]``, the ``nn.Linear`` layout; same dtype and device as ``hidden``.
        labels, token_weights, loss_start: as in :func:`kpod_ops.keypoint_cross_entropy`, of
            ``hidden``'s leading shape (indexed by label position, also under ``shift``).
        bias: optional ``[V]`` bias of the LM head.
        reduction, num_items_in_batch, label_smoothing, ignore_index, shift: as in
            :func:`kpod_ops.keypoint_cross_entropy`.
        validate: check that every active label lies in ``[0, V)`` (and that active weights are
            ≥ 0 for ``weighted_mean``) with the same error as
            :func:`kpod_ops.keypoint_cross_entropy`, in eager mode and under ``torch.compile``;
            one extra device→host synchronisation on CUDA. With ``False`` a bad label gives a NaN
            row (never silently skipped).
        chunk_size: rows per LM-head chunk; ``"auto"`` picks :func:`auto_chunk_size`.
        impl: ``"auto"`` (the fused kernel where one exists for the device; otherwise the
            reference, which builds the full logits, with a ``RuntimeWarning`` once per process
            that states why), ``"fused"`` (the fused kernel or a ``RuntimeError`` stating why not)
            or ``"reference"``.
        logit_softcap: ``None``, or ``cap > 0``: the logits are soft-capped first,
            ``cap·tanh(logits/cap)`` (Gemma 2/3's ``final_logit_softcapping``), inside each chunk
            with the matching gradient; gradient chunks then hold one more ``[chunk, V]`` buffer.

    The row compaction synchronises once per call (``nonzero``); it happens inside the registered
    ops ``torch.ops.kpod_linear.*``, so ``torch.compile(fullgraph=True)`` works (CUDA-graph
    capture does not). Without a kernel for the device this runs the pure-PyTorch reference, which
    builds the full logits (see ``impl``);
    :func:`kpod_ops.fused_status` says why.
    """
    _check_linear(hidden, lm_head_weight, bias, chunk_size)
    if logit_softcap is not None and (
        isinstance(logit_softcap, bool) or not isinstance(logit_softcap, (int, float))
        or not 0 < float(logit_softcap) < float("inf")
    ):
        raise bad_input("logit_softcap", "None or a finite number > 0", repr(logit_softcap))
    softcap = 0.0 if logit_softcap is None else float(logit_softcap)
    V = lm_head_weight.shape[0]
    lead = tuple(hidden.shape[:-1])
    # a stand-in for the logits ([*lead, V], V elements of storage) for the shared argument checks
    proxy = hidden.detach().new_empty(V).expand(*lead, V)
    check_arguments(proxy, labels, token_weights, loss_start, reduction, num_items_in_batch, label_smoothing, shift)
    if not use_fused("keypoint_linear_cross_entropy", hidden.device, impl, linear_ops.OPS_REGISTERED):
        return keypoint_linear_cross_entropy_reference(
            hidden, lm_head_weight, labels, token_weights, loss_start, bias, ignore_index=ignore_index,
            reduction=reduction, num_items_in_batch=num_items_in_batch, label_smoothing=label_smoothing,
            shift=shift, validate=validate, logit_softcap=logit_softcap,
        )
    plan = plan_rows(proxy, labels, token_weights, loss_start, ignore_index, shift)
    H = hidden.shape[-1]
    hidden2 = hidden.reshape(-1, H)
    N = hidden2.shape[0]
    chunk = auto_chunk_size(N, H, V) if chunk_size == "auto" else int(chunk_size)
    acc = accumulation_dtype(hidden)
    grad_on = torch.is_grad_enabled()
    weights_need_grad = token_weights is not None and token_weights.requires_grad and grad_on
    # validate=True: every active label in [0, V) (and ω >= 0 for weighted_mean), the fused op's
    # check and message, inside an op so that compiled code keeps it
    target = (validated_labels(plan, reduction, ignore_index) if validate else plan.labels).reshape(-1)
    active = plan.active.reshape(-1)
    weights = None if plan.weights is None else plan.weights.reshape(-1).to(acc)
    den = None
    if reduction in ("mean", "weighted_mean"):
        den_weights = active.to(acc) if weights is None else torch.where(active, weights, 0.0)
        den = denominator(plan, den_weights.reshape(plan.active.shape), reduction, num_items_in_batch, acc)
    # rows to compute: active ones, less ω = 0 unless the weights need ℓ there for their gradient,
    # and none when the divisor is 0 (the loss is then 0 with zero gradient, even for a row whose
    # logits are not finite)
    use = active if weights is None or weights_need_grad else active & (weights != 0)
    if isinstance(den, torch.Tensor):
        use = use & (den != 0)
    elif den is not None and float(den) == 0.0:
        use = torch.zeros_like(use)
    check: list[int] = []  # validated above
    needs_grad = grad_on and (
        hidden.requires_grad or lm_head_weight.requires_grad or (bias is not None and bias.requires_grad) or weights_need_grad
    )
    if reduction != "none" and needs_grad and hidden.dtype != torch.float16:
        weights_eff = use.to(acc) if weights is None else torch.where(use, weights.detach(), 0.0)
        den_is_weight_sum = reduction == "weighted_mean" and num_items_in_batch is None and weights is not None
        return _ScalarLinearLoss.apply(
            # (active is passed only when it differs from use: autograd.Function under compile
            # refuses the same tensor twice)
            hidden2, lm_head_weight, bias, weights if weights_need_grad else None, target, use,
            None if use is active else active, weights_eff.contiguous(),
            den.detach() if isinstance(den, torch.Tensor) else den, den_is_weight_sum, float(label_smoothing), chunk,
            check, softcap,
        )
    nll = linear_ops.nll(hidden2, lm_head_weight, bias, target, use, float(label_smoothing), chunk, check, softcap)
    if weights is None:
        contribution = torch.where(use, nll, 0.0)
    else:
        contribution = _WeightedContribution.apply(weights, nll, use)
    if reduction == "none":
        return plan.to_label_positions(contribution.reshape(plan.active.shape))
    total = contribution.sum()
    if reduction == "sum":
        return total
    return safe_divide(total, den)


class KeypointLinearCrossEntropy(nn.Module):
    """``nn.Module`` form of :func:`keypoint_linear_cross_entropy` with the options fixed at construction."""

    def __init__(
        self,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        shift: bool = False,
        validate: bool = True,
        chunk_size: int | str = "auto",
        impl: str = "auto",
        logit_softcap: float | None = None,
    ) -> None:
        super().__init__()
        self.impl = impl
        self.logit_softcap = logit_softcap
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.shift = shift
        self.validate = validate
        self.chunk_size = chunk_size

    def forward(
        self,
        hidden: torch.Tensor,
        lm_head_weight: torch.Tensor,
        labels: torch.Tensor,
        token_weights: torch.Tensor | None = None,
        loss_start: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        return keypoint_linear_cross_entropy(
            hidden, lm_head_weight, labels, token_weights, loss_start, bias, ignore_index=self.ignore_index,
            reduction=self.reduction, num_items_in_batch=num_items_in_batch, label_smoothing=self.label_smoothing,
            shift=self.shift, validate=self.validate, chunk_size=self.chunk_size, impl=self.impl,
            logit_softcap=self.logit_softcap,
        )

    def extra_repr(self) -> str:
        return (
            f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, "
            f"shift={self.shift}, chunk_size={self.chunk_size!r}, impl={self.impl!r}"
            + ("" if self.logit_softcap is None else f", logit_softcap={self.logit_softcap}")
        )

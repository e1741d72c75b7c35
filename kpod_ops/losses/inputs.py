"""Argument checking and the row-level preparation shared by the fused op and its reference.

Everything here works on ``[B, T]``-sized tensors (labels, weights, starts), never on the
``[B, T, V]`` logits, so it costs nothing next to the loss itself and never synchronises
unless ``validate=True`` asks it to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import bad_input
from .validation import checked_labels

REDUCTIONS = ("none", "sum", "mean", "weighted_mean")
LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _describe(t: torch.Tensor) -> str:
    return f"a {t.dtype} tensor of shape {tuple(t.shape)}"


def check_arguments(
    logits: torch.Tensor,
    labels: torch.Tensor,
    token_weights: torch.Tensor | None,
    loss_start: torch.Tensor | None,
    reduction: str,
    num_items_in_batch: object,
    label_smoothing: float,
    shift: bool,
) -> None:
    """Raise :class:`KPODInputError` naming the argument for any malformed input."""
    if not isinstance(logits, torch.Tensor):
        raise bad_input("logits", "a torch.Tensor", type(logits).__name__)
    if logits.dim() not in (2, 3):
        raise bad_input("logits", "a [B, T, V] or [N, V] tensor", _describe(logits))
    if logits.dtype not in LOGIT_DTYPES:
        raise bad_input("logits", "dtype float32, bfloat16, float16 or float64", _describe(logits))
    if logits.shape[-1] < 1:
        raise bad_input("logits", "a vocabulary (last) dimension of size >= 1", _describe(logits))
    if not isinstance(labels, torch.Tensor):
        raise bad_input("labels", "a torch.Tensor", type(labels).__name__)
    lead = tuple(logits.shape[:-1])
    if tuple(labels.shape) != lead:
        raise bad_input("labels", f"shape {lead} (logits' leading shape)", _describe(labels))
    if labels.dtype != torch.int64:
        raise bad_input("labels", "dtype torch.int64", _describe(labels))
    if labels.device != logits.device:
        raise bad_input("labels", f"a tensor on {logits.device}", f"one on {labels.device}")
    if token_weights is not None:
        if not isinstance(token_weights, torch.Tensor):
            raise bad_input("token_weights", "a torch.Tensor or None", type(token_weights).__name__)
        if tuple(token_weights.shape) != lead:
            raise bad_input("token_weights", f"shape {lead} (logits' leading shape)", _describe(token_weights))
        if not token_weights.is_floating_point():
            raise bad_input("token_weights", "a floating-point dtype", _describe(token_weights))
        if token_weights.device != logits.device:
            raise bad_input("token_weights", f"a tensor on {logits.device}", f"one on {token_weights.device}")
    if loss_start is not None:
        if logits.dim() != 3:
            raise bad_input("loss_start", "None with 2-D [N, V] logits (it needs [B, T, V] logits)", _describe(loss_start))
        if not isinstance(loss_start, torch.Tensor):
            raise bad_input("loss_start", "a torch.Tensor of dtype int64 and shape [B]", type(loss_start).__name__)
        if tuple(loss_start.shape) != (logits.shape[0],):
            raise bad_input("loss_start", f"shape ({logits.shape[0]},)", _describe(loss_start))
        if loss_start.dtype != torch.int64:
            raise bad_input("loss_start", "dtype torch.int64", _describe(loss_start))
        if loss_start.device != logits.device:
            raise bad_input("loss_start", f"a tensor on {logits.device}", f"one on {loss_start.device}")
    if reduction not in REDUCTIONS:
        raise bad_input("reduction", f"one of {REDUCTIONS}", repr(reduction))
    if num_items_in_batch is not None:
        if reduction not in ("mean", "weighted_mean"):
            raise bad_input(
                "num_items_in_batch", "None unless reduction is 'mean' or 'weighted_mean'", f"{num_items_in_batch!r} with reduction={reduction!r}"
            )
        if isinstance(num_items_in_batch, torch.Tensor):
            if num_items_in_batch.dim() != 0:
                raise bad_input("num_items_in_batch", "an int or a 0-dim tensor", _describe(num_items_in_batch))
        elif isinstance(num_items_in_batch, bool) or not isinstance(num_items_in_batch, (int, float)):
            raise bad_input("num_items_in_batch", "an int or a 0-dim tensor", repr(num_items_in_batch))
    if not (0.0 <= float(label_smoothing) <= 1.0):
        raise bad_input("label_smoothing", "a float in [0, 1]", label_smoothing)
    if not isinstance(shift, bool):
        raise bad_input("shift", "a bool", repr(shift))


@dataclass
class RowPlan:
    """Per-logits-row view of the problem, with the causal shift already applied.

    Row ``(b, r)`` of the ``[B, T, V]`` logits predicts ``target[b, r]``; under ``shift`` that is
    the label at position ``r + 1`` and the last row predicts nothing.
    """

    logits3: torch.Tensor  # [B, T, V], the caller's logits (a view, never a copy unless V is strided)
    labels: torch.Tensor  # [B, T] labels aligned to logits rows (ignore_index where none)
    weights: torch.Tensor | None  # [B, T] weights aligned to logits rows, or None for 1
    active: torch.Tensor  # [B, T] bool: the row's loss counts
    lead_shape: tuple[int, ...]
    shift: bool

    def to_label_positions(self, per_row: torch.Tensor) -> torch.Tensor:
        """Map a ``[B, T]`` per-row tensor back to label positions (leading shape of the input)."""
        if self.shift and per_row.shape[1] > 0:
            per_row = torch.cat([per_row.new_zeros(per_row.shape[0], 1), per_row[:, :-1]], dim=1)
        return per_row.reshape(self.lead_shape)


def plan_rows(
    logits: torch.Tensor,
    labels: torch.Tensor,
    token_weights: torch.Tensor | None,
    loss_start: torch.Tensor | None,
    ignore_index: int,
    shift: bool,
) -> RowPlan:
    """Align labels/weights to logits rows and compute the activity mask (no N×V work)."""
    lead = tuple(logits.shape[:-1])
    logits3 = logits if logits.dim() == 3 else logits.unsqueeze(0)
    if logits3.shape[-1] > 0 and logits3.stride(-1) != 1:
        logits3 = logits3.contiguous()  # the kernels need the vocabulary dimension contiguous
    labels2 = labels.reshape(logits3.shape[:2])
    weights2 = None if token_weights is None else token_weights.reshape(logits3.shape[:2])
    B, T = labels2.shape
    position = torch.arange(T, device=labels.device)
    if shift and T > 0:
        fill = torch.full((B, 1), ignore_index, dtype=labels2.dtype, device=labels2.device)
        labels2 = torch.cat([labels2[:, 1:], fill], dim=1)
        if weights2 is not None:
            weights2 = torch.cat([weights2[:, 1:], weights2.new_zeros(B, 1)], dim=1)
        label_position = position + 1  # row r predicts label position r + 1
    else:
        label_position = position
    active = labels2 != ignore_index
    if loss_start is not None:
        active = active & (label_position.unsqueeze(0) >= loss_start.unsqueeze(1))
    return RowPlan(logits3, labels2, weights2, active, lead, shift)


def validated_labels(plan: RowPlan, reduction: str, ignore_index: int) -> torch.Tensor:
    """``plan.labels`` after the value checks of ``validate=True`` (one device→host synchronisation
    on CUDA, inside an op so that ``torch.compile`` keeps it): a bad active label, or a negative
    active weight with ``weighted_mean``, raises :class:`KPODInputError` naming value and position."""
    weights = plan.weights if reduction == "weighted_mean" else None
    return checked_labels(
        plan.labels, plan.active, weights, plan.logits3.shape[-1], ignore_index, 1 if plan.shift else 0,
        len(plan.lead_shape) == 1,
    )


def row_targets(labels: torch.Tensor, read: torch.Tensor, vocab: int) -> torch.Tensor:
    """The kernels' ``target``: the label on rows to read, -1 (skip) elsewhere. An active label
    outside ``[0, vocab)`` (possible only with ``validate=False``) becomes ``vocab``, which the
    kernels turn into a NaN row whatever its value (a user label -1 must not read as "skip")."""
    in_range = (labels >= 0) & (labels < vocab)
    return torch.where(read, torch.where(in_range, labels, vocab), -1).contiguous()


def accumulation_dtype(logits: torch.Tensor) -> torch.dtype:
    """fp32 accumulation for fp32/bf16/fp16 logits, fp64 for fp64 (gradcheck)."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def denominator(
    plan: RowPlan,
    weights: torch.Tensor | None,
    reduction: str,
    num_items_in_batch: object,
    acc: torch.dtype,
) -> torch.Tensor | float | None:
    """The divisor of the reduction: None for 'none' and 'sum'; a Python float for a number
    ``num_items_in_batch`` (no host→device copy); else a 0-dim tensor on the logits' device."""
    if reduction in ("none", "sum"):
        return None
    if num_items_in_batch is not None:
        if isinstance(num_items_in_batch, torch.Tensor):
            n = num_items_in_batch.detach()
            if n.device.type == "cpu" and plan.active.device.type != "cpu" and not torch.compiler.is_compiling():
                return float(n)  # a CPU read, not a blocking copy to the device
            return n.to(device=plan.active.device, dtype=acc)
        return float(num_items_in_batch)
    if reduction == "mean" or weights is None:
        return plan.active.sum().to(acc)
    return torch.where(plan.active, weights, 0).sum()


def live_rows(active: torch.Tensor, den: torch.Tensor | float | None) -> torch.Tensor:
    """Active rows, or none at all when the divisor is 0 (the loss is then 0 with zero gradient:
    no row is read, so no non-finite logit can turn 0·x into NaN)."""
    if den is None:
        return active
    if isinstance(den, torch.Tensor):
        return active & (den != 0)
    return active if den != 0 else torch.zeros_like(active)


def inverse(den: torch.Tensor | float | None) -> torch.Tensor | float:
    """``1/den``, 0 where ``den == 0``, 1 without a divisor."""
    if den is None:
        return 1.0
    if isinstance(den, torch.Tensor):
        return safe_divide(torch.ones_like(den), den)
    return 1.0 / den if den != 0 else 0.0


def safe_divide(total: torch.Tensor, den: torch.Tensor | float | None) -> torch.Tensor:
    """``total / den`` with 0 (and zero gradient) where ``den == 0``."""
    if den is None:
        return total
    if not isinstance(den, torch.Tensor):
        return total * (1.0 / den) if den != 0 else total * 0.0  # den == 0: nothing was read, total is 0
    zero = den == 0
    return torch.where(zero, torch.zeros_like(total), total / torch.where(zero, torch.ones_like(den), den))

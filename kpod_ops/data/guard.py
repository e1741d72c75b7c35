"""Labels that refuse to be consumed by a loss that ignores the KPOD batch fields.

``KPODCollator`` returns ``labels`` as :class:`KPODLabels`, a ``torch.Tensor`` subclass that behaves
like the plain tensor everywhere (moving, slicing, padding, counting ``labels != -100``, pickling to
data-loader workers) but raises :class:`~kpod_ops.errors.KPODInputError` when a loss outside
kpod_ops consumes it — ``cross_entropy``, ``nll_loss``, ``gather``, ``one_hot``, ``clamp`` (the
``-100 → 0`` step of hand-written losses) or boolean-mask selection of the labels. Without this a
Hugging Face model that was not patched would silently train plain cross-entropy on a KPOD batch,
ignoring ``token_weights``. kpod_ops' own losses unwrap the labels; to compute a plain loss on
purpose, call :func:`unguard` first.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch._guards
import torch.nn.functional as F

from ..errors import KPODInputError

_CONSUMERS = {
    F.cross_entropy, F.nll_loss, F.one_hot, F.embedding,
    torch.gather, torch.Tensor.gather, torch.take_along_dim, torch.Tensor.take_along_dim,
    torch.clamp, torch.Tensor.clamp, torch.clip, torch.Tensor.clip, torch.clamp_min, torch.Tensor.clamp_min,
}
_GETITEM = torch.Tensor.__getitem__
_UNWRAP = {torch.Tensor.as_subclass}
_OWN_MODULES = ("kpod_ops.losses", "kpod_ops.curriculum", "kpod_ops.weighting", "kpod_ops.pipeline")

MESSAGE = (
    "a KPOD batch (labels from KPODCollator, with token_weights and loss_start) reached a loss that ignores "
    "token_weights and loss_start, so it would silently train plain cross-entropy. Patch the model with "
    "kpod_ops.integrations.hf.apply_kpod_loss(model), or train with KPODTrainer / KPODSFTTrainer, or compute "
    "kpod_ops.keypoint_cross_entropy(logits, labels, token_weights, loss_start, shift=True) yourself. "
    "(For a plain loss on purpose, pass kpod_ops.data.unguard(labels).)"
)

COMPILE_MESSAGE = (
    "a KPOD batch's labels (from KPODCollator) reached code that torch.compile is tracing: under torch.compile "
    "(e.g. Trainer's torch_compile=True) patch the model with kpod_ops.integrations.hf.apply_kpod_loss(model) "
    "(its forward hands the compiled model plain labels) or train with KPODTrainer / KPODSFTTrainer (they also "
    "unguard the labels before any compiled wrapper runs), or pass kpod_ops.data.unguard(labels) to your compiled "
    "function"
)


def _called_from_kpod_ops() -> bool:
    """Whether the code that called the torch function (the first frame outside torch) is kpod_ops'."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not (name == "torch" or name.startswith("torch.")):
            return name.startswith(_OWN_MODULES)
        frame = frame.f_back
    return False


def _holds_labels(values: Any) -> bool:
    return any(isinstance(v, KPODLabels) for v in values)


class KPODLabels(torch.Tensor):
    """``labels`` of a KPOD batch; see the module docstring. Results of integer ops on them stay guarded."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if torch._guards.TracingContext.try_get() is not None:  # torch.compile is tracing code that holds the labels
            raise KPODInputError(COMPILE_MESSAGE)
        kwargs = kwargs or {}
        if func in _CONSUMERS and (_holds_labels(args) or _holds_labels(kwargs.values())):
            if not _called_from_kpod_ops():
                raise KPODInputError(MESSAGE)
        elif func is _GETITEM and isinstance(args[0], KPODLabels) and _is_bool_mask(args[1]):
            if not _called_from_kpod_ops():
                raise KPODInputError(MESSAGE)
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        if func in _UNWRAP or not (args and isinstance(args[0], KPODLabels)):
            return out
        if isinstance(out, torch.Tensor) and not isinstance(out, KPODLabels) and out.dtype == torch.int64:
            return out.as_subclass(KPODLabels)
        return out


def _is_bool_mask(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def guard(labels: torch.Tensor) -> KPODLabels:
    """``labels`` as :class:`KPODLabels` (no copy)."""
    return labels.as_subclass(KPODLabels)


def unguard(labels: torch.Tensor) -> torch.Tensor:
    """A plain ``torch.Tensor`` view of ``labels`` (no copy); plain tensors are returned as they are."""
    if isinstance(labels, KPODLabels):
        with torch._C.DisableTorchFunctionSubclass():
            return labels.as_subclass(torch.Tensor)
    return labels


def is_guarded(labels: Any) -> bool:
    """Whether ``labels`` came from a KPOD collator."""
    return isinstance(labels, KPODLabels)

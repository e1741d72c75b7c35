"""Per-row answer NLL of the answer predictor: fused from the hidden states, or from the logits.

The answer predictor needs the LM head only on the rows that predict answer tokens. With the fused
linear keypoint cross-entropy (:func:`kpod_ops.keypoint_linear_cross_entropy`) it never builds
their ``[rows, V]`` logits either: the loss and its gradients come from those rows' hidden states
and the head's weight, chunk by chunk. That needs a plain linear head (``hidden @ Wᵀ + b``):
the learner's own answer head (any predictor family), or the LM head of a decoder-only model
family the fused loss knows (:func:`kpod_ops.integrations.linear_patch.supports`). Other
predictors (an encoder–decoder model's own head, heads that scale, soft-cap or adapt their logits)
use the logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import bad_input
from ..losses.linear import keypoint_linear_cross_entropy

FUSED_LINEAR = ("auto", True, False)


def fused_linear_support(model: nn.Module, answer_head: nn.Module | None) -> tuple[bool, str]:
    """Whether the answer loss of ``model`` (a Hugging Face LM, maybe PEFT-wrapped) can be fused, and why."""
    if answer_head is not None:
        if type(answer_head) is not nn.Linear:
            return False, f"the answer head is a {type(answer_head).__name__}, not a plain nn.Linear"
        return True, "the learner's answer head (over the student's vocabulary) is a plain linear layer"
    if getattr(model.config, "is_encoder_decoder", False):
        return False, (
            f"{type(model).__name__} is an encoder-decoder model whose own LM head is used (T5 rescales the "
            "decoder output of a tied head); the fused answer loss supports it only with the learner's answer "
            "head (a student vocabulary that differs from the predictor's)"
        )
    from ..integrations.linear_patch import supports_plain_head

    return supports_plain_head(model)  # the fused loss uses lm_head alone: no family logit scaling / soft-capping


def resolve_fused_linear(mode: bool | str, model: nn.Module, answer_head: nn.Module | None) -> tuple[bool, str]:
    """``(use the fused loss, why)`` for ``fused_linear=mode``; ``True`` on an unsupported model is an error."""
    if mode not in FUSED_LINEAR:
        raise bad_input("fused_linear", f"one of {FUSED_LINEAR}", repr(mode))
    if mode is False:
        return False, "fused_linear=False: the answer loss is computed from the logits"
    ok, why = fused_linear_support(model, answer_head)
    if not ok and mode is True:
        raise bad_input("fused_linear", "a predictor the fused linear loss supports (or 'auto' / False)", why)
    return ok, why


def row_nll_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[R, A, V]`` logits, ``[R, A]`` targets (``-100`` = none) -> summed NLL per row ``[R]`` (fp32)."""
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="none")
    return nll.view(targets.shape).sum(-1)


def row_nll_fused(hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor) -> torch.Tensor:
    """The same as ``row_nll_from_logits(head(hidden), targets)`` without the logits (``hidden`` is ``[R, A, H]``)."""
    weight, bias = head.weight, head.bias
    device = hidden.device.type
    if torch.is_autocast_enabled(device):  # what nn.Linear computes in under autocast
        dtype = torch.get_autocast_dtype(device)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    nll = keypoint_linear_cross_entropy(hidden, weight, targets, bias=bias, reduction="none")
    return nll.float().sum(-1)

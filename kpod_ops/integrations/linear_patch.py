"""Train a Llama-style Hugging Face causal LM without building its ``[B, T, V]`` logits.

Users patch a model with ``apply_kpod_loss(model, fused_linear=True)``
(:mod:`kpod_ops.integrations.hf`); this module is the mechanism behind it, and ``supports(model)``
says which models it applies to.

:func:`patch_linear_loss` replaces the forward of a ``LlamaForCausalLM``-style model (Llama,
SmolLM2, Mistral, Qwen2, Qwen3; optionally inside PEFT or DDP wrappers) by one that, when
``labels`` are given, computes the loss with :func:`kpod_ops.keypoint_linear_cross_entropy` from
the backbone's last hidden states and the LM head's weight (causal shift, inactive positions
dropped before the LM-head matmul, chunked, gradients for the hidden states and the head). In
training mode it returns ``logits=None`` (that is the point); in eval mode it also returns the
logits (evaluation loops read them). Without ``labels`` it is the original forward.

Contract (what :func:`kpod_ops.integrations.hf.apply_kpod_loss` relies on):

* ``supports(model) -> (bool, reason)`` says whether the patch applies, and why not: the model
  class must be one of :data:`SUPPORTED_MODEL_TYPES` with a ``model`` backbone and a plain
  ``nn.Linear`` ``lm_head`` (a LoRA-adapted or ``modules_to_save`` head is refused: its output is
  not ``hidden @ weightᵀ``), no logit soft-capping or scaling, and a **full, unsharded** LM-head
  weight. FSDP1, DeepSpeed ZeRO-3 and tensor parallelism shard that weight
  and are refused; DDP and ZeRO-1/2 keep it whole, and FSDP2 (``fully_shard``, before or after
  patching) has it gathered for the loss (:mod:`kpod_ops.integrations.fsdp`).
* ``patch_linear_loss(model, loss_fn=None)`` patches the unwrapped base model in place and returns
  ``model``; it raises :class:`~kpod_ops.errors.KPODInputError` with ``supports``' reason when
  the model is not supported. Patching twice is a no-op (with the same ``loss_fn``).
* The patched forward accepts the original arguments plus keyword-only ``token_weights``
  (``[B, T]``) and ``loss_start`` (``[B]``) and Trainer's ``num_items_in_batch``, and computes
  ``loss_fn(hidden, lm_head_weight, labels, bias=..., token_weights=..., loss_start=...,
  num_items_in_batch=..., ignore_index=-100)``. The default :func:`linear_causal_lm_loss` is the
  Hugging Face causal-LM loss (``shift=True``, mean over active tokens, or ``Σ ÷
  num_items_in_batch``) with the KPOD weights and truncation; an integration may pass its own
  ``loss_fn`` (e.g. one that reads the batch fields it captured elsewhere).
* ``unpatch_linear_loss(model)`` restores the forward that was in place before the patch (an
  integration that wrapped the patched forward must restore its own wrapper first).
* What it returns: a **token mean**, ``Σ ω·ℓ`` over the active positions divided by
  ``num_items_in_batch`` (Trainer's token count) or, called directly, by the batch's active tokens
  (Hugging Face's causal-LM convention; a sum per sequence is that times the active tokens per
  sequence).
* A model whose class overrides the family's ``forward`` (a subclass, remote code, another kernel
  patch) is not supported: the patched forward would bypass it.
* Under autocast the hidden states and the head's weight are cast to the autocast dtype first,
  as ``nn.Linear`` would be.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._optional import require
from ..errors import KPODInputError, bad_input
from ..losses.linear import keypoint_linear_cross_entropy
from .fsdp import is_fully_sharded, sharding_refusal, through_head, unwrapped_class

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_ATTR = "_kpod_linear_patch"

LossFn = Callable[..., torch.Tensor]

__all__ = [
    "SUPPORTED_MODEL_TYPES", "linear_causal_lm_loss", "supports",
]


def _unwrap(model: Any) -> Any:
    """The ``PreTrainedModel`` inside DDP / DataParallel / PEFT wrappers."""
    while isinstance(model, torch.nn.parallel.DistributedDataParallel) or type(model).__name__ == "DataParallel":
        model = model.module
    if hasattr(model, "get_base_model") and callable(model.get_base_model):
        model = model.get_base_model()
    return model


def _sharded(model: Any, weight: Any) -> str | None:
    """Why the LM-head weight cannot be read whole inside the forward, or None (FSDP2 is fine)."""
    return sharding_refusal(model, weight)


def supports(model: Any) -> tuple[bool, str]:
    """Whether :func:`patch_linear_loss` can patch ``model``, and why not (or what it patches)."""
    base = _unwrap(model)
    config = getattr(base, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return False, f"model type {model_type!r} is not one of {SUPPORTED_MODEL_TYPES} (its forward is not known to the patch)"
    cls = type(base).__name__
    if not cls.endswith("ForCausalLM"):
        return False, f"{cls} is not a *ForCausalLM model"
    if not isinstance(getattr(base, "model", None), torch.nn.Module):
        return False, f"{cls} has no `model` backbone"
    forward_module = getattr(type(base).forward, "__module__", "") or ""
    if not forward_module.startswith("transformers.models."):
        return False, (
            f"{cls}.forward comes from {forward_module or 'unknown code'}, not from transformers' {model_type} model "
            "(a subclass, remote code or another kernel patch): the patch would bypass it"
        )
    head = getattr(base, "lm_head", None)
    if unwrapped_class(head) is not torch.nn.Linear:
        return False, (
            f"lm_head is a {type(head).__name__}, not a plain nn.Linear (a LoRA-adapted or modules_to_save head "
            "does not compute hidden @ weight.T); keep the LM head out of the adapter's target modules"
        )
    for attr in ("final_logit_softcapping", "logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(config, attr, None) not in (None, 1, 1.0):
            return False, f"config.{attr}={getattr(config, attr)!r} transforms the logits"
    why = _sharded(model, head.weight)
    if why is not None:
        return False, f"{why}; the fused linear loss needs the full weight on every rank (DDP, FSDP2, ZeRO-1/2)"
    return True, f"{cls} ({model_type}): the training loss is computed from the hidden states without logits"


def linear_causal_lm_loss(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    token_weights: torch.Tensor | None = None,
    loss_start: torch.Tensor | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
    ignore_index: int = -100,
    impl: str = "auto",
) -> torch.Tensor:
    """Hugging Face's causal-LM loss, KPOD-weighted: ``Σ ω·ℓ`` over the active positions divided by
    ``num_items_in_batch`` when given (Trainer's token count of the accumulated global batch), else by
    this batch's active tokens — a **token mean**. ``impl`` as in
    :func:`~kpod_ops.keypoint_linear_cross_entropy` (``"fused"``: the fused kernel or an error)."""
    labels = labels.to(hidden.device)
    if token_weights is not None:
        token_weights = token_weights.to(device=hidden.device, dtype=torch.float32)
    if loss_start is not None:
        loss_start = loss_start.to(device=hidden.device, dtype=torch.int64)
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(hidden.device)
    return keypoint_linear_cross_entropy(
        hidden, lm_head_weight, labels, token_weights, loss_start, bias, ignore_index=ignore_index,
        reduction="mean", num_items_in_batch=num_items_in_batch, shift=True, impl=impl,
    )


class _LinearPatch:
    def __init__(self, base: Any, loss_fn: LossFn) -> None:
        self.loss_fn = loss_fn
        self.saved_forward = base.__dict__.get("forward")  # None: the class's forward


def _head_inputs(hidden: torch.Tensor, head: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    weight, bias = head.weight, head.bias
    device = hidden.device.type
    if torch.is_autocast_enabled(device):  # what nn.Linear would compute in under autocast
        dtype = torch.get_autocast_dtype(device)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    elif weight.dtype != hidden.dtype:
        raise KPODInputError(
            f"hidden states: expected the LM head's dtype {weight.dtype}, got {hidden.dtype} (cast the model to one "
            "dtype, or train under torch.autocast)"
        )
    return hidden, weight, bias


def hidden_and_head(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(last hidden states ``[B, T, H]``, LM-head weight, bias) of a model :func:`supports` accepts,
    cast as the head would be under autocast: the inputs of :func:`~kpod_ops.keypoint_linear_cross_entropy`
    for a training loop that wants the loss without the logits (and without patching the forward)."""
    ok, why = supports(model)
    if not ok:
        raise bad_input("model", "a model supported by the fused linear loss", why)
    if any(is_fully_sharded(m) for m in _unwrap(model).modules()):
        raise bad_input("model", "a model without FSDP2 units (hidden_and_head calls the backbone and reads the "
                        "LM head outside FSDP2's forward hooks)", "a model with fully_shard units: patch it with "
                        "apply_kpod_loss(model) instead")
    base = _unwrap(model)
    hidden = base.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return _head_inputs(hidden, base.lm_head)


def _make_forward(patch: _LinearPatch, original: Any) -> Any:
    outputs_mod = require("transformers.modeling_outputs", extra="hf", feature="kpod_ops.integrations.linear_patch")
    utils_mod = require("transformers.modeling_utils", extra="hf", feature="kpod_ops.integrations.linear_patch")
    CausalLMOutputWithPast, slice_logits_to_keep = outputs_mod.CausalLMOutputWithPast, utils_mod.slice_logits_to_keep

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
                labels=None, use_cache=None, logits_to_keep=0, *, token_weights=None, loss_start=None,
                num_items_in_batch=None, **kwargs):
        if labels is None:
            if token_weights is not None or loss_start is not None:
                raise bad_input("labels", "a tensor when token_weights or loss_start is given", None)
            return original(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                            logits_to_keep=logits_to_keep, **kwargs)
        if kwargs.get("shift_labels") is not None:
            raise KPODInputError(
                "shift_labels: expected None (unshifted labels), got pre-shifted labels (context / sequence parallelism "
                "or a padding-free collator); these are not supported by the fused linear loss"
            )
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                             **kwargs)
        hidden = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        def head_loss(hidden_in):  # with the LM head's weight whole (an FSDP2 unit: inside its call)
            h, weight, bias = _head_inputs(hidden_in, self.lm_head)
            return patch.loss_fn(h, weight, labels, bias=bias, token_weights=token_weights, loss_start=loss_start,
                                 num_items_in_batch=num_items_in_batch, ignore_index=-100)

        loss = through_head(self.lm_head, hidden, head_loss)
        logits = None if self.training else self.lm_head(hidden)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)

    forward.__doc__ = getattr(original, "__doc__", None)
    return forward


def patch_linear_loss(model: Any, loss_fn: LossFn | None = None) -> Any:
    """Make ``model``'s loss the fused linear keypoint loss (no logits in training); returns ``model``.

    See the module docstring for the contract. Raises :class:`KPODInputError` with the reason
    from :func:`supports` when the model cannot be patched.
    """
    ok, why = supports(model)
    if not ok:
        raise bad_input("model", "a model supported by the fused linear loss patch", why)
    base = _unwrap(model)
    loss_fn = linear_causal_lm_loss if loss_fn is None else loss_fn
    existing = getattr(base, _ATTR, None)
    if isinstance(existing, _LinearPatch):
        if existing.loss_fn is not loss_fn:
            raise KPODInputError("model: already patched with another loss_fn; call unpatch_linear_loss(model) first")
        return model
    patch = _LinearPatch(base, loss_fn)
    original = base.forward
    base.forward = _make_forward(patch, original).__get__(base)
    setattr(base, _ATTR, patch)
    return model


def is_linear_patched(model: Any) -> bool:
    """Whether :func:`patch_linear_loss` patched ``model`` (or the model inside its wrappers)."""
    return isinstance(getattr(_unwrap(model), _ATTR, None), _LinearPatch)


def unpatch_linear_loss(model: Any) -> Any:
    """Undo :func:`patch_linear_loss` (restores the previous forward); returns ``model``."""
    base = _unwrap(model)
    patch = getattr(base, _ATTR, None)
    if not isinstance(patch, _LinearPatch):
        raise bad_input("model", "a model patched by patch_linear_loss", "an unpatched model")
    if patch.saved_forward is not None:
        base.forward = patch.saved_forward
    else:
        del base.forward
    delattr(base, _ATTR)
    return model

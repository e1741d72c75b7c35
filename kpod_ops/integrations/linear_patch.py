"""Train a Hugging Face decoder-only causal LM without building its ``[B, T, V]`` logits.

Users patch a model with ``apply_kpod_loss(model, fused_linear=True)``
(:mod:`kpod_ops.integrations.hf`); this module is the mechanism behind it, and ``supports(model)``
says which models it applies to.

:func:`patch_linear_loss` replaces the forward of a ``*ForCausalLM`` model of a known family
(:data:`FAMILIES`: Llama / SmolLM2, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 text, Phi-3, OLMo 2,
Granite, SmolLM3, Mixtral, Qwen3-MoE; optionally inside PEFT or DDP wrappers) by one that, when
``labels`` are given, computes the loss with :func:`kpod_ops.keypoint_linear_cross_entropy` from
the backbone's last hidden states and the LM head's weight (causal shift, inactive positions
dropped before the LM-head matmul, chunked, gradients for the hidden states and the head). In
training mode it returns ``logits=None`` (that is the point); in eval mode it also returns the
logits (evaluation loops read them). Without ``labels`` it is the original forward.

One forward serves every family: all of them compute ``lm_head(backbone(...).last_hidden_state)``
and differ only in what they do to those logits and that loss, which :data:`FAMILIES` records per
model type (a :class:`Family`):

* ``divide_by`` (Granite's ``logits_scaling``): logits ÷ the value — applied as a pre-scaling of the
  hidden states (and bias) that enter the loss, exact in real arithmetic;
* ``softcap`` (Gemma 2/3's ``final_logit_softcapping``): logits ← ``cap·tanh(logits/cap)``, applied
  inside each LM-head chunk with its gradient (``logit_softcap`` of the loss);
* ``router_aux`` (Mixtral, Qwen3-MoE): with ``output_router_logits`` (argument or config), the
  router's load-balancing loss — the model module's own ``load_balancing_loss_func`` — is returned
  as ``aux_loss`` and added to the loss times ``router_aux_loss_coef``, as the model's forward does.

Contract (what :func:`kpod_ops.integrations.hf.apply_kpod_loss` relies on):

* ``supports(model) -> (bool, reason)`` says whether the patch applies, and why not: the model's
  type must be one of :data:`SUPPORTED_MODEL_TYPES` with a ``model`` backbone and a plain
  ``nn.Linear`` ``lm_head`` (a LoRA-adapted or ``modules_to_save`` head is refused: its output is
  not ``hidden @ weightᵀ``), no logit transform its family does not have (e.g. a Llama config with
  ``logit_scale``), and an LM-head weight that is whole where the loss reads it. FSDP1 and tensor
  parallelism shard that weight and are refused; DDP and DeepSpeed ZeRO-1/2 keep it whole, and
  FSDP2 (``fully_shard``) and ZeRO-3, before or after patching, have it gathered for the loss,
  which runs inside a call of the head when the head's weight is sharded on its own
  (:mod:`kpod_ops.integrations.fsdp`).
* ``patch_linear_loss(model, loss_fn=None)`` patches the unwrapped base model in place and returns
  ``model``; it raises :class:`~kpod_ops.errors.KPODInputError` with ``supports``' reason when
  the model is not supported. Patching twice is a no-op (with the same ``loss_fn``).
* The patched forward accepts the original arguments plus keyword-only ``token_weights``
  (``[B, T]``) and ``loss_start`` (``[B]``) and Trainer's ``num_items_in_batch``, and computes
  ``loss_fn(hidden, lm_head_weight, labels, bias=..., token_weights=..., loss_start=...,
  num_items_in_batch=..., ignore_index=-100)``, plus ``logit_softcap=cap`` for a soft-capping
  family (a ``loss_fn`` that does not accept it is refused for those families). The hidden states
  it gets are already divided by the family's ``divide_by``. Under ``router_aux`` the forward adds
  the router loss to the returned loss **in place** (as the model's own forward does), so
  ``loss_fn`` must return a tensor that may be modified in place. The default
  :func:`linear_causal_lm_loss` is the Hugging Face causal-LM loss (``shift=True``, mean over
  active tokens, or ``Σ ÷ num_items_in_batch``) with the KPOD weights and truncation; an
  integration may pass its own ``loss_fn`` (e.g. one that reads the batch fields it captured
  elsewhere).
* ``unpatch_linear_loss(model)`` restores the forward that was in place before the patch.
  ``linear_forward(model, loss_fn)`` builds the same forward without installing it, for an
  integration that wraps it in its own and installs that one alone (``apply_kpod_loss`` does: the
  model then carries one forward).
* What it returns: a **token mean**, ``Σ ω·ℓ`` over the active positions divided by
  ``num_items_in_batch`` (Trainer's token count) or, called directly, by the batch's active tokens
  (Hugging Face's causal-LM convention; a sum per sequence is that times the active tokens per
  sequence), plus ``router_aux_loss_coef × aux_loss`` for an MoE model with ``output_router_logits``.
* A model whose class overrides the family's ``forward`` (a subclass, remote code, another kernel
  patch) is not supported: the patched forward would bypass it.
* Under autocast the hidden states and the head's weight are cast to the autocast dtype first,
  as ``nn.Linear`` would be.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .._optional import require
from ..errors import KPODInputError, bad_input
from ..losses.linear import keypoint_linear_cross_entropy
from .fsdp import require_whole, sharding_refusal, through_head, unwrapped_class


@dataclass(frozen=True)
class Family:
    """What a family's ``*ForCausalLM.forward`` does after ``lm_head(last_hidden_state)``.

    ``divide_by``: the config attribute the logits are divided by (``None``: none); ``softcap``:
    the config attribute of the final logit soft-cap ``cap·tanh(logits/cap)`` (``None``: none; the
    attribute's value ``None`` also means none); ``router_aux``: an MoE model whose forward adds
    ``router_aux_loss_coef × load_balancing_loss_func(router_logits, ...)`` to the loss when
    ``output_router_logits`` is set, and returns it as ``aux_loss``. Divided first, then capped.
    """

    divide_by: str | None = None
    softcap: str | None = None
    router_aux: bool = False


FAMILIES: dict[str, Family] = {
    "llama": Family(),  # SmolLM2, Llama 2/3
    "mistral": Family(),
    "qwen2": Family(),
    "qwen3": Family(),
    "phi3": Family(),
    "olmo2": Family(),
    "smollm3": Family(),
    "gemma2": Family(softcap="final_logit_softcapping"),
    "gemma3_text": Family(softcap="final_logit_softcapping"),
    "granite": Family(divide_by="logits_scaling"),
    "mixtral": Family(router_aux=True),
    "qwen3_moe": Family(router_aux=True),
}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)
# config attributes by which a family's forward may transform its logits; one the family does not
# apply is refused (a value that is the identity aside), so that no transform is silently dropped
_SCALES = {"logit_scale": 1.0, "logits_scaling": 1.0}  # attribute -> identity value
_SOFTCAPS = ("final_logit_softcapping", "logit_softcapping")
_HINTS = {
    "gemma3": "Gemma 3's multimodal Gemma3ForConditionalGeneration is not supported; a text-only Gemma 3 "
              "(Gemma3ForCausalLM, model type 'gemma3_text') is",
}
_ATTR = "_kpod_linear_patch"

LossFn = Callable[..., torch.Tensor]

__all__ = [
    "FAMILIES", "SUPPORTED_MODEL_TYPES", "Family", "linear_causal_lm_loss", "supports", "supports_plain_head",
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


def _config_number(config: Any, attr: str) -> float | None:
    value = getattr(config, attr, None)
    return None if value is None else float(value)


def _unhandled_transform(config: Any, family: Family) -> str | None:
    """A logit transform in ``config`` that ``family``'s forward does not apply (so neither does the patch)."""
    for attr, identity in _SCALES.items():
        value = getattr(config, attr, None)
        if attr != family.divide_by and value not in (None, identity):
            return f"config.{attr}={value!r} transforms the logits, which this family's forward does not do"
    for attr in _SOFTCAPS:
        if attr != family.softcap and getattr(config, attr, None) is not None:
            return f"config.{attr}={getattr(config, attr)!r} soft-caps the logits, which this family's forward does not do"
    for attr in (family.divide_by, family.softcap):
        if attr is None or getattr(config, attr, None) is None:
            continue
        value = getattr(config, attr)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) < math.inf:
            return f"config.{attr}: expected a finite number > 0 (or None), got {value!r}"
    return None


def _family_module(base: Any) -> Any:
    """The ``transformers.models.<family>.modeling_<family>`` module that defines the model's forward."""
    return sys.modules.get(getattr(type(base).forward, "__module__", "") or "")


def supports(model: Any) -> tuple[bool, str]:
    """Whether :func:`patch_linear_loss` can patch ``model``, and why not (or what it patches)."""
    base = _unwrap(model)
    config = getattr(base, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        hint = f"; {_HINTS[model_type]}" if model_type in _HINTS else ""
        return False, (
            f"model type {model_type!r} is not one of the families the fused linear loss knows {SUPPORTED_MODEL_TYPES} "
            f"(how its forward turns the hidden states into logits and loss is not known to the patch){hint}"
        )
    family = FAMILIES[model_type]
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
    if not _plain_linear(head):
        return False, (
            f"lm_head is a {type(head).__name__}, not a plain nn.Linear (a LoRA-adapted or modules_to_save head "
            "does not compute hidden @ weight.T); keep the LM head out of the adapter's target modules"
        )
    why = _unhandled_transform(config, family)
    if why is not None:
        return False, why
    if family.router_aux:
        missing = [a for a in ("num_experts", "num_experts_per_tok", "router_aux_loss_coef") if not hasattr(base, a)]
        if missing or not callable(getattr(_family_module(base), "load_balancing_loss_func", None)):
            return False, (
                f"{cls} ({model_type}): the router loss of this transformers version is not where the patch looks "
                f"(load_balancing_loss_func in {type(base).forward.__module__}, the model's {missing or 'attributes'})"
            )
    why = _sharded(model, head.weight)
    if why is not None:
        return False, f"{why}; the fused linear loss needs the full weight on every rank (DDP, FSDP2, DeepSpeed ZeRO)"
    extra = [what for what, on in (
        (f"logits ÷ {family.divide_by}", family.divide_by and _config_number(config, family.divide_by) is not None),
        (f"{family.softcap} inside the chunks", family.softcap and _config_number(config, family.softcap) is not None),
        ("the router loss with output_router_logits", family.router_aux),
    ) if on]
    return True, (f"{cls} ({model_type}): the training loss is computed from the hidden states without logits"
                  + (f" ({'; '.join(extra)})" if extra else ""))


def supports_plain_head(model: Any) -> tuple[bool, str]:
    """Whether ``model``'s logits are exactly ``lm_head(last hidden state)`` (``hidden @ Wᵀ + b``) of a
    model :func:`supports` accepts, and why not: what a loss computed from :func:`hidden_and_head`
    (or the LM head's weight alone) needs. A family that scales or soft-caps its logits is refused
    (the patched forward applies those; a caller of the head alone would not); an MoE router loss
    is not part of the logits and does not matter here."""
    ok, why = supports(model)
    if not ok:
        return ok, why
    base = _unwrap(model)
    config = base.config
    family = FAMILIES[config.model_type]
    for attr, what in ((family.divide_by, "divides"), (family.softcap, "soft-caps")):
        if attr is not None and _config_number(config, attr) is not None:
            return False, (
                f"{type(base).__name__} {what} its logits (config.{attr}={getattr(config, attr)!r}), so they are not "
                "the LM head's output; apply_kpod_loss(model) handles that, a loss from the head alone does not"
            )
    return True, why


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
    logit_softcap: float | None = None,
) -> torch.Tensor:
    """Hugging Face's causal-LM loss, KPOD-weighted: ``Σ ω·ℓ`` over the active positions divided by
    ``num_items_in_batch`` when given (Trainer's token count of the accumulated global batch), else by
    this batch's active tokens — a **token mean**. ``impl`` and ``logit_softcap`` as in
    :func:`~kpod_ops.keypoint_linear_cross_entropy` (``"fused"``: the fused kernel or an error).
    Returns a fresh tensor: the caller may add to it in place (an MoE forward adds its router loss)."""
    labels = labels.to(hidden.device)
    if token_weights is not None:
        token_weights = token_weights.to(device=hidden.device, dtype=torch.float32)
    if loss_start is not None:
        loss_start = loss_start.to(device=hidden.device, dtype=torch.int64)
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(hidden.device)
    loss = keypoint_linear_cross_entropy(
        hidden, lm_head_weight, labels, token_weights, loss_start, bias, ignore_index=ignore_index,
        reduction="mean", num_items_in_batch=num_items_in_batch, shift=True, impl=impl, logit_softcap=logit_softcap,
    )
    return loss


class _LinearPatch:
    def __init__(self, base: Any, loss_fn: LossFn) -> None:
        self.loss_fn = loss_fn
        self.saved_forward = base.__dict__.get("forward")  # None: the class's forward


def _plain_linear(module: Any) -> bool:
    """Whether ``module`` is an ``nn.Linear`` (FSDP2's subclass of one included); the cheap check first, as
    this runs in every patched forward."""
    return type(module) is torch.nn.Linear or unwrapped_class(module) is torch.nn.Linear


def _effective_head(head: torch.nn.Module) -> torch.nn.Module:
    """The ``nn.Linear`` whose ``hidden @ weightᵀ + bias`` ``head``'s forward computes at this call.

    The patch checked a plain head, but the head can be wrapped afterwards: a PEFT ``modules_to_save``
    copy (its forward runs the active adapter's copy, or the original with adapters disabled: that one is
    returned) works; a LoRA-adapted head adds ``B·A·h`` that the weight alone misses, so it is refused
    rather than trained without its adapter.
    """
    if _plain_linear(head):
        return head
    if hasattr(head, "modules_to_save") and hasattr(head, "original_module"):  # peft's ModulesToSaveWrapper
        active = list(getattr(head, "active_adapters", []) or [])
        inner = (head.original_module if getattr(head, "disable_adapters", False) or not active
                 or active[0] not in head.modules_to_save else head.modules_to_save[active[0]])
        if _plain_linear(inner):
            return inner
        head = inner
    raise KPODInputError(
        f"lm_head: expected the plain nn.Linear the loss from hidden states was patched for, got "
        f"{type(head).__module__}.{type(head).__qualname__} "
        "(an adapter put on the LM head after apply_kpod_loss, e.g. PEFT LoRA with lm_head in target_modules), whose "
        "output the head's weight alone does not give: its adapter would be left out of the loss. Keep lm_head out of "
        "the adapter's target modules (modules_to_save is fine), or patch with apply_kpod_loss(model, fused_linear=False)"
    )


def _head_inputs(
    hidden: torch.Tensor, head: torch.nn.Linear, divide_by: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(hidden, weight, bias)`` whose ``hidden @ weightᵀ + bias`` is ``head(hidden) / divide_by``."""
    weight, bias = head.weight, head.bias
    if divide_by is not None:  # (h/s)·Wᵀ + b/s = (h·Wᵀ + b)/s, before any autocast cast (one rounding)
        hidden = hidden / divide_by
        bias = None if bias is None else bias / divide_by
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
    """(last hidden states ``[B, T, H]``, LM-head weight, bias) of a model :func:`supports_plain_head`
    accepts, cast as the head would be under autocast: the inputs of
    :func:`~kpod_ops.keypoint_linear_cross_entropy` for a training loop that wants the loss without
    the logits (and without patching the forward)."""
    ok, why = supports_plain_head(model)
    if not ok:
        raise bad_input("model", "a model whose logits are its LM head's output, of a family the fused linear loss knows",
                        why)
    base = _unwrap(model)
    hidden = base.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    require_whole(base.lm_head.weight, "when hidden_and_head reads it (FSDP2: inside the root unit's forward)")
    return _head_inputs(hidden, base.lm_head)


def _postprocess(logits: torch.Tensor, divide_by: float | None, softcap: float | None) -> torch.Tensor:
    """The family's own operations on ``lm_head``'s output (the logits the unpatched model returns)."""
    if divide_by is not None:
        logits = logits / divide_by
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def _make_forward(patch: _LinearPatch, original: Any, family: Family, router_loss: Callable[..., Any] | None) -> Any:
    outputs_mod = require("transformers.modeling_outputs", extra="hf", feature="kpod_ops.integrations.linear_patch")
    utils_mod = require("transformers.modeling_utils", extra="hf", feature="kpod_ops.integrations.linear_patch")
    CausalLMOutputWithPast, slice_logits_to_keep = outputs_mod.CausalLMOutputWithPast, utils_mod.slice_logits_to_keep
    MoeCausalLMOutputWithPast = outputs_mod.MoeCausalLMOutputWithPast

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
                labels=None, use_cache=None, logits_to_keep=0, *, token_weights=None, loss_start=None,
                num_items_in_batch=None, **kwargs):
        if labels is None:
            if token_weights is not None or loss_start is not None:
                raise bad_input("labels", "a tensor when token_weights or loss_start is given", None)
            # the model this forward runs on (a deep copy's own weights), not the one the patch captured
            run = original.__func__.__get__(self) if getattr(original, "__self__", None) is not None else original
            return run(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                       logits_to_keep=logits_to_keep, **kwargs)
        head = _effective_head(self.lm_head)  # the Linear whose weight the head's forward uses now
        if kwargs.get("shift_labels") is not None:
            raise KPODInputError(
                "shift_labels: expected None (unshifted labels), got pre-shifted labels (context / sequence parallelism "
                "or a padding-free collator); these are not supported by the fused linear loss"
            )
        router = False
        if family.router_aux:  # as the MoE forward: the argument, else the config
            router = kwargs.pop("output_router_logits", None)
            router = bool(self.config.output_router_logits if router is None else router)
            kwargs["output_router_logits"] = router
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                             **kwargs)
        divide_by = None if family.divide_by is None else _config_number(self.config, family.divide_by)
        softcap = None if family.softcap is None else _config_number(self.config, family.softcap)
        hidden = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        extra = {} if softcap is None else {"logit_softcap": softcap}

        def head_loss(hidden_in):  # with the LM head's weight whole (an FSDP2 unit or ZeRO-3: inside its call)
            h, weight, bias = _head_inputs(hidden_in, head, divide_by)
            return patch.loss_fn(h, weight, labels, bias=bias, token_weights=token_weights, loss_start=loss_start,
                                 num_items_in_batch=num_items_in_batch, ignore_index=-100, **extra)

        loss = through_head(self.lm_head, hidden, head_loss)
        logits = None if self.training else _postprocess(self.lm_head(hidden), divide_by, softcap)
        if not family.router_aux:
            return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                                          hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        aux_loss = None
        if router:  # the model's own router loss, added in place as its forward does
            aux_loss = router_loss(outputs.router_logits, self.num_experts, self.num_experts_per_tok, attention_mask)
            loss += self.router_aux_loss_coef * aux_loss.to(loss.device)
        return MoeCausalLMOutputWithPast(loss=loss, aux_loss=aux_loss, logits=logits,
                                         past_key_values=outputs.past_key_values, hidden_states=outputs.hidden_states,
                                         attentions=outputs.attentions, router_logits=outputs.router_logits)

    forward.__doc__ = getattr(original, "__doc__", None)
    return forward


def linear_forward(model: Any, loss_fn: LossFn) -> Any:
    """The forward :func:`patch_linear_loss` installs, bound to the unwrapped base model but not installed: for an
    integration that wraps it in a forward of its own and installs that one alone (``apply_kpod_loss`` does).
    Raises :class:`KPODInputError` with the reason from :func:`supports` when the model cannot be patched."""
    ok, why = supports(model)
    if not ok:
        raise bad_input("model", "a model supported by the fused linear loss patch", why)
    base = _unwrap(model)
    family = FAMILIES[base.config.model_type]
    if family.softcap is not None and _config_number(base.config, family.softcap) is not None \
            and not _accepts_keyword(loss_fn, "logit_softcap"):
        raise bad_input("loss_fn", f"a loss function with a logit_softcap keyword ({type(base).__name__} soft-caps "
                        "its logits inside the loss)", getattr(loss_fn, "__name__", repr(loss_fn)))
    router_loss = _family_module(base).load_balancing_loss_func if family.router_aux else None  # supports checked it
    return _make_forward(_LinearPatch(base, loss_fn), base.forward, family, router_loss).__get__(base)


def patch_linear_loss(model: Any, loss_fn: LossFn | None = None) -> Any:
    """Make ``model``'s loss the fused linear keypoint loss (no logits in training); returns ``model``.

    See the module docstring for the contract. Raises :class:`KPODInputError` with the reason
    from :func:`supports` when the model cannot be patched.
    """
    base = _unwrap(model)
    loss_fn = linear_causal_lm_loss if loss_fn is None else loss_fn
    existing = getattr(base, _ATTR, None)
    if isinstance(existing, _LinearPatch):
        if existing.loss_fn is not loss_fn:
            raise KPODInputError("model: already patched with another loss_fn; call unpatch_linear_loss(model) first")
        return model
    forward = linear_forward(model, loss_fn)
    patch = _LinearPatch(base, loss_fn)
    base.forward = forward
    setattr(base, _ATTR, patch)
    return model


def _accepts_keyword(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read: let the call say
        return True
    return any(p.name == name or p.kind == inspect.Parameter.VAR_KEYWORD for p in params)


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

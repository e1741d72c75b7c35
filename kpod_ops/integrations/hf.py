"""Hugging Face Trainer / PEFT adapters: the KPOD loss in ``Trainer`` without silent fallbacks.

Three tiers, as in Liger-Kernel:

* :func:`apply_kpod_loss` (one line): the model's training loss becomes the fused keypoint loss,
  reading ``token_weights`` and ``loss_start`` from the batch. Hugging Face hands a loss function
  only a token count (``num_items_in_batch``), so this tier normalises by **tokens**: the loss is
  ``Σ ω·ℓ ÷ (active tokens in the accumulated global batch)``, exactly invariant to gradient
  accumulation and to the number of processes.
* :class:`KPODTrainer`: a ``Trainer`` that patches the model itself and offers the normaliser
  ``"sequence"`` (default; ``Σ ω·ℓ ÷ sequences in the global batch``, counted across accumulation
  micro-batches and ranks the way Trainer counts ``num_items_in_batch``) or ``"token"``.
* :class:`KPODCallback`: moves a :class:`~kpod_ops.curriculum.ProgressiveSchedule` to each epoch's stage in
  every data-loader worker.

What each tier returns (reduction and normaliser):

* ``model(**batch).loss`` of a patched model: ``Σ ω·ℓ ÷ active tokens of this batch`` (a token mean);
* ``Trainer`` with a model patched by :func:`apply_kpod_loss` (logits or fused linear path):
  ``Σ ω·ℓ ÷ num_items_in_batch``, the active tokens of the accumulated global batch (a token mean);
* ``KPODTrainer`` / ``KPODSFTTrainer``, ``normaliser="sequence"`` (default): ``Σ ω·ℓ ÷ sequences
  of the accumulated global batch``; ``normaliser="token"``: ``÷ active tokens`` of it.

Active tokens are label positions ``t >= loss_start`` (and ``t >= 1``) with a label; ω is the
token weight (1 on answer tokens). The per-sequence sum is (active tokens per sequence) times
the token mean, so at the same learning rate its update is that many times larger: learning rates
from token-mean recipes carry over with ``normaliser="token"`` or the patch alone.

No silent wrong loss: a KPOD batch that reaches a loss which would ignore its fields raises
(:mod:`kpod_ops.data.guard`); a patched model whose forward returns a loss other than the KPOD
loss (it computes its own) raises; under Trainer's token count, labels not masked before
``loss_start`` raise; a misspelt KPOD key (``weights``, ``loss_starts``) raises; training a
patched model without any KPOD field warns once.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import MethodType
from typing import Any

import numpy as np
import torch

from .._optional import require
from ..curriculum import ProgressiveSchedule
from ..data.collator import KPODCollator, _KPODCollatorBase
from ..data.guard import guard, is_guarded, unguard
from ..data.records import RECORD_KEYS
from ..errors import KPODInputError, bad_input
from ..losses import keypoint_cross_entropy, keypoint_linear_cross_entropy
from .fsdp import check_trainer_sharding
from .linear_patch import _unwrap
from .stage import ScheduledGivenSteps

_transformers = require("transformers", extra="hf", feature="kpod_ops.integrations.hf")
Trainer, TrainerCallback = _transformers.Trainer, _transformers.TrainerCallback

_BATCH_KEYS = ("token_weights", "loss_start", "step_ids")
NORMALISERS = ("sequence", "token")
FUSED_LINEAR = (False, True, "auto")

__all__ = ["KPODCallback", "KPODTrainer", "apply_kpod_loss", "is_patched", "revert_kpod_loss"]


# ---------------------------------------------------------------------------------------------- patch
class _Run:
    """One call of the patched forward: its batch's KPOD fields (read by the KPOD loss), whether its labels were
    guarded, the token-statistics list of the trainer that runs it, and ``outer``, the call it is nested in (a forward
    that calls a patched forward: None at the top)."""

    def __init__(self, token_weights: Any, loss_start: Any, guarded: bool, metrics: list | None,
                 outer: _Run | None) -> None:
        self.token_weights = token_weights
        self.loss_start = loss_start
        self.guarded = guarded
        self.metrics = metrics
        self.outer = outer
        # the loss tensor the KPOD loss returned in this call: stored by the loss (inside the forward, maybe
        # compiled), read only by the patched forward's eager frame, so torch.compile replays the store unguarded
        self.loss: Any = None


class _State(threading.local):
    """One patched model's forwards running in the calling thread (``run``: the innermost one, the others through
    ``_Run.outer``) and the list a trainer wants the token statistics of its loss in (``metrics``). One value per
    thread: two threads running forwards of the same model (a thread pool evaluating while training, several
    compiled graphs, ``nn.DataParallel`` replicas, which share the patched forward) never read each other's fields."""

    run: _Run | None = None
    metrics: list | None = None

    def __reduce__(self) -> tuple[type, tuple]:
        return (_State, ())  # a copy of a patched model (copy.deepcopy) starts with nothing running


class _Patch:
    """Everything :func:`apply_kpod_loss` changed on one model, with the values before (``saved``: object,
    attribute, whether the object had it, its value), the options, and the per-thread state of the forwards running
    on the model (``state``, a :class:`_State`)."""

    def __init__(self, impl: str, fused_linear: bool | str, label_smoothing: float = 0.0,
                 chunk_size: int | str = "auto") -> None:
        self.impl = impl
        self.fused_linear = fused_linear
        self.label_smoothing = label_smoothing
        self.chunk_size = chunk_size
        self.saved: list[tuple[Any, str, bool, Any]] = []
        self.state = _State()
        self.linear = False  # whether the training loss comes from the hidden states (no logits)
        self.linear_reason = "fused_linear=False"
        self.known_keys: frozenset[str] = frozenset(_BATCH_KEYS)

    @property
    def metrics(self) -> list | None:
        """The calling thread's token-statistics list, or None: a trainer that wants the statistics of the loss it
        runs (KPODSFTTrainer's entropy and mean_token_accuracy) sets a list around its forward, and the KPOD loss
        appends (entropy sum, correct, active) to it, computed without gradient."""
        return self.state.metrics

    @metrics.setter
    def metrics(self, value: list | None) -> None:
        self.state.metrics = value


def _backbone(base: Any) -> Any:
    """The model's backbone module (``base.model`` for Llama, ``base.transformer`` for GPT-2), or None."""
    backbone = getattr(base, getattr(base, "base_model_prefix", ""), None)
    return backbone if isinstance(backbone, torch.nn.Module) and backbone is not base else None


def _attributes(objects: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
    """A snapshot of the instance attributes of ``objects``."""
    return [(obj, dict(obj.__dict__)) for obj in objects]


def _changes(snapshot: list[tuple[Any, dict[str, Any]]]) -> list[tuple[Any, str, bool, Any]]:
    """(object, attribute, whether the object had it, its value then) for each instance attribute set, replaced or
    removed since ``snapshot``."""
    changed = []
    for obj, before in snapshot:
        now = obj.__dict__
        for name in [*before, *(k for k in now if k not in before)]:
            if name not in now or name not in before or now[name] is not before[name]:
                changed.append((obj, name, name in before, before.get(name)))
    return changed


def _restore(saved: list[tuple[Any, str, bool, Any]]) -> None:
    """Put back the instance attributes recorded by :func:`_changes` (through ``__dict__``: exactly the values, no
    setter or property in between)."""
    for obj, name, had, value in reversed(saved):
        if had:
            obj.__dict__[name] = value
        else:
            obj.__dict__.pop(name, None)


def _rebinding(original: Any, owner: Any) -> Any:
    """``original`` (a forward of ``owner``) as a function of the module it is called on: a copy of the model
    (``copy.deepcopy``) then runs its own weights, not those of the model it was copied from."""
    func = getattr(original, "__func__", None)
    if func is not None and getattr(original, "__self__", None) is owner:
        return func
    return lambda _module, *args, **kwargs: original(*args, **kwargs)  # not a method of owner: called as it is


def _method_signature(bound: Any) -> inspect.Signature:
    """The signature of the function behind a bound method, ``self`` included (so that binding the
    replacement with ``MethodType`` drops ``self`` and nothing else)."""
    sig = inspect.signature(bound)
    this = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sig.replace(parameters=[this, *sig.parameters.values()])


def _signature_with_batch_keys(forward: Any) -> inspect.Signature:
    """``forward``'s signature plus keyword-only ``token_weights``, ``loss_start``, ``step_ids``, so that
    Trainer's ``remove_unused_columns=True`` keeps those columns."""
    sig = _method_signature(forward)
    params = [p for p in sig.parameters.values() if p.name not in _BATCH_KEYS]
    extra = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=None) for k in _BATCH_KEYS]
    var_kw = [i for i, p in enumerate(params) if p.kind == inspect.Parameter.VAR_KEYWORD]
    at = var_kw[0] if var_kw else len(params)
    return sig.replace(parameters=params[:at] + extra + params[at:])


def _check_not_packed(kwargs: Mapping[str, Any]) -> None:
    """Refuse packed / padding-free batches: ``loss_start`` is one position per row."""
    packed = any(k in kwargs for k in ("cu_seq_lens_q", "cu_seq_lens_k", "seq_idx"))
    position_ids = kwargs.get("position_ids")
    if not packed and isinstance(position_ids, torch.Tensor) and position_ids.dim() == 2 and position_ids.shape[1] > 1:
        # a position that restarts at 0 after counting up (left padding repeats 0 before the first token: fine)
        packed = bool(((position_ids[:, 1:] == 0) & (position_ids[:, :-1] > 0)).any())
    if packed:
        raise KPODInputError(
            "batch: expected one sequence per row (loss_start is one label position per row), got a packed / "
            "padding-free batch (several sequences per row in position_ids or cu_seq_lens): train KPOD with padded "
            "batches (TRL: packing=False, padding_free=False; no DataCollatorWithFlattening)"
        )


_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    """``warnings.warn(message)`` the first time ``key`` comes up in this process."""
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, UserWarning, stacklevel=4)


def _looks_like_kpod_key(key: str) -> bool:
    """A batch key that is probably a misspelt KPOD field (``weights``, ``token_weight``, ``loss_starts``)."""
    low = key.lower()
    if any(part in low for part in ("weight", "loss_start", "step_id", "lossstart")):
        return True
    return bool(difflib.get_close_matches(low, _BATCH_KEYS, n=1, cutoff=0.8))


def _check_keys(known: frozenset[str], kwargs: Mapping[str, Any]) -> None:
    """Refuse a batch key that looks like a KPOD field but is not one: the backbone's ``**kwargs`` would swallow it."""
    unknown = sorted(k for k in kwargs if k not in known and _looks_like_kpod_key(k))
    if unknown:
        raise bad_input(
            "batch", f"the KPOD fields under their names {list(_BATCH_KEYS)} (the patched forward reads only these)",
            f"unknown key(s) {unknown}: the model would ignore them and train without them; rename them",
        )


def _mask_before_start(labels: torch.Tensor, starts: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """``labels`` with ``ignore_index`` at every position before ``loss_start`` (guarded labels stay guarded)."""
    guarded = is_guarded(labels)
    plain = unguard(labels)
    positions = torch.arange(plain.shape[-1], device=plain.device)
    out = torch.where(positions < starts.to(plain.device).reshape(-1, 1), ignore_index, plain)
    return guard(out) if guarded else out


def _check_masked_before_start(labels: Any, starts: Any) -> None:
    """Under Trainer's token count (``num_items_in_batch`` counts ``labels[:, 1:] != -100``) every label before
    ``loss_start`` must be -100, or the divisor counts tokens the loss does not (the loss shrinks, by a factor that
    moves with the curriculum stage)."""
    if not isinstance(labels, torch.Tensor) or not isinstance(starts, torch.Tensor) or labels.dim() != 2:
        return
    plain = unguard(labels)
    positions = torch.arange(plain.shape[-1], device=plain.device)
    before = (positions >= 1) & (positions < starts.to(plain.device).reshape(-1, 1))
    counted = int(((plain != -100) & before).sum())
    if counted:
        raise KPODInputError(
            f"labels: expected -100 at every position before loss_start when Trainer passes num_items_in_batch (it "
            f"counts labels != -100, so the divisor would count tokens the loss does not), got {counted} label(s) "
            "before loss_start: mask them in the collator (KPODCollator does), or train with KPODTrainer (it counts "
            "the active tokens itself)"
        )


@torch._dynamo.disable
def _enter(patch: _Patch, token_weights: Any, loss_start: Any, kwargs: dict[str, Any], training: bool,
           metrics: list | None) -> tuple[bool, _Run]:
    """Check the batch and unguard the labels (``kwargs`` in place); whether the KPOD loss must run (labels with
    KPOD fields) and this call's :class:`_Run` (its KPOD fields, for the loss), not yet pushed. Never traced by
    torch.compile: the guarded labels are not a tensor dynamo can trace."""
    _check_keys(patch.known_keys, kwargs)
    has_fields = token_weights is not None or loss_start is not None
    if has_fields:
        _check_not_packed(kwargs)
    labels = kwargs.get("labels")
    guarded = is_guarded(labels)
    if labels is not None and has_fields and kwargs.get("num_items_in_batch") is not None:
        _check_masked_before_start(labels, loss_start)
    if labels is not None and not has_fields and not guarded and training:
        _warn_once("no-fields", (
            "apply_kpod_loss: the patched model is training on a batch with labels but no token_weights or "
            "loss_start, so its loss is plain token-mean cross-entropy (no keypoint weights, no step truncation): "
            "build the batches with kpod_ops.data.KPODCollator (or keep those fields in your collator's output)"
        ))
    if guarded:  # the model's own code (and torch.compile) sees plain labels; the loss knows their origin
        kwargs["labels"] = unguard(labels)
    run = _Run(token_weights, loss_start, guarded, metrics, patch.state.run)
    return labels is not None and (has_fields or guarded), run


def _returned_loss(out: Any) -> Any:
    loss = getattr(out, "loss", None)
    if loss is None and isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor) and out[0].dim() == 0:
        loss = out[0]
    return loss


def _depends_on(loss: torch.Tensor, ours: torch.Tensor) -> bool:
    """Whether ``loss`` is ``ours`` or was computed from it (through the autograd graph; by value without one)."""
    if loss is ours:
        return True
    target = ours.grad_fn
    if target is None or loss.grad_fn is None:
        return loss.shape == ours.shape and bool(torch.equal(loss.detach(), ours.detach()))
    seen, todo = set(), [loss.grad_fn]
    while todo:  # breadth first: the KPOD loss sits a few nodes below the returned loss when it is there
        node = todo.pop(0)
        if node is target:
            return True
        if node is None or node in seen:
            continue
        seen.add(node)
        todo.extend(n for n, _ in node.next_functions)
    return False


@torch._dynamo.disable
def _check_ran(out: Any, ours: Any) -> None:
    """A batch with KPOD fields: the loss the model returns must be (or contain) the KPOD loss."""
    what = (
        "the model's forward computes its own loss (a custom or remote-code forward, or another kernel patch) instead "
        "of calling its loss_function, so the returned loss would silently be plain cross-entropy: use a model whose "
        "forward calls self.loss_function(logits, labels, ...) (as transformers' own models do), or compute "
        "kpod_ops.keypoint_cross_entropy(logits, labels, token_weights, loss_start, shift=True) yourself"
    )
    if ours is None:
        raise KPODInputError(f"model: expected the KPOD loss to run on a batch with KPOD fields, got a forward that "
                             f"never called it; {what}")
    loss = _returned_loss(out)
    if not isinstance(loss, torch.Tensor) or not _depends_on(loss, ours):
        raise KPODInputError(f"model: expected the returned loss to be the KPOD loss, got another one; {what}")


def _make_forward(patch: _Patch, original: Any, owner: Any) -> Any:
    run_original = _rebinding(original, owner)

    def forward(self, *args, token_weights=None, loss_start=None, step_ids=None, **kwargs):
        state = patch.state  # this thread's: another thread's forward of the same model has its own
        own = self.__dict__.get("_kpod_patch", patch)  # a deep copy's, whose trainer sets its metrics list
        must_run, run = _enter(patch, token_weights, loss_start, kwargs, self.training, own.state.metrics)
        state.run = run  # pushed: a nested forward pushes its own on top and pops it before this one's loss runs
        try:
            out = run_original(self, *args, **kwargs)
            if must_run:
                _check_ran(out, run.loss)
            return out
        finally:
            state.run = run.outer

    # Under torch.compile (Trainer's torch_compile=True) this frame runs eagerly: the guarded labels and the
    # batch fields never enter the compiled graph, while the original forward (and the loss) it calls are compiled.
    forward = torch._dynamo.disable(forward, recursive=False)
    forward.__signature__ = _signature_with_batch_keys(original)
    forward.__doc__ = getattr(original, "__doc__", None)
    return forward


def _make_backbone_guard(original: Any, owner: Any) -> Any:
    """The backbone's forward, refusing KPOD fields. It cannot be part of the patched forward: it catches the calls
    that skip it, code that runs the backbone itself with the batch and computes its own loss from the hidden states
    (TRL's fused LM head wraps the model's forward and calls the backbone directly)."""
    run_original = _rebinding(original, owner)

    def forward(self, *args, **kwargs):
        leaked = [k for k in ("token_weights", "loss_start") if kwargs.get(k) is not None]
        if leaked:
            raise KPODInputError(
                f"{', '.join(leaked)} reached the model's backbone without going through the KPOD loss: something "
                "computes its own loss from the hidden states (TRL's SFTTrainer does, with its fused LM head). Use "
                "kpod_ops.integrations.sft.KPODSFTTrainer, or Trainer with the patched model"
            )
        return run_original(self, *args, **kwargs)

    forward.__signature__ = _method_signature(original)
    return forward


def _batch_fields(run: _Run | None, labels: Any, device: torch.device,
                  kwargs: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """Plain labels, token weights and loss starts of the running forward ``run`` (keyword arguments first), on
    ``device``."""
    weights, starts, guarded = (None, None, False) if run is None else (run.token_weights, run.loss_start, run.guarded)
    weights = kwargs.get("token_weights", weights)
    starts = kwargs.get("loss_start", starts)
    if (guarded or is_guarded(labels)) and (weights is None or starts is None):
        missing = [n for n, v in (("token_weights", weights), ("loss_start", starts)) if v is None]
        raise KPODInputError(
            f"batch: expected token_weights and loss_start with labels from KPODCollator, got no {missing}: keep "
            "them in the batch (the patched model's forward accepts them; a custom collator wrapper dropped them)"
        )
    labels = unguard(labels).to(device)
    if weights is not None:
        weights = weights.to(device=device, dtype=torch.float32)
    if starts is not None:
        starts = starts.to(device=device, dtype=torch.int64)
    return labels, weights, starts


@torch._dynamo.disable
@torch.no_grad()
def _token_statistics(states: torch.Tensor, labels: torch.Tensor, starts: Any, ignore_index: int,
                      weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                      softcap: float | None = None, chunk: int = 1024) -> tuple[float, float, float]:
    """``[Σ entropy, correct top-1, active]`` over the active positions (the ones the KPOD loss counts), from the
    logits (``weight`` None) or from the hidden states and the LM head's weight (soft-capped as the loss is), in
    chunks of rows (no ``[N, V]`` tensor beyond one chunk)."""
    positions = torch.arange(labels.shape[-1], device=labels.device)
    active = (labels != ignore_index) & (positions >= 1)
    if starts is not None:
        active &= positions >= starts.reshape(-1, 1)
    rows = states[:, :-1][active[:, 1:]]
    targets = labels[:, 1:][active[:, 1:]]
    entropy = correct = 0.0
    for at in range(0, rows.shape[0], chunk):
        z = rows[at:at + chunk]
        if weight is not None:
            z = torch.nn.functional.linear(z, weight, bias)
            if softcap is not None:
                z = softcap * torch.tanh(z / softcap)
        logp = torch.log_softmax(z.float(), dim=-1)
        entropy += float(-(logp.exp() * logp).sum())
        correct += float((logp.argmax(dim=-1) == targets[at:at + chunk]).sum())
    return entropy, correct, float(rows.shape[0])


def _make_linear_loss(patch: _Patch) -> Any:
    def kpod_linear_loss(hidden, lm_head_weight, labels, *, bias=None, token_weights=None, loss_start=None,
                         num_items_in_batch=None, ignore_index=-100, logit_softcap=None):
        """The fused linear keypoint loss from the hidden states (same normalisation as the logits path)."""
        extra = {k: v for k, v in (("token_weights", token_weights), ("loss_start", loss_start)) if v is not None}
        run = patch.state.run  # the innermost patched forward of this model in this thread
        labels, weights, starts = _batch_fields(run, labels, hidden.device, extra)
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(hidden.device)
        loss = keypoint_linear_cross_entropy(
            hidden, lm_head_weight, labels, weights, starts, bias, ignore_index=ignore_index, reduction="mean",
            num_items_in_batch=num_items_in_batch, label_smoothing=patch.label_smoothing, shift=True,
            impl="fused" if patch.fused_linear is True else "auto", logit_softcap=logit_softcap,
            chunk_size=patch.chunk_size,
        )
        if run is not None and run.metrics is not None:
            run.metrics.append(_token_statistics(hidden, labels, starts, ignore_index, lm_head_weight, bias,
                                                 logit_softcap))
        if run is not None:
            run.loss = loss  # the linear op saves a copy of its output: Trainer may scale this one in place
        return loss

    return kpod_linear_loss


def _make_loss(patch: _Patch) -> Any:
    def kpod_loss(logits, labels, vocab_size=None, num_items_in_batch=None, ignore_index=-100, shift_labels=None,
                  **kwargs):
        """The fused keypoint loss (token-normalised: ``reduction="mean"`` with Trainer's ``num_items_in_batch``)."""
        if shift_labels is not None:
            raise KPODInputError(
                "shift_labels: expected None (unshifted labels from KPODCollator), got pre-shifted labels (context / "
                "sequence parallelism or a padding-free collator); these are not supported with the KPOD loss"
            )
        run = patch.state.run  # the innermost patched forward of this model in this thread
        labels, weights, starts = _batch_fields(run, labels, logits.device, kwargs)
        loss = keypoint_cross_entropy(
            logits, labels, weights, starts, ignore_index=ignore_index, reduction="mean",
            num_items_in_batch=num_items_in_batch, label_smoothing=patch.label_smoothing, shift=True, impl=patch.impl,
        )
        if run is not None and run.metrics is not None:
            run.metrics.append(_token_statistics(logits, labels, starts, ignore_index))
        # Trainer rescales the returned loss in place (``loss *= num_processes``): hand it a fresh tensor so
        # that the loss op's own saved output stays intact for backward
        loss = loss.clone()
        if run is not None:
            run.loss = loss
        return loss

    return kpod_loss


def is_patched(model: Any) -> bool:
    """Whether :func:`apply_kpod_loss` patched ``model`` (or the model inside its wrappers)."""
    return isinstance(getattr(_unwrap(model), "_kpod_patch", None), _Patch)


def apply_kpod_loss(model: Any, *, fused_linear: bool | str = "auto", impl: str = "auto",
                    label_smoothing: float = 0.0, chunk_size: int | str = "auto") -> Any:
    """Replace ``model``'s training loss by the fused keypoint loss; returns ``model``.

    The patched forward accepts ``token_weights``, ``loss_start`` (and ignores ``step_ids``) from a
    :class:`~kpod_ops.data.KPODCollator` batch; they appear in its signature, so Trainer keeps them
    even with ``remove_unused_columns=True``. ``labels`` are unshifted (causal LM: ``shift=True``).
    The loss is ``Σ ω·ℓ`` over active positions divided by Trainer's ``num_items_in_batch`` (the
    active tokens of the accumulated, global batch) or, called directly, by this batch's active
    tokens: a token mean, invariant to gradient accumulation (with ω ≡ 1 it is Hugging Face's own
    causal-LM loss; a sum per sequence is this times the active tokens per sequence). Batches without
    KPOD fields train the plain (token-mean) cross-entropy through the same kernel, with a warning
    (once per process) when training.

    Checks on every batch with KPOD fields: the loss the model returns must be the KPOD loss (or be
    computed from it, e.g. plus a router loss) — a forward that computes its own loss (a subclass,
    remote code, another kernel patch) raises :class:`~kpod_ops.errors.KPODInputError`; with
    Trainer's ``num_items_in_batch`` (which counts ``labels != -100``) every label before
    ``loss_start`` must be -100 (``KPODCollator``'s are), else the divisor would count tokens the
    loss does not; a key that looks like a misspelt KPOD field (``weights``, ``token_weight``,
    ``loss_starts``) raises instead of being swallowed by the model's ``**kwargs``.

    Works on PEFT-wrapped models (the base model is patched) and under ``torch.compile`` (Trainer's
    ``torch_compile=True``: the patched forward's batch handling runs eagerly, the model's own forward
    and the loss are compiled). Packed / padding-free batches with KPOD fields are refused.

    ``fused_linear``: ``True`` computes the training loss from the last hidden states and the LM
    head's weight with the fused linear keypoint loss, never building the ``[B, T, V]`` logits
    (Llama-style families, see ``kpod_ops.integrations.linear_patch.supports``; an unsupported
    model is an error); ``"auto"`` (default) does so where supported and warns, naming the reason,
    where not — it is always much smaller, and faster at LM-scale vocabularies, but slower than the
    logits path for tiny vocabularies (a few thousand tokens or less); ``False`` keeps the logits path.
    ``fused_linear=True`` also guarantees the fused kernel: no kernel for the tensors' device (or no
    compiled extension) is an error, where ``"auto"`` falls back to the reference with a warning.
    A model whose class overrides the family's ``forward`` is not patched for the linear loss
    (``"auto"`` warns and keeps its forward). Undo with :func:`revert_kpod_loss`. Applying twice is a no-op
    with the same options and an error with others (revert first). Patching is all or nothing: an error
    leaves the model as it was.

    Each call of the patched forward keeps its batch fields to itself: forwards of one patched model
    may run in several threads at once (a thread pool evaluating while training) and may nest (a
    forward that calls a patched forward), each computing its own batch's loss.

    ``label_smoothing`` ε: each active token's loss is ``lse(z) − (1−ε)·z_y − (ε/V)·Σ_v z_v``, computed
    by the fused kernels (logits and linear paths), the same as Trainer's ``label_smoothing_factor``
    (``LabelSmoother``); the KPOD trainers pass their ``args.label_smoothing_factor`` here. A plain
    ``Trainer`` with ``label_smoothing_factor > 0`` applies its own smoother instead, which a KPOD
    batch refuses: set it to 0 and pass ``label_smoothing`` here. ``chunk_size``: rows per LM-head
    chunk of the fused linear loss (``"auto"`` or an int; see ``keypoint_linear_cross_entropy``).
    """
    if fused_linear not in FUSED_LINEAR:
        raise bad_input("fused_linear", f"one of {FUSED_LINEAR}", repr(fused_linear))
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
            or not 0.0 <= float(label_smoothing) < 1.0:
        raise bad_input("label_smoothing", "a float in [0, 1)", repr(label_smoothing))
    label_smoothing = float(label_smoothing)
    if chunk_size != "auto" and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise bad_input("chunk_size", "'auto' or an int >= 1", repr(chunk_size))
    base = _unwrap(model)
    if not isinstance(base, torch.nn.Module) or not hasattr(type(base), "loss_function"):
        raise bad_input("model", "a Hugging Face PreTrainedModel (optionally PEFT / DDP wrapped)", type(base).__name__)
    config = getattr(base, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        raise bad_input("model", "a decoder-only causal LM (encoder-decoder models are not supported by the patch)",
                        type(base).__name__)
    existing = getattr(base, "_kpod_patch", None)
    if isinstance(existing, _Patch):
        if (existing.fused_linear, existing.impl, existing.label_smoothing, existing.chunk_size) != \
                (fused_linear, impl, label_smoothing, chunk_size):
            raise KPODInputError(
                f"model: already patched with fused_linear={existing.fused_linear!r}, impl={existing.impl!r}, "
                f"label_smoothing={existing.label_smoothing}, chunk_size={existing.chunk_size!r}; call "
                "revert_kpod_loss(model) first to change them"
            )
        return model
    patch = _Patch(impl, fused_linear, label_smoothing, chunk_size)
    backbone = _backbone(base)
    snapshot = _attributes([base] if backbone is None else [base, backbone])
    try:
        _patch_attributes(model, base, backbone, patch)
    except BaseException:
        _restore(_changes(snapshot))  # all or nothing: a failed patch leaves the model as it was
        raise
    patch.saved = _changes(snapshot)
    return model


def _patch_attributes(model: Any, base: Any, backbone: Any, patch: _Patch) -> None:
    """What :func:`apply_kpod_loss` changes, the fewest attributes that keep every check: the model's ``forward``
    (one function: batch fields and checks, around the family's forward or, with ``fused_linear``, around the
    linear loss's forward, :func:`~kpod_ops.integrations.linear_patch.linear_forward`, which is not installed on its
    own), its ``loss_function`` (the KPOD loss, for any code that calls it with the batch), ``accepts_loss_kwargs``
    (Trainer passes ``num_items_in_batch``), the backbone's ``forward`` (see :func:`_make_backbone_guard`), and
    ``_kpod_patch``."""
    inner = base.forward
    if patch.fused_linear is not False:
        inner = _fused_linear_forward(model, patch, patch.fused_linear) or inner
    named = inspect.signature(inner).parameters.values()
    patch.known_keys = frozenset(
        [p.name for p in named if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)]
        + [*_BATCH_KEYS, "num_items_in_batch"]
    )
    base.forward = MethodType(_make_forward(patch, inner, base), base)
    base.loss_function = _make_loss(patch)
    base.accepts_loss_kwargs = True  # so Trainer passes num_items_in_batch
    if backbone is not None:
        backbone.forward = MethodType(_make_backbone_guard(backbone.forward, backbone), backbone)
    base._kpod_patch = patch


def _fused_linear_forward(model: Any, patch: _Patch, fused_linear: bool | str) -> Any:
    """The forward whose training loss comes from the hidden states (no ``[B, T, V]`` logits), for the patched
    forward to wrap: always with ``True`` (an unsupported model is an error), where supported with ``"auto"``
    (None otherwise, with a warning that names the reason)."""
    from .linear_patch import linear_forward, supports

    ok, why = supports(model)
    if ok and fused_linear is True:
        from .._extension import fused_status
        from ..losses import linear_ops

        loaded, reason = fused_status()
        if not loaded or not linear_ops.OPS_REGISTERED:
            raise bad_input("fused_linear", "the fused linear kernel (or fused_linear=False/'auto')",
                            reason if not loaded else "kpod_ops._C loaded without the fused linear ops")
    patch.linear_reason = why
    if not ok:
        if fused_linear is True:
            raise bad_input("fused_linear", "a model the fused linear loss supports (or fused_linear=False/'auto')", why)
        warnings.warn(f"apply_kpod_loss(fused_linear='auto'): {why}; the loss is computed from the logits", stacklevel=3)
        return None
    forward = linear_forward(model, _make_linear_loss(patch))
    patch.linear = True
    return forward


def revert_kpod_loss(model: Any) -> Any:
    """Undo :func:`apply_kpod_loss`; returns ``model``. Every attribute it set (the model's forward, loss function
    and flag, the backbone's forward, ``_kpod_patch``) gets back the value it had before, or is removed if it had
    none."""
    base = _unwrap(model)
    patch = getattr(base, "_kpod_patch", None)
    if not isinstance(patch, _Patch):
        raise bad_input("model", "a model patched by apply_kpod_loss", "an unpatched model")
    _restore(patch.saved)
    return model


# ---------------------------------------------------------------------------------------------- callback
def _find_kpod_collator(collate_fn: Any) -> _KPODCollatorBase | None:
    """The KPOD collator inside ``collate_fn`` (through Trainer's ``RemoveColumnsCollator``), or None."""
    for _ in range(8):
        if isinstance(collate_fn, _KPODCollatorBase):
            return collate_fn
        collate_fn = getattr(collate_fn, "data_collator", None)
        if collate_fn is None:
            return None
    return None


def _stage(epoch: float | None) -> int:
    """Trainer's 0-based float epoch → the schedule's 1-based stage, ⌊epoch⌋ + 1."""
    return int(math.floor((epoch or 0.0) + 1e-9)) + 1


class KPODCallback(TrainerCallback):
    """Moves ``schedule`` to each epoch's stage (⌊epoch⌋ + 1) in the collator of every data-loader process.

    At ``on_train_begin`` it finds the :class:`~kpod_ops.data.KPODCollator` of the training
    DataLoader and drives its ``given_steps`` through a shared-memory stage
    (:class:`~kpod_ops.integrations.stage.ScheduledGivenSteps`), so persistent workers follow. A
    collator with other ``given_steps``, a schedule built for a different number of epochs than the
    Trainer runs, or no KPOD collator at all is an error. After resuming from a checkpoint the stage
    follows the restored epoch.
    """

    def __init__(self, schedule: ProgressiveSchedule, given_steps: ScheduledGivenSteps | None = None) -> None:
        if not isinstance(schedule, ProgressiveSchedule):
            raise bad_input("schedule", "a kpod_ops.curriculum.ProgressiveSchedule", type(schedule).__name__)
        if given_steps is not None and (not isinstance(given_steps, ScheduledGivenSteps) or given_steps.schedule is not schedule):
            raise bad_input("given_steps", "a ScheduledGivenSteps of the same schedule, or None", repr(given_steps))
        self.schedule = schedule
        self.given_steps = given_steps if given_steps is not None else ScheduledGivenSteps(schedule)
        self.given_steps.set_stage(self.given_steps.stage)  # driven from here on (see ScheduledGivenSteps)

    def _attach(self, collate_fn: Any) -> None:
        collator = _find_kpod_collator(collate_fn)
        if collator is None:
            raise KPODInputError(
                f"KPODCallback: expected the training DataLoader's collator to be a KPODCollator, got "
                f"{type(collate_fn).__name__}: the schedule would never reach the batches"
            )
        if collator.given_steps is None:
            # the training DataLoader's workers start after on_train_begin and copy this value
            try:
                collator.given_steps = self.given_steps
            except KPODInputError:
                raise KPODInputError(
                    "KPODCallback: expected to give the training collator its ScheduledGivenSteps before any data-loader "
                    "worker copied it, got a collator already used by workers (an evaluation before training with "
                    "dataloader_num_workers > 0): build the collator with given_steps=callback.given_steps"
                ) from None
        elif collator.given_steps is not self.given_steps:
            raise KPODInputError(
                f"KPODCallback: expected the collator's given_steps to be None (the callback drives it), got "
                f"{type(collator.given_steps).__name__}: build the collator with given_steps=None or "
                "given_steps=callback.given_steps"
            )

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        epochs = int(self.schedule.config["n_epochs"])
        if state.num_train_epochs != epochs:
            raise KPODInputError(
                f"KPODCallback: expected the Trainer to run the {epochs} epochs the schedule was built for, got "
                f"num_train_epochs={state.num_train_epochs} (from num_train_epochs / max_steps): rebuild the schedule "
                f"with n_epochs={state.num_train_epochs} or train for {epochs} epochs"
            )
        if train_dataloader is not None:
            self._attach(getattr(train_dataloader, "collate_fn", None))
        self.given_steps.set_stage(_stage(state.epoch))

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.given_steps.set_stage(_stage(state.epoch))


# ---------------------------------------------------------------------------------------------- evaluation batches
class _EvaluationCollator:
    """KPODTrainer's evaluation / prediction batches: every example's full rationale (``c = 0``: held-out examples
    have no schedule, and the loss is comparable across stages), the collator's token weights where it has them and 1
    for examples it has none for (held-out ids)."""

    def __init__(self, collator: _KPODCollatorBase) -> None:
        options = {k: getattr(collator, k) for k in ("pad_token_id", "pad_to_multiple_of", "label_pad_token_id",
                                                       "padding_side")}
        if hasattr(collator, "encoder_eos"):
            options["encoder_eos"] = collator.encoder_eos
        # a collator of its own (built like the training one, without steps): no state shared with the training one
        self.data_collator = type(collator)(collator.tokenizer, None, None, **options)
        self.token_weights = collator.token_weights

    def __call__(self, features: Any) -> dict[str, torch.Tensor]:
        source = self.token_weights
        if isinstance(source, Mapping):
            from ..data.records import as_tokenized

            table = {}
            for feature in features:
                ex = as_tokenized(feature)
                table[ex.id] = source[ex.id] if ex.id in source else np.ones(ex.rationale_len, dtype=np.float32)
            self.data_collator.token_weights = table
        else:
            self.data_collator.token_weights = source
        return self.data_collator(features)


# ---------------------------------------------------------------------------------------------- trainer
def _load_schedule(schedule: Any) -> ProgressiveSchedule | None:
    """A schedule, or one read from a file: the JSON ``kpod distill`` writes (``schedule/schedule.json``) or a
    ``torch.save``-d ``state_dict()`` (read with ``weights_only=True``: tensors and plain Python only, no pickle)."""
    if schedule is None or isinstance(schedule, ProgressiveSchedule):
        return schedule
    if isinstance(schedule, (str, os.PathLike)):
        path = Path(schedule)
        if not path.is_file():
            raise bad_input("schedule", "a ProgressiveSchedule or the path of its saved state_dict", f"missing file {path}")
        if path.suffix == ".json":
            import json

            from ..pipeline.curriculum import schedule_from_json

            return schedule_from_json(json.loads(path.read_text(encoding="utf-8")))
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
            raise bad_input("schedule", "a schedule.json or a torch.save-d ProgressiveSchedule.state_dict() (tensors "
                            "and plain Python, loaded with weights_only=True)", f"{path}: {exc}") from None
        return ProgressiveSchedule.from_state_dict(state)
    raise bad_input("schedule", "a ProgressiveSchedule, the path of its saved state_dict, or None", type(schedule).__name__)


def _load_weights(token_weights: Any, train_dataset: Any, tokenizer: Any) -> Any:
    """Weights from a ``save_token_weights`` file, checked against the training examples' rationale tokens."""
    if isinstance(token_weights, (str, os.PathLike)):
        from ..data.records import as_tokenized
        from ..weighting import load_token_weights

        examples = None if train_dataset is None else [as_tokenized(x, "train_dataset") for x in train_dataset]
        return load_token_weights(token_weights, examples, tokenizer=tokenizer)
    return token_weights


def _named_arguments(init: Any, trainer: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The arguments of a Trainer constructor call by name (``inspect.Signature.bind``: no position is assumed)."""
    try:
        bound = inspect.signature(init).bind(trainer, *args, **kwargs)
    except TypeError as exc:
        raise bad_input("arguments", f"those of {init.__qualname__}", str(exc)) from None
    named = dict(bound.arguments)
    named.pop("self", None)
    for name, param in inspect.signature(init).parameters.items():
        if param.kind == inspect.Parameter.VAR_KEYWORD and name in named:
            named.update(named.pop(name))
    return named


def _completion_tokens(inputs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(active tokens, rationale-and-answer tokens) of a KPOD batch, or None without the fields to count them."""
    labels, starts, steps = inputs.get("labels"), inputs.get("loss_start"), inputs.get("step_ids")
    mask = inputs.get("attention_mask")
    if not all(isinstance(t, torch.Tensor) for t in (labels, starts, steps, mask)) or steps.dim() != 2:
        return None
    plain = unguard(labels)
    positions = torch.arange(plain.shape[-1], device=plain.device)
    active = ((plain != -100) & (positions >= 1) & (positions >= starts.to(plain.device).reshape(-1, 1))).sum()
    first = (steps >= 0).to(torch.int8).argmax(dim=1)  # each row's first rationale token (every example has steps)
    completion = (mask.to(plain.device).bool() & (positions >= first.to(plain.device).reshape(-1, 1))).sum()
    return active, completion


class _KPODTrainerMixin:
    """What KPODTrainer adds to a Trainer class (shared with the TRL counterpart).

    Trainer internals it overrides, because no public hook does the job (``test_trl.py`` fails when
    their signatures change): ``_get_num_items_in_batch`` (the per-sequence count over every
    accumulation micro-batch and process) and ``_set_signature_columns_if_needed`` (keeps the KPOD
    record columns under ``remove_unused_columns=True``). Everything else goes through public
    methods (``compute_loss``, ``get_eval_dataloader``, ``get_test_dataloader``, ``log``).
    """

    kpod_normaliser: str = "sequence"

    def _kpod_setup(self, *, model: Any, args: Any, data_collator: Any, processing_class: Any, normaliser: str,
                    token_weights: Any, schedule: Any, fused_linear: bool | str, callbacks: list | None,
                    train_dataset: Any = None, pad_to_multiple_of: int | None = None,
                    label_smoothing: float | None = None, chunk_size: int | str = "auto") -> tuple[Any, list]:
        if normaliser not in NORMALISERS:
            raise bad_input("normaliser", f"one of {NORMALISERS}", repr(normaliser))
        if model is None:
            raise bad_input("model", "a Hugging Face causal LM (optionally PEFT-wrapped)", None)
        self.kpod_normaliser = normaliser
        self._kpod_tokens = {"train": [0, 0], "eval": [0, 0]}
        smoothing = float(getattr(args, "label_smoothing_factor", 0.0) or 0.0)
        if label_smoothing is not None:
            if smoothing and smoothing != label_smoothing:
                raise bad_input("label_smoothing", f"None or args.label_smoothing_factor={smoothing} (one value)",
                                label_smoothing)
            smoothing = label_smoothing
        if is_patched(model):
            patch = _unwrap(model)._kpod_patch
            for name, value in (("fused_linear", fused_linear), ("label_smoothing", smoothing), ("chunk_size", chunk_size)):
                if getattr(patch, name) != value:
                    raise bad_input(name, f"{getattr(patch, name)!r} (the model's patch)", repr(value))
        else:
            apply_kpod_loss(model, fused_linear=fused_linear, label_smoothing=smoothing, chunk_size=chunk_size)
        schedule = _load_schedule(schedule)
        token_weights = _load_weights(token_weights, train_dataset, processing_class)
        callbacks = list(callbacks or [])
        kpod_callbacks = [c for c in callbacks if isinstance(c, KPODCallback)]
        if schedule is not None and not kpod_callbacks:
            kpod_callbacks = [KPODCallback(schedule)]
            callbacks.append(kpod_callbacks[0])
        if data_collator is None:
            if processing_class is None:
                raise bad_input("processing_class", "the tokenizer (or pass data_collator=KPODCollator(...))", None)
            given = kpod_callbacks[0].given_steps if kpod_callbacks else None
            data_collator = KPODCollator(processing_class, token_weights, given, pad_to_multiple_of=pad_to_multiple_of)
        elif token_weights is not None:
            raise bad_input("token_weights", "None when data_collator is given (give the weights to the collator)",
                            type(token_weights).__name__)
        elif _find_kpod_collator(data_collator) is None:
            raise bad_input("data_collator", "a KPODCollator (or None to build one)", type(data_collator).__name__)
        return data_collator, callbacks

    def _kpod_check_args(self) -> None:
        check_trainer_sharding(self)  # FSDP2 and DeepSpeed ZeRO train; FSDP1 and autotp are refused (integrations.fsdp)
        if self.args.n_gpu > 1:
            raise bad_input("args", "one device per process (torchrun / accelerate launch), not DataParallel",
                            f"n_gpu={self.args.n_gpu}")
        if self.args.world_size > 1 and not self.args.average_tokens_across_devices:
            raise bad_input("args.average_tokens_across_devices",
                            "True (KPOD normalises by the global batch across processes)", False)
        # the KPOD loss applies args.label_smoothing_factor itself (fused); Trainer's smoother would take the labels
        self.label_smoother = None

    def _kpod_inputs(self, inputs: Any) -> Any:
        """The batch the model sees: labels before ``loss_start`` masked (the loss, the token count and
        ``compute_metrics`` agree on what counts) and, under ``torch_compile``, unguarded here, eagerly, so that no
        wrapper the compiled graph starts at (PEFT, accelerate) traces them — the model is patched, so its loss is
        the KPOD loss."""
        if isinstance(inputs, Mapping) and isinstance(inputs.get("labels"), torch.Tensor) \
                and isinstance(inputs.get("loss_start"), torch.Tensor) and inputs["labels"].dim() == 2:
            inputs = {**inputs, "labels": _mask_before_start(inputs["labels"], inputs["loss_start"])}
        if self.args.torch_compile and isinstance(inputs, Mapping) and is_guarded(inputs.get("labels")):
            missing = [k for k in ("token_weights", "loss_start") if inputs.get(k) is None]
            if missing:
                raise KPODInputError(
                    f"batch: expected token_weights and loss_start with labels from KPODCollator, got no {missing}: "
                    "keep them in the batch (a custom collator wrapper dropped them)"
                )
            inputs = {**inputs, "labels": unguard(inputs["labels"])}
        return inputs

    def _kpod_record(self, inputs: Mapping[str, Any]) -> None:
        """Count the active and the rationale-and-answer tokens of this batch for ``kpod_active_share``."""
        counts = _completion_tokens(inputs)
        if counts is None:
            return
        tally = self._kpod_tokens["train" if self.model.training else "eval"]
        tally[0] += int(counts[0])
        tally[1] += int(counts[1])

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """Trainer's loss (the patched model's KPOD loss) on the batch of :meth:`_kpod_inputs`; counts the tokens
        behind ``kpod_active_share``."""
        inputs = self._kpod_inputs(inputs)
        self._kpod_record(inputs)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Trainer's log plus KPOD's: ``kpod_stage`` (the curriculum stage the batches were built at, with a
        schedule) and ``kpod_active_share`` (active tokens ÷ rationale-and-answer tokens of the batches since the
        last log: the part of each completion the truncation leaves in the loss); ``eval_`` prefixed in evaluation."""
        mode = "train" if self.model.training else "eval"
        prefix = "" if mode == "train" else "eval_"
        active, completion = self._kpod_tokens[mode]
        if self.args.world_size > 1:  # every process logs at the same steps
            both = torch.tensor([[active, completion]], dtype=torch.int64, device=self.args.device)
            active, completion = (int(v) for v in self.accelerator.gather(both).sum(dim=0))
        if completion:
            logs[f"{prefix}kpod_active_share"] = active / completion
        self._kpod_tokens[mode] = [0, 0]
        if mode == "train":
            callback = next((c for c in self.callback_handler.callbacks if isinstance(c, KPODCallback)), None)
            if callback is not None:
                logs["kpod_stage"] = callback.given_steps.stage
        super().log(logs, start_time)

    def _kpod_evaluation_collator(self) -> Any:
        collator = self.data_collator
        if not isinstance(collator, _KPODCollatorBase):
            return collator  # a wrapper around the KPOD collator: used as it is
        cached = getattr(self, "_kpod_eval_collator", None)
        if cached is None or cached[0] is not collator:
            cached = (collator, _EvaluationCollator(collator))
            self._kpod_eval_collator = cached
        return cached[1]

    def _kpod_with_evaluation_collator(self, build: Any, *args: Any) -> Any:
        training = self.data_collator
        self.data_collator = self._kpod_evaluation_collator()
        try:
            return build(*args)
        finally:
            self.data_collator = training

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        """Trainer's evaluation DataLoader, whose batches give no steps (``c = 0``, the full rationale: evaluation
        examples need no schedule) and weight 1 where the collator has no token weights for an example."""
        return self._kpod_with_evaluation_collator(super().get_eval_dataloader, eval_dataset)

    def get_test_dataloader(self, test_dataset: Any) -> Any:
        """As :meth:`get_eval_dataloader`, for ``predict``."""
        return self._kpod_with_evaluation_collator(super().get_test_dataloader, test_dataset)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        extra = [*RECORD_KEYS, "steps", *_BATCH_KEYS]
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, *extra]))

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | int | None:
        """Trainer's token count (``"token"``), or the number of sequences of the global batch (``"sequence"``):
        rows with labels over every accumulation micro-batch, summed across processes."""
        if self.kpod_normaliser == "token":  # Trainer's count of labels != -100, over the active positions only
            batch_samples = [
                {**b, "labels": _mask_before_start(b["labels"], b["loss_start"])}
                if isinstance(b.get("labels"), torch.Tensor) and isinstance(b.get("loss_start"), torch.Tensor)
                and b["labels"].dim() == 2 else b
                for b in batch_samples
            ]
            return super()._get_num_items_in_batch(batch_samples, device)
        if not batch_samples or "labels" not in batch_samples[0]:
            return None
        count = torch.tensor(sum(int(b["labels"].shape[0]) for b in batch_samples), device=device)
        if self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count


class KPODTrainer(_KPODTrainerMixin, Trainer):
    """``transformers.Trainer`` training the KPOD loss.

    Args (besides Trainer's):
        normaliser: ``"sequence"`` (default): ``Σ ω·ℓ ÷`` sequences in the global batch (all
            accumulation micro-batches, all processes) — the paper's per-sequence sum, whose per-token
            scale does not change as the curriculum exposes more steps; ``"token"``: ``÷`` active tokens.
            At the same learning rate a per-sequence update is (active tokens per sequence) times a
            token-mean one: learning rates from Hugging Face recipes carry over with ``"token"`` only.
        token_weights: the mask learner's weights (a file from ``save_token_weights`` or a mapping
            id → weights); used when ``data_collator`` is None to build a ``KPODCollator``.
        schedule: a ``ProgressiveSchedule`` (or the path of ``kpod distill``'s ``schedule.json`` or of a
            ``torch.save``-d ``state_dict()``); adds a :class:`KPODCallback`.
        fused_linear, chunk_size: passed to :func:`apply_kpod_loss`.
        label_smoothing: the KPOD loss's label smoothing; None (default): ``args.label_smoothing_factor``
            (:class:`~kpod_ops.integrations.config.KPODConfig` sets it from the command line).
        answer_accuracy: ``evaluate()`` also generates an answer for every evaluation example from
            its prompt tokens and reports ``eval_answer_accuracy`` (see
            :func:`~kpod_ops.integrations.evaluation.answer_accuracy`); ``max_new_tokens`` bounds it.
            The gold answers are strings: ``eval_answers`` (id → answer) or an ``"answer"`` key of
            each evaluation record.
        eval_answers: the gold answer string of each evaluation example, by id (for
            ``TokenizedExample`` items, which carry no answer string).

    ``args.label_smoothing_factor`` is applied by the fused KPOD loss (not by Trainer's smoother).
    Logs ``kpod_active_share`` and, with a schedule, ``kpod_stage`` next to Trainer's metrics.
    Evaluation (and ``predict``) batches give no steps: every example's full rationale
    (``c = 0``), so held-out examples need no schedule and the evaluation loss is comparable across
    curriculum stages; examples the collator has no token weights for get weight 1.

    The model is patched with :func:`apply_kpod_loss` if it is not already. Works with
    ``remove_unused_columns`` True or False, with DDP (``torchrun``) and FSDP2
    (``fsdp_config={"fsdp_version": 2}``) and DeepSpeed ZeRO 1–3 (``args.deepspeed``); refuses DataParallel,
    FSDP1 and DeepSpeed's tensor parallelism.
    """

    def __init__(self, model: Any = None, args: Any = None, data_collator: Any = None, *rest: Any,
                 normaliser: str = "sequence", token_weights: Any = None, schedule: Any = None,
                 fused_linear: bool | str = "auto", answer_accuracy: bool = False, max_new_tokens: int = 128,
                 eval_answers: Mapping[str, str] | None = None, label_smoothing: float | None = None,
                 chunk_size: int | str = "auto", **kwargs: Any) -> None:
        named = _named_arguments(Trainer.__init__, self, (model, args, data_collator, *rest), kwargs)
        if answer_accuracy and named.get("processing_class") is None:
            raise bad_input("processing_class", "the tokenizer when answer_accuracy=True (it decodes the answers)", None)
        named["data_collator"], named["callbacks"] = self._kpod_setup(
            model=model, args=args, data_collator=data_collator, processing_class=named.get("processing_class"),
            normaliser=normaliser, token_weights=token_weights, schedule=schedule, fused_linear=fused_linear,
            callbacks=named.get("callbacks"), train_dataset=named.get("train_dataset"),
            label_smoothing=label_smoothing, chunk_size=chunk_size,
        )
        if eval_answers is not None and not isinstance(eval_answers, Mapping):
            raise bad_input("eval_answers", "a mapping example id -> gold answer string, or None",
                            type(eval_answers).__name__)
        self.kpod_eval_answers = eval_answers
        self.kpod_answer_accuracy = bool(answer_accuracy)
        self.kpod_max_new_tokens = max_new_tokens
        super().__init__(**named)
        self._kpod_check_args()

    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        """Trainer's evaluation (the KPOD loss), plus ``{prefix}_answer_accuracy`` with ``answer_accuracy=True``."""
        metrics = super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        if self.kpod_answer_accuracy:
            from .evaluation import answer_accuracy

            dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
            if isinstance(dataset, Mapping):
                raise bad_input("eval_dataset", "one dataset with answer_accuracy=True", "a dict of datasets")
            scores = answer_accuracy(self.model, self.processing_class, list(dataset),
                                     max_new_tokens=self.kpod_max_new_tokens,
                                     batch_size=self.args.per_device_eval_batch_size, answers=self.kpod_eval_answers)
            extra = {f"{metric_key_prefix}_{k}": v for k, v in scores.items()}
            metrics.update(extra)
            self.log(extra)
        return metrics

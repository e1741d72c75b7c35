"""Collators that turn ``TokenizedExample``s into KPOD training batches.

For every example the schedule gives ``c_i`` leading steps as input; ``loss_start`` is the label
position of the first token of step ``c_i + 1`` and ``labels`` are −100 before it (prompt, given
steps) and on padding, so any loss — and Hugging Face's ``num_items_in_batch`` — counts only what
is learned. ``token_weights`` are the mask learner's ``w`` on rationale tokens, 1 on answer tokens
and 0 elsewhere; a token's weight depends only on its position in the full rationale, never on
``c_i`` (invariant W4). Decoder labels are **not** shifted (Hugging Face convention): use
``keypoint_cross_entropy(logits, labels, token_weights, loss_start, shift=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import KPODInputError, bad_input
from .guard import guard
from .records import RECORD_KEYS, as_tokenized
from .tokenized import TokenizedExample

WeightsSource = Mapping[str, Any] | Callable[[str], Any] | None
GivenSource = Mapping[str, int] | Callable[[str], int] | None


class _KPODCollatorBase:
    architecture = "decoder"

    def __init__(
        self,
        tokenizer: Any = None,
        token_weights: WeightsSource = None,
        given_steps: GivenSource = None,
        *,
        pad_token_id: int | None = None,
        pad_to_multiple_of: int | None = None,
        label_pad_token_id: int = -100,
        padding_side: str | None = None,
    ) -> None:
        if pad_token_id is None and tokenizer is not None:
            pad_token_id = getattr(tokenizer, "pad_token_id", None)
            if pad_token_id is None:
                pad_token_id = getattr(tokenizer, "eos_token_id", None)
        if pad_token_id is None:
            raise bad_input("pad_token_id", "an int, or a tokenizer with a pad or EOS token", "None")
        if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1):
            raise bad_input("pad_to_multiple_of", "a positive int or None", repr(pad_to_multiple_of))
        for name, value in (("token_weights", token_weights), ("given_steps", given_steps)):
            if value is not None and not isinstance(value, Mapping) and not callable(value):
                raise bad_input(name, "a dict keyed by example id, a callable(id) or None", type(value).__name__)
        self.tokenizer = tokenizer
        self.token_weights = token_weights
        # set to 1 by the first batch built in a data-loader worker: from then on the workers hold copies
        self._in_workers = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.given_steps = given_steps  # reassign every epoch with the schedule's c_i(t) (no workers), see below
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        if isinstance(label_pad_token_id, bool) or not isinstance(label_pad_token_id, (int, np.integer)) or label_pad_token_id >= 0:
            raise bad_input("label_pad_token_id", "a negative int that no token has (the loss's ignore_index, -100 by default)",
                            repr(label_pad_token_id))
        self.label_pad_token_id = int(label_pad_token_id)
        if padding_side is None:
            padding_side = getattr(tokenizer, "padding_side", None) or "right"
        if padding_side not in ("right", "left"):
            raise bad_input("padding_side", "'right', 'left' or None (the tokenizer's padding_side)", repr(padding_side))
        self.padding_side = padding_side
        eos = getattr(tokenizer, "eos_token_id", None)
        self.eos_token_id = None if eos is None else int(eos)

    @property
    def given_steps(self) -> GivenSource:
        """``c_i`` per example id (dict or callable; None means 0).

        Reassigning it once data-loader worker processes have built batches with this collator is an
        error: persistent workers would keep the old value. Give a ``ScheduledGivenSteps`` (from
        ``kpod_ops.integrations.stage``) once and move its stage instead (``KPODCallback`` does so
        under Trainer).
        """
        return self._given_steps

    @given_steps.setter
    def given_steps(self, value: GivenSource) -> None:
        if value is not None and not isinstance(value, Mapping) and not callable(value):
            raise bad_input("given_steps", "a dict keyed by example id, a callable(id) or None", type(value).__name__)
        if int(self._in_workers[0]) and value is not getattr(self, "_given_steps", None):
            raise KPODInputError(
                "given_steps: expected no reassignment after data-loader worker processes copied this collator "
                "(persistent workers would keep building batches with the old stage), got a new value: pass "
                "given_steps=ScheduledGivenSteps(schedule) once and call .set_stage(epoch) (kpod_ops.integrations.stage; "
                "KPODCallback does it under Trainer), or use num_workers=0"
            )
        self._given_steps = value

    # -- per-example inputs -------------------------------------------------------------------
    def _c(self, ex: TokenizedExample) -> int:
        source = self.given_steps
        if source is None:
            return 0
        if isinstance(source, Mapping):
            if ex.id not in source:
                raise KPODInputError(f"given_steps: expected an entry for example id {ex.id!r}, got none")
            c = source[ex.id]
        else:
            c = source(ex.id)
        if isinstance(c, (np.ndarray, torch.Tensor)):
            if isinstance(c, np.ndarray):
                one_int = c.size == 1 and c.dtype.kind in "iu"
            else:
                one_int = c.numel() == 1 and not (c.dtype.is_floating_point or c.dtype.is_complex or c.dtype == torch.bool)
            if not one_int:
                raise KPODInputError(f"given_steps[{ex.id!r}]: expected an int in [0, {ex.n_steps}], got a "
                                     f"{type(c).__name__} of shape {tuple(c.shape)} and dtype {c.dtype}")
            c = c.item()
        if isinstance(c, np.integer):
            c = int(c)
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= ex.n_steps:
            raise KPODInputError(f"given_steps[{ex.id!r}]: expected an int in [0, {ex.n_steps}], got {c!r}")
        return c

    def _w(self, ex: TokenizedExample, feature: Any) -> np.ndarray:
        source = self.token_weights
        if source is None:
            if isinstance(feature, Mapping) and feature.get("token_weights") is not None:
                raw = feature["token_weights"]
            else:
                return np.ones(ex.rationale_len, dtype=np.float32)
        elif isinstance(source, Mapping):
            if ex.id not in source:
                raise KPODInputError(f"token_weights: expected an entry for example id {ex.id!r}, got none")
            raw = source[ex.id]
        else:
            raw = source(ex.id)
        w = raw.detach().cpu().float().numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
        if w.dtype.kind not in "biuf":
            raise KPODInputError(f"token_weights[{ex.id!r}]: expected numbers (one weight per rationale token), got dtype {w.dtype}")
        w = w.astype(np.float32, copy=False)
        if w.ndim != 1 or w.shape[0] != ex.rationale_len:
            raise KPODInputError(
                f"token_weights[{ex.id!r}]: expected shape ({ex.rationale_len},) (rationale tokens), got {tuple(w.shape)}"
            )
        if not np.isfinite(w).all():
            raise KPODInputError(
                f"token_weights[{ex.id!r}]: expected finite values, got a non-finite one at rationale token {int(np.argmin(np.isfinite(w)))}"
            )
        return w

    def _padded(self, longest: int) -> int:
        m = self.pad_to_multiple_of
        return longest if m is None else int(math.ceil(longest / m) * m)

    def _examples(self, features: Sequence[Any]) -> list[TokenizedExample]:
        if not int(self._in_workers[0]) and torch.utils.data.get_worker_info() is not None:
            self._in_workers[0] = 1
        if not isinstance(features, Sequence) or len(features) == 0:
            raise bad_input("features", "a non-empty list of TokenizedExample (or dicts from to_record)", repr(features)[:60])
        for f in features:
            if isinstance(f, Mapping) and "input_ids" in f and not all(k in f for k in ("id", "step_spans", "prompt_len")):
                raise KPODInputError(
                    f"features: expected dicts with keys {list(RECORD_KEYS)}, got one with only {sorted(f)}: Hugging Face "
                    "Trainer's remove_unused_columns=True drops the KPOD fields before the collator; pass "
                    "remove_unused_columns=False in the TrainingArguments, or train with KPODTrainer"
                )
        out = [as_tokenized(f) for f in features]
        for ex in out:
            if ex.architecture != self.architecture:
                raise KPODInputError(
                    f"features: expected examples tokenised for architecture={self.architecture!r}, got {ex.architecture!r} (id {ex.id!r})"
                )
        return out


class KPODCollator(_KPODCollatorBase):
    """Decoder-only batches: ``input_ids``, ``attention_mask``, ``labels``, ``token_weights``,
    ``loss_start``, ``step_ids`` (all ``[B, T]`` except ``loss_start`` ``[B]``).

    Padding follows ``padding_side`` (default: the tokenizer's ``padding_side``, else right). With
    ``"left"`` every row is right-aligned, ``loss_start`` is shifted with it, and the batch also
    holds ``position_ids`` (counting from each row's first real token) so a model sees the same
    positions as without padding. ``label_pad_token_id`` must be negative (the loss's
    ``ignore_index``: -100 unless you pass another one to the loss).

    ``token_weights`` maps example id → 1-D weights over its rationale tokens (length
    ``rationale_len``), or is a callable(id); None means 1 (or a ``"token_weights"`` entry of dict
    features). ``given_steps`` maps id → ``c_i`` (dict or callable); None means 0. ``step_ids`` is
    the 0-based step of each rationale token and −1 elsewhere. ``labels`` are guarded
    (:class:`~kpod_ops.data.guard.KPODLabels`): a loss that would ignore ``token_weights`` and
    ``loss_start`` raises instead. Under Hugging Face Trainer use a model patched with
    ``kpod_ops.integrations.hf.apply_kpod_loss`` or ``KPODTrainer``.
    """

    architecture = "decoder"

    def __call__(self, features: Sequence[Any]) -> dict[str, torch.Tensor]:
        examples = self._examples(features)
        B = len(examples)
        T = self._padded(max(len(ex.input_ids) for ex in examples))
        input_ids = np.full((B, T), self.pad_token_id, dtype=np.int64)
        attention = np.zeros((B, T), dtype=np.int64)
        labels = np.full((B, T), self.label_pad_token_id, dtype=np.int64)
        weights = np.zeros((B, T), dtype=np.float32)
        step_ids = np.full((B, T), -1, dtype=np.int64)
        loss_start = np.zeros(B, dtype=np.int64)
        for b, (ex, feature) in enumerate(zip(examples, features)):
            L, p, a = len(ex.input_ids), ex.prompt_len, ex.answer_start
            start = ex.loss_start(self._c(ex))
            o = T - L if self.padding_side == "left" else 0  # every position of the row moves by o
            input_ids[b, o : o + L] = ex.input_ids
            attention[b, o : o + L] = 1
            labels[b, o + start : o + L] = ex.input_ids[start:]
            weights[b, o + p : o + a] = self._w(ex, feature)
            weights[b, o + a : o + L] = 1.0
            step_ids[b, o + p : o + a] = ex.step_ids()
            loss_start[b] = o + start
        batch = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention),
            "labels": guard(torch.from_numpy(labels)),
            "token_weights": torch.from_numpy(weights),
            "loss_start": torch.from_numpy(loss_start),
            "step_ids": torch.from_numpy(step_ids),
        }
        if self.padding_side == "left":  # positions count from each row's first real token, as without padding
            batch["position_ids"] = torch.from_numpy(np.maximum(np.cumsum(attention, axis=1) - 1, 0))
        return batch


class KPODSeq2SeqCollator(_KPODCollatorBase):
    """Encoder–decoder batches: the prompt and the first ``c_i`` steps go to the encoder
    (``input_ids``, ``attention_mask``, plus EOS when ``encoder_eos``); the remaining steps and the
    answer are the decoder ``labels``. ``token_weights`` and ``step_ids`` are over label positions
    and index each token by its position in the **full** rationale (W4); ``loss_start`` is 0 (the
    labels already start at step ``c_i + 1``). Use ``keypoint_cross_entropy(..., shift=False)``.
    ``padding_side="left"`` (or a left-padding tokenizer) pads the encoder input on the left; the
    decoder labels are always padded on the right.
    """

    architecture = "encoder-decoder"

    def __init__(
        self,
        tokenizer: Any = None,
        token_weights: WeightsSource = None,
        given_steps: GivenSource = None,
        *,
        encoder_eos: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(tokenizer, token_weights, given_steps, **kwargs)
        if encoder_eos and self.eos_token_id is None:
            raise bad_input("tokenizer", "a tokenizer with an EOS token when encoder_eos=True", "eos_token_id=None")
        self.encoder_eos = encoder_eos

    def __call__(self, features: Sequence[Any]) -> dict[str, torch.Tensor]:
        examples = self._examples(features)
        B = len(examples)
        rows = []
        for ex, feature in zip(examples, features):
            start = ex.loss_start(self._c(ex))
            enc = list(ex.input_ids[:start]) + ([self.eos_token_id] if self.encoder_eos else [])
            rows.append((ex, start, enc, self._w(ex, feature)))
        S = self._padded(max(len(r[2]) for r in rows))
        T = self._padded(max(len(ex.input_ids) - start for ex, start, _, _ in rows))
        input_ids = np.full((B, S), self.pad_token_id, dtype=np.int64)
        attention = np.zeros((B, S), dtype=np.int64)
        labels = np.full((B, T), self.label_pad_token_id, dtype=np.int64)
        weights = np.zeros((B, T), dtype=np.float32)
        step_ids = np.full((B, T), -1, dtype=np.int64)
        for b, (ex, start, enc, w) in enumerate(rows):
            o = S - len(enc) if self.padding_side == "left" else 0  # encoder input only; labels stay left-aligned
            input_ids[b, o : o + len(enc)] = enc
            attention[b, o : o + len(enc)] = 1
            target = ex.input_ids[start:]
            labels[b, : len(target)] = target
            n_rat = ex.answer_start - start  # remaining rationale tokens
            weights[b, :n_rat] = w[start - ex.prompt_len :]
            weights[b, n_rat : len(target)] = 1.0
            step_ids[b, :n_rat] = ex.step_ids()[start - ex.prompt_len :]
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention),
            "labels": guard(torch.from_numpy(labels)),
            "token_weights": torch.from_numpy(weights),
            "loss_start": torch.zeros(B, dtype=torch.int64),
            "step_ids": torch.from_numpy(step_ids),
        }

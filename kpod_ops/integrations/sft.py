"""TRL counterpart of :class:`~kpod_ops.integrations.hf.KPODTrainer`: ``KPODSFTTrainer``.

TRL's ``SFTTrainer`` computes its own loss from the hidden states (a fused LM head) and never calls
the model's loss function, so a model patched with ``apply_kpod_loss`` is not enough there (it
raises rather than train plain cross-entropy). ``KPODSFTTrainer`` keeps TRL's set-up and trains
the KPOD loss through the patched model, with the normalisers of ``KPODTrainer``.

Datasets: TRL's prompt-completion rows (``prompt`` and ``completion``, standard or conversational),
conversational ``messages`` rows (the last message is the assistant's reply), or ``prompt`` with
``rationale`` and ``answer`` (the completion is the rationale followed by the answer sentence),
each optionally with ``rationale`` (where the completion's rationale is; without it the completion
is split at its final answer marker, "Therefore, the answer is …" / "#### …"), ``answer`` (the gold
answer string, for evaluation) and ``id``; or records already tokenised by ``to_record``.
:func:`prepare_dataset` turns them into KPOD records (token ids, the rationale's step spans),
tokenised as TRL tokenises them.

Every ``SFTConfig`` field either takes effect or is refused with the reason (see
``docs/huggingface.md``); TRL's logged metrics (``entropy``, ``mean_token_accuracy`` over the tokens
the loss counts, ``num_tokens``) come next to KPOD's (``kpod_stage``, ``kpod_active_share``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .._optional import require
from ..data.jsonl import generated_id
from ..data.records import RECORD_KEYS, as_tokenized, to_record
from ..data.tokenize import DEFAULT_ANSWER_TEMPLATE, _merge_empty
from ..data.tokenized import TokenizedExample
from ..errors import KPODInputError, bad_input
from ..steps import assign_tokens, resolve_rule, split_answer, split_steps
from .hf import _KPODTrainerMixin, _named_arguments, _unwrap

_transformers = require("transformers", extra="hf", feature="kpod_ops.integrations.sft")
_trl = require("trl", extra="hf", feature="kpod_ops.integrations.sft")
_datasets = require("datasets", extra="hf", feature="kpod_ops.integrations.sft")
Trainer, SFTTrainer = _transformers.Trainer, _trl.SFTTrainer

__all__ = ["KPODSFTTrainer", "prepare_dataset"]

# SFTConfig fields KPODSFTTrainer refuses, with the value it accepts and why
_REFUSED = {
    "packing": (False, "loss_start is one position per row; packed rows hold several sequences"),
    "padding_free": (False, "loss_start is one position per row; padding-free batches flatten the rows into one"),
    "eval_packing": ((None, False), "loss_start is one position per row; packed rows hold several sequences"),
    "completion_only_loss": ((None, True), "KPOD's loss covers the rationale steps after the given ones and the "
                             "answer; the prompt and the given steps are input, never trained"),
    "loss_type": ("nll", "DFT rescales every token's loss by its probability, which would change what the keypoint "
                  "weights mean; KPOD trains the weighted negative log-likelihood"),
    "truncation_mode": ("keep_start", "over-long examples are left out, never truncated (see max_length)"),
    "use_liger_kernel": (False, "Liger's kernels replace the model's forward, which the KPOD patch wraps"),
}


# ---------------------------------------------------------------------------------------------- datasets
def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad_input(where, "a non-empty string", repr(value)[:60])
    return value


def _scalar_text(value: Any) -> Any:
    """An id or answer written as a JSON number, as text (``42`` -> ``"42"``), as ``read_jsonl`` reads them."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and (isinstance(value, int) or value == value):
        return str(value)
    return value


def _rationale(value: Any) -> str:
    """A row's ``rationale`` with a final answer marker left in it (``... #### 42``) split off, as ``read_jsonl``
    does: the answer sentence follows it, and the marker would be a step that says the answer twice."""
    text = _text(value, "rationale")
    return split_answer(text)[0] or text


def _messages(value: Any, where: str) -> list[dict]:
    if not isinstance(value, Sequence) or isinstance(value, str) or not value or \
            not all(isinstance(m, Mapping) and "role" in m and "content" in m for m in value):
        raise bad_input(where, "a non-empty list of {'role', 'content'} messages", repr(value)[:60])
    return [dict(m) for m in value]


def _row_parts(row: Mapping[str, Any], tokenizer: Any, answer_template: str) -> tuple[str, str, int, bool, str]:
    """(full text, its rationale, where the completion starts, whether the text is a chat rendering, assistant text)."""
    if "messages" in row:
        messages = _messages(row["messages"], "messages")
        if messages[-1]["role"] != "assistant":
            raise bad_input("messages", "a conversation whose last message is the assistant's reply (the rationale "
                            "and answer)", f"last role {messages[-1]['role']!r}")
        prompt, completion = messages[:-1], messages[-1:]
    elif "prompt" in row:
        prompt = row["prompt"]
        if "completion" in row and row["completion"] is not None:
            completion = row["completion"]
        elif row.get("rationale") is not None and row.get("answer") is not None:
            rationale = _rationale(row["rationale"])
            sep = "\n" if resolve_rule(rationale) in ("newline", "paragraph") else " "
            answer = _text(_scalar_text(row["answer"]), "answer")
            completion = rationale + answer_template.format(answer=answer, sep=sep)
            if not isinstance(prompt, str):
                completion = [{"role": "assistant", "content": completion}]
        else:
            raise bad_input("dataset", "rows with 'completion' (or 'rationale' and 'answer') next to 'prompt'",
                            f"a row with keys {sorted(row)}")
    else:
        raise bad_input(
            "dataset", "rows in one of TRL's formats with a prompt: 'prompt' + 'completion', conversational "
            "'messages', or 'prompt' + 'rationale' + 'answer' (or records from kpod_ops.data.to_record)",
            f"a row with keys {sorted(row)} (a plain-text language-modelling row has no prompt and no steps)",
        )
    if isinstance(prompt, str):
        if not isinstance(completion, str):
            raise bad_input("completion", "a string next to a string prompt", type(completion).__name__)
        assistant = _text(completion, "completion")
        eos = tokenizer.eos_token
        if eos and not assistant.endswith(eos):  # as TRL: a non-conversational completion ends with EOS
            completion = completion + eos
        return prompt + completion, assistant, len(prompt), False, assistant
    prompt = _messages(prompt, "prompt")
    completion = _messages(completion, "completion")
    if getattr(tokenizer, "chat_template", None) is None:
        raise bad_input("processing_class", "a tokenizer with a chat template for conversational rows",
                        "chat_template=None")
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    at = 0  # the completion starts where the rendered prompt and the full conversation part (as TRL does, by text)
    while at < min(len(head), len(full)) and head[at] == full[at]:
        at += 1
    assistant = "".join(str(m["content"]) for m in completion if m["role"] == "assistant")
    return full, "", at, True, assistant


def _tokenized_row(row: Mapping[str, Any], tokenizer: Any, step_rule: str, answer_template: str) -> TokenizedExample:
    full, _, start, chat, assistant = _row_parts(row, tokenizer, answer_template)
    if row.get("rationale") is not None:
        rationale = _rationale(row["rationale"])
    else:
        rationale, answer_part = split_answer(assistant)
        if answer_part is None:
            raise bad_input("rationale", "a 'rationale' field, or a completion that ends with an answer marker "
                            "('Therefore, the answer is …', '#### …')", f"neither in {assistant[-60:]!r}")
    at = full.find(rationale, start)
    if at < 0:
        raise bad_input("rationale", "text that the completion contains (the completion = rationale + answer)",
                        f"{rationale[:60]!r} not found in the completion")
    steps = split_steps(rationale, step_rule)
    # segment 0: the prompt; step k + 1 starts at `at + len(steps[:k])` (the text between the prompt and the
    # rationale joins the first step); the answer segment starts after the rationale
    starts = [0, start, *(at + sum(len(s) for s in steps[:k]) for k in range(1, len(steps))), at + len(rationale)]
    enc = tokenizer(full, add_special_tokens=not chat, return_offsets_mapping=True)
    # a word begun in the prompt's last space is the completion's (as TRL splits prompt and completion)
    ids, segments = list(enc["input_ids"]), assign_tokens(enc["offset_mapping"], starts, claim_straddling=1)
    n = len(steps)
    counts = [segments.count(k) for k in range(n + 2)]
    ex_id = str(row["id"]) if row.get("id") is not None else generated_id(full[:start], rationale)
    if counts[n + 1] == 0:
        raise KPODInputError(f"example {ex_id!r}: completion: expected an answer after the rationale, got no token")
    steps, step_counts = _merge_empty(steps, counts[1:n + 1], ex_id)
    spans, pos = [], counts[0]
    for c in step_counts:
        spans.append((pos, pos + c))
        pos += c
    return TokenizedExample(ex_id, tuple(int(i) for i in ids), counts[0], tuple(spans), pos, "decoder", tuple(steps))


def prepare_dataset(dataset: Any, tokenizer: Any, *, max_length: int | None = None, num_proc: int | None = None,
                    step_rule: str = "auto", answer_template: str = DEFAULT_ANSWER_TEMPLATE,
                    name: str = "train_dataset") -> Any:
    """KPOD records (``to_record`` dicts, plus ``answer`` where a row has one) from a dataset in TRL's formats
    (see the module docstring), tokenised as TRL tokenises them: a standard prompt + completion with the
    tokenizer's special tokens and EOS appended, a conversation through its chat template; each token goes to
    the segment (prompt, step k, answer) that holds its first character. Rows longer than ``max_length``
    tokens are left out with a warning that names them (a cut rationale or answer would teach a wrong one);
    none left is an error. Records already tokenised pass through (only the length filter applies).
    Returns a ``datasets.Dataset``."""
    Dataset = _datasets.Dataset
    if isinstance(dataset, _datasets.IterableDataset):
        raise bad_input(name, "a datasets.Dataset or a list (KPOD keys token weights and the schedule by example id, "
                        "so it needs every example up front)", "an IterableDataset")
    if isinstance(dataset, Sequence) and not isinstance(dataset, Dataset):
        rows = [to_record(x) if isinstance(x, TokenizedExample) else
                {k: _scalar_text(v) if k in ("id", "answer") else v for k, v in dict(x).items()} for x in dataset]
        columns = list(dict.fromkeys(k for row in rows for k in row))  # from_list reads the first row's keys only
        try:
            dataset = Dataset.from_list([{k: row.get(k) for k in columns} for row in rows])
        except (TypeError, ValueError) as exc:  # pyarrow's ArrowInvalid / ArrowTypeError derive from these
            raise bad_input(name, "rows whose fields keep one type across rows (each a string, or each a list of "
                            "messages)", f"{type(exc).__name__}: {str(exc)[:120]}") from None
    if not isinstance(dataset, Dataset):
        raise bad_input(name, "a datasets.Dataset or a list of rows", type(dataset).__name__)
    if len(dataset) == 0:
        raise bad_input(name, "at least one row", "an empty dataset")
    if not getattr(tokenizer, "is_fast", False):
        raise bad_input("processing_class", "a fast tokenizer (its offsets place every token in a step)",
                        type(tokenizer).__name__)
    columns = set(dataset.column_names)
    if not all(k in columns for k in RECORD_KEYS if k != "architecture"):
        keep = [c for c in ("answer",) if c in columns]

        def convert(row: dict, index: int) -> dict:
            try:
                record = to_record(_tokenized_row(row, tokenizer, step_rule, answer_template))
            except KPODInputError as exc:
                raise KPODInputError(f"{name} row {index}: {exc}") from None
            for c in keep:
                record[c] = _scalar_text(row[c])
            return record

        dataset = dataset.map(convert, with_indices=True, remove_columns=dataset.column_names, num_proc=num_proc,
                              desc=f"KPOD: tokenising {name}")
    else:
        as_tokenized(dataset[0], name)  # records: the first one checked here, every one by the collator
    first: dict[str, int] = {}
    for index, ex_id in enumerate(dataset["id"]):  # token weights and the schedule are keyed by id
        if ex_id in first:
            raise bad_input(f"{name} row {index}: id", "a unique example id (token weights and the schedule are keyed "
                            "by id; an id made from the content repeats when a row does)",
                            f"{ex_id!r} again (first on row {first[ex_id]})")
        first[ex_id] = index
    if max_length is not None:
        lengths = [len(ids) for ids in dataset["input_ids"]]
        long = [i for i, n in enumerate(lengths) if n > max_length]
        if len(long) == len(lengths):
            raise bad_input("args.max_length", f"at least the shortest example's length ({min(lengths)} tokens)",
                            f"{max_length}: every example of {name} is longer")
        if long:
            ids = dataset.select(long[:10])["id"]
            more = f" and {len(long) - 10} more" if len(long) > 10 else ""
            warnings.warn(f"KPODSFTTrainer: left out {len(long)} of {len(lengths)} examples of {name} longer than "
                          f"max_length={max_length} tokens (KPOD never truncates a rationale or answer): "
                          f"{', '.join(repr(i) for i in ids)}{more}", UserWarning, stacklevel=3)
            dataset = dataset.select([i for i, n in enumerate(lengths) if n <= max_length])
    return dataset


# ---------------------------------------------------------------------------------------------- trainer
def _check_config(args: Any) -> None:
    """Refuse the SFTConfig values KPODSFTTrainer cannot honour, each with the reason."""
    for field, (accepted, why) in _REFUSED.items():
        value = getattr(args, field, None)
        ok = value in accepted if isinstance(accepted, tuple) else value == accepted
        if not ok:
            expected = " or ".join(repr(a) for a in accepted) if isinstance(accepted, tuple) else repr(accepted)
            raise bad_input(f"args.{field}", f"{expected} ({why})", repr(value))
    path = getattr(args, "chat_template_path", None)
    if path is not None and not (os.path.isfile(path) and str(path).endswith((".jinja", ".j2"))):
        raise bad_input("args.chat_template_path", "a .jinja / .j2 template file, or None (cloning another "
                        "tokenizer's template adds tokens and resizes the model: do it before, with "
                        "trl.clone_chat_template, and pass the model and tokenizer)", repr(path))


class KPODSFTTrainer(_KPODTrainerMixin, SFTTrainer):
    """``trl.SFTTrainer`` training the KPOD loss (``normaliser``, ``token_weights``, ``schedule``,
    ``fused_linear``, ``label_smoothing`` and ``chunk_size`` as in ``KPODTrainer``; ``step_rule`` and
    ``answer_template`` as in ``tokenize_examples``, for rows in TRL's formats).

    Accepts what ``SFTTrainer`` accepts: a model object or a model name / path (loaded with
    ``from_pretrained`` and ``args.model_init_kwargs``, as TRL loads it), ``peft_config`` (the model is
    wrapped before the KPOD patch, so an adapter on the LM head is seen and refused by the fused
    linear loss), ``processing_class`` (loaded from the model's name when None), datasets in TRL's
    formats (:func:`prepare_dataset`). ``args.label_smoothing_factor`` is applied by the fused KPOD loss.
    """

    def __init__(self, model: Any, args: Any = None, data_collator: Any = None, *rest: Any,
                 normaliser: str = "sequence", token_weights: Any = None, schedule: Any = None,
                 fused_linear: bool | str = "auto", step_rule: str = "auto",
                 answer_template: str = DEFAULT_ANSWER_TEMPLATE, label_smoothing: float | None = None,
                 chunk_size: int | str = "auto", **kwargs: Any) -> None:
        named = _named_arguments(SFTTrainer.__init__, self, (model, args, data_collator, *rest), kwargs)
        args = named.get("args")
        if args is None:
            name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "")
            args = _trl.SFTConfig(f"{str(name).rstrip('/').split('/')[-1] or 'model'}-SFT")
        elif not isinstance(args, _trl.SFTConfig):
            raise bad_input("args", "a trl.SFTConfig (or None)", type(args).__name__)
        _check_config(args)
        if args.assistant_only_loss:
            first = next(iter(named.get("train_dataset") or []), {})
            if not isinstance(first, Mapping) or not ("messages" in first or isinstance(first.get("prompt"), list)):
                raise bad_input("args.assistant_only_loss", "False, or a conversational dataset (the loss is on the "
                                "assistant's reply either way)", "True with non-conversational rows")
        if named.get("compute_loss_func") is not None:
            raise bad_input("compute_loss_func", "None (the loss is KPOD's)", "a function")
        if named.get("formatting_func") is not None:
            raise bad_input("formatting_func", "None (format the rows as prompt/completion or messages: KPOD needs "
                            "the prompt apart from the completion)", "a function")
        tokenizer = self._kpod_tokenizer(model, named.get("processing_class"), args)
        model = self._kpod_model(model, args, named.pop("peft_config", None), named.pop("quantization_config", None))
        prepared = {}
        for key in ("train_dataset", "eval_dataset"):
            value = named.get(key)
            if value is None:
                continue
            if isinstance(value, Mapping):
                prepared[key] = {k: prepare_dataset(v, tokenizer, max_length=args.max_length, name=f"{key}[{k!r}]",
                                                    num_proc=args.dataset_num_proc, step_rule=step_rule,
                                                    answer_template=answer_template) for k, v in value.items()}
            else:
                prepared[key] = prepare_dataset(value, tokenizer, max_length=args.max_length, name=key,
                                                num_proc=args.dataset_num_proc, step_rule=step_rule,
                                                answer_template=answer_template)
            if args.shuffle_dataset and not isinstance(prepared[key], Mapping):
                prepared[key] = prepared[key].shuffle(seed=args.seed)
        named.update(prepared, model=model, args=args, processing_class=tokenizer)
        self.kpod_step_rule, self.kpod_answer_template = step_rule, answer_template
        named["data_collator"], named["callbacks"] = self._kpod_setup(
            model=model, args=args, data_collator=named.get("data_collator"), processing_class=tokenizer,
            normaliser=normaliser, token_weights=token_weights, schedule=schedule, fused_linear=fused_linear,
            callbacks=named.get("callbacks"), train_dataset=named.get("train_dataset"),
            pad_to_multiple_of=args.pad_to_multiple_of, label_smoothing=label_smoothing, chunk_size=chunk_size,
        )
        # TRL's own preparation, its label smoother and its model loading are done here or by the KPOD loss: the
        # config TRL's __init__ reads says so, and the user's values are back on self.args afterwards
        saved = {"dataset_kwargs": args.dataset_kwargs, "label_smoothing_factor": args.label_smoothing_factor,
                 "assistant_only_loss": args.assistant_only_loss, "model_init_kwargs": args.model_init_kwargs,
                 "chat_template_path": args.chat_template_path}
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        args.label_smoothing_factor, args.assistant_only_loss = 0.0, False
        args.model_init_kwargs = args.chat_template_path = None
        try:
            super().__init__(**named)
        finally:
            for key, value in saved.items():
                setattr(args, key, value)
        # TRL resolved the router loss's weight (args.router_aux_loss_coef, else the model's) into its config; the
        # KPOD loss comes from the model's forward, which reads the weight from the model itself: give it TRL's
        base = _unwrap(self.model)
        coef = getattr(self, "router_aux_loss_coef", None)
        if coef is not None and hasattr(base, "router_aux_loss_coef"):
            base.router_aux_loss_coef = coef
        self._kpod_check_args()

    # -- set-up ----------------------------------------------------------------------------------
    @staticmethod
    def _kpod_tokenizer(model: Any, processing_class: Any, args: Any) -> Any:
        """The tokenizer the datasets are tokenised with: the one given, or the model's (``from_pretrained``), with
        ``args.chat_template_path``, ``eos_token`` and ``pad_token`` applied as TRL applies them."""
        if processing_class is None:
            name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "")
            if not name:
                raise bad_input("processing_class", "the tokenizer (the model has no name to load it from)", None)
            init = dict(args.model_init_kwargs or {})
            processing_class = _transformers.AutoTokenizer.from_pretrained(
                name, revision=init.get("revision"), trust_remote_code=args.trust_remote_code)
        if not isinstance(processing_class, _transformers.PreTrainedTokenizerBase):
            raise bad_input("processing_class", "a text tokenizer (vision-language processors are not supported)",
                            type(processing_class).__name__)
        if args.chat_template_path is not None:
            with open(args.chat_template_path, encoding="utf-8") as handle:
                processing_class.chat_template = handle.read()
        for field in ("eos_token", "pad_token"):
            value = getattr(args, field)
            if value is not None:
                if value not in processing_class.get_vocab():
                    raise bad_input(f"args.{field}", "a token of the tokenizer's vocabulary", repr(value))
                setattr(processing_class, field, value)
        return processing_class

    @staticmethod
    def _kpod_model(model: Any, args: Any, peft_config: Any, quantization_config: Any) -> Any:
        """The model object: loaded from a name as TRL loads it, wrapped with ``peft_config``."""
        if isinstance(model, str):
            from trl.trainer.utils import create_model_from_path

            init = dict(args.model_init_kwargs or {})
            if quantization_config is not None:
                init["quantization_config"] = quantization_config
            init.setdefault("trust_remote_code", args.trust_remote_code)
            model = create_model_from_path(model, **init)
        elif quantization_config is not None:
            raise bad_input("quantization_config", "None with a model object (it applies when loading by name)",
                            "a config")
        if peft_config is not None:
            peft = require("peft", extra="hf", feature="KPODSFTTrainer(peft_config=...)")

            if not isinstance(peft_config, peft.PeftConfig):
                raise bad_input("peft_config", "a peft.PeftConfig (e.g. peft.LoraConfig)", type(peft_config).__name__)
            if hasattr(model, "peft_config"):
                raise bad_input("peft_config", "None for a model that already has adapters", "a config")
            model = peft.get_peft_model(model, peft_config)
        return model

    # -- loss and metrics --------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The patched model's KPOD loss (Trainer's loss path, not TRL's fused LM head), with TRL's metrics:
        ``entropy`` and ``mean_token_accuracy`` over the tokens the KPOD loss counts, ``num_tokens`` (attended
        tokens seen in training), ``aux_loss`` (an MoE student's router loss); and KPOD's (see ``KPODTrainer``)."""
        mode = "train" if self.model.training else "eval"
        inputs = self._kpod_inputs(inputs)
        self._kpod_record(inputs)
        inputs["use_cache"] = False
        if self.aux_loss_enabled:
            inputs["output_router_logits"] = True
        patch = _unwrap(self.model)._kpod_patch
        statistics: list = []
        patch.metrics = statistics
        try:
            loss, outputs = Trainer.compute_loss(self, model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
        finally:
            patch.metrics = None
        if statistics:
            local = torch.tensor([sum(s[k] for s in statistics) for k in range(3)], dtype=torch.float64,
                                 device=self.args.device)
            entropy, correct, active = (float(v) for v in self.accelerator.gather_for_metrics(local.reshape(1, 3)).sum(0))
            self._metrics[mode]["entropy"].append(entropy / active if active else 0.0)
            self._metrics[mode]["mean_token_accuracy"].append(correct / active if active else 0.0)
        if self.aux_loss_enabled and getattr(outputs, "aux_loss", None) is not None:  # as TRL logs it
            aux = self.accelerator.gather_for_metrics(outputs.aux_loss.detach().reshape(1)).mean()
            self._metrics[mode]["aux_loss"].append(float(aux))
        if mode == "train" and "attention_mask" in inputs:
            self._total_train_tokens += int(self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum())
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Trainer's prediction step (the patched model returns logits in evaluation)."""
        return Trainer.prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        """TRL's evaluation; a dataset passed here is prepared as the training one (TRL's formats or records)."""
        if eval_dataset is not None and not isinstance(eval_dataset, str):
            prepare = {"max_length": self.args.max_length, "num_proc": self.args.dataset_num_proc,
                       "step_rule": self.kpod_step_rule, "answer_template": self.kpod_answer_template}
            if isinstance(eval_dataset, Mapping):
                eval_dataset = {k: prepare_dataset(v, self.processing_class, name=f"eval_dataset[{k!r}]", **prepare)
                                for k, v in eval_dataset.items()}
            else:
                eval_dataset = prepare_dataset(eval_dataset, self.processing_class, name="eval_dataset", **prepare)
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

"""Hugging Face Trainer / PEFT / TRL integration: the KPOD loss, its normalisers, the curriculum stage
in data-loader workers, checkpoint/resume, and no silent fallback to plain cross-entropy."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from data_helpers import bpe_tokenizer
from training_helpers import assert_trained_alike, params
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from kpod_ops import KPODInputError, keypoint_cross_entropy
from kpod_ops.curriculum import ProgressiveSchedule
from kpod_ops.data import KPODCollator, load_builtin, to_record, tokenize_examples, unguard
from kpod_ops.integrations.hf import (
    KPODCallback,
    KPODTrainer,
    apply_kpod_loss,
    is_patched,
    revert_kpod_loss,
)
from kpod_ops.integrations.stage import ScheduledGivenSteps

warnings.filterwarnings("ignore", message=".*use_cpu.*")


# ------------------------------------------------------------------------------------------ fixtures
def tiny_data(n: int = 8, seed: int = 0):
    """Tokenizer, tokenized arith examples (>= 2 steps), random token weights in (0.2, 1)."""
    tok = bpe_tokenizer("bytelevel")
    tokenized = tokenize_examples(load_builtin("arith-cot", "train", n=n, seed=seed), tok)
    rng = np.random.default_rng(seed)
    weights = {te.id: rng.uniform(0.2, 1.0, te.rationale_len).astype(np.float32) for te in tokenized}
    return tok, tokenized, weights


def tiny_llama(tok, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=None,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def tiny_schedule(tokenized, n_epochs: int = 4, seed: int = 0) -> ProgressiveSchedule:
    rng = np.random.default_rng(seed)
    difficulties = {te.id: rng.uniform(0.5, 2.0, te.n_steps) for te in tokenized}
    clusters = {te.id: i % 2 for i, te in enumerate(tokenized)}
    return ProgressiveSchedule.build(difficulties, clusters, n_epochs=n_epochs, c0_ratio=0.3)


def given(tokenized, c: int = 1) -> dict[str, int]:
    return {te.id: min(c, te.n_steps) for te in tokenized}


def train_args(out, **kw) -> TrainingArguments:
    base = dict(output_dir=str(out), report_to=[], use_cpu=True, save_strategy="no", logging_steps=1,
                disable_tqdm=True, seed=0, data_seed=0)
    base.update(kw)
    return TrainingArguments(**base)


class SequentialMixin:
    """Pin the data order (no shuffling) so a hand-written loop can follow the same batches."""

    def _get_train_sampler(self, train_dataset=None):
        return torch.utils.data.SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)


class SequentialTrainer(SequentialMixin, Trainer):
    pass


class SequentialKPODTrainer(SequentialMixin, KPODTrainer):
    pass


def step_losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_loss" not in h]


def reference_loop(model, collator, tokenized, *, batch, accumulation, steps, lr, clip, normaliser):
    """The KPOD loss in a plain loop: AdamW, linear decay to 0, global-norm clipping, sequential data."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, (steps - s) / steps))
    micro = [tokenized[i:i + batch] for i in range(0, len(tokenized), batch)]
    losses, m = [], 0
    model.train()
    for _ in range(steps):
        group = []
        for _ in range(accumulation):
            group.append(collator(micro[m % len(micro)]))
            m += 1
        if normaliser == "token":
            den = sum(int((unguard(b["labels"])[:, 1:] != -100).sum()) for b in group)
        else:
            den = sum(b["labels"].shape[0] for b in group)
        total = 0.0
        for b in group:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            loss = keypoint_cross_entropy(logits, b["labels"], b["token_weights"], b["loss_start"], shift=True,
                                          reduction="sum") / den
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(total)
    return losses


def lora(model):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))


# ------------------------------------------------------------------------------------------ loss curves
@pytest.mark.parametrize("student", ["full", "lora"])
@pytest.mark.parametrize("normaliser", ["token", "sequence"])
def test_trainer_matches_reference_loop(tmp_path, student, normaliser):
    tok, tokenized, weights = tiny_data(8)
    steps, batch, accumulation, lr, clip = 4, 2, 2, 3e-3, 0.5
    models = []
    for _ in range(2):
        model = tiny_llama(tok)
        models.append(lora(model) if student == "lora" else model)
    start = params(models[0])
    collator = KPODCollator(tok, weights, given(tokenized))
    args = train_args(tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                      max_steps=steps, learning_rate=lr, lr_scheduler_type="linear", warmup_steps=0,
                      max_grad_norm=clip, optim="adamw_torch", weight_decay=0.0)
    if normaliser == "token":
        trainer = SequentialTrainer(model=apply_kpod_loss(models[0], fused_linear=False), args=args,
                                    train_dataset=tokenized, data_collator=collator)
    else:  # the logits path, compared with the logits reference loop (the fused linear path has its own test)
        trainer = SequentialKPODTrainer(models[0], args, collator, train_dataset=tokenized, fused_linear=False)
    trainer.train()
    ref = reference_loop(models[1], collator, tokenized, batch=batch, accumulation=accumulation, steps=steps, lr=lr,
                         clip=clip, normaliser=normaliser)
    got = step_losses(trainer)
    assert len(got) == steps and len(set(ref)) == steps  # the curve moves
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert_trained_alike(params(models[0]), params(models[1]), start)


def test_token_normaliser_is_invariant_to_gradient_accumulation(tmp_path):
    tok, tokenized, weights = tiny_data(8)
    collator = KPODCollator(tok, weights, given(tokenized))
    flat = []
    for batch, acc in ((4, 1), (2, 2), (1, 4)):
        model = apply_kpod_loss(tiny_llama(tok))
        args = train_args(tmp_path / f"{batch}", per_device_train_batch_size=batch, gradient_accumulation_steps=acc,
                          max_steps=2, learning_rate=0.1, optim="sgd", max_grad_norm=0.0)
        SequentialTrainer(model=model, args=args, train_dataset=tokenized, data_collator=collator).train()
        flat.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(flat[1], flat[0], rtol=1e-5, atol=1e-7)  # SGD: differences stay at float level
    torch.testing.assert_close(flat[2], flat[0], rtol=1e-5, atol=1e-7)


def test_kpod_sft_trainer_matches_trainer(tmp_path):
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    from kpod_ops.integrations.sft import KPODSFTTrainer

    tok, tokenized, weights = tiny_data(8)
    collator = KPODCollator(tok, weights, given(tokenized))
    records = datasets.Dataset.from_list([to_record(te) for te in tokenized])

    class SequentialSFT(SequentialMixin, KPODSFTTrainer):
        pass

    common = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=3, learning_rate=3e-3)
    sft_args = trl.SFTConfig(str(tmp_path / "sft"), report_to=[], use_cpu=True, save_strategy="no", logging_steps=1,
                             disable_tqdm=True, seed=0, max_length=None, **common)
    sft = SequentialSFT(lora(tiny_llama(tok)), sft_args, collator, train_dataset=records, processing_class=tok)
    sft.train()
    plain = SequentialKPODTrainer(lora(tiny_llama(tok)), train_args(tmp_path / "hf", **common), collator,
                                  train_dataset=tokenized)
    plain.train()
    np.testing.assert_allclose(step_losses(sft), step_losses(plain), rtol=1e-5)


# ------------------------------------------------------------------------------------------ no silent fallback
def _expected_first_loss(model, collator, features, normaliser):
    b = collator(features)
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        total = keypoint_cross_entropy(logits, b["labels"], b["token_weights"], b["loss_start"], shift=True,
                                       reduction="sum")
    den = int((unguard(b["labels"])[:, 1:] != -100).sum()) if normaliser == "token" else len(features)
    return float(total) / den


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("remove_unused", [True, False])
@pytest.mark.parametrize("mode", ["patched", "unpatched", "kpod"])
@pytest.mark.parametrize("trainer_kind", ["Trainer", "SFTTrainer"])
def test_no_silent_fallback(tmp_path, trainer_kind, mode, remove_unused, workers):
    """Every cell either trains KPOD's loss (checked against the loss computed by hand) or raises
    KPODInputError saying what to change; none trains plain cross-entropy."""
    datasets = pytest.importorskip("datasets")
    trl = pytest.importorskip("trl")
    tok, tokenized, weights = tiny_data(4)
    model = tiny_llama(tok)
    collator = KPODCollator(tok, weights, given(tokenized))
    records = datasets.Dataset.from_list([to_record(te) for te in tokenized])
    common = dict(per_device_train_batch_size=4, max_steps=1, learning_rate=1e-3, remove_unused_columns=remove_unused,
                  dataloader_num_workers=workers)
    if trainer_kind == "Trainer":
        args = train_args(tmp_path, **common)
    else:
        args = trl.SFTConfig(str(tmp_path), report_to=[], use_cpu=True, save_strategy="no", logging_steps=1,
                             disable_tqdm=True, max_length=None, dataset_kwargs={"skip_prepare_dataset": True}, **common)
    if mode == "patched":
        apply_kpod_loss(model)
    expected = _expected_first_loss(model, collator, tokenized, "sequence" if mode == "kpod" else "token")
    if mode == "kpod":
        if trainer_kind == "Trainer":
            trainer = KPODTrainer(model, args, collator, train_dataset=records)
        else:
            from kpod_ops.integrations.sft import KPODSFTTrainer

            trainer = KPODSFTTrainer(model, args, collator, train_dataset=records, processing_class=tok)
    else:
        cls = Trainer if trainer_kind == "Trainer" else trl.SFTTrainer
        extra = {} if trainer_kind == "Trainer" else {"processing_class": tok}
        trainer = cls(model=model, args=args, train_dataset=records, data_collator=collator, **extra)
    trains = mode == "kpod" or (mode == "patched" and trainer_kind == "Trainer" and not remove_unused)
    if trains:
        out = trainer.train()
        assert out.training_loss == pytest.approx(expected, rel=1e-5)
    else:
        with pytest.raises(KPODInputError, match="KPODTrainer|KPODSFTTrainer|remove_unused_columns|apply_kpod_loss"):
            trainer.train()


def test_patched_model_keeps_kpod_columns_with_remove_unused_columns(tmp_path):
    """With TokenizedExample items (no record columns to drop) the patch's signature keeps the KPOD fields."""
    tok, tokenized, weights = tiny_data(4)
    model = apply_kpod_loss(tiny_llama(tok))
    collator = KPODCollator(tok, weights, given(tokenized))
    expected = _expected_first_loss(model, collator, tokenized, "token")
    args = train_args(tmp_path, per_device_train_batch_size=4, max_steps=1, remove_unused_columns=True)
    out = Trainer(model=model, args=args, train_dataset=tokenized, data_collator=collator).train()
    assert out.training_loss == pytest.approx(expected, rel=1e-5)


def test_guarded_labels_refuse_plain_losses_and_pass_plain_ops():
    tok, tokenized, weights = tiny_data(2)
    b = KPODCollator(tok, weights, given(tokenized))(tokenized)
    labels, logits = b["labels"], torch.randn(*b["labels"].shape, len(tok))
    for consume in (
        lambda: torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()),
        lambda: logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)),
        lambda: labels[labels != -100],
    ):
        with pytest.raises(KPODInputError, match="apply_kpod_loss"):
            consume()
    from transformers.modeling_outputs import CausalLMOutput
    from transformers.trainer_pt_utils import LabelSmoother

    with pytest.raises(KPODInputError, match="apply_kpod_loss"):  # Trainer(label_smoothing_factor>0)'s loss
        LabelSmoother(0.1)(CausalLMOutput(logits=logits), labels, shift_labels=True)
    assert int((labels[:, 1:] != -100).sum()) > 0 and labels.to("cpu").shape == labels.shape
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), unguard(labels).flatten())  # explicit opt-out
    keypoint_cross_entropy(logits, labels, b["token_weights"], b["loss_start"], shift=True)  # kpod_ops' own loss


def test_patch_and_revert(tmp_path):
    tok, tokenized, weights = tiny_data(4)
    model = tiny_llama(tok)
    original_loss = model.loss_function
    peft_model = lora(model)
    assert apply_kpod_loss(peft_model) is peft_model and is_patched(peft_model) and is_patched(model)
    apply_kpod_loss(peft_model)  # idempotent
    b = KPODCollator(tok, weights, given(tokenized))(tokenized)
    out = peft_model(**b)
    expected = _expected_first_loss(peft_model, KPODCollator(tok, weights, given(tokenized)), tokenized, "token")
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(KPODInputError, match="revert_kpod_loss"):
        apply_kpod_loss(model, impl="reference")
    with pytest.raises(KPODInputError, match="fused_linear"):
        apply_kpod_loss(tiny_llama(tok), fused_linear="sometimes")
    revert_kpod_loss(peft_model)
    assert not is_patched(model) and "forward" not in model.__dict__ and model.loss_function == original_loss
    with pytest.raises(KPODInputError, match="apply_kpod_loss"):
        peft_model(**b)
    with pytest.raises(KPODInputError, match="patched by apply_kpod_loss"):
        revert_kpod_loss(model)


def test_packed_batches_are_refused():
    tok, tokenized, weights = tiny_data(2)
    model = apply_kpod_loss(tiny_llama(tok))
    b = KPODCollator(tok, weights, given(tokenized))(tokenized)
    T = b["input_ids"].shape[1]
    packed = torch.cat([torch.arange(T // 2), torch.arange(T - T // 2)]).expand(2, T)
    with pytest.raises(KPODInputError, match="packed / padding-free"):
        model(**b, position_ids=packed)
    right = model(**b, position_ids=torch.arange(T).expand(2, T)).loss  # ordinary position ids are fine
    left = model(**KPODCollator(tok, weights, given(tokenized), padding_side="left")(tokenized)).loss
    assert float(left) == pytest.approx(float(right), rel=1e-4)  # left padding's position ids are not packing
    trl = pytest.importorskip("trl")
    from kpod_ops.integrations.sft import KPODSFTTrainer

    with pytest.raises(KPODInputError, match=r"args\.packing: expected False"):
        KPODSFTTrainer(model, trl.SFTConfig("unused", packing=True, use_cpu=True, report_to=[]),
                       KPODCollator(tok), train_dataset=[to_record(te) for te in tokenized])


# ------------------------------------------------------------------------------------------ curriculum stage
class RecordingKPODTrainer(KPODTrainer):
    """Records the ``loss_start`` values the data-loader processes produced, per Trainer epoch."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen.setdefault(int(math.floor(self.state.epoch + 1e-9)) + 1, []).extend(inputs["loss_start"].tolist())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


@pytest.mark.parametrize("workers,persistent", [(0, False), (2, False), (2, True)])
def test_stage_reaches_dataloader_workers(tmp_path, workers, persistent):
    tok, tokenized, weights = tiny_data(8)
    schedule = tiny_schedule(tokenized, n_epochs=2)
    expected = {
        epoch: sorted(te.loss_start(schedule.given_steps(epoch)[te.id]) for te in tokenized) for epoch in (1, 2)
    }
    assert expected[1] != expected[2]  # the curriculum moves, so a stale stage would be caught
    args = train_args(tmp_path, per_device_train_batch_size=4, num_train_epochs=2, learning_rate=1e-3,
                      dataloader_num_workers=workers, dataloader_persistent_workers=persistent)
    trainer = RecordingKPODTrainer(tiny_llama(tok), args, train_dataset=tokenized, processing_class=tok,
                                   token_weights=weights, schedule=schedule)
    trainer.seen = {}
    trainer.train()
    assert {e: sorted(v) for e, v in trainer.seen.items()} == expected


def test_callback_refuses_mismatched_epochs_and_foreign_given_steps(tmp_path):
    tok, tokenized, weights = tiny_data(4)
    schedule = tiny_schedule(tokenized, n_epochs=4)
    args = train_args(tmp_path, per_device_train_batch_size=4, num_train_epochs=3)
    trainer = KPODTrainer(tiny_llama(tok), args, train_dataset=tokenized, processing_class=tok, schedule=schedule)
    with pytest.raises(KPODInputError, match="n_epochs=3"):
        trainer.train()
    args = train_args(tmp_path, per_device_train_batch_size=4, max_steps=4)  # 4 steps = 4 epochs of 1 step: fine
    KPODTrainer(tiny_llama(tok), args, train_dataset=tokenized, processing_class=tok, schedule=schedule).train()
    collator = KPODCollator(tok, weights, given(tokenized))  # given_steps set by hand: the callback cannot drive it
    args = train_args(tmp_path, per_device_train_batch_size=4, num_train_epochs=4)
    trainer = KPODTrainer(tiny_llama(tok), args, collator, train_dataset=tokenized, callbacks=[KPODCallback(schedule)])
    with pytest.raises(KPODInputError, match="given_steps"):
        trainer.train()


def test_scheduled_given_steps_follow_stage():
    tok, tokenized, _ = tiny_data(4)
    schedule = tiny_schedule(tokenized, n_epochs=4)
    source = ScheduledGivenSteps(schedule)
    for stage in (1, 2, 4, 1):
        source.set_stage(stage)
        assert {te.id: source(te.id) for te in tokenized} == schedule.given_steps(stage)
    with pytest.raises(KPODInputError, match="stage"):
        source.set_stage(0)


def test_resume_mid_schedule_continues_the_curve(tmp_path):
    tok, tokenized, weights = tiny_data(12)
    schedule = tiny_schedule(tokenized, n_epochs=2)

    def run(out, resume=None):
        args = train_args(out, per_device_train_batch_size=4, num_train_epochs=2, learning_rate=3e-3,
                          save_strategy="steps", save_steps=4)
        trainer = KPODTrainer(tiny_llama(tok), args, train_dataset=tokenized, processing_class=tok,
                              token_weights=weights, schedule=schedule)
        trainer.train(resume_from_checkpoint=resume)
        return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h and "train_loss" not in h}

    full = run(tmp_path / "full")  # 3 steps per epoch; saves checkpoint-4: epoch 1.33, stage 2
    resumed = run(tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-4"))
    assert schedule.given_steps(1) != schedule.given_steps(2)  # resuming at stage 1 would change the curve
    assert sorted(full) == sorted(resumed) == [1, 2, 3, 4, 5, 6]  # steps 1-4 restored from the checkpoint
    np.testing.assert_allclose([resumed[5], resumed[6]], [full[5], full[6]], rtol=1e-5)


def test_patched_signature_lists_the_batch_keys():
    import inspect

    tok, _, _ = tiny_data(2)
    model = tiny_llama(tok)
    before = list(inspect.signature(model.forward).parameters)
    apply_kpod_loss(model)
    after = list(inspect.signature(model.forward).parameters)
    assert after[: len(before) - 1] == before[:-1] and {"token_weights", "loss_start", "step_ids"} <= set(after)
    assert list(inspect.signature(model.model.forward).parameters)[0] == "input_ids"


def test_evaluate_reports_answer_accuracy(tmp_path):
    from kpod_ops.integrations.evaluation import answer_accuracy

    tok, tokenized, weights = tiny_data(8)
    answers = {ex.id: ex.answer for ex in load_builtin("arith-cot", "train", n=8, seed=0)}
    model = tiny_llama(tok)
    args = train_args(tmp_path, per_device_train_batch_size=4, per_device_eval_batch_size=4, max_steps=1)
    trainer = KPODTrainer(model, args, train_dataset=tokenized, eval_dataset=tokenized[:4], processing_class=tok,
                          token_weights=weights, answer_accuracy=True, max_new_tokens=8, eval_answers=answers,
                          compute_metrics=lambda p: {"label_tokens": float((p.label_ids != -100).sum())})
    metrics = trainer.evaluate()  # compute_metrics gets the (guarded) labels gathered and concatenated as numpy
    assert {"eval_loss", "eval_answer_accuracy", "eval_answered", "eval_label_tokens"} <= set(metrics)
    assert metrics["eval_label_tokens"] > 0
    assert 0.0 <= metrics["eval_answer_accuracy"] <= metrics["eval_answered"] <= 1.0

    class Oracle(torch.nn.Module):
        """Generates each example's own rationale and answer: accuracy must be 1."""

        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))
            self.by_prompt = {te.prompt_ids: te.input_ids[te.prompt_len:] for te in tokenized}

        def generate(self, input_ids, attention_mask, max_new_tokens, **kw):
            rows = []
            for ids, m in zip(input_ids.tolist(), attention_mask.tolist()):
                prompt = tuple(i for i, keep in zip(ids, m) if keep)
                rows.append(ids + list(self.by_prompt[prompt]))
            width = max(map(len, rows))
            return torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])

    assert answer_accuracy(Oracle(), tok, tokenized, batch_size=3, answers=answers) == {"answer_accuracy": 1.0,
                                                                                         "answered": 1.0}


@pytest.mark.parametrize("persistent", [False, True])
def test_reassigning_given_steps_after_workers_started_is_an_error(persistent):
    """The issue's silent failure: setting collator.given_steps between epochs with worker processes."""
    tok, tokenized, weights = tiny_data(4)
    collator = KPODCollator(tok, weights, given(tokenized, 1))
    loader = torch.utils.data.DataLoader(tokenized, batch_size=2, collate_fn=collator, num_workers=2,
                                         persistent_workers=persistent)
    list(loader)
    with pytest.raises(KPODInputError, match="ScheduledGivenSteps"):
        collator.given_steps = given(tokenized, 0)
    collator.given_steps = collator.given_steps  # the same object: nothing changes, nothing to refuse
    source = ScheduledGivenSteps(tiny_schedule(tokenized, n_epochs=2))
    scheduled = KPODCollator(tok, weights, source)
    loader = torch.utils.data.DataLoader(tokenized, batch_size=4, collate_fn=scheduled, num_workers=2,
                                         persistent_workers=persistent)
    for stage in (1, 2):
        source.set_stage(stage)
        got = sorted(b for batch in loader for b in batch["loss_start"].tolist())
        assert got == sorted(te.loss_start(source.schedule.given_steps(stage)[te.id]) for te in tokenized)
    fresh = KPODCollator(tok, weights, given(tokenized, 1))
    list(torch.utils.data.DataLoader(tokenized, batch_size=2, collate_fn=fresh))  # no workers: reassigning is fine
    fresh.given_steps = given(tokenized, 0)


@pytest.mark.parametrize("student", ["full", "lora"])
def test_fused_linear_patch_matches_the_logits_path(tmp_path, student):
    """apply_kpod_loss(fused_linear=True): the same loss curve as the logits path, without logits."""
    tok, tokenized, weights = tiny_data(8)
    collator = KPODCollator(tok, weights, given(tokenized))
    curves, trained = [], []
    for fused_linear in (False, True):
        model = tiny_llama(tok)
        model = lora(model) if student == "lora" else model
        start = params(model)
        apply_kpod_loss(model, fused_linear=fused_linear)
        base = model.get_base_model() if student == "lora" else model
        assert base._kpod_patch.linear is fused_linear
        if fused_linear:
            model.train()
            assert model(**collator(tokenized[:2])).logits is None  # the logits are never built in training
        args = train_args(tmp_path / str(fused_linear), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                          max_steps=2, learning_rate=3e-3)
        trainer = SequentialTrainer(model=model, args=args, train_dataset=tokenized, data_collator=collator)
        trainer.train()
        curves.append(step_losses(trainer))
        trained.append(params(model))
    np.testing.assert_allclose(curves[1], curves[0], rtol=1e-5)
    assert_trained_alike(trained[1], trained[0], start)
    revert_kpod_loss(model)
    assert "forward" not in base.__dict__ and not is_patched(model)


def test_fused_linear_auto_says_when_it_uses_the_logits(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok, tokenized, weights = tiny_data(2)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=1024,
                                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id))
    with pytest.raises(KPODInputError, match="fused_linear"):
        apply_kpod_loss(gpt2, fused_linear=True)
    assert not is_patched(gpt2)
    with pytest.warns(UserWarning, match="computed from the logits"):
        apply_kpod_loss(gpt2, fused_linear="auto")
    b = KPODCollator(tok, weights, given(tokenized))(tokenized)
    gpt2.eval()  # no dropout: the two forwards must agree
    assert float(gpt2(**b).loss) == pytest.approx(_expected_first_loss(gpt2, KPODCollator(tok, weights, given(tokenized)),
                                                                        tokenized, "token"), rel=1e-5)
    llama = apply_kpod_loss(tiny_llama(tok), fused_linear="auto")
    assert llama._kpod_patch.linear
    default = apply_kpod_loss(tiny_llama(tok))  # "auto" is the default: no logits where supported
    assert default._kpod_patch.fused_linear == "auto" and default._kpod_patch.linear


def test_kpod_trainer_reads_the_weights_file_and_the_saved_schedule(tmp_path):
    from kpod_ops.weighting import save_token_weights

    tok, tokenized, weights = tiny_data(4)
    schedule = tiny_schedule(tokenized, n_epochs=2)
    weights_file = save_token_weights(tmp_path / "weights.npz", weights, tokenized, tokenizer=tok)
    torch.save(schedule.state_dict(), tmp_path / "schedule.pt")
    trainer = KPODTrainer(tiny_llama(tok), train_args(tmp_path, num_train_epochs=2), train_dataset=tokenized,
                          processing_class=tok, token_weights=weights_file, schedule=tmp_path / "schedule.pt")
    loaded = trainer.data_collator.token_weights
    assert sorted(loaded) == sorted(weights) and all(np.allclose(loaded[i], weights[i]) for i in weights)
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, KPODCallback))
    assert trainer.data_collator.given_steps is callback.given_steps
    assert callback.schedule.given_steps(1) == schedule.given_steps(1)
    other = tokenize_examples(load_builtin("arith-cot", "train", n=4, seed=5), tok)  # other rationales
    with pytest.raises(KPODInputError):
        KPODTrainer(tiny_llama(tok), train_args(tmp_path), train_dataset=other, processing_class=tok,
                    token_weights=weights_file)
    with pytest.raises(KPODInputError, match="schedule"):
        KPODTrainer(tiny_llama(tok), train_args(tmp_path), train_dataset=tokenized, processing_class=tok,
                    schedule=tmp_path / "missing.pt")

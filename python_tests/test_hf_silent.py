"""Issue 19, "wrong results, silent": every path either computes KPOD's loss or raises saying why.

1. a model whose forward computes its own loss, patched (fused_linear False / "auto") and under KPODTrainer;
2. Trainer's ``num_items_in_batch`` with labels that are not masked before ``loss_start``;
3. a patched model trained without KPOD fields (a warning) or with a misspelt KPOD key (an error);
4. ``ScheduledGivenSteps`` that nothing moves (an error at the first epoch boundary);
5. no fused kernel for the device (a one-time warning; ``impl="fused"`` / ``fused_linear=True`` raise);
6. evaluation on held-out examples (no schedule needed) and the gold answer from the example's string.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from test_hf import given, step_losses, tiny_data, tiny_llama, tiny_schedule, train_args
from transformers import LlamaForCausalLM, Trainer

from kpod_ops import KPODInputError, keypoint_cross_entropy, keypoint_linear_cross_entropy
from kpod_ops.data import KPODCollator, unguard
from kpod_ops.integrations import hf
from kpod_ops.integrations.hf import KPODCallback, KPODTrainer, apply_kpod_loss
from kpod_ops.integrations.stage import ScheduledGivenSteps
from kpod_ops.losses import fallback

warnings.filterwarnings("ignore", message=".*use_cpu.*")


def kpod_loss_by_hand(model, batch) -> float:
    """The token-mean KPOD loss of ``batch`` computed from the model's logits."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return float(keypoint_cross_entropy(logits, batch["labels"], batch["token_weights"], batch["loss_start"],
                                        shift=True))


def as_subclass(model, cls):
    """``model``'s weights in an instance of the LlamaForCausalLM subclass ``cls``."""
    other = cls(model.config)
    other.load_state_dict(model.state_dict())
    return other


# ------------------------------------------------------------------------------------------ 1. own loss
class OwnLossForCausalLM(LlamaForCausalLM):
    """A forward that applies its own nn.CrossEntropyLoss (as remote-code models and other kernel patches do)."""

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        kwargs.pop("num_items_in_batch", None)
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if labels is not None:
            logits = out.logits[:, :-1].flatten(0, 1)
            out.loss = torch.nn.CrossEntropyLoss()(logits, labels[:, 1:].flatten())
        return out


class ReplacesLossForCausalLM(LlamaForCausalLM):
    """Calls the model's loss (the KPOD loss once patched) and then returns a loss of its own instead."""

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        logits = out.logits[:, :-1].flatten(0, 1)
        out.loss = torch.nn.CrossEntropyLoss()(logits, labels[:, 1:].flatten())
        return out


class AddsToLossForCausalLM(LlamaForCausalLM):
    """Adds an auxiliary term to the model's own loss (as MoE models add the router loss): the KPOD loss is kept."""

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
        out.loss = out.loss + 0.0 * out.logits.mean()
        return out


@pytest.mark.parametrize("fused_linear", [False, "auto"])
def test_model_with_its_own_loss_raises_instead_of_plain_ce(fused_linear):
    tok, tokenized, weights = tiny_data(4)
    base = tiny_llama(tok)
    batch = KPODCollator(tok, weights, given(tokenized))(tokenized)
    expected = kpod_loss_by_hand(base, batch)
    model = as_subclass(base, OwnLossForCausalLM)
    with pytest.raises(KPODInputError, match="apply_kpod_loss"):  # unpatched: the guarded labels refuse
        model(**batch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_kpod_loss(model, fused_linear=fused_linear)
    if fused_linear == "auto":  # the linear patch would bypass the subclass's forward: it says so
        assert any("OwnLossForCausalLM.forward comes from" in str(w.message) for w in caught)
    assert not model._kpod_patch.linear
    with pytest.raises(KPODInputError, match="computes its own loss"):  # before: plain CE (1.6x KPOD's loss)
        model(**batch)
    for cls in (ReplacesLossForCausalLM,):
        other = apply_kpod_loss(as_subclass(base, cls), fused_linear=fused_linear)
        with pytest.raises(KPODInputError, match="computes its own loss"):
            other(**batch)
    kept = apply_kpod_loss(as_subclass(base, AddsToLossForCausalLM), fused_linear=fused_linear)
    assert float(kept(**batch).loss) == pytest.approx(expected, rel=1e-5)
    kept.eval()
    with torch.no_grad():
        assert float(kept(**batch).loss) == pytest.approx(expected, rel=1e-5)


def test_kpod_trainer_with_a_model_with_its_own_loss_raises(tmp_path):
    tok, tokenized, weights = tiny_data(4)
    model = as_subclass(tiny_llama(tok), OwnLossForCausalLM)
    args = train_args(tmp_path, per_device_train_batch_size=4, max_steps=1)
    trainer = KPODTrainer(model, args, KPODCollator(tok, weights, given(tokenized)), train_dataset=tokenized)
    with pytest.raises(KPODInputError, match="computes its own loss"):
        trainer.train()


# ------------------------------------------------------------------------------------------ 2. token count
class UnmaskedLabels:
    """A collator that marks the loss start only through ``loss_start`` (labels are every real token)."""

    def __init__(self, inner: KPODCollator) -> None:
        self.data_collator = inner

    def __call__(self, features):
        batch = self.data_collator(features)
        labels = unguard(batch["input_ids"]).masked_fill(batch["attention_mask"] == 0, -100)
        return {**batch, "labels": labels}


def test_trainer_token_count_never_counts_positions_before_loss_start(tmp_path):
    tok, tokenized, weights = tiny_data(4)
    collator = UnmaskedLabels(KPODCollator(tok, weights, given(tokenized, 2)))
    batch = collator(tokenized)
    model = apply_kpod_loss(tiny_llama(tok), fused_linear=False)
    direct = float(model(**batch).loss)  # called directly the divisor is the active tokens
    assert direct == pytest.approx(kpod_loss_by_hand(model, batch), rel=1e-5)
    args = train_args(tmp_path / "plain", per_device_train_batch_size=4, max_steps=1, remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, train_dataset=tokenized, data_collator=collator)
    with pytest.raises(KPODInputError, match="before loss_start"):  # before: 0.6x the loss, drifting with the stage
        trainer.train()
    for normaliser in ("token", "sequence"):  # KPODTrainer counts the active tokens itself
        args = train_args(tmp_path / normaliser, per_device_train_batch_size=4, max_steps=1, learning_rate=1e-9)
        trainer = KPODTrainer(tiny_llama(tok), args, collator, train_dataset=tokenized, normaliser=normaliser,
                              fused_linear=False)
        trainer.train()
        want = direct if normaliser == "token" else direct * int(
            ((unguard(batch["input_ids"])[:, 1:] > -1) & (torch.arange(1, batch["input_ids"].shape[1])
                                                          >= batch["loss_start"][:, None])
             & (batch["attention_mask"][:, 1:] == 1)).sum()) / 4
        assert step_losses(trainer)[0] == pytest.approx(want, rel=1e-5)


# ------------------------------------------------------------------------------------------ 3. missing fields
def test_patched_model_without_kpod_fields_warns_once_and_misspelt_keys_raise(monkeypatch):
    monkeypatch.setattr(hf, "_WARNED", set())
    tok, tokenized, weights = tiny_data(2)
    batch = KPODCollator(tok, weights, given(tokenized))(tokenized)
    plain = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
             "labels": unguard(batch["labels"])}
    model = apply_kpod_loss(tiny_llama(tok))
    model.train()
    with pytest.warns(UserWarning, match="no token_weights or loss_start"):
        model(**plain)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        model(**plain)
        model.eval()
        model(**plain)
    for key in ("weights", "token_weight", "loss_starts", "step_id"):
        with pytest.raises(KPODInputError, match="token_weights"):
            model(**plain, **{key: batch["token_weights"]})
    with pytest.raises(KPODInputError, match="'weights'"):  # also when the real fields are there
        model(**batch, weights=batch["token_weights"])


def test_trainer_with_a_misspelt_kpod_key_raises(tmp_path):
    tok, tokenized, weights = tiny_data(4)
    inner = KPODCollator(tok, weights, given(tokenized))

    def renaming(features):
        b = inner(features)
        return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "labels": unguard(b["labels"]),
                "weights": b["token_weights"], "loss_starts": b["loss_start"]}

    args = train_args(tmp_path, per_device_train_batch_size=4, max_steps=1, remove_unused_columns=False)
    trainer = Trainer(model=apply_kpod_loss(tiny_llama(tok)), args=args, train_dataset=tokenized,
                      data_collator=renaming)
    with pytest.raises(KPODInputError, match="loss_starts.*weights"):
        trainer.train()


# ------------------------------------------------------------------------------------------ 4. stage
def test_scheduled_given_steps_without_a_driver_raise_at_the_first_epoch_boundary(tmp_path):
    tok, tokenized, weights = tiny_data(8)
    schedule = tiny_schedule(tokenized, n_epochs=2)
    assert schedule.given_steps(1) != schedule.given_steps(2)
    collator = KPODCollator(tok, weights, ScheduledGivenSteps(schedule))
    args = train_args(tmp_path / "plain", per_device_train_batch_size=4, num_train_epochs=2)
    trainer = Trainer(model=apply_kpod_loss(tiny_llama(tok)), args=args, train_dataset=tokenized,
                      data_collator=collator)
    with pytest.raises(KPODInputError, match="KPODCallback"):  # before: stage 1 for both epochs, silently
        trainer.train()
    assert trainer.state.epoch == pytest.approx(1.0)  # it trained the first epoch (at stage 1, correctly)
    source = ScheduledGivenSteps(schedule)  # with the callback the same set-up trains both stages
    args = train_args(tmp_path / "callback", per_device_train_batch_size=4, num_train_epochs=2)
    Trainer(model=apply_kpod_loss(tiny_llama(tok)), args=args, train_dataset=tokenized,
            data_collator=KPODCollator(tok, weights, source), callbacks=[KPODCallback(schedule, source)]).train()
    assert source.stage == 2
    loop = ScheduledGivenSteps(schedule)  # a hand-written loop that moves the stage
    for epoch in (1, 2):
        loop.set_stage(epoch)
        assert [loop(te.id) for te in tokenized] == [schedule.given_steps(epoch)[te.id] for te in tokenized]


# ------------------------------------------------------------------------------------------ 5. no kernel
@pytest.fixture
def no_kernel(monkeypatch):
    reason = "kpod_ops._C has no kernel for device type 'cpu' (simulated)"
    monkeypatch.setattr(fallback, "fused_status", lambda device=None: (False, reason))
    monkeypatch.setattr(fallback, "_WARNED", set())
    return reason


def _inputs(seed=0, B=2, T=6, H=8, V=11):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g, requires_grad=True)
    weight = torch.randn(V, H, generator=g, requires_grad=True)
    labels = torch.randint(0, V, (B, T), generator=g)
    return hidden, weight, labels, torch.rand(B, T, generator=g), torch.tensor([1, 3])


def test_losses_without_a_kernel_warn_once_and_fused_raises(no_kernel):
    hidden, weight, labels, w, starts = _inputs()
    logits = hidden @ weight.T
    want = keypoint_cross_entropy(logits, labels, w, starts, shift=True, impl="reference")
    for name, call in (
        ("keypoint_cross_entropy", lambda impl: keypoint_cross_entropy(logits, labels, w, starts, shift=True, impl=impl)),
        ("keypoint_linear_cross_entropy",
         lambda impl: keypoint_linear_cross_entropy(hidden, weight, labels, w, starts, shift=True, impl=impl)),
    ):
        with pytest.warns(RuntimeWarning, match=f"{name}: falling back.*simulated"):  # before: no word
            got = call("auto")
        torch.testing.assert_close(got, want)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per process and reason
            call("auto")
            call("reference")
        with pytest.raises(RuntimeError, match="impl='fused'.*simulated"):
            call("fused")


def test_fused_linear_true_guarantees_the_kernel(no_kernel, monkeypatch):
    tok, tokenized, weights = tiny_data(2)
    batch = KPODCollator(tok, weights, given(tokenized))(tokenized)
    model = apply_kpod_loss(tiny_llama(tok), fused_linear=True)  # the kernel is missing for the device at call time
    with pytest.raises(RuntimeError, match="impl='fused'.*simulated"):
        model(**batch)
    auto = apply_kpod_loss(tiny_llama(tok), fused_linear="auto")
    with pytest.warns(RuntimeWarning, match="falling back"):
        auto(**batch)
    import kpod_ops._extension as extension

    monkeypatch.setattr(extension, "_LOAD_ERROR", "ImportError: simulated")  # no extension at all: refused at once
    with pytest.raises(KPODInputError, match="fused_linear.*simulated"):
        apply_kpod_loss(tiny_llama(tok), fused_linear=True)


# ------------------------------------------------------------------------------------------ 6. evaluation
def test_evaluate_on_held_out_examples_needs_no_schedule(tmp_path):
    tok, tokenized, weights = tiny_data(8)
    held_out = tiny_data(4, seed=7)[1]
    assert not {te.id for te in held_out} & {te.id for te in tokenized}
    held_out = [te.__class__(**{**te.__dict__, "id": f"held-{te.id}"}) for te in held_out]
    schedule = tiny_schedule(tokenized, n_epochs=2)
    args = train_args(tmp_path, per_device_train_batch_size=4, per_device_eval_batch_size=4, num_train_epochs=2,
                      eval_strategy="epoch")
    trainer = KPODTrainer(tiny_llama(tok), args, train_dataset=tokenized, eval_dataset=held_out,
                          processing_class=tok, token_weights=weights, schedule=schedule)
    trainer.train()  # before: KPODInputError: question_id: expected an id of the scheduled questions
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    assert len(evals) == 2 and all(np.isfinite(evals))
    # evaluation batches: the full rationale (c = 0), weight 1 where the collator has no weights
    batches = list(trainer.get_eval_dataloader())
    full = KPODCollator(tok)(held_out)
    torch.testing.assert_close(batches[0]["loss_start"], full["loss_start"])
    torch.testing.assert_close(batches[0]["token_weights"], full["token_weights"])
    assert trainer.evaluate(tokenized[:4])["eval_loss"] > 0  # training ids: their weights, no steps given


def test_answer_accuracy_takes_the_gold_answer_from_the_example_string():
    from kpod_ops.integrations.evaluation import answer_accuracy

    tok, tokenized, _ = tiny_data(4)
    words = {10: "####", 11: "2", 12: "1"}

    class WordTokenizer:
        """A word-level tokenizer: decoding joins words with spaces, so the answer "21" comes back as "2 1"."""

        pad_token_id, eos_token_id = 0, 1

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(words.get(int(i), "w") for i in ids if int(i) > 1)

    class AlwaysTwo(torch.nn.Module):
        """Answers "#### 2" to every question."""

        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, attention_mask, max_new_tokens, **kw):
            return torch.cat([input_ids, torch.tensor([[10, 11]]).expand(input_ids.shape[0], 2)], dim=1)

    # the answer tokens are "#### 2 1" (the gold answer 21, tokenised word by word)
    items = [{"id": te.id, "input_ids": list(te.input_ids[:te.answer_start]) + [10, 11, 12], "prompt_len": te.prompt_len,
              "step_spans": [list(s) for s in te.step_spans], "answer_start": te.answer_start, "answer": "21"}
             for te in tokenized]
    assert answer_accuracy(AlwaysTwo(), WordTokenizer(), items)["answer_accuracy"] == 0.0  # before: gold "2" -> 1.0
    items[0]["answer"] = "2"
    assert answer_accuracy(AlwaysTwo(), WordTokenizer(), items)["answer_accuracy"] == 0.25
    assert answer_accuracy(AlwaysTwo(), WordTokenizer(), tokenized, answers={te.id: "2.0" for te in tokenized}) == {
        "answer_accuracy": 1.0, "answered": 1.0}
    with pytest.raises(KPODInputError, match="gold answer"):
        answer_accuracy(AlwaysTwo(), WordTokenizer(), tokenized)


def test_plain_trainer_evaluation_with_scheduled_given_steps(tmp_path):
    """A plain Trainer evaluates with its training collator: held-out ids are a clear error, or get the full
    rationale (c = 0) with held_out="full"; scheduled ids get the current stage's steps."""
    tok, tokenized, weights = tiny_data(8)
    held_out = [te.__class__(**{**te.__dict__, "id": f"held-{te.id}"}) for te in tiny_data(4, seed=7)[1]]
    schedule = tiny_schedule(tokenized, n_epochs=2)
    ones = {te.id: np.ones(te.rationale_len, dtype=np.float32) for te in held_out}

    def trainer(source):
        args = train_args(tmp_path, per_device_train_batch_size=4, per_device_eval_batch_size=4, num_train_epochs=2,
                          eval_strategy="epoch")
        return Trainer(model=apply_kpod_loss(tiny_llama(tok)), args=args, train_dataset=tokenized,
                       eval_dataset=held_out, data_collator=KPODCollator(tok, {**weights, **ones}, source),
                       callbacks=[KPODCallback(schedule, source)])

    with pytest.raises(KPODInputError, match="held_out='full'"):
        trainer(ScheduledGivenSteps(schedule)).train()
    source = ScheduledGivenSteps(schedule, held_out="full")
    run = trainer(source)
    run.train()
    assert len([h for h in run.state.log_history if "eval_loss" in h]) == 2
    batch = next(iter(run.get_eval_dataloader()))
    torch.testing.assert_close(batch["loss_start"], KPODCollator(tok)(held_out)["loss_start"])  # c = 0
    assert [source(te.id) for te in tokenized] == [schedule.given_steps(2)[te.id] for te in tokenized]
    with pytest.raises(KPODInputError, match="held_out"):
        ScheduledGivenSteps(schedule, held_out="zero")

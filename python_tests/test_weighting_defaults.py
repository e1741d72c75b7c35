"""The defaults that make a pre-trained (LoRA) predictor work: prefix weighting, predictor learning rate
and holding a LoRA predictor fixed after the warm-up."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kpod_ops.errors import KPODInputError
from kpod_ops.weighting import MaskLearner, MaskLearnerConfig
from kpod_ops.weighting.batching import make_batch
from kpod_ops.weighting.planted import planted_task
from kpod_ops.weighting.prefixes import sample_prefix_lengths
from kpod_ops.weighting.training import _param_groups

TASK = planted_task(8, seed=5)


def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(TASK.tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.1)
    return LlamaForCausalLM(cfg)


@pytest.mark.parametrize("prefix_mean", ["sampled", "all"])
def test_normalized_answer_loss_weighs_prefixes_as_documented(prefix_mean):
    model = llama()
    learner = MaskLearner(model, model, MaskLearnerConfig(prefix_mean=prefix_mean, alpha=0.0, num_prefixes=3))
    batch = make_batch(TASK.examples[:4])
    seen = []

    def fake_nll(prompt, rationale, answer_emb, answer_ids, rows):
        seen.extend(rows)
        return torch.arange(1, len(rows) + 1, dtype=torch.float32) * 10.0  # row r has NLL 10 (r + 1)

    learner.predictor.forward = fake_nll
    out = learner.objective(batch, rng=np.random.default_rng(0))
    rng, expected, r = np.random.default_rng(0), [], 0
    for i, n in enumerate(batch.lengths):
        ks, cs = sample_prefix_lengths(n, 3, rng)
        assert [k for j, k in seen[r : r + len(ks)]] == list(ks) and ks[-1] == n  # the full rationale is one of them
        nll = 10.0 * np.arange(r + 1, r + len(ks) + 1)
        coef = np.full(len(ks), 1 / len(ks)) if prefix_mean == "sampled" else cs / n
        expected.append(float((coef * nll).sum()) / batch.answers[i].numel())
        r += len(ks)
    assert float(out["answer_loss"]) == pytest.approx(float(np.mean(expected)), rel=1e-6)


def test_predictor_lr_auto_depends_on_the_training_mode():
    assert MaskLearnerConfig().predictor_learning_rate == 3e-3
    assert MaskLearnerConfig(predictor_training="lora").predictor_learning_rate == 1e-4
    assert MaskLearnerConfig(predictor_lr=None, lr=2e-3).predictor_learning_rate == 2e-3
    assert MaskLearnerConfig(predictor_lr=0.0).predictor_learning_rate == 0.0
    assert MaskLearnerConfig.literal().predictor_learning_rate == 1e-3
    model = llama()
    groups = _param_groups(MaskLearner(model, model, MaskLearnerConfig()))
    assert groups[1]["lr"] == 3e-3 and groups[1]["params"]
    for field, bad in (("predictor_lr", "fast"), ("prefix_mean", "full"), ("train_predictor_after_warmup", 1)):
        with pytest.raises(KPODInputError, match=field):
            MaskLearnerConfig(**{field: bad})


def _predictor_moves(training: str, **kw) -> tuple[bool, list[dict]]:
    model = llama()
    cfg = MaskLearnerConfig(predictor_training=training, epochs=1, batch_size=4, predictor_warmup=0.0, seed=0, **kw)
    learner = MaskLearner(model, model, cfg)
    before = {n: p.detach().clone() for n, p in learner.predictor.named_parameters() if p.requires_grad}
    history = learner.fit(TASK.examples[:8], TASK.examples[:4], progress=False)
    after = dict(learner.predictor.named_parameters())
    return any(not torch.equal(v, after[n]) for n, v in before.items()), history


def test_lora_predictor_is_held_fixed_after_the_warmup_unless_asked():
    pytest.importorskip("peft")
    moved, history = _predictor_moves("lora")
    assert history[0]["warmup_end_step"] == 0 and not moved
    assert _predictor_moves("lora", train_predictor_after_warmup=True)[0]
    assert _predictor_moves("full")[0]  # a predictor trained fully keeps learning with the weights (the paper)


def test_cap_at_blank_auto_caps_when_the_predictor_does_not_learn_with_the_weights():
    assert not MaskLearnerConfig().caps_at_blank  # a predictor trained jointly learns to distrust partial prefixes
    assert MaskLearnerConfig(predictor_training="lora").caps_at_blank
    assert MaskLearnerConfig(predictor_training="frozen").caps_at_blank
    assert MaskLearnerConfig(predictor_lr=0.0).caps_at_blank
    assert MaskLearnerConfig(train_predictor_after_warmup=False).caps_at_blank
    assert not MaskLearnerConfig.literal(predictor_training="lora").caps_at_blank  # the paper has no cap
    assert MaskLearnerConfig(cap_at_blank=True).caps_at_blank
    assert not MaskLearnerConfig(predictor_training="lora", cap_at_blank=False).caps_at_blank
    for bad in ("yes", 1, None):
        with pytest.raises(KPODInputError, match="cap_at_blank"):
            MaskLearnerConfig(cap_at_blank=bad)


def _objective_with_blank_shift(shift: float, cap: bool):
    """Objective and weight-generator gradient when the fully masked prefix's NLL is moved by ``shift``."""
    model = llama()
    learner = MaskLearner(model, model, MaskLearnerConfig(num_prefixes=3, seed=0))
    forward = learner.predictor.forward

    def shifted(*args):
        nll = forward(*args)
        return nll if torch.is_grad_enabled() else nll + shift  # the cap's bound runs without gradients

    learner.predictor.forward = shifted
    out = learner.objective(
        make_batch(TASK.examples[:4]), rng=np.random.default_rng(0), generator=torch.Generator().manual_seed(0),
        cap_at_blank=cap,
    )
    out["loss"].backward()
    grad = torch.cat([p.grad.flatten() for p in learner.weighter.parameters() if p.grad is not None])
    return out, grad


def test_cap_at_blank_bounds_each_prefix_by_the_blank_prefix_and_stops_its_gradient():
    plain, plain_grad = _objective_with_blank_shift(0.0, cap=False)
    # a blank prefix far worse than any masked one: the cap never binds, nothing changes
    loose, loose_grad = _objective_with_blank_shift(1e6, cap=True)
    assert torch.equal(loose["loss"], plain["loss"]) and torch.allclose(loose_grad, plain_grad)
    # a blank prefix better than every masked one (each prefix misleads): the answer term is the blank's,
    # constant in the weights, so only alpha * L_m moves them
    tight, tight_grad = _objective_with_blank_shift(-1e6, cap=True)
    assert float(tight["answer_loss"].detach()) < float(plain["answer_loss"].detach())
    model = llama()
    learner = MaskLearner(model, model, MaskLearnerConfig(num_prefixes=3, seed=0))
    out = learner.objective(
        make_batch(TASK.examples[:4]), rng=np.random.default_rng(0), generator=torch.Generator().manual_seed(0),
        cap_at_blank=False,
    )
    (learner.config.alpha * out["mask_loss"]).backward()
    mask_only = torch.cat([p.grad.flatten() for p in learner.weighter.parameters() if p.grad is not None])
    assert torch.allclose(tight_grad, mask_only, atol=1e-7)


def test_prefix_reading_gain_diagnoses_misleading_prefixes():
    from kpod_ops.weighting.training import _collapse_advice, reading_gain

    model = llama()
    batch = make_batch(TASK.examples[:4])
    one = MaskLearner(model, model, MaskLearnerConfig(num_prefixes=1))
    assert reading_gain(one, batch, prefixes=True) == pytest.approx(reading_gain(one, batch), abs=1e-6)
    four = MaskLearner(model, model, MaskLearnerConfig(num_prefixes=4))
    assert np.isfinite(reading_gain(four, batch, prefixes=True))
    record = {"val_reading_gain": 1.2, "val_prefix_reading_gain": -0.4}
    reason = "almost every token is masked (kept ratio 0.00%)"
    assert "cap_at_blank=True" in _collapse_advice(reason, record, MaskLearnerConfig(train_predictor_after_warmup=True))
    assert "cap_at_blank" not in _collapse_advice(reason, record, MaskLearnerConfig(predictor_training="lora"))


@pytest.mark.parametrize("warmup_rows", ["prefixes", "full"])
def test_warmup_rows_choose_what_the_predictor_warms_up_on(warmup_rows):
    """``warmup_rows="full"``: the warm-up's answer loss has one row per example, its full rationale; after
    the warm-up (and always with ``"prefixes"``) the objective's sampled prefixes."""
    model = llama()
    cfg = MaskLearnerConfig(epochs=2, batch_size=4, predictor_warmup=0.5, reading_gain=None, num_prefixes=3,
                            warmup_rows=warmup_rows, seed=0)
    learner = MaskLearner(model, model, cfg)
    calls = []
    forward = learner.predictor.forward

    def spy(prompt, rationale, answer_emb, answer_ids, rows):
        if learner.training and torch.is_grad_enabled():
            calls.append(all(k == rationale[i].shape[0] for i, k in rows) and len(rows) == len(rationale))
        return forward(prompt, rationale, answer_emb, answer_ids, rows)

    learner.predictor.forward = spy
    history = learner.fit(TASK.examples[:8], TASK.examples[:4], progress=False)
    warm = history[-1]["warmup_end_step"]
    assert warm == 2 and len(calls) == 4  # 2 steps per epoch, the first epoch warms up
    assert calls[:warm] == [warmup_rows == "full"] * warm and not any(calls[warm:])
    with pytest.raises(KPODInputError, match="warmup_rows"):
        MaskLearnerConfig(warmup_rows="all")

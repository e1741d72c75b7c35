"""The answer predictor's fused answer loss (no logits) equals the logits path, in loss and every gradient."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from kpod_ops.errors import KPODInputError
from kpod_ops.weighting import MaskLearner, MaskLearnerConfig
from kpod_ops.weighting.batching import make_batch
from kpod_ops.weighting.planted import planted_task

TASK = planted_task(6, seed=3)
VOCAB = len(TASK.tokenizer)


def llama(vocab: int = VOCAB, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.1)
    return LlamaForCausalLM(cfg)


def t5(vocab: int = VOCAB, seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=1, num_heads=4,
                   dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5ForConditionalGeneration(cfg)


def loss_and_grads(student, predictor, fused: bool, share: bool = True, training: str = "full"):
    torch.manual_seed(1)
    cfg = MaskLearnerConfig(fused_linear=fused, num_prefixes=3, predictor_training=training, seed=0)
    learner = MaskLearner(student, predictor, cfg)
    learner.predictor.share_prefixes = share
    assert learner.predictor.fused_linear is fused
    out = learner.objective(make_batch(TASK.examples), rng=np.random.default_rng(0), generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}
    return out["loss"].detach(), out["answer_loss"].detach(), grads


def assert_same(a, b) -> None:
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-6)
    assert a[2].keys() == b[2].keys() and any("predictor" in n for n in a[2]) and any("weighter" in n for n in a[2])
    for name in a[2]:
        torch.testing.assert_close(a[2][name], b[2][name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("share", [True, False])
def test_llama_fused_equals_logits(share):
    model = llama()
    assert_same(loss_and_grads(model, model, True, share), loss_and_grads(model, model, False, share))


@pytest.mark.parametrize("share", [True, False])
def test_llama_own_answer_head_fused_equals_logits(share):
    student, predictor = llama(), llama(VOCAB + 7, seed=1)  # vocabularies differ: the learner's answer head
    a = loss_and_grads(student, predictor, True, share)
    assert any("answer_head" in n for n in a[2])
    assert_same(a, loss_and_grads(student, predictor, False, share))


def test_llama_lora_fused_equals_logits():
    pytest.importorskip("peft")
    model = llama()
    assert_same(loss_and_grads(model, model, True, training="lora"), loss_and_grads(model, model, False, training="lora"))


def test_t5_answer_head_fused_equals_logits():
    student, predictor = llama(), t5(VOCAB + 7)
    assert_same(loss_and_grads(student, predictor, True), loss_and_grads(student, predictor, False))


def test_t5_own_head_auto_says_logits_and_true_refuses():
    model = t5()
    with pytest.warns(UserWarning, match="encoder-decoder.*computed from the logits"):
        learner = MaskLearner(model, model, MaskLearnerConfig())
    assert learner.predictor.fused_linear is False and "encoder-decoder" in learner.predictor.fused_linear_reason
    with pytest.raises(KPODInputError, match="fused_linear"):
        MaskLearner(model, model, MaskLearnerConfig(fused_linear=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert MaskLearner(model, model, MaskLearnerConfig(fused_linear=False)).predictor.fused_linear is False


def test_llama_default_is_fused_and_bad_values_refused():
    model = llama()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learner = MaskLearner(model, model, MaskLearnerConfig())
    assert learner.predictor.fused_linear is True
    for bad in ("yes", 1, None):
        with pytest.raises(KPODInputError, match="fused_linear"):
            MaskLearnerConfig(fused_linear=bad)

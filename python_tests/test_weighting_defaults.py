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

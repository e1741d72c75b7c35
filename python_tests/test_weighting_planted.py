"""The mask learner finds planted keypoints on its defaults, with decoder-only and encoder-decoder predictors.

Four planted-task variants (``kpod_ops.weighting.planted``), in every one the distractor digits
share token ids with the relevant ones, so only context separates them:

- ``before``: the word that makes a digit relevant comes before it ("has 4", distractor "page 4");
- ``after``: it comes after it ("4 apples", distractor "4 pages");
- ``count``: 1-3 relevant digits per rationale (answers of 2-4 tokens);
- ``long``: rationales of at least 40 tokens with 4 distractors.

For each predictor family (a tiny random Llama, a tiny random T5) and seed 0-2, one learner is
trained with ``MaskLearnerConfig(epochs, batch_size, seed)`` only, on a mix of the four variants
(that sharing keeps the suite within its CI budget), and every (variant, family, seed) cell must
rank relevant digits above filler words and above distractor digits on held-out examples with
ROC-AUC >= 0.85.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from kpod_ops.weighting import MaskLearner, MaskLearnerConfig, is_degenerate
from kpod_ops.weighting.planted import planted_task

pytestmark = pytest.mark.slow

VARIANTS = {
    "before": {},
    "after": {"marker": "after"},
    "count": {"n_relevant": (1, 3)},
    "long": {"n_distractors": 4, "max_filler": 4, "min_length": 40},
}
TRAIN_PER_VARIANT, VAL_PER_VARIANT, HELD_OUT_PER_VARIANT = 500, 8, 48
EPOCHS, BATCH = 6, 16


def tiny_llama(vocab: int, seed: int) -> LlamaForCausalLM:
    """2 layers, width 64. ``initializer_range`` is set for this width: HF's default 0.02 suits widths
    in the thousands, and a 32-wide Llama with it had not learned to read the rationale (reading
    gain 0.00 nats) after the whole warm-up budget, so the mask pressure won and every weight went to 0."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.1,
    )  # fmt: skip
    return LlamaForCausalLM(cfg)


def tiny_t5(vocab: int, seed: int) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=1, num_heads=4,
        dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return T5ForConditionalGeneration(cfg)


def _split(seed: int, part: int, n: int) -> dict:
    return {
        name: planted_task(n, seed=1000 * seed + 10 * k + part, id_prefix=f"{name}{part}", **kw)
        for k, (name, kw) in enumerate(VARIANTS.items())
    }


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC-AUC of positives vs negatives (ties count one half)."""
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def train_and_score(family: str, seed: int) -> dict:
    train, val, held = _split(seed, 0, TRAIN_PER_VARIANT), _split(seed, 1, VAL_PER_VARIANT), _split(seed, 2, HELD_OUT_PER_VARIANT)
    tok = train["before"].tokenizer
    model = (tiny_llama if family == "llama" else tiny_t5)(len(tok), seed)
    learner = MaskLearner(model, model, MaskLearnerConfig(epochs=EPOCHS, batch_size=BATCH, seed=seed))
    mix = [ex for t in train.values() for ex in t.examples]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = learner.fit(mix, [ex for t in val.values() for ex in t.examples], progress=False)
    out = {"history": history, "warnings": [str(w.message) for w in caught]}
    for name, task in held.items():
        weights = learner.token_weights(task.examples)
        w = np.concatenate([weights[ex.id] for ex in task.examples])
        roles = np.concatenate([task.roles[ex.id] for ex in task.examples])
        out[name] = {
            "filler": _auc(w[roles == "relevant"], w[roles == "filler"]),
            "distractor": _auc(w[roles == "relevant"], w[roles == "distractor"]),
            "degenerate": is_degenerate(weights),
        }
    return out


@pytest.fixture(scope="module")
def trained() -> dict:
    return {}


def _get(trained: dict, family: str, seed: int) -> dict:
    if (family, seed) not in trained:
        trained[(family, seed)] = train_and_score(family, seed)
    return trained[(family, seed)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("family", ["llama", "t5"])
def test_defaults_find_planted_keypoints(trained, family, seed):
    result = _get(trained, family, seed)
    cells = {name: result[name] for name in VARIANTS}
    print(family, seed, {n: (round(c["filler"], 3), round(c["distractor"], 3)) for n, c in cells.items()})
    for name, cell in cells.items():
        assert cell["filler"] >= 0.85 and cell["distractor"] >= 0.85, (family, seed, name, cell)
        assert not cell["degenerate"], (family, seed, name)
    assert not any("degenerate" in w for w in result["warnings"]), result["warnings"]

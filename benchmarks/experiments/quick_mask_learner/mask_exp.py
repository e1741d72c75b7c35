"""Train the mask learner on a `kpod distill` run folder's warmed-up student and score its weights.

Usage: python mask_exp.py RUN_DIR 'SETTINGS_JSON' [N_EXAMPLES]   (PRED=DIR: another answer predictor)

Prints the ROC-AUC of digit tokens against word tokens on 200 other training rationales, the mean
weight per token class and the validation history (the outputs in this folder, ``m_*.txt``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from kpod_ops.data.tokenize import tokenize_examples
from kpod_ops.pipeline.data import read_splits
from kpod_ops.pipeline.student import load_student_dir
from kpod_ops.pipeline.weights import learn_weights, learner_config


def token_class(piece: str) -> str:
    piece = piece.strip()
    if piece.isdigit():
        return "digit"
    return "word" if piece.isalpha() else "punct"


def main() -> None:
    torch.set_num_threads(1)
    run, settings = Path(sys.argv[1]), json.loads(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 300
    splits = read_splits(run / "data")
    student, tok = load_student_dir(os.environ.get("PRED", run / "warmup" / "model"), argument="predictor")
    train = tokenize_examples(splits.train, tok, step_rule="auto", max_length=320, on_too_long="skip")
    val = tokenize_examples(splits.val, tok, step_rule="auto", max_length=320, on_too_long="skip")
    start = time.time()
    learned = learn_weights(student, train[:n], val[:200], train[1500:1700], learner_config(settings, 0),
                            allow_degenerate=True, progress=False)
    seconds = time.time() - start
    is_digit, scores, by_class = [], [], {}
    for ex in train[1500:1700]:
        for token, w in zip(ex.rationale_ids, learned.weights[ex.id]):
            kind = token_class(tok.decode([token]))
            by_class.setdefault(kind, []).append(w)
            if kind != "punct":
                is_digit.append(kind == "digit")
                scores.append(w)
    last = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in learned.history[-1].items() if k.startswith("val")}
    print(json.dumps(settings), f"n={n} {seconds:.0f}s degenerate={learned.degenerate}",
          f"AUC digit-vs-word {roc_auc_score(is_digit, scores):.3f}",
          {k: round(float(np.mean(v)), 3) for k, v in by_class.items()}, "last", last)
    keep = ("epoch", "warmup_end_step", "train_kept", "val_answer_loss", "val_kept", "val_reading_gain")
    for h in learned.history:
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in h.items() if k in keep})


if __name__ == "__main__":
    main()

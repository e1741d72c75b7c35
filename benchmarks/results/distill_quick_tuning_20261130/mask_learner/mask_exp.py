import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from pathlib import Path
from kpod_ops.pipeline.data import read_splits
from kpod_ops.pipeline.student import load_student_dir
from kpod_ops.pipeline.weights import learn_weights, learner_config
from kpod_ops.data.tokenize import tokenize_examples
from sklearn.metrics import roc_auc_score

run = Path(sys.argv[1]); settings = json.loads(sys.argv[2]); n = int(sys.argv[3]) if len(sys.argv) > 3 else 300
splits = read_splits(run / "data")
import os
student, tok = load_student_dir(os.environ.get("PRED", run / "warmup" / "model"), argument="x")
train = tokenize_examples(splits.train, tok, step_rule="auto", max_length=320, on_too_long="skip")
val = tokenize_examples(splits.val, tok, step_rule="auto", max_length=320, on_too_long="skip")
t = time.time()
lw = learn_weights(student, train[:n], val[:200], train[1500:1700], learner_config(settings, 0), allow_degenerate=True, progress=False)
dt = time.time() - t
ys, ss, cls = [], [], {}
for ex in train[1500:1700]:
    w = lw.weights[ex.id]
    toks = [tok.decode([i]) for i in ex.rationale_ids]
    for p, s in zip(toks, w):
        p = p.strip()
        if p.isdigit(): k = "digit"
        elif p.isalpha(): k = "word"
        else: k = "punct"
        cls.setdefault(k, []).append(s)
        if k != "punct": ys.append(k == "digit"); ss.append(s)
print(json.dumps(settings), f"n={n} {dt:.0f}s degenerate={lw.degenerate}",
      "AUC digit-vs-word %.3f" % roc_auc_score(ys, ss), {k: round(float(np.mean(v)), 3) for k, v in cls.items()},
      "last", {k: (round(v, 3) if isinstance(v, float) else v) for k, v in lw.history[-1].items() if k.startswith("val")})
for h in lw.history:
    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in h.items() if k in ("epoch","warmup_end_step","train_kept","val_answer_loss","val_kept","val_reading_gain")})

"""A test of one reading of Study 2: KPOD's token weights take loss from the words that tie a rationale step to its
sentence in the question (the place, the weather and the friend of ``arith-cot``'s varied wording), so the student
learns less well which number of the question a step uses. This gives those words the keypoints' weight.

    python benchmarks/study/cue_weights.py SRC_SHARED DST_SHARED

copies a seed's shared stages (``seed<N>/shared`` of a ``kpod compare`` folder: warm-up, mask learner, curriculum)
to ``DST_SHARED``, which must not exist, and rewrites ``DST_SHARED/weights/token_weights.npz``: every rationale token
that is one of the cue words gets the learned weights' largest value, 1; every other token keeps its learned
weight. The stage records are copied unchanged, so ``kpod compare`` run with the same configuration and seed into the
folder above ``DST_SHARED`` reuses every shared stage and trains on the rewritten weights with the same curriculum
(the report's ``shared_fingerprints.weights`` differs from the original run's; its keypoint ranking is the learner's).
What changed is written to ``DST_SHARED/weights/cue_words.json``. A study tool, not a method setting.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from kpod_ops.data.arith import FRIENDS, PLACES, WEATHER

CUE_WORDS = frozenset(w.lower() for w in (*PLACES, *WEATHER, *FRIENDS))


def raise_cue_words(weights: np.ndarray, token_ids: np.ndarray, decode) -> tuple[np.ndarray, dict]:
    """``weights`` with every token whose text (``decode([id])``, stripped, lower-cased) is a cue word set to 1."""
    pieces = {int(t): decode([int(t)]).strip().lower() for t in np.unique(token_ids)}
    cue_ids = [t for t, piece in pieces.items() if piece in CUE_WORDS]
    cue = np.isin(token_ids, cue_ids)
    out = np.asarray(weights, np.float32).copy()
    before = float(out[cue].mean()) if cue.any() else None
    out[cue] = 1.0
    return out, {"cue_words": sorted(CUE_WORDS), "cue_tokens": int(cue.sum()), "rationale_tokens": int(cue.size),
                 "cue_tokens_mean_weight_before": before, "words_found": sorted({pieces[t] for t in cue_ids})}


def rewrite(src: Path, dst: Path) -> dict:
    """Copy the shared folder ``src`` to ``dst`` and give the cue words the keypoints' weight there."""
    from transformers import AutoTokenizer

    if dst.exists():
        raise SystemExit(f"{dst}: already exists (this script writes a new shared folder)")
    weights_file = src / "weights" / "token_weights.npz"
    if not weights_file.is_file():
        raise SystemExit(f"{weights_file}: not found (expected a finished weights stage of a kpod run)")
    tok = AutoTokenizer.from_pretrained(src / "warmup" / "model")
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("restarts", "pictures"))
    with np.load(weights_file, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["weights"], summary = raise_cue_words(arrays["weights"], arrays["rationale_ids"], tok.decode)
    with open(dst / "weights" / "token_weights.npz", "wb") as f:
        np.savez(f, **arrays)
    (dst / "weights" / "cue_words.json").write_text(json.dumps({"source": str(src), **summary}, indent=1) + "\n")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="a seed's shared folder of a finished kpod run")
    parser.add_argument("dst", type=Path, help="the new shared folder (seed<N>/shared of another compare folder)")
    args = parser.parse_args()
    summary = rewrite(args.src, args.dst)
    print(f"{args.dst}: {summary['cue_tokens']} of {summary['rationale_tokens']} rationale tokens are cue words "
          f"(mean learned weight {summary['cue_tokens_mean_weight_before']:.3f}), now 1")


if __name__ == "__main__":
    main()

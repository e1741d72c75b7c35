"""The quick preset's stages up to the token weights (data, warm-up, mask learner) on several seeds.

Usage: python benchmarks/study/mask_seeds.py OUT SEED [SEED ...] [--config FILE.json]

Prints, per seed, whether the weights are degenerate and how they rank numbers and operators against
words (ROC-AUC over every training rationale), the question the study's pilot asked of the mask
learner: does it find keypoints on every seed? Each seed's stages are kept in OUT/seed<N> (reused).
With ``weights.restarts`` R > 1 (``--config``), also the kept keypoint share and ROC-AUC of the mean of the
first r restarts' weights, for r = 2 … R (``mean_of_restarts``): combining learners instead of choosing one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from kpod_ops.pipeline.config import load_config_file, merge, method_settings, preset_config
from kpod_ops.pipeline.data import make_splits
from kpod_ops.pipeline.run import _prepare
from kpod_ops.weighting import keypoint_ranking, load_token_weights


def mean_of_restarts(folder: Path, restarts: list[dict], examples: list, tokenizer) -> dict[str, dict | None]:
    """``{r: the kept keypoint share, ROC-AUC and kept counts of the mean of the first r restarts' weights}``."""
    loaded = [load_token_weights(folder / r["weights_file"], examples, tokenizer=tokenizer) for r in restarts]
    out: dict[str, dict | None] = {}
    for r in range(2, len(loaded) + 1):
        mean = {k: np.mean([w[k] for w in loaded[:r]], axis=0) for k in loaded[0]}
        rank = keypoint_ranking(mean, examples, tokenizer)
        out[str(r)] = None if rank is None else {k: rank[k] for k in ("kept_keypoint_share", "auc", "n_kept_keypoint",
                                                                      "n_kept_word", "keypoint_share")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("seeds", nargs="+", type=int)
    parser.add_argument("--config")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for seed in args.seeds:
        config = preset_config("quick")
        if args.config:
            config = merge(config, load_config_file(args.config))
        config = merge(config, {"seed": seed, "allow_degenerate": True})
        folder = Path(args.out) / f"seed{seed}"
        prep = _prepare(config, method_settings("kpod"), make_splits(config.data.to_dict()), folder, folder, False, lambda m: None)
        info = prep.weights_info or {}
        rank = info.get("keypoint_ranking") or {}
        restarts = info.get("restarts")
        combined = (mean_of_restarts(folder / "weights", restarts, prep.tokenized, prep.tok)
                    if restarts and all("weights_file" in r for r in restarts) else None)
        print(json.dumps({"seed": seed, "degenerate": info.get("degenerate"), "kept_ratio": info.get("kept_ratio"),
                          "auc": rank.get("auc"), "mean_keypoint": rank.get("mean_keypoint"), "mean_word": rank.get("mean_word"),
                          "keypoint_share": rank.get("keypoint_share"), "restarts": restarts, "mean_of_restarts": combined}),
              flush=True)


if __name__ == "__main__":
    main()

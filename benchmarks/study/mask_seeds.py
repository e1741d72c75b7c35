"""The quick preset's stages up to the token weights (data, warm-up, mask learner) on several seeds.

Usage: python benchmarks/study/mask_seeds.py OUT SEED [SEED ...] [--config FILE.json]

Prints, per seed, whether the weights are degenerate and how they rank numbers and operators against
words (ROC-AUC over every training rationale), the question the study's pilot asked of the mask
learner: does it find keypoints on every seed? Each seed's stages are kept in OUT/seed<N> (reused).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from kpod_ops.pipeline.config import load_config_file, merge, method_settings, preset_config
from kpod_ops.pipeline.data import make_splits
from kpod_ops.pipeline.run import _prepare


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
        print(json.dumps({"seed": seed, "degenerate": info.get("degenerate"), "kept_ratio": info.get("kept_ratio"),
                          "auc": rank.get("auc"), "mean_keypoint": rank.get("mean_keypoint"), "mean_word": rank.get("mean_word"),
                          "restarts": info.get("restarts")}),
              flush=True)


if __name__ == "__main__":
    main()

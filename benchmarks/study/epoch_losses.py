"""The mean training loss of every epoch of every run of a study, from each run's ``train/history.json``.

    python benchmarks/study/epoch_losses.py STUDY_OUT [--json OUT.json]

Prints, per seed and method, the loss at every fourth epoch, the last epoch's, and how much it fell over
the last sixth of training: a run still falling at its end stopped on the slope of its curve. The
repository's copies of the study folders leave the per-step histories out (their size) and keep ``--json``.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def epoch_means(history: list[dict]) -> list[float]:
    """Mean loss of each epoch, in order, from the per-step records ``{"epoch", "loss", ...}``."""
    by_epoch: dict[int, list[float]] = defaultdict(list)
    for record in history:
        by_epoch[int(record["epoch"])].append(float(record["loss"]))
    return [sum(v) / len(v) for _, v in sorted(by_epoch.items())]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--json", type=Path, help="write {method: {seed: [epoch means]}} here")
    args = parser.parse_args()
    out: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for path in sorted(args.folder.glob("seed*/*/train/history.json")):
        seed, method = path.parts[-4][4:], path.parts[-3]
        means = epoch_means(json.loads(path.read_text()))
        out[method][seed] = means
        tail = max(1, len(means) // 6)
        fall = 1 - means[-1] / means[-1 - tail] if len(means) > tail else float("nan")
        shown = " ".join(f"{x:6.1f}" for x in means[::4])
        print(f"{seed} {method:>14}: {shown} | last {means[-1]:.1f}, fell {100 * fall:.0f} % over the last {tail} epochs")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

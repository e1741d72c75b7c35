"""Paired contrasts of the study's ablations: each arm against ``standard`` (the pre-registered
secondary endpoint) and ``kpod`` against each ablation (what switching one component off costs),
over the seeds both arms ran, from the runs' ``report.json`` files.

    python benchmarks/study/ablations.py benchmarks/results/study_quick/primary \
        benchmarks/results/study_quick/secondary [--metric test_accuracy] [--json OUT]

Runs are found as ``<folder>/seed<N>/<method>/report.json`` in any of the folders given (the
first folder that has a run wins).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from kpod_ops.pipeline.stats import paired_summary

ARMS = ("paper", "no-weights", "no-sig-dif", "no-progressive", "no-diversity")


def load(folders: list[Path], metric: str) -> dict[str, dict[int, float]]:
    """``{method: {seed: metric}}`` over every finished run in ``folders``."""
    out: dict[str, dict[int, float]] = {}
    for folder in folders:
        for report in sorted(folder.glob("seed*/*/report.json")):
            seed = int(re.fullmatch(r"seed(\d+)", report.parent.parent.name).group(1))
            value = json.loads(report.read_text()).get(metric)
            if value is not None:
                out.setdefault(report.parent.name, {}).setdefault(seed, 100.0 * float(value))
    return out


def contrast(runs: dict[str, dict[int, float]], a: str, b: str) -> dict | None:
    """``a − b`` over the seeds both ran: the paired summary plus the seeds and per-seed differences."""
    seeds = sorted(set(runs.get(a, {})) & set(runs.get(b, {})))
    if len(seeds) < 2:
        return None
    diffs = [runs[a][s] - runs[b][s] for s in seeds]
    return {"contrast": f"{a} - {b}", "seeds": seeds, "diffs": diffs, **paired_summary(diffs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--metric", default="test_accuracy")
    parser.add_argument("--json", type=Path, help="write the contrasts here as JSON")
    args = parser.parse_args()
    runs = load(args.folders, args.metric)
    rows = []
    for arm in ARMS:
        for a, b in ((arm, "standard"), ("kpod", arm)):
            row = contrast(runs, a, b)
            if row is not None:
                rows.append(row)
    print(f"{args.metric}, points; mean diff [paired t 95 % interval], exact sign-flip p, paired SD")
    for arm in ("kpod", "standard", *ARMS):
        if arm in runs:
            vals = runs[arm]
            print(f"  {arm:15s} " + " ".join(f"{s}:{v:5.1f}" for s, v in sorted(vals.items())))
    for r in rows:
        lo, hi = r["diff_ci95"]
        print(f"  {r['contrast']:28s} n={r['n_pairs']:2d}  {r['diff_mean']:+6.1f} [{lo:+6.1f}, {hi:+6.1f}]  "
              f"p={r['p_sign_flip']:.3f}  SD={r['diff_sd']:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"metric": args.metric, "runs": runs, "contrasts": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

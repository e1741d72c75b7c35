"""Paired contrasts of the study's ablations: each arm against ``standard`` (the pre-registered
secondary endpoint) and ``kpod`` against each ablation (what switching one component off costs),
over the seeds both arms ran, from the runs' ``report.json`` files.

    python benchmarks/study/ablations.py benchmarks/results/study_quick/primary \
        benchmarks/results/study_quick/secondary [--metric test_accuracy] [--json OUT] \
        [--min-auc 0.7] [--seed-table]

``--min-auc`` adds ``kpod − standard`` over the seeds whose ``kpod`` run's token weights rank
numbers and operators above words at that keypoint ROC-AUC or more (the studies' secondary
endpoint); ``--seed-table`` prints the per-seed Markdown table of ``kpod`` and ``standard``
(test and validation accuracy, keypoint ROC-AUC, kept ratio) that docs/results.md shows.

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


def load_reports(folders: list[Path], method: str) -> dict[int, dict]:
    """``{seed: report}`` of ``method``'s finished runs in ``folders`` (the first folder wins)."""
    out: dict[int, dict] = {}
    for folder in folders:
        for report in sorted(folder.glob(f"seed*/{method}/report.json")):
            seed = int(re.fullmatch(r"seed(\d+)", report.parent.parent.name).group(1))
            out.setdefault(seed, json.loads(report.read_text()))
    return out


def keypoint_auc(report: dict) -> float | None:
    """The run's keypoint ROC-AUC (numbers and operators against words), ``None`` without weights."""
    ranking = (report.get("weights") or {}).get("keypoint_ranking") or {}
    return ranking.get("auc")


def contrast(runs: dict[str, dict[int, float]], a: str, b: str,
             only: set[int] | None = None) -> dict | None:
    """``a − b`` over the seeds both ran (and in ``only`` if given): the paired summary plus the
    seeds and per-seed differences."""
    seeds = set(runs.get(a, {})) & set(runs.get(b, {}))
    seeds = sorted(seeds if only is None else seeds & only)
    if len(seeds) < 2:
        return None
    diffs = [runs[a][s] - runs[b][s] for s in seeds]
    return {"contrast": f"{a} - {b}", "seeds": seeds, "diffs": diffs, **paired_summary(diffs)}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100.0 * x:.1f} %"


def seed_table(kpod: dict[int, dict], standard: dict[int, dict]) -> str:
    """Markdown table over the seeds both arms finished: test and validation accuracy of each, the
    test difference in points, and the kpod run's keypoint ROC-AUC and kept ratio."""
    lines = ["| seed | kpod test | standard test | difference | kpod val | standard val | keypoint ROC-AUC | kept |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for seed in sorted(set(kpod) & set(standard)):
        k, s = kpod[seed], standard[seed]
        diff = 100.0 * (k["test_accuracy"] - s["test_accuracy"])
        auc = keypoint_auc(k)
        kept = (k.get("weights") or {}).get("kept_ratio")
        lines.append(f"| {seed} | {_pct(k['test_accuracy'])} | {_pct(s['test_accuracy'])} | "
                     f"{diff:+.1f}".replace("-", "−") + f" | {_pct(k.get('val_accuracy'))} | {_pct(s.get('val_accuracy'))} | "
                     f"{'–' if auc is None else f'{auc:.2f}'} | {_pct(kept)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--metric", default="test_accuracy")
    parser.add_argument("--json", type=Path, help="write the contrasts here as JSON")
    parser.add_argument("--min-auc", type=float, default=None,
                        help="also kpod - standard over the seeds whose kpod weights reach this keypoint ROC-AUC")
    parser.add_argument("--seed-table", action="store_true", help="print the per-seed Markdown table")
    args = parser.parse_args()
    runs = load(args.folders, args.metric)
    kpod_reports = load_reports(args.folders, "kpod")
    if args.seed_table:
        print(seed_table(kpod_reports, load_reports(args.folders, "standard")))
    rows = [row for row in [contrast(runs, "kpod", "standard")] if row is not None]
    if args.min_auc is not None:
        good = {s for s, r in kpod_reports.items() if (keypoint_auc(r) or 0.0) >= args.min_auc}
        row = contrast(runs, "kpod", "standard", only=good)
        if row is not None:
            row["contrast"] = f"kpod - standard (AUC>={args.min_auc:g})"
            rows.append(row)
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

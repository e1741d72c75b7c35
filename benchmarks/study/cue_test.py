"""The analysis of Study 2's cue-word test (docs/results.md, "Testing the likeliest cause: the cue words"), as its
plan fixed it: per seed, the share of test answers whose first wrong step takes the operation's number from
elsewhere in the question, and the test accuracy, of ``kpod`` with the cue weights against ``kpod`` and
``standard``; then the plan's reading.

    python benchmarks/study/cue_test.py BASE_OUT CUE_OUT [--json OUT.json]

``BASE_OUT`` is the ``kpod compare --methods kpod,standard`` folder, ``CUE_OUT`` the ``--methods kpod`` folder that
trained on the cue weights; a seed counts when all three runs have test generations (``step_errors.py`` reads
them, or their gzipped copies, the same way).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from step_errors import has_generations, run_summary

from kpod_ops.pipeline.stats import paired_summary

ARMS = ("kpod-cue", "kpod", "standard")
MECHANISM = "number in question"


def arm_runs(base: Path, cue: Path, seed: int) -> dict[str, Path]:
    return {"kpod-cue": cue / f"seed{seed}" / "kpod", "kpod": base / f"seed{seed}" / "kpod",
            "standard": base / f"seed{seed}" / "standard"}


def seed_endpoints(runs: dict[str, Path]) -> dict[str, dict[str, float]]:
    """Per arm: the mechanism share (% of the scored test answers) and the test accuracy (%)."""
    out = {}
    for arm, run in runs.items():
        summary = run_summary(run)
        accuracy = json.loads((run / "report.json").read_text())["test_accuracy"]
        out[arm] = {"number_in_question": 100 * summary["error_kinds"][MECHANISM] / summary["n"],
                    "accuracy": 100 * accuracy, "n": summary["n"]}
    return out


def reading(per_seed: dict[int, dict[str, dict[str, float]]]) -> dict:
    """The plan's reading: *supported* if the cue weights lower the share against kpod on at least 3 of 4 seeds
    (three quarters, rounded up) and raise the accuracy on as many; *contradicted* if the share is lower on at most
    1 of 4 (a quarter, rounded down); otherwise *inconclusive*. The deficit appeared only if kpod's mean share is
    above standard's; where it did not, the test says little either way."""
    seeds = sorted(per_seed)
    n = len(seeds)
    lower_share = sum(per_seed[s]["kpod-cue"]["number_in_question"] < per_seed[s]["kpod"]["number_in_question"]
                      for s in seeds)
    higher_accuracy = sum(per_seed[s]["kpod-cue"]["accuracy"] > per_seed[s]["kpod"]["accuracy"] for s in seeds)
    need, at_most = math.ceil(3 * n / 4), n // 4
    if lower_share >= need and higher_accuracy >= need:
        verdict = "supported"
    elif lower_share <= at_most:
        verdict = "contradicted"
    else:
        verdict = "inconclusive"
    mean = {arm: float(np.mean([per_seed[s][arm]["number_in_question"] for s in seeds])) for arm in ARMS}
    return {"seeds": seeds, "cue_share_lower_than_kpod": lower_share, "cue_accuracy_higher_than_kpod": higher_accuracy,
            "verdict": verdict, "deficit_appeared": mean["kpod"] > mean["standard"], "mean_share": mean}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", type=Path, help="the kpod,standard compare folder")
    parser.add_argument("cue", type=Path, help="the compare folder of kpod on the cue weights")
    parser.add_argument("--json", type=Path, help="write the per-seed endpoints and the reading here")
    args = parser.parse_args()
    seeds = sorted(int(p.name[4:]) for p in args.base.glob("seed*")
                   if all(has_generations(r) for r in arm_runs(args.base, args.cue, int(p.name[4:])).values()))
    if not seeds:
        raise SystemExit(f"{args.base} / {args.cue}: no seed with test generations of all of {', '.join(ARMS)}")
    per_seed = {s: seed_endpoints(arm_runs(args.base, args.cue, s)) for s in seeds}
    print(f"seeds {', '.join(map(str, seeds))}; per seed: '{MECHANISM}' share of the test answers (%) | test accuracy (%)")
    print("  seed  " + "  ".join(f"{arm:>9}" for arm in ARMS) + "  |  " + "  ".join(f"{arm:>9}" for arm in ARMS))
    for s in seeds:
        e = per_seed[s]
        print(f"  {s}  " + "  ".join(f"{e[arm]['number_in_question']:9.1f}" for arm in ARMS) + "  |  "
              + "  ".join(f"{e[arm]['accuracy']:9.1f}" for arm in ARMS))
    contrasts = {}
    for a, b in (("kpod-cue", "kpod"), ("kpod-cue", "standard"), ("kpod", "standard")):
        for endpoint in ("number_in_question", "accuracy"):
            d = [per_seed[s][a][endpoint] - per_seed[s][b][endpoint] for s in seeds]
            contrasts[f"{a} - {b}: {endpoint}"] = {"per_seed": d, **paired_summary(d)}
            print(f"  {a} − {b}, {endpoint}: mean {np.mean(d):+.1f} pts (per seed {', '.join(f'{x:+.1f}' for x in d)})")
    result = reading(per_seed)
    print(f"reading: {result['verdict']} (share lower than kpod's on {result['cue_share_lower_than_kpod']} of "
          f"{len(seeds)} seeds, accuracy higher on {result['cue_accuracy_higher_than_kpod']} of {len(seeds)}); "
          f"the deficit {'appeared' if result['deficit_appeared'] else 'did not appear'} (mean share kpod "
          f"{result['mean_share']['kpod']:.1f} %, standard {result['mean_share']['standard']:.1f} %)")
    if args.json:
        args.json.write_text(json.dumps({"per_seed": {str(s): e for s, e in per_seed.items()}, "contrasts": contrasts,
                                         "reading": result}, indent=1) + "\n")


if __name__ == "__main__":
    main()

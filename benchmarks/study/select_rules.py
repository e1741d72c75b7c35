"""Which rule, choosing one of a data seed's mask-learner restarts, keeps a learner that found the keypoints?

    python benchmarks/study/select_rules.py RESULTS.jsonl [RESULTS.jsonl ...] [--measure kept-share] [--min 0.7]
        [--first R]

Reads the lines that ``benchmarks/study/mask_seeds.py`` prints with ``weights.restarts`` > 1 (one line per
data seed, each restart's validation objective, answer loss, keep probability, keypoint ROC-AUC and kept
keypoint share) and prints, per rule, on how many data seeds the restart it keeps found the keypoints:
``--measure kept-share`` (default): the share of numbers and operators among the number/operator and word
tokens it keeps is ≥ ``--min``; ``--measure auc``: its ROC-AUC of numbers and operators against words is
≥ ``--min``. No rule sees the measure; it only scores the choice. ``--first R`` uses each seed's first R
restarts (what ``weights.restarts: R`` would have run).

Rules: ``objective`` (the lowest validation objective: what ``weights.restarts`` keeps), ``answer`` (the
lowest validation answer loss: the objective without its sparsity term), ``densest`` (the highest
validation keep probability), ``first`` (restart 0 alone: ``weights.restarts: 1``). As
``weights.restarts`` does, a rule chooses among the restarts whose weights are not degenerate where there are any.
Where every seed's line has ``mean_of_restarts`` (mask_seeds.py with each restart's weights kept), also ``mean``:
the mean of the restarts' weights (all of them, or the first R), which combines the learners instead of choosing.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path


def _usable(restarts: list[dict]) -> list[dict]:
    """The restarts with non-degenerate weights, or every restart if none has them (as ``weights.restarts``)."""
    return [r for r in restarts if r.get("degenerate") is None] or restarts


RULES: dict[str, Callable[[list[dict]], dict]] = {
    "objective": lambda restarts: min(_usable(restarts), key=lambda r: r["val_objective"]),
    "answer": lambda restarts: min(_usable(restarts), key=lambda r: r["val_answer_loss"]),
    "densest": lambda restarts: max(_usable(restarts), key=lambda r: r["val_kept"]),
    "first": lambda restarts: restarts[0],  # weights.restarts: 1 keeps it, degenerate or not
}


def load(paths: list[Path]) -> dict[int, list[dict]]:
    """``{data seed: restarts}`` from mask_seeds.py's lines (a later line for a seed replaces an earlier one)."""
    out: dict[int, list[dict]] = {}
    for path in paths:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.lstrip().startswith("{"):  # blank, or a library's log line printed to stdout
                continue
            record = json.loads(line)
            restarts = record.get("restarts")
            if not restarts:
                raise ValueError(f"{path}:{n}: seed {record.get('seed')} has no restarts (run with weights.restarts > 1)")
            needed = {"val_objective", "val_answer_loss", "val_kept", "degenerate"}
            lacking = sorted({k for r in restarts for k in needed - set(r)})
            if lacking:
                raise ValueError(f"{path}:{n}: seed {record.get('seed')}'s restarts lack {lacking}")
            out[int(record["seed"])] = restarts
    return out


MEASURES = {"kept-share": "kept_keypoint_share", "auc": "keypoint_auc"}
# the same measures in the ranking of a mean of restarts' weights (mask_seeds.py's ``mean_of_restarts``)
MEAN_MEASURES = {"kept-share": "kept_keypoint_share", "auc": "auc"}


def load_means(paths: list[Path]) -> dict[int, dict]:
    """``{data seed: mean_of_restarts}`` for the lines that carry it (a later line for a seed replaces an earlier one)."""
    out: dict[int, dict] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if line.lstrip().startswith("{"):
                record = json.loads(line)
                if record.get("mean_of_restarts"):
                    out[int(record["seed"])] = record["mean_of_restarts"]
    return out


def score_mean(means: dict[int, dict], n_restarts: int, min_value: float = 0.7, measure: str = "kept-share") -> dict:
    """The ``mean`` rule: the mean of each seed's first ``n_restarts`` restarts' weights, scored as the rules are."""
    key = MEAN_MEASURES[measure]
    kept = {seed: (m.get(str(n_restarts)) or {}).get(key) for seed, m in sorted(means.items())}
    missed = [seed for seed, v in kept.items() if v is None or v < min_value]
    return {"found": len(kept) - len(missed), "n_seeds": len(kept), "missed": missed, measure: kept}


def score(seeds: dict[int, list[dict]], min_value: float = 0.7, first: int | None = None,
          measure: str = "kept-share") -> dict[str, dict]:
    """Per rule: the data seeds whose kept restart's ``measure`` is ≥ ``min_value``, those below, and each value."""
    key = MEASURES[measure]
    out: dict[str, dict] = {}
    for name, rule in RULES.items():
        kept = {seed: rule(restarts[:first] if first else restarts).get(key) for seed, restarts in sorted(seeds.items())}
        missed = [seed for seed, v in kept.items() if v is None or v < min_value]  # None: nothing ranked or kept
        out[name] = {"found": len(kept) - len(missed), "n_seeds": len(kept), "missed": missed, measure: kept}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--measure", choices=sorted(MEASURES), default="kept-share")
    parser.add_argument("--min", type=float, default=0.7, help="the value of the measure that counts as found")
    parser.add_argument("--first", type=int, default=None, help="use each seed's first R restarts")
    parser.add_argument("--json", type=Path, help="write the scores here as JSON")
    args = parser.parse_args()
    if args.first is not None and args.first < 1:
        parser.error(f"--first: expected an integer >= 1, got {args.first}")
    seeds = load(args.results)
    n_restarts = sorted({len(r) for r in seeds.values()})
    learners = [r for restarts in seeds.values() for r in (restarts[:args.first] if args.first else restarts)]
    key = MEASURES[args.measure]
    missing = [seed for seed, restarts in seeds.items() if any(key not in r for r in restarts)]
    if missing:
        raise SystemExit(f"--measure {args.measure}: the restarts of seeds {missing} do not record {key}")
    failed = sum(r[key] is None or r[key] < args.min for r in learners)
    print(f"{len(seeds)} data seeds, {'/'.join(map(str, n_restarts))} restarts each"
          + (f" (the first {args.first} used)" if args.first else "")
          + f"; {failed} of {len(learners)} learners with {args.measure} below {args.min}")
    scores = score(seeds, args.min, args.first, args.measure)
    means = load_means(args.results)
    n_mean = args.first or max(n_restarts)
    if n_mean > 1 and means and set(means) == set(seeds) and all(str(n_mean) in m for m in means.values()):
        scores["mean"] = score_mean(means, n_mean, args.min, args.measure)
    for name, s in scores.items():
        missed = ", ".join(str(x) for x in s["missed"]) or "none"
        print(f"{name:>9}: {s['found']} of {s['n_seeds']} seeds with {args.measure} >= {args.min} (missed: {missed})")
    if args.json:
        args.json.write_text(json.dumps(scores, indent=1) + "\n")


if __name__ == "__main__":
    main()

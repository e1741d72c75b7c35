"""Where two arms of a study differ inside the chains: accuracy by chain length, per-step correctness, the
first wrong step and what is wrong in it, paired over seeds, from each run's test generations (``arith-cot`` data).

    python benchmarks/study/step_errors.py STUDY_OUT [--methods kpod,standard] [--json OUT.json]

A generated step counts as correct when its equation (``a op b = c``, the i-th in the generation) is the gold
rationale's i-th equation. Reads ``seed<N>/<method>/eval/generations.jsonl`` and the gold rationales and
metadata of ``seed<N>/<method>/data/test.jsonl``, which ``kpod compare`` keeps in each run folder (or their
gzipped copies, ``….jsonl.gz``, which the repository keeps for the later studies; the earlier study folders leave
both out, and keep this script's ``--json``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

EQUATION = re.compile(r"(\d+)\s*([-+*/×÷x])\s*(\d+)\s*=\s*(\d+)(?!\d|\.\d)")  # "8.5" is not "8"; "8." ends a sentence
OPERATOR = {"×": "*", "x": "*", "÷": "/"}


def _equations(text: str) -> list[tuple[str, str, str, str]]:
    return [(a, OPERATOR.get(op, op), b, c) for a, op, b, c in EQUATION.findall(text)]


def step_marks(generation: str, rationale: str) -> list[bool]:
    """For each equation of the gold ``rationale``: is the generation's equation at that place the same?"""
    gold, made = _equations(rationale), _equations(generation)
    return [i < len(made) and made[i] == g for i, g in enumerate(gold)]


ERROR_KINDS = ("missing", "carried", "operation", "number in question", "number not in question", "arithmetic")


def first_error_kind(generation: str, rationale: str, question: str) -> str | None:
    """What is wrong in the generation's first wrong equation, ``None`` when every gold step is right.

    Checked in this order: ``missing`` (fewer equations than the gold rationale), ``carried`` (the left operand is
    not the gold one: the start or the previous result carried wrong), ``operation`` (another operator),
    ``number in question`` / ``number not in question`` (the right operand is another number of the question, a
    distractor or another step's, or a number the question does not have: miscopied), ``arithmetic`` (operands and
    operator right, the result wrong)."""
    gold, made = _equations(rationale), _equations(generation)
    for i, g in enumerate(gold):
        if i >= len(made):
            return "missing"
        m = made[i]
        if m == g:
            continue
        if m[0] != g[0]:
            return "carried"
        if m[1] != g[1]:
            return "operation"
        if m[2] != g[2]:
            return "number in question" if m[2] in re.findall(r"\d+", question) else "number not in question"
        return "arithmetic"
    return None


def _stored(path: Path) -> Path | None:
    """``path``, or its gzipped copy (``path.gz``, as the repository keeps generations), whichever exists."""
    return next((p for p in (path, path.with_name(path.name + ".gz")) if p.exists()), None)


def _lines(path: Path) -> list[str]:
    """A JSONL file's lines, read from ``path`` or its gzipped copy."""
    found = _stored(path)
    if found is None:
        raise FileNotFoundError(f"{path}: not found, nor {path.name}.gz")
    data = found.read_bytes()
    return (gzip.decompress(data) if found.suffix == ".gz" else data).decode().splitlines()


def has_generations(run: Path) -> bool:
    return _stored(run / "eval" / "generations.jsonl") is not None


def run_summary(run: Path) -> dict:
    """One run: accuracy by number of operations, mean per-step correctness, counts of the first wrong step and
    of what is wrong in it."""
    gold = {}
    for line in _lines(run / "data" / "test.jsonl"):
        record = json.loads(line)
        gold[record["id"]] = (record["rationale"], len(record["metadata"]["operations"]), record["question"])
    by_length: dict[int, list[bool]] = defaultdict(list)
    per_step, first_wrong, error_kinds = [], Counter(), Counter()
    for line in _lines(run / "eval" / "generations.jsonl"):
        record = json.loads(line)
        rationale, n_ops, question = gold[record["id"]]
        marks = step_marks(record["generation"], rationale)
        by_length[n_ops].append(bool(record["correct"]))
        if marks:  # a gold rationale without an equation has no steps to score
            per_step.append(float(np.mean(marks)))
            first_wrong[next((i for i, ok in enumerate(marks) if not ok), None)] += 1
            error_kinds[first_error_kind(record["generation"], rationale, question)] += 1
    return {"accuracy_by_ops": {n: float(np.mean(v)) for n, v in by_length.items()},
            "step_correct": float(np.mean(per_step)), "first_wrong": first_wrong, "error_kinds": error_kinds,
            "n": len(per_step)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--methods", default="kpod,standard", help="two methods, a,b: differences are a − b")
    parser.add_argument("--json", type=Path, help="write every run's summary here")
    args = parser.parse_args()
    a, b = args.methods.split(",")
    seeds = sorted(int(p.name[4:]) for p in args.folder.glob("seed*")
                   if all(has_generations(p / m) for m in (a, b)))
    if not seeds:
        raise SystemExit(f"{args.folder}: no seed with test generations of both {a} and {b}")
    runs = {m: {s: run_summary(args.folder / f"seed{s}" / m) for s in seeds} for m in (a, b)}
    print(f"{a} − {b} over {len(seeds)} seeds ({seeds[0]}–{seeds[-1]}); points, mean [SD over seeds]")
    for n in sorted(runs[a][seeds[0]]["accuracy_by_ops"]):
        d = [100 * (runs[a][s]["accuracy_by_ops"][n] - runs[b][s]["accuracy_by_ops"][n]) for s in seeds]
        acc = {m: 100 * np.mean([runs[m][s]["accuracy_by_ops"][n] for s in seeds]) for m in (a, b)}
        print(f"  {n} operations: {a} {acc[a]:.1f} %, {b} {acc[b]:.1f} %, difference {np.mean(d):+.1f} [{np.std(d, ddof=1):.1f}]")
    d = [100 * (runs[a][s]["step_correct"] - runs[b][s]["step_correct"]) for s in seeds]
    acc = {m: 100 * np.mean([runs[m][s]["step_correct"] for s in seeds]) for m in (a, b)}
    print(f"  steps correct: {a} {acc[a]:.1f} %, {b} {acc[b]:.1f} %, difference {np.mean(d):+.1f} [{np.std(d, ddof=1):.1f}],"
          f" {a} higher on {sum(x > 0 for x in d)} of {len(d)} seeds")
    for m in (a, b):
        counts = sum((runs[m][s]["first_wrong"] for s in seeds), Counter())
        total = sum(counts.values())
        cells = ", ".join(f"step {i + 1}: {100 * counts[i] / total:.1f} %" for i in sorted(k for k in counts if k is not None))
        print(f"  {m}: first wrong step (share of all answers) {cells}; every step right {100 * counts[None] / total:.1f} %")
    print("  what is wrong in the first wrong step (share of all answers):")
    for kind in ERROR_KINDS:
        share = {m: [100 * runs[m][s]["error_kinds"][kind] / runs[m][s]["n"] for s in seeds] for m in (a, b)}
        d = np.subtract(share[a], share[b])
        print(f"    {kind}: {a} {np.mean(share[a]):.1f} %, {b} {np.mean(share[b]):.1f} %, difference {np.mean(d):+.1f}"
              f" [{np.std(d, ddof=1):.1f}], {a} more on {int(np.sum(d > 0))} of {len(d)} seeds")
    if args.json:
        args.json.write_text(json.dumps({m: {str(s): {**r, "first_wrong": {str(k): v for k, v in r["first_wrong"].items()},
                                                      "error_kinds": {str(k): v for k, v in r["error_kinds"].items()}}
                                             for s, r in runs[m].items()} for m in runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()

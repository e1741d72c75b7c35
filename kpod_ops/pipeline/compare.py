"""``compare``: several methods over paired seeds, sharing the stages they have in common.

For each seed s, every method runs with the same data, warm-up, token weights, difficulties and
clusters (one shared folder per seed) and the same number of optimiser steps. The table gives the
held-out accuracy per method as mean ± std over seeds, and for every method the paired
difference to ``standard`` (same seed) with a bootstrap 95 % confidence interval over seeds.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import bad_input
from . import distributed
from .config import METHODS
from .report import machine, plot_accuracy
from .run import _silent, check_writable, distill
from .store import write_json


def paired_bootstrap(diffs: Sequence[float], *, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of paired differences (one per seed)."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        raise bad_input("diffs", "at least one paired difference", "none")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def table(results: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Rows: method, mean, std, n, and the paired difference to ``standard`` with its bootstrap CI."""
    rows = []
    base = results.get("standard")
    for method, accs in results.items():
        a = np.asarray(accs)
        row: dict[str, Any] = {"method": method, "mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else None,
                               "n_seeds": int(a.size), "accuracies": [float(x) for x in a]}
        if base is not None and method != "standard":
            k = min(len(base), a.size)
            diffs = a[:k] - np.asarray(base[:k])
            row["diff_vs_standard"] = float(diffs.mean())
            row["diff_ci95"] = list(paired_bootstrap(diffs)) if k > 1 else None  # one pair has no spread to resample
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | accuracy (mean ± std) | seeds | vs standard (paired, 95 % CI) |", "|---|---:|---:|---|"]
    for r in rows:
        diff = "—"
        if "diff_vs_standard" in r:
            diff = f"{100 * r['diff_vs_standard']:+.1f} pts"
            if r["diff_ci95"] is not None:
                lo, hi = r["diff_ci95"]
                diff += f" [{100 * lo:+.1f}, {100 * hi:+.1f}]"
            else:
                diff += " (one seed: no interval)"
        acc = f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f} %" if r["std"] is not None else f"{100 * r['mean']:.1f} %"
        lines.append(f"| {r['method']} | {acc} | {r['n_seeds']} | {diff} |")
    return "\n".join(lines)


def compare(config: dict[str, Any], methods: Sequence[str], seeds: int, out: str | os.PathLike, *,
            progress: bool = True, say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run ``methods`` for seeds 0..seeds−1 into ``out``; writes ``compare.json``/``compare.md``; returns the rows.

    Under torchrun every run trains data-parallel (see :func:`~kpod_ops.pipeline.distill`); rank 0 writes the table.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise bad_input("--methods", f"a comma-separated list of {METHODS}", ",".join(methods) or "nothing")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise bad_input("--seeds", "a count >= 1 (seeds 0..N-1)", repr(seeds))
    out = Path(out)
    if distributed.is_main():  # under torchrun each run trains data-parallel; rank 0 writes and speaks
        check_writable(out)
    else:
        progress, say = False, _silent
    results: dict[str, list[float]] = {m: [] for m in methods}
    for seed in range(seeds):
        for method in methods:
            cfg = copy.deepcopy(config)
            cfg.update({"method": method, "seed": seed})
            say(f"=== compare: method {method}, seed {seed} ===")
            report = distill(cfg, out / f"seed{seed}" / method, shared=out / f"seed{seed}" / "shared", progress=progress, say=say)
            results[method].append(report["test_accuracy"])
    rows = table(results)
    if not distributed.is_main():
        return rows
    text = format_table(rows)
    write_json(out / "compare.json", {"preset": config["preset"], "seeds": seeds, "rows": rows, "machine": machine()})
    plot_accuracy([(r["method"], r["mean"]) for r in rows], out / "accuracy.png", title=f"held-out accuracy, {seeds} seed(s)")
    (out / "compare.md").write_text(f"# kpod compare — preset `{config['preset']}`\n\n{text}\n\n![accuracy](accuracy.png)\n",
                                    encoding="utf-8")
    say(text)
    return rows

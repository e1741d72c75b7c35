"""``compare``: several methods over paired seeds, sharing the stages they have in common.

For each seed s, every method runs with the same data, warm-up, token weights, difficulties and
clusters (one shared folder per seed) and the same number of optimiser steps. The table gives the
held-out accuracy per method and, for every method, the paired difference to ``standard`` on the
same seeds: its mean and SD, a paired t 95 % interval, the exact sign-flip p-value and the smallest
difference the number of seeds could detect (see :mod:`kpod_ops.pipeline.stats`).

A finished run (its ``report.json`` written with the same configuration) is reused, so a compare
run again into the same folder only runs what is missing. ``jobs > 1`` runs that many seeds side by
side, each in its own process with ``threads`` torch threads; the methods of one seed run one after
another in one process, since they share that seed's stages. A run's result depends only on its
configuration, seed and thread count, so ``jobs`` changes nothing but the wall time.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import bad_input
from . import distributed
from .config import METHODS, DistillConfig, resolve_method
from .report import machine, plot_accuracy
from .run import _silent, check_writable, distill
from .stats import paired_summary
from .store import read_json, write_json

_RANGE = re.compile(r"^(\d+)-(\d+)$")


def parse_seeds(spec: str | int) -> list[int]:
    """``--seeds``: a count ``N`` (seeds 0..N−1), a range ``100-111`` or a list ``100,105,107`` (ranges allowed in it)."""
    text = str(spec).strip()
    expected = "a count N (seeds 0..N-1), a range such as 100-111 or a list such as 100,105,107"
    if text.isdigit() and "," not in text:
        if int(text) < 1:
            raise bad_input("--seeds", expected, repr(text))
        return list(range(int(text)))
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        match = _RANGE.match(part)
        if match and int(match.group(1)) <= int(match.group(2)):
            seeds += range(int(match.group(1)), int(match.group(2)) + 1)
        elif part.isdigit() and "," in text:
            seeds.append(int(part))
        else:
            raise bad_input("--seeds", expected, repr(text))
    if len(set(seeds)) != len(seeds):
        raise bad_input("--seeds", "each seed once", repr(text))
    return seeds


def table(results: dict[str, dict[int, float]]) -> list[dict[str, Any]]:
    """One row per method: accuracies by seed, mean and SD, and the paired statistics against ``standard``."""
    rows = []
    base = results.get("standard")
    for method, by_seed in results.items():
        a = np.asarray(list(by_seed.values()), dtype=np.float64)
        row: dict[str, Any] = {"method": method, "mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else None,
                               "n_seeds": int(a.size), "accuracies": {str(s): float(v) for s, v in by_seed.items()}}
        if base is not None and method != "standard":
            paired = [s for s in by_seed if s in base]
            if paired:
                row.update(paired_summary([by_seed[s] - base[s] for s in paired]))
                row["paired_seeds"] = paired
        rows.append(row)
    return rows


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | accuracy (mean ± SD) | seeds | vs standard: mean diff [paired t 95 % CI] | SD of diffs | "
             "sign-flip p | detectable at 80 % power |", "|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        acc = f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f} %" if r["std"] is not None else f"{100 * r['mean']:.1f} %"
        diff, sd, p, mde = "—", "—", "—", "—"
        if "diff_mean" in r:
            diff = f"{_pts(r['diff_mean'])} pts"
            diff += f" [{_pts(r['diff_ci95'][0])}, {_pts(r['diff_ci95'][1])}]" if r["diff_ci95"] else " (one pair: no interval)"
            sd = f"{100 * r['diff_sd']:.1f} pts" if r["diff_sd"] is not None else "—"
            p = f"{r['p_sign_flip']:.3g}"
            mde = f"{100 * r['mde80']:.1f} pts" if r["mde80"] is not None else "—"
        lines.append(f"| {r['method']} | {acc} | {r['n_seeds']} | {diff} | {sd} | {p} | {mde} |")
    return "\n".join(lines)


def _run_config(config: DistillConfig, method: str, seed: int) -> DistillConfig:
    return replace(config, method=method, seed=seed)


def _finished(run: Path, cfg: DistillConfig) -> float | None:
    """The test accuracy of a finished run of exactly ``cfg`` in ``run``, else None."""
    try:
        report = read_json(run / "report.json")
    except (OSError, ValueError):
        return None
    return report["test_accuracy"] if report.get("config") == resolve_method(cfg).to_dict() else None


def unpaired_seeds(out: Path, seeds: Sequence[int], methods: Sequence[str]) -> dict[int, str]:
    """Seeds whose runs did not share their warm-up or token weights, with what differs.

    Each run's ``report.json`` records ``shared_fingerprints`` (hashes of the warmed-up student and the
    token weights in the seed's shared folder when it finished). A finished run is reused through its report, while a shared stage whose
    files are gone (a copy without the models, another machine) is run again: the new runs of that seed
    then start from another student, and the seed's differences mix the method with that change.
    Reports written before the fingerprints existed cannot be checked, and say so.
    """
    found: dict[int, str] = {}
    for seed in seeds:
        prints: dict[str, dict] = {}
        for method in methods:
            try:
                prints[method] = read_json(out / f"seed{seed}" / method / "report.json").get("shared_fingerprints")
            except (OSError, ValueError):
                continue
        unknown = sorted(m for m, p in prints.items() if p is None)
        known = {m: p for m, p in prints.items() if p is not None}
        for key, what in (("warmup", "warmed-up students"), ("weights", "token weights")):
            values = {m: p.get(key) for m, p in known.items() if p.get(key) is not None}
            if len(set(values.values())) > 1:
                groups: dict[str, list[str]] = {}
                for m, v in values.items():
                    groups.setdefault(v, []).append(m)
                found[seed] = f"different {what}: " + " vs ".join(",".join(sorted(g)) for g in groups.values())
                break
        if seed not in found and unknown and known:
            found[seed] = (f"{', '.join(unknown)} reused from reports without fingerprints (written before they existed): "
                           "cannot check that they share the warm-up and token weights of the new runs")
    return found


def _run_seed(config: DistillConfig, methods: Sequence[str], seed: int, out: Path, threads: int | None,
              progress: bool, log: bool) -> dict[str, float]:
    """Every method on one seed, one after another (they share the seed's stages); test accuracy per method."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    accs = {}
    for method in methods:
        run = out / f"seed{seed}" / method
        cfg = _run_config(config, method, seed)
        if log:  # a worker process: the run's messages go to its log file
            from ..progress import silence_library_bars

            silence_library_bars()  # no transformers bars from side-by-side workers either
            run.parent.mkdir(parents=True, exist_ok=True)
            with (run.parent / f"{method}.log").open("a", encoding="utf-8") as f:
                accs[method] = distill(cfg, run, shared=out / f"seed{seed}" / "shared", progress=False,
                                       say=lambda m, f=f: (f.write(m + "\n"), f.flush()))["test_accuracy"]
        else:
            accs[method] = distill(cfg, run, shared=out / f"seed{seed}" / "shared", progress=progress)["test_accuracy"]
    return accs


def compare(config: DistillConfig, methods: Sequence[str], seeds: int | str | Sequence[int], out: str | os.PathLike, *,
            jobs: int = 1, threads: int | None = None, progress: bool = True,
            say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run ``methods`` on ``seeds`` into ``out``; writes ``compare.json``/``compare.md``; returns the rows.

    ``seeds``: a count N (0..N−1), a ``--seeds`` string, or a list of seeds. ``jobs``: seeds run side
    by side, each process with ``threads`` torch threads (default 1). Under torchrun every run trains
    data-parallel (see :func:`~kpod_ops.pipeline.distill`), one at a time; rank 0 writes the table.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise bad_input("--methods", f"a comma-separated list of {METHODS}", ",".join(methods) or "nothing")
    seed_list = list(seeds) if isinstance(seeds, (list, tuple)) else parse_seeds(seeds)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise bad_input("--jobs", "an int >= 1", repr(jobs))
    if jobs > 1 and distributed.world_size() > 1:
        raise bad_input("--jobs", "1 under torchrun (each run is already data-parallel)", jobs)
    out = Path(out)
    if distributed.is_main():  # under torchrun each run trains data-parallel; rank 0 writes and speaks
        check_writable(out)
    else:
        progress, say = False, _silent
    results: dict[str, dict[int, float]] = {m: {} for m in methods}
    todo = []
    for seed in seed_list:
        for method in methods:
            done = _finished(out / f"seed{seed}" / method, _run_config(config, method, seed))
            if done is not None:
                results[method][seed] = done
        missing = [m for m in methods if seed not in results[m]]
        if missing:
            todo.append((seed, missing))
        else:
            say(f"=== compare: seed {seed}: every method finished before (reused) ===")

    def record(seed: int, accs: dict[str, float]) -> None:
        for method, acc in accs.items():
            results[method][seed] = acc
            say(f"=== compare: method {method}, seed {seed}: test accuracy {acc:.1%} ===")

    if jobs == 1:
        for seed, missing in todo:
            say(f"=== compare: seed {seed}, methods {', '.join(missing)} ===")
            record(seed, _run_seed(config, missing, seed, out, threads, progress, log=False))
    elif todo:
        say(f"=== compare: {len(todo)} seed(s) to run, {jobs} side by side ({threads or 1} thread(s) each); "
            f"logs in {out}/seed*/<method>.log ===")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_run_seed, config, missing, seed, out, threads or 1, False, True): seed for seed, missing in todo}
            for future in as_completed(futures):
                record(futures[future], future.result())
    for method in methods:  # in the order of the seeds asked for
        results[method] = {s: results[method][s] for s in seed_list}
    unpaired = unpaired_seeds(out, seed_list, methods)
    for seed, why in unpaired.items():
        say(f"=== compare: WARNING: seed {seed} is not paired: {why} ===")
    rows = table(results)
    if not distributed.is_main():
        return rows
    text = format_table(rows)
    if not todo:  # every run reused: each report's machine.torch_threads says what it used
        threads = None
    elif threads is None:  # what the runs this call started used: one thread each side by side, else torch's default
        import torch

        threads = 1 if jobs > 1 else torch.get_num_threads()
    write_json(out / "compare.json", {"preset": config.preset, "seeds": seed_list, "methods": list(methods), "rows": rows,
                                      "machine": machine(), "threads_per_run": threads,
                                      "unpaired_seeds": {str(k): v for k, v in unpaired.items()}})
    plot_accuracy([(r["method"], r["mean"]) for r in rows], out / "accuracy.png",
                  title=f"held-out accuracy, {len(seed_list)} seed(s)")
    (out / "compare.md").write_text(f"# kpod compare — preset `{config.preset}`, seeds {_seed_text(seed_list)}\n\n{text}\n\n"
                                    "![accuracy](accuracy.png)\n", encoding="utf-8")
    say(text)
    return rows


def _seed_text(seeds: Sequence[int]) -> str:
    if list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}–{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return ", ".join(map(str, seeds))

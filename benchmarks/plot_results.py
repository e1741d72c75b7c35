"""The canonical benchmark results and their plots.

Every benchmark has one appendable file ``benchmarks/results/<benchmark>.jsonl``: one JSON object
per line and per result row, each with ``benchmark``, ``run_id``, ``date`` (UTC, ISO 8601),
``git_commit`` (and ``git_dirty``), ``versions``, ``machine`` and ``options`` (how the run was
invoked) next to the row's own figures. A new run is appended; nothing is overwritten, so a plot can
show the latest run or every run.

The benchmark scripts (``bench_loss.py``, ``bench_linear_loss.py``, ``bench_weighting.py``,
``bench_schedule.py``) write their own JSON file per run; ``append`` turns one into lines of the
canonical file (``bench_train_step.py`` writes its JSONL itself)::

    python benchmarks/bench_loss.py --out /tmp/loss                   # writes /tmp/loss/bench_loss_cpu_<stamp>.json
    python benchmarks/plot_results.py append loss /tmp/loss/bench_loss_cpu_<stamp>.json
    python benchmarks/plot_results.py                                  # every plot, into benchmarks/results/plots/

``append`` records the current date and ``git rev-parse HEAD`` unless ``--date`` / ``--commit`` say
otherwise (for a run made earlier).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BENCHMARKS = ("loss", "linear_loss", "weighting", "schedule")
FILES = {"loss": "bench_loss.jsonl", "linear_loss": "bench_linear_loss.jsonl", "weighting": "bench_weighting.jsonl",
         "schedule": "bench_schedule.jsonl", "train_step": "train_step.jsonl"}
_VERSION_KEYS = ("python", "torch", "numpy", "transformers")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _machine(raw: Any) -> dict[str, Any]:
    """A run's machine as a dict (bench_weighting.py records the one-line summary: kept as ``summary``)."""
    if isinstance(raw, dict):
        return dict(raw)
    if isinstance(raw, str):
        return {"summary": raw}
    raise ValueError(f"machine: expected a dict or a summary string, got {type(raw).__name__}")


def _versions(machine: dict[str, Any]) -> dict[str, str]:
    out = {k: str(machine[k]) for k in _VERSION_KEYS if k in machine}
    summary = machine.get("summary", "")
    for key, pattern in (("python", r"Python (\S+?),"), ("torch", r"torch (\S+)")):
        m = re.search(pattern, summary)
        if key not in out and m:
            out[key] = m.group(1)
    return out


def _rows_loss(run: dict) -> tuple[list[dict], dict]:
    return run["rows"], {}


def _rows_linear_loss(run: dict) -> tuple[list[dict], dict]:
    rows = [{k: v for k, v in r.items() if k != "rounds"} for r in run["rows"]]  # the per-round copies repeat each row
    options = {k: v for k, v in run.get("args", {}).items() if k not in ("out", "child")}
    return rows, options


def _rows_weighting(run: dict) -> tuple[list[dict], dict]:
    return [{k: v for k, v in run.items() if k != "machine"}], {}


def _rows_schedule(run: dict) -> tuple[list[dict], dict]:
    options = {k: v for k, v in run.items() if k not in ("machine", "runs")}
    runs = run["runs"]
    if isinstance(runs, dict):  # --compare-clusters: {clusters: [repeats]}
        return [r for repeats in runs.values() for r in repeats], {**options, "compare_clusters": True}
    return runs, options


CONVERTERS: dict[str, Callable[[dict], tuple[list[dict], dict]]] = {
    "loss": _rows_loss, "linear_loss": _rows_linear_loss, "weighting": _rows_weighting, "schedule": _rows_schedule,
}


def records(benchmark: str, run: dict, *, date: str, commit: str | None, dirty: bool | None = None,
            options: dict | None = None) -> list[dict]:
    """The canonical lines of one run of ``benchmark`` (a script's JSON output, already parsed)."""
    if benchmark not in CONVERTERS:
        raise ValueError(f"benchmark: expected one of {BENCHMARKS}, got {benchmark!r}")
    if "machine" not in run:
        raise ValueError(f"{benchmark}: expected a benchmark script's JSON output with 'machine', got keys {sorted(run)[:8]}")
    machine = _machine(run["machine"])
    rows, found = CONVERTERS[benchmark](run)
    common = {"benchmark": benchmark, "run_id": date, "date": date, "git_commit": commit, "git_dirty": dirty,
              "versions": _versions(machine), "machine": machine, "options": {**found, **(options or {})}}
    return [{**common, **row} for row in rows]


def read(benchmark: str, folder: Path = RESULTS) -> list[dict]:
    """Every line of a benchmark's canonical file (an empty list when it has none)."""
    path = folder / FILES[benchmark]
    if not path.is_file():
        return []
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got invalid JSON ({exc.msg})") from None
    return out


def append(benchmark: str, lines: Iterable[dict], folder: Path = RESULTS) -> Path:
    """Append lines to the benchmark's canonical file (created if absent)."""
    path = folder / FILES[benchmark]
    with path.open("a", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n")
    return path


def latest(rows: list[dict], key: Callable[[dict], Any]) -> list[dict]:
    """The rows of the latest run for every value of ``key`` (runs compared by date)."""
    newest: dict[Any, str] = {}
    for r in rows:
        k = key(r)
        newest[k] = max(newest.get(k, ""), r["date"])
    return [r for r in rows if r["date"] == newest[key(r)]]


# ------------------------------------------------------------------------------------ plots
def _axes(n: int, title: str, width: float = 6.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(width * n, 4.4), squeeze=False)
    fig.suptitle(title)
    return fig, axes[0]


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _machine_line(rows: list[dict]) -> str:
    m = rows[0]["machine"]
    if "summary" in m:
        return m["summary"].split(", Linux")[0]
    parts = [m.get("cpu"), f"{m['cores']} cores" if "cores" in m else None, f"torch {m['torch']}" if "torch" in m else None]
    return ", ".join(p for p in parts if p)


def plot_loss(rows: list[dict], out: Path) -> Path:
    """Time of each method relative to eager, per (V, dtype, allocator), latest run of each that timed eager
    (a run of chosen modes alone, e.g. the per-instruction-set comparison, has nothing to divide by)."""
    run = lambda r: r.get("run_id", r["date"])  # noqa: E731
    with_eager = {run(r) for r in rows if r["mode"] == "eager"}
    rows = latest([r for r in rows if run(r) in with_eager], lambda r: (r["N"], r["V"], r["dtype"], r["allocator"]))
    configs = sorted({(r["V"], r["dtype"], r["allocator"]) for r in rows})
    modes = [m for m in ("eager", "compile", "fused", "inplace", "fused30") if any(r["mode"] == m for r in rows)]
    fig, (ax,) = _axes(1, f"fused loss, forward + backward, N = {rows[0]['N']} ({_machine_line(rows)})", width=11.0)
    width = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        times = {(r["V"], r["dtype"], r["allocator"]): r["time_s"] for r in rows if r["mode"] == mode}
        eager = {(r["V"], r["dtype"], r["allocator"]): r["time_s"] for r in rows if r["mode"] == "eager"}
        ax.bar([j + i * width for j in range(len(configs))], [times[c] / eager[c] for c in configs], width, label=mode)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(configs))], [f"V={v}\n{d}, {a}" for v, d, a in configs], fontsize=8)
    ax.set_ylabel("time / eager's time")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.legend(fontsize=8)
    return _save(fig, out / "bench_loss.png")


def plot_linear_loss(rows: list[dict], out: Path) -> Path:
    """Time and extra memory of each method relative to eager, per (allocator, active share)."""
    rows = latest(rows, lambda r: (r["allocator"], r["active"], r["method"]))
    configs = sorted({(r["allocator"], r["active"]) for r in rows})
    methods = sorted({r["method"] for r in rows}, key=lambda m: (m != "eager", m))
    fig, axes = _axes(2, f"loss from hidden states, N = {rows[0]['n']}, H = {rows[0]['hidden']}, V = {rows[0]['vocab']}")
    width = 0.8 / len(methods)
    for ax, field, label in ((axes[0], "time_vs_eager", "time / eager's"), (axes[1], "memory_vs_eager", "extra memory / eager's")):
        for i, method in enumerate(methods):
            value = {(r["allocator"], r["active"]): r[field] for r in rows if r["method"] == method}
            ax.bar([j + i * width for j in range(len(configs))], [value.get(c, 0.0) for c in configs], width, label=method)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(configs))], [f"{a}\n{100 * s:.0f} % active" for a, s in configs],
                      fontsize=8)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    return _save(fig, out / "bench_linear_loss.png")


def plot_weighting(rows: list[dict], out: Path) -> Path:
    """Seconds per training step of the mask learner's configurations against the student's, latest run."""
    r = max(rows, key=lambda row: row["date"])
    bars = [("mask learner, shared\n(default)", r["mask_step_shared_s"]), ("without the cap", r.get("mask_step_uncapped_s")),
            ("answer loss\nfrom logits", r.get("mask_step_shared_logits_s")), ("one row per\n(example, prefix)", r["mask_step_per_row_s"]),
            ("student\nforward + backward", r["student_fwd_bwd_s"])]
    bars = [(name, value) for name, value in bars if value is not None]
    fig, (ax,) = _axes(1, f"mask learner step, batch {r['batch']}, {r['prefixes']} prefixes\n({_machine_line([r])})", width=8.0)
    ax.bar(range(len(bars)), [v for _, v in bars], color=["C0"] * (len(bars) - 1) + ["C2"])
    ax.set_xticks(range(len(bars)), [n for n, _ in bars], fontsize=8)
    ax.set_ylabel("seconds per step")
    return _save(fig, out / "bench_weighting.png")


def plot_schedule(rows: list[dict], out: Path) -> Path:
    """Seconds and peak memory against the number of questions, per solver (the main runs with the
    default allocator, not the variants)."""
    main = [r for r in rows if not r["options"].get("all_max") and not r["options"].get("compare_clusters")
            and str(r.get("thp", "0")) == "0"]  # the default allocator (THP runs are a variant)
    main = latest(main, lambda r: (r["solver"], r["questions"]))
    fig, axes = _axes(2, f"planning a curriculum, {main[0]['stages']} stages ({_machine_line(main)})")
    for solver in sorted({r["solver"] for r in main}):
        pts = sorted((r["questions"], r["seconds"], r["peak_mib_above_inputs"]) for r in main if r["solver"] == solver)
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=solver)
        axes[1].plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=solver)
    for ax, label in ((axes[0], "seconds"), (axes[1], "peak MiB above the inputs")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("questions")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    return _save(fig, out / "bench_schedule.png")


def plot_train_step(rows: list[dict], out: Path) -> Path:
    """Tokens per second of each method, per (model, active share), latest run."""
    rows = latest([r for r in rows if r.get("tokens_per_s") is not None], lambda r: "all")
    configs = sorted({(str(r["model"]), str(r["active"])) for r in rows})
    methods = sorted({r["method"] for r in rows})
    fig, (ax,) = _axes(1, f"a whole training step ({_machine_line(rows)})")
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        value = {(str(r["model"]), str(r["active"])): r["tokens_per_s"] for r in rows if r["method"] == method}
        ax.bar([j + i * width for j in range(len(configs))], [value.get(c, 0.0) for c in configs], width, label=method)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(configs))], [f"{m}\nactive {a}" for m, a in configs], fontsize=8)
    ax.set_ylabel("tokens per second")
    ax.legend(fontsize=8)
    return _save(fig, out / "train_step.png")


PLOTS: dict[str, Callable[[list[dict], Path], Path]] = {
    "loss": plot_loss, "linear_loss": plot_linear_loss, "weighting": plot_weighting, "schedule": plot_schedule,
    "train_step": plot_train_step,
}


def plot_all(folder: Path = RESULTS, out: Path | None = None) -> list[Path]:
    """Every plot whose canonical file has rows, into ``out`` (default ``folder/plots``)."""
    out = out or folder / "plots"
    out.mkdir(parents=True, exist_ok=True)
    return [PLOTS[name](rows, out) for name in PLOTS if (rows := read(name, folder))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command")
    a = sub.add_parser("append", help="append a benchmark script's JSON output to the benchmark's canonical file")
    a.add_argument("benchmark", choices=BENCHMARKS)
    a.add_argument("file", type=Path, help="the JSON file the benchmark script wrote")
    a.add_argument("--date", help="when the run was made (ISO 8601, UTC; default: now)")
    a.add_argument("--commit", help="the git commit the run was made at (default: git rev-parse HEAD)")
    a.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="how the run was invoked, e.g. --option allocator=thp (JSON values; repeatable)")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of the canonical files")
    p.add_argument("--out", type=Path, help="folder for the plots (default: RESULTS/plots)")
    args = p.parse_args(argv)
    if args.command == "append":
        run = json.loads(args.file.read_text(encoding="utf-8"))
        date = args.date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        commit = args.commit or _git("rev-parse", "HEAD")
        dirty = None if args.commit or commit is None else bool(_git("status", "--porcelain", "--untracked-files=no"))
        options = {}
        for item in args.option:
            key, sep, value = item.partition("=")
            if not sep:
                p.error(f"--option: expected KEY=VALUE, got {item!r}")
            try:
                options[key] = json.loads(value)
            except json.JSONDecodeError:
                options[key] = value
        lines = records(args.benchmark, run, date=date, commit=commit, dirty=dirty, options=options)
        path = append(args.benchmark, lines, args.results)
        print(f"appended {len(lines)} rows to {path}")
        return 0
    for path in plot_all(args.results, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

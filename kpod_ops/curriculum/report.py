"""Human-readable views of a schedule: a text summary and two PNG plots (matplotlib, Agg canvas)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._optional import require

if TYPE_CHECKING:
    from .schedule import ProgressiveSchedule


def summary_text(schedule: ProgressiveSchedule) -> str:
    """Header with the hyper-parameters, then one line per stage 0..T and the T+1 jump."""
    c = schedule.config
    guarantee = "none" if c["guarantee"] is None else f"{c['guarantee']:.3f}"
    lines = [
        f"KPOD progressive schedule: {c['n_questions']} questions, {int(schedule.n_steps.sum())} steps, "
        f"K={c['n_clusters']} clusters, epochs={c['n_epochs']}, T={c['n_stages']}",
        f"B={c['total']:.6g}  C0={c['c0']:.6g} ({c['c0_ratio']:.0%} of B)  p={c['p']}  beta={c['beta']}  "
        f"delta_s={c['delta_s']}  init={c['init']}  progressive={c['progressive']}",
        f"solver={c['solver']}" + (f" (epsilon={c['epsilon']})" if "epsilon" in c else "") + f", guarantee on F+dD: {guarantee}",
        "",
        f"{'stage':>5} {'D(t)':>12} {'realised':>12} {'D/B':>6} {'dD':>11} {'eligible':>9} {'selected':>9} "
        f"{'mean c':>7}  per cluster",
    ]
    total = c["total"] or 1.0
    for r in schedule.records:
        mean_c = float(schedule.stage_given_steps(r.stage).mean()) if c["n_questions"] else 0.0
        note = f"  ({r.rounds} rounds)" if r.stage == 0 and c["init"] == "rounds" and c["progressive"] else ""
        lines.append(f"{r.stage:>5} {r.target:>12.6g} {r.realised:>12.6g} {r.realised / total:>6.3f} {r.headroom:>11.4g} "
                     f"{r.eligible:>9} {r.selected:>9} {mean_c:>7.3f}  {list(r.per_cluster)}{note}")
    questions, steps = schedule.jump()
    lines.append(f"stage {c['n_stages'] + 1}..{c['n_epochs']}: c = 0 for every question"
                 + (f" (jump: {questions} questions, {steps} steps were still given at T)" if questions else ""))
    lines.append("eligible: questions still given a step before the stage; selected: moves of Δs steps made in it "
                 "(stage 0 runs its rounds over the same questions, so it can move a question more than once)")
    return "\n".join(lines)


def _figure(width: float = 6.4, height: float = 4.0):
    require("matplotlib", extra="plots", feature="schedule plots")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def plot_budget(schedule: ProgressiveSchedule, path: str | Path) -> Path:
    """D(t) (the target curve) against the realised Σ_i h_i(c(t)), stages 0..T, as a PNG."""
    fig = _figure()
    ax = fig.add_subplot()
    t_fine = np.linspace(0, schedule.n_stages, 200)
    ax.plot(t_fine, schedule.budget(t_fine), label="target D(t)")
    records = schedule.records
    ax.plot([r.stage for r in records], [r.realised for r in records], "o", label="realised Σ h_i(c_i(t))")
    ax.axhline(schedule.config["total"], color="grey", linestyle=":", label="B")
    ax.set_xlabel("stage t (= epoch)")
    ax.set_ylabel("total output difficulty")
    ax.set_title("KPOD difficulty budget")
    ax.legend()
    return _save(fig, path)


def plot_given_steps(schedule: ProgressiveSchedule, path: str | Path, stages: list[int] | None = None) -> Path:
    """Histogram of c_i (given steps) at a few stages (default 0, T/2 and T), as a PNG."""
    T = schedule.n_stages
    stages = sorted({0, T // 2, T}) if stages is None else list(stages)
    values = [schedule.stage_given_steps(t) for t in stages]
    top = max((int(v.max()) for v in values if v.size), default=0)
    edges = np.arange(top + 2) - 0.5
    fig = _figure()
    ax = fig.add_subplot()
    ax.hist(values, bins=edges, label=[f"stage {t}" for t in stages])
    ax.set_xlabel("given steps c_i")
    ax.set_ylabel("questions")
    ax.set_title("Given steps per question")
    ax.legend()
    return _save(fig, path)

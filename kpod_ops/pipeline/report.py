"""The run's report: ``report.json`` (numbers), ``report.md`` (for people) and PNG plots."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._optional import require
from .store import write_json


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, OS, torch threads, the fused CPU kernels' variant (None without them), the GPU if any."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    memory = None
    try:
        with open("/proc/meminfo") as f:
            memory = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    from .._extension import cpu_capability

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory, "os": f"{platform.system()} {platform.release()}",
            "torch_threads": torch.get_num_threads(), "cpu_kernels": cpu_capability(), "gpu": gpu}


def versions() -> dict[str, str]:
    import numpy
    import torch

    from .. import __version__

    out = {"kpod_ops": __version__, "python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:  # the pipeline needs it, but a report must still be writable without
        pass
    return out


def _figure():
    require("matplotlib", extra="plots", feature="the kpod report's figures")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def plot_loss(history: Sequence[dict], path: Path) -> Path:
    """Training loss per optimiser step (and the epochs)."""
    fig, ax = _figure()
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], lw=1)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss (sum / normaliser)")
    ax.set_title("distillation loss")
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_accuracy(rows: Sequence[tuple[str, float]], path: Path, title: str = "held-out accuracy") -> Path:
    """A bar per (label, accuracy)."""
    fig, ax = _figure()
    labels = [r[0] for r in rows]
    values = [100 * r[1] for r in rows]
    ax.bar(range(len(rows)), values, color="#4c72b0")
    ax.set_xticks(range(len(rows)), labels, rotation=20, ha="right")
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    return path


def share_text(share: float | None) -> str:
    """A kept keypoint share as a percentage, or why there is none."""
    return "none (no weight > 0.5)" if share is None else f"{100 * share:.0f} %"


def kept_share_text(rank: dict) -> str:
    """What the weights keep, in words: how many numbers/operators and words, their share among the kept, the base rate."""
    base = f"{100 * rank['keypoint_share']:.0f} % if tokens were kept at random"
    if rank["kept_keypoint_share"] is None:
        return f"the weights keep (w > 0.5) no number, operator or word token; {base}"

    def of(kept: int, total: int | None) -> str:
        return f"{kept:,} of {total:,}" if total is not None else f"{kept:,}"

    return (f"the weights keep (w > 0.5) {of(rank.get('n_kept_keypoint', 0), rank.get('n_keypoint'))} number/operator "
            f"tokens and {of(rank.get('n_kept_word', 0), rank.get('n_word'))} word tokens: "
            f"{100 * rank['kept_keypoint_share']:.0f} % of what they keep are numbers and operators, against {base}")


# a kept keypoint share below this: the weights keep mostly words (learners that found the numbers and operators of
# the built-in arithmetic data keep 0.7 or more of them; docs/results.md, "Choosing among restarts")
KEYPOINTS_FOUND = 0.7


def keypoint_warning(rank: dict | None) -> str | None:
    """Why the weights do not favour the keypoints, where their kept keypoint share says so; else None."""
    if not rank or "kept_keypoint_share" not in rank:
        return None
    share = rank["kept_keypoint_share"]
    if share is not None and share >= KEYPOINTS_FOUND:
        return None
    what = "keep no number, operator or word token" if share is None else (
        f"keep {100 * share:.0f} % numbers and operators among their number/operator and word tokens")
    return (f"the weights {what}, below the {100 * KEYPOINTS_FOUND:.0f} % that learners which found the keypoints kept "
            f"on the built-in arithmetic data ({100 * rank['keypoint_share']:.0f} % if kept at random): they may have missed the keypoints. "
            "Which tokens a learner keeps depends on its seed; another --seed, or weights.learner settings, "
            "trains another (see the mask learner's docs)")


def _fmt_seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def markdown(report: dict[str, Any], plots: Sequence[str]) -> str:
    """``report.md``: the result, the stages and their timings, the configuration, the machine."""
    r = report
    lines = [
        f"# kpod distill — preset `{r['preset']}`, method `{r['method']}`, seed {r['seed']}",
        "",
        f"- held-out accuracy after distillation: **{100 * r['test_accuracy']:.1f} %** ({r['n_correct']}/{r['n_test']})",
    ]
    if r.get("val_accuracy") is not None:
        lines.append(f"- validation accuracy (for choosing hyper-parameters): {100 * r['val_accuracy']:.1f} % of {r['n_val']}")
    if r.get("accuracy_before") is not None:
        lines.append(f"- the same student before distillation: {100 * r['accuracy_before']:.1f} %")
    if r.get("weights"):
        w = r["weights"]
        verdict = f"**degenerate** ({w['degenerate']}), allowed by --allow-degenerate" if w.get("degenerate") else "informative"
        lines.append(f"- token weights: {verdict}; in the loss: {w['in_loss']}")
        rank = w.get("keypoint_ranking")
        if rank:
            if "kept_keypoint_share" in rank:  # reports written before it lack it
                lines.append(f"- keypoints: {kept_share_text(rank)}")
            if warning := keypoint_warning(rank):
                lines.append(f"- keypoints, **warning**: {warning}")
            lines.append(f"- keypoints (numbers and operators vs words): ROC-AUC {rank['auc']:.2f}, mean weight "
                         f"{rank['mean_keypoint']:.2f} vs {rank['mean_word']:.2f} (the AUC also orders the weights near 0, "
                         "which the loss hardly tells apart: where few tokens are kept, read the line above)")
        if w.get("restarts"):
            tried = "; ".join(f"seed {x['seed']}: objective {x['val_objective']:.4f}"
                              + (f", kept keypoint share {share_text(x['kept_keypoint_share'])}" if "kept_keypoint_share" in x else "")
                              + (f", ROC-AUC {x['keypoint_auc']:.2f}" if x.get("keypoint_auc") is not None else "")
                              + (" (degenerate)" if x.get("degenerate") else "") + (" **chosen**" if x.get("chosen") else "")
                              for x in w["restarts"])
            lines.append(f"- mask learner restarts (chosen: the lowest validation objective among non-degenerate ones): {tried}")
    data = r.get("data") or {}
    if data.get("read") and data["read"]["n_disagreements"]:
        read = data["read"]
        lines.append(f"- data: {read['n_disagreements']} of {read['n_read']} rationales end on another answer than their "
                     f"answer field ({read['n_filtered']} left out)")
    if data.get("vocabulary"):
        v = data["vocabulary"]
        lines.append(f"- data, **warning**: {v['warning']}" if v["warning"] else
                     f"- data: {100 * v['oov_word_share']:.1f} % of words and {100 * v['oov_token_share']:.1f} % of tokens "
                     "out of the built-in tokenizer's vocabulary")
    lines += ["", "| stage | seconds | reused |", "|---|---:|---|"]
    for name, t in r["timings"].items():
        lines.append(f"| {name} | {t['seconds']:.1f} | {'yes' if t['reused'] else 'no'} |")
    m = r["machine"]
    lines += ["", f"Total: {_fmt_seconds(r['total_seconds'])} on {m['cpu']} ({m['cores']} cores"
              + (f", {m['torch_threads']} torch thread{'s' if m['torch_threads'] != 1 else ''}" if m.get("torch_threads") else "")
              + (f", CPU kernels: {m['cpu_kernels']}" if m.get("cpu_kernels") else "")
              + (f", {m['gpu']}" if m.get("gpu") else "") + ")."]
    if r.get("versions"):
        lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + ".")
    lines.append("")
    lines += [f"![{Path(p).stem}]({p})" for p in plots]
    lines += ["", "Method settings: `" + ", ".join(f"{k}={v}" for k, v in r["method_settings"].items()) + "`", ""]
    return "\n".join(lines)


def write_report(folder: Path, report: dict[str, Any], plots: Sequence[str]) -> None:
    write_json(folder / "report.json", report)
    (folder / "report.md").write_text(markdown(report, plots), encoding="utf-8")

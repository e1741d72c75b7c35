"""The ``kpod`` command: ``distill`` (the whole method end to end), ``eval`` and ``compare``; ``teach``,
``weights``, ``schedule`` and ``bench`` are registered from ``kpod_ops.commands`` (one module each).

Every error a user can cause (a missing or malformed data file, a folder that is not a model, an
output folder that cannot be written, an unknown preset or method, degenerate token weights)
prints one ``kpod: error: ...`` line and exits with status 2; nothing half-written is left behind
as a finished stage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import KPODInputError

if TYPE_CHECKING:
    from .pipeline.config import DistillConfig

_PRESET_HELP = (
    "quick: arith-cot with a tiny Llama-style student built in code, warmed up on arith-text (CPU, minutes); "
    "smoke: quick at a fifth of its size, every stage in about a minute (a check of the install or of a data file, "
    "not a result); smollm2-gsm: gsm-symbolic with SmolLM2-135M and LoRA (meant for a GPU)"
)
_METHOD_HELP = (
    "kpod: token weights + progressive curriculum; standard: plain CoT distillation; ablations: "
    "no-weights (uniform token weights in the loss), no-sig-dif (step difficulty without token weights), "
    "no-progressive (no curriculum), no-diversity (beta = 0); paper: kpod with the paper's own settings "
    "(weights.floor 0, curriculum.c0_ratio 0.3)"
)


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only for real defaults: options without one say in their help what happens."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    from .pipeline.config import METHODS, PRESETS

    fmt = _DefaultsFormatter
    parser = argparse.ArgumentParser(prog="kpod", description="Keypoint-based progressive chain-of-thought distillation.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{distill,eval,compare,teach,weights,schedule,bench}")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--preset", default="auto", help=_PRESET_HELP + "; auto: smollm2-gsm where a CUDA GPU is present, "
                       "quick otherwise")  # checked by preset_config: one clear message
        p.add_argument("--config", metavar="FILE", help="YAML or JSON file overriding preset values, e.g. {train: {epochs: 8}}, or {train: {fused_linear: false}} "
                       "to compute the loss from logits (train.fused_linear's default, auto, computes it from the hidden "
                       "states for Llama-style students); every key in docs/cli.md")
        p.add_argument("--student", metavar="DIR", help="a Hugging Face causal-LM folder to distil into instead of the preset's student")
        p.add_argument("--data", metavar="FILE.jsonl", help="your own JSONL (question, rationale, answer) instead of the preset's data; "
                       "test split fixed by a hash of each question")
        p.add_argument("--precision", choices=("fp32", "bf16"), help="training/evaluation precision (default: the preset's, fp32)")
        p.add_argument("--allow-degenerate", action="store_true", help="train with degenerate token weights instead of stopping (recorded in the report)")
        p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; 1 is much faster on a busy machine)")
        p.add_argument("--fsdp", action="store_true",
                       help="under torchrun: shard the student across the processes with FSDP2 (parameters, gradients and "
                            "optimiser state) instead of DDP, for students whose training does not fit one device")
        p.add_argument("--quiet", action="store_true", help="no progress bars (there are none when stderr is not a terminal)")
        p.add_argument("--filter-wrong-answers", action="store_true",
                       help="with --data: leave out the examples whose rationale reaches another answer than their answer field "
                            "(counted and reported either way)")
        p.add_argument("--strip-calculator", action="store_true",
                       help="with --data: remove GSM8K's <<48/2=24>> calculator annotations from the rationales "
                            "(the data stage counts the rationales that carry them)")

    d = sub.add_parser("distill", help="run every stage: data, warm-up, weights, curriculum, training, evaluation, report",
                       formatter_class=fmt, description="Distil a student with KPOD (or an ablation) and evaluate it on the held-out test split. "
                       "Under `torchrun --nproc_per_node=N -m kpod_ops.cli distill ...` training is data-parallel "
                       "(train.batch_size stays the global batch); the other stages run once, on rank 0.")
    common(d)
    d.add_argument("--out", required=True, metavar="DIR", help="run folder (re-running reuses finished stages whose configuration is unchanged)")
    d.add_argument("--method", default="kpod", help=_METHOD_HELP + f"; one of {', '.join(METHODS)}")
    d.add_argument("--seed", type=int, default=0, help="initialisation and data order (never the test split)")

    e = sub.add_parser("eval", help="evaluate a finished run's student on a JSONL file", formatter_class=fmt,
                       description="Greedy generation from the training prompts, answer extraction and accuracy, as in distill.")
    e.add_argument("--run", required=True, metavar="DIR", help="a finished `kpod distill` run folder")
    e.add_argument("--data", required=True, metavar="FILE.jsonl", help="examples to evaluate (the project's JSONL format)")
    e.add_argument("--out", metavar="FILE.json", help="also write the metrics here (generations go next to it)")
    e.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    e.add_argument("--quiet", action="store_true", help="no progress bars")

    c = sub.add_parser("compare", help="several methods over paired seeds: mean ± std and the paired difference to standard",
                       formatter_class=fmt,
                       description="Run `kpod distill` for every method on every seed (same data and steps per seed) and "
                       "compare each method with standard over the paired seeds: mean difference, paired t 95 % interval, "
                       "exact sign-flip p-value, paired SD and the smallest difference detectable at 80 % power, written "
                       "to compare.json and compare.md in --out.")
    common(c)
    c.add_argument("--methods", default="kpod,standard", help=f"comma-separated, from {', '.join(METHODS)}")
    c.add_argument("--seeds", default="3", help="paired seeds: a count N (0..N-1), a range such as 100-111, or a list such as 100,105,107")
    c.add_argument("--jobs", type=int, default=1, help="seeds run side by side, each in its own process with --threads "
                   "threads (default 1 there); results do not depend on it. Finished runs in --out are reused")
    c.add_argument("--out", required=True, metavar="DIR", help="compare folder (one run folder per seed and method)")
    from .commands import NAMES, command

    for name in NAMES:  # kpod teach / weights / schedule / bench
        command(name).add_parser(sub, fmt)
    parser.epilog = (f"presets: {', '.join(PRESETS)}, and auto (the default: smollm2-gsm where a CUDA GPU is present, "
                     "quick otherwise). Run `kpod distill --help` for the options.")
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def default_preset() -> str:
    """The built-in default: ``smollm2-gsm`` where a CUDA GPU is present (said on stdout), ``quick`` otherwise."""
    import torch

    if not torch.cuda.is_available():
        return "quick"
    print("kpod: --preset auto: smollm2-gsm (a CUDA GPU is present; --preset quick for the CPU preset)")
    return "smollm2-gsm"


def _config(args: argparse.Namespace) -> DistillConfig:
    """The run's configuration: the preset, then the ``--config`` file, then the flags (each checked)."""
    from .pipeline.config import load_config_file, merge, method_settings, preset_config

    config = preset_config(default_preset() if args.preset == "auto" else args.preset)
    if args.config:
        config = merge(config, load_config_file(args.config), where=f"--config {args.config}")
    flags: dict[str, Any] = {}
    if getattr(args, "method", None) is not None:
        method_settings(args.method)
        flags["method"] = args.method
    if getattr(args, "seed", None) is not None:
        flags["seed"] = args.seed
    if args.data:
        if not Path(args.data).is_file():
            raise KPODInputError(f"--data: expected an existing JSONL file, got {args.data}")
        # the arith-cot variant settings belong to the preset's built-in data, not to the user's file
        flags["data"] = {"source": str(Path(args.data).resolve()), "max_steps": None, "max_distractors": None}
    if args.student:
        flags["student"] = {"kind": "dir", "path": str(Path(args.student).resolve())}
        flags["warmup"] = {"enabled": False}
    if args.precision:
        flags["precision"] = args.precision
    if args.allow_degenerate:
        flags["allow_degenerate"] = True
    if args.filter_wrong_answers:
        flags.setdefault("data", {})["filter_wrong_answers"] = True
    if args.strip_calculator:
        flags.setdefault("data", {})["strip_calculator"] = True
    return merge(config, flags, where="the command line")


def _check_dependencies() -> None:
    from ._optional import require

    for module in ("transformers", "tokenizers", "tqdm", "sklearn", "matplotlib", "safetensors", "yaml"):
        require(module, extra="all", feature="the kpod command")


def _eval(args: argparse.Namespace) -> int:
    from .data.jsonl import read_jsonl
    from .pipeline.evaluate import evaluate
    from .pipeline.store import read_json, write_json
    from .pipeline.student import load_student_dir

    run = Path(args.run)
    if not (run / "report.json").is_file():
        raise KPODInputError(f"--run: expected a finished `kpod distill` folder with report.json, got {run}")
    if not Path(args.data).is_file():
        raise KPODInputError(f"--data: expected an existing JSONL file, got {args.data}")
    examples = list(read_jsonl(args.data))
    config = read_json(run / "report.json")["config"]
    model, tok = load_student_dir(run / "student", argument="--run student")
    import torch

    model.to("cuda" if torch.cuda.is_available() else "cpu")
    result = evaluate(model, tok, examples, max_new_tokens=config["eval"]["max_new_tokens"], batch_size=config["eval"]["batch_size"],
                      progress=not args.quiet, step_rule=config["data"]["step_rule"])
    metrics = result.metrics()
    print(json.dumps(metrics))
    if args.out:
        out = Path(args.out)
        write_json(out, metrics)
        with open(out.with_suffix(".generations.jsonl"), "w", encoding="utf-8") as f:
            for g in result.generations:
                f.write(json.dumps(g, ensure_ascii=False) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        _check_dependencies()
        if getattr(args, "threads", None) is not None:
            if args.threads < 1:
                raise KPODInputError(f"--threads: expected an int >= 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        from .progress import bars_wanted, silence_library_bars

        if not bars_wanted(getattr(args, "quiet", False)):  # to a log file: no bar frames, transformers' included
            silence_library_bars()
        if args.command == "eval":
            return _eval(args)
        from .commands import NAMES, command

        if args.command in NAMES:
            return command(args.command).run(args)
        from .pipeline import compare, distill
        from .pipeline.distributed import is_main, process_group

        config = _config(args)
        progress = not args.quiet
        with process_group(fsdp=args.fsdp):  # under torchrun: data-parallel training, every other stage on rank 0
            if args.command == "distill":
                report = distill(config, args.out, progress=progress)
                if is_main():
                    _summary(report)
            else:
                methods = [m.strip() for m in args.methods.split(",") if m.strip()]
                compare(config, methods, args.seeds, args.out, jobs=args.jobs, threads=args.threads, progress=progress)
        return 0
    except KPODInputError as exc:
        print(f"kpod: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        print(f"kpod: error: {exc}", file=sys.stderr)
        return 2


def _summary(report: dict) -> None:
    """The table printed at the end of ``kpod distill``."""
    rows = [("method", report["method"]), ("seed", str(report["seed"])),
            ("test accuracy", f"{100 * report['test_accuracy']:.1f} % ({report['n_correct']}/{report['n_test']})"),
            ("before distillation", f"{100 * report['accuracy_before']:.1f} %"),
            ("optimiser steps", str(report["optimizer_steps"])), ("total time", f"{report['total_seconds']:.0f} s")]
    rows += [(f"  {name}", f"{t['seconds']:.1f} s" + (" (reused)" if t["reused"] else "")) for name, t in report["timings"].items()]
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))


if __name__ == "__main__":
    sys.exit(main())

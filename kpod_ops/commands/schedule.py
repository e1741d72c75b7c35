"""``kpod schedule``: build a progressive schedule, print its per-stage table and plot D(t) vs realised.

The step difficulties and question clusters come either from a ``kpod distill`` run folder (its
``difficulty-<normalisation>/`` and ``clusters/`` stages; the run's curriculum settings are the
defaults) or are computed here from a JSONL file with a causal LM (``--data`` with ``--model``): the
per-step difficulty of Eq. 8 under that model (uniform token weights, or the weights of
``--weights``) and k-means clusters of its question embeddings. Any setting can be changed on the
command line, so one run's difficulties can be re-planned with another beta, p, C0 or solver.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import KPODInputError

# the quick preset's curriculum, used with --data (a run folder brings its own)
DATA_DEFAULTS = {"epochs": 6, "beta": 12.0, "p": 0.5, "c0_ratio": 0.3, "solver": "ftgp", "n_clusters": 5}


def _stage_file(run: Path, pattern: str, name: str) -> Path:
    for folder in (run, run.parent / "shared"):
        found = sorted(folder.glob(pattern))
        if len(found) > 1:
            names = ", ".join(f.parent.name for f in found)
            raise KPODInputError(f"--normalisation: expected one to choose between {names} in {folder}, got none")
        if found:
            return found[0]
    raise KPODInputError(f"--run: expected a run folder with {pattern.split('/')[0]} (a method with a curriculum), got {run} "
                         f"without {name}")


def from_run(run: Path, normalisation: str | None) -> tuple[dict, dict, dict[str, Any]]:
    """(difficulties, clusters, the run's curriculum settings) of a run folder."""
    from ..pipeline.store import read_json

    if not run.is_dir():
        raise KPODInputError(f"--run: expected a kpod distill run folder, got {run} (not a directory)")
    settings: dict[str, Any] = {}
    report = run / "report.json"
    if not report.is_file() and run.name == "shared":  # a compare seed's shared folder: a method run beside it
        report = next((r for r in sorted(run.parent.glob("*/report.json")) if r.parent.name != "shared"), report)
    if report.is_file():
        data = read_json(report)
        config = data["config"]
        method = (data.get("method_settings") or {}) if report.parent == run else {}  # not a sibling method's ablation
        cur = config["curriculum"]
        # the method's own beta and normalisation (e.g. no-diversity: beta 0; no-sig-dif: uniform) over the config's
        beta = cur["beta"] if method.get("beta") is None else method["beta"]
        settings = {"epochs": config["train"]["epochs"], "beta": beta, "p": cur["p"], "c0_ratio": cur["c0_ratio"],
                    "solver": cur["solver"]}
        normalisation = normalisation or method.get("normalisation") or cur["normalisation"]
    pattern = f"difficulty-{normalisation}/difficulties.json" if normalisation else "difficulty-*/difficulties.json"
    difficulties = read_json(_stage_file(run, pattern, "step difficulties"))
    clusters = read_json(_stage_file(run, "clusters/clusters.json", "clusters"))
    return difficulties, clusters, settings


def from_data(path: str, model_spec: str, weights_file: str | None, n_clusters: int, seed: int, progress: bool) -> tuple[dict, dict]:
    """(difficulties, clusters) of a JSONL file's examples under the causal LM ``model_spec``."""
    from ..data.jsonl import read_jsonl
    from ..data.tokenize import tokenize_examples
    from ..pipeline.curriculum import cluster, score_difficulties
    from .models import device, load_causal_lm

    if not Path(path).is_file():
        raise KPODInputError(f"--data: expected an existing JSONL file, got {path}")
    examples = list(read_jsonl(path))
    model, tok = load_causal_lm(model_spec)
    model.to(device())
    tokenized = tokenize_examples(examples, tok)
    weights = None
    if weights_file is not None:
        from ..weighting import load_token_weights

        if not Path(weights_file).is_file():
            raise KPODInputError(f"--weights: expected an existing token-weight file (.npz), got {weights_file}")
        weights = load_token_weights(weights_file, tokenized, tokenizer=tok)
    if n_clusters > len(tokenized):
        raise KPODInputError(f"--n-clusters: expected at most the number of questions ({len(tokenized)}), got {n_clusters}")
    difficulties = score_difficulties(model, tokenized, weights, normalisation="uniform" if weights is None else "softmax",
                                      progress=progress)
    return difficulties, cluster(model, tokenized, n_clusters=n_clusters, seed=seed)


def add_parser(sub: argparse._SubParsersAction, formatter_class: type) -> argparse.ArgumentParser:
    p = sub.add_parser("schedule", help="build a progressive schedule, print its table and plot D(t) vs realised",
                       formatter_class=formatter_class, description=__doc__.split("\n\n")[1].replace("\n", " ").replace("``", ""))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", metavar="DIR", help="a kpod distill run folder with difficulty-*/ and clusters/ "
                     "(or a kpod compare seed's method folder, whose shared/ holds them)")
    src.add_argument("--data", metavar="FILE.jsonl", help="examples in the project's JSONL format (needs --model)")
    p.add_argument("--model", metavar="DIR|smollm2", help="with --data: the causal LM that scores the steps and embeds the questions")
    p.add_argument("--weights", metavar="FILE.npz", help="with --data: token weights for the difficulty (softmax normalisation); "
                   "default: uniform weights")
    p.add_argument("--normalisation", help="with --run: which difficulty-<normalisation>/ to use (default: the run's)")
    p.add_argument("--epochs", type=int, help="training epochs N_e; T = N_e // 2 stages (default: the run's, 6 with --data)")
    p.add_argument("--beta", type=float, help="diversity weight beta (default: the run's, 12 with --data)")
    p.add_argument("--p", type=float, help="budget shape exponent p (default: the run's, 0.5 with --data)")
    p.add_argument("--c0-ratio", type=float, help="C0 as a share of B (default: the run's, 0.3 with --data)")
    p.add_argument("--solver", help="stage solver, e.g. ftgp, greedy_max (default: the run's, ftgp with --data)")
    p.add_argument("--n-clusters", type=int, help="with --data: k-means clusters K (default: 5)")
    p.add_argument("--no-progressive", action="store_true", help="the no-progressive ablation: c = 0 at every epoch")
    p.add_argument("--seed", type=int, default=0, help="with --data: the k-means seed")
    p.add_argument("--png", metavar="FILE.png", help="plot D(t) (target) against the realised difficulty, stage by stage")
    p.add_argument("--json", metavar="FILE.json", help="write the schedule (state, as JSON) here")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _writable(option: str, value: str | None, suffix: str) -> None:
    if value is None:
        return
    path = Path(value)
    if path.suffix != suffix or path.is_dir() or not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise KPODInputError(f"{option}: expected a {suffix} file in an existing writable folder, got {value}")


def run(args: argparse.Namespace) -> int:
    from ..curriculum import SOLVERS
    from ..pipeline.curriculum import build_schedule, schedule_to_json
    from ..pipeline.store import write_json

    _writable("--png", args.png, ".png")
    _writable("--json", args.json, ".json")
    if args.solver is not None and args.solver not in SOLVERS:
        raise KPODInputError(f"--solver: expected one of {', '.join(SOLVERS)}, got {args.solver!r}")
    if args.run is not None:
        for option in ("model", "weights", "n_clusters"):
            if getattr(args, option) is not None:
                raise KPODInputError(f"--{option.replace('_', '-')}: expected only with --data, got it with --run")
        difficulties, clusters, settings = from_run(Path(args.run), args.normalisation)
        note = "" if settings else (f"kpod schedule: no report.json in {args.run}: the curriculum settings not given "
                                    f"are the quick preset's {DATA_DEFAULTS}")
        settings = {**DATA_DEFAULTS, **settings}
    else:
        if args.model is None:
            raise KPODInputError("--model: expected a causal LM (a folder or 'smollm2') to score --data, got none")
        if args.normalisation is not None:
            raise KPODInputError("--normalisation: expected only with --run (with --data it follows --weights), got it with --data")
        n_clusters = DATA_DEFAULTS["n_clusters"] if args.n_clusters is None else args.n_clusters
        if n_clusters < 1:
            raise KPODInputError(f"--n-clusters: expected an int >= 1, got {n_clusters}")
        difficulties, clusters = from_data(args.data, args.model, args.weights, n_clusters, args.seed, not args.quiet)
        settings, note = dict(DATA_DEFAULTS), ""
    for key in ("epochs", "beta", "p", "c0_ratio", "solver"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    schedule = build_schedule(difficulties, clusters, n_epochs=settings["epochs"], beta=settings["beta"], p=settings["p"],
                              c0_ratio=settings["c0_ratio"], solver=settings["solver"], progressive=not args.no_progressive)
    if note:  # once the schedule stands (an error stays the only line)
        print(note, file=sys.stderr)
    print(schedule.summary())
    if args.png is not None:
        from ..curriculum.report import plot_budget

        plot_budget(schedule, args.png)
        print(f"wrote {args.png}", file=sys.stderr)
    if args.json is not None:
        write_json(args.json, schedule_to_json(schedule))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0

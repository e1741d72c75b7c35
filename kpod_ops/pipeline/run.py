"""``distill``: every stage in order, each reused only when its configuration hash matches.

Layout of a run folder ``DIR`` (``shared`` defaults to ``DIR``; ``kpod compare`` points it at a
folder shared by the methods of one seed)::

    DIR/data/{train,val,test}.jsonl     the splits (test fixed by the preset or the data file)
    shared/warmup/model/                the warmed-up student (Hugging Face format)
    shared/weights/                     token weights (.npz), their statistics, pictures; the other restarts' weights in restarts/
    shared/difficulty-<norm>/           per-step difficulties (JSON)
    shared/clusters/                    question clusters (JSON)
    shared/eval-before/                 the warmed-up student's test accuracy and generations
    DIR/schedule/                       the schedule (JSON), its summary and plots
    DIR/train/checkpoint/               the last checkpoint (safetensors + JSON)
    DIR/student/                        the distilled student (safetensors) and its tokenizer
    DIR/eval/                           test accuracy and every generation
    DIR/report.json, DIR/report.md, DIR/plots/*.png
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..curriculum import ProgressiveSchedule
from ..data.tokenize import tokenize_examples
from ..errors import KPODInputError
from ..models import tiny_tokenizer
from ..weighting import keypoint_ranking, load_token_weights, save_token_weights, weight_stats
from . import distributed
from .config import DistillConfig, method_settings, resolve_method, stage_hash
from .curriculum import build_schedule, cluster, schedule_from_json, schedule_to_json, score_difficulties
from .data import Splits, describe_data, make_splits, read_splits, write_splits
from .evaluate import EvalResult, evaluate
from .report import kept_share_text, keypoint_warning, machine, plot_accuracy, plot_loss, share_text, versions, write_report
from .store import Stage, read_json, write_json
from .student import add_lora, load_student_dir, new_student, plain_model, save_student
from .train import TrainSettings, train
from .warmup import warm_up
from .weights import learn_weights, learner_config, weights_for_loss

Say = Callable[[str], None]


def _device() -> torch.device:
    """The GPU when there is one (this process's, under torchrun), else the CPU."""
    return distributed.device()


def check_writable(folder: Path) -> None:
    """``folder`` exists (created if needed) and accepts files; a clear error otherwise."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".kpod-write-test-"):  # unique: runs may share a folder
            pass
    except OSError as exc:
        raise KPODInputError(f"--out: expected a writable directory, got {folder} ({exc.strerror or exc})") from None


def _write_generations(path: Path, result: EvalResult) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for g in result.generations:
            f.write(json.dumps(g, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _cached(stage: Stage, compute: Callable[[Path], dict[str, Any]], timings: dict[str, dict]) -> dict[str, Any]:
    """The stage's record: reused when it finished with the same hash, else ``compute(folder)`` writes its artefacts
    and returns what the record adds. Either way its seconds and reuse go to ``timings``."""
    rec = stage.finished()
    if rec is None:
        rec = stage.finish(**compute(stage.start()))
    timings[stage.name] = {"seconds": rec["seconds"], "reused": rec["reused"]}
    return rec


def _eval_stage(stage: Stage, model, tok, examples, config: DistillConfig, progress: bool, say: Say,
                timings: dict[str, dict]) -> dict[str, Any]:
    """Greedy generation on ``examples``: accuracy and every generation."""

    def compute(folder: Path) -> dict[str, Any]:
        result = evaluate(model, tok, examples, max_new_tokens=config.eval.max_new_tokens, batch_size=config.eval.batch_size,
                          progress=progress, step_rule=config.data.step_rule)
        _write_generations(folder / "generations.jsonl", result)
        write_json(folder / "metrics.json", result.metrics())
        say(f"[{stage.name}] accuracy {result.accuracy:.1%} ({result.n_correct}/{result.n})")
        return result.metrics()

    return _cached(stage, compute, timings)


def _data_stage(config: DistillConfig, splits: Splits, out: Path, hashes: dict[str, str], say: Say,
                timings: dict[str, dict]) -> Splits:
    """The splits, written to ``out/data`` (or read back from a finished stage)."""

    def compute(folder: Path) -> dict[str, Any]:
        write_splits(splits, folder)
        return {**splits.counts(), "read": splits.read}

    stage = Stage(out, "data", hashes["data"], say)
    rec = _cached(stage, compute, timings)
    if rec["reused"]:
        splits = read_splits(stage.dir)
        splits.read = rec.get("read")
    say(f"[data] {config.data.source}: {len(splits.train)} train, {len(splits.val)} val, {len(splits.test)} test")
    return splits


def _student_and_warmup(config: DistillConfig, shared: Path, hashes: dict[str, str], progress: bool, say: Say,
                        timings: dict[str, dict]):
    """The pre-trained student (warmed up here for the tiny one) and its tokenizer, as saved in the stage."""
    stage = Stage(shared, "warmup", hashes["warmup"], say)
    model_dir = stage.dir / "model"

    def compute(folder: Path) -> dict[str, Any]:
        model, tok = new_student(config.student.to_dict(), config.seed)
        model.to(_device())
        losses = _warm_up(model, tok, config, progress, say) if config.warmup.enabled else []
        save_student(model, tok, model_dir)
        write_json(folder / "losses.json", losses)
        return {"final_loss": losses[-1] if losses else None, "enabled": config.warmup.enabled}

    _cached(stage, compute, timings)
    return load_student_dir(model_dir, argument="warm-up student")  # what later stages and runs reload


def shared_fingerprints(shared: str | os.PathLike) -> dict[str, str | None]:
    """SHA-256 (16 hex digits) of the warmed-up student's weights and of the token weights in a run's
    shared folder (None where a stage left no file). Runs of one seed are paired only if these agree:
    ``kpod compare`` checks them, since a stage re-run on another machine (or after its files were
    left out of a copy) gives other weights under the same configuration hash."""
    import hashlib

    def digest(files: list[Path]) -> str | None:
        if not files:
            return None
        h = hashlib.sha256()
        for f in files:
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()[:16]

    root = Path(shared)
    return {"warmup": digest(sorted((root / "warmup" / "model").glob("*.safetensors"))),
            "weights": digest(sorted((root / "weights").glob("*.npz")))}


def _warm_up(model, tok, config: DistillConfig, progress: bool, say: Say) -> list[float]:
    """Language-model pre-training of ``model`` on the ``arith-text`` corpus; the loss per step."""
    from ..data.builtin import load_builtin

    w = config.warmup
    texts = load_builtin(w.corpus, n=w.n_texts, seed=config.seed)
    say(f"[warmup] language-model pre-training on {len(texts)} {w.corpus} texts")
    return warm_up(model, tok, texts, epochs=w.epochs, batch_size=w.batch_size, lr=w.lr, max_length=w.max_length,
                   seed=config.seed, precision=config.precision, progress=progress)


@dataclass
class _Prepared:
    """What the stages before training hand to training and to the report."""

    splits: Any
    student: torch.nn.Module
    tok: Any
    tokenized: list
    skipped: int
    before: dict
    weights_info: dict[str, Any] | None
    loss_weights: dict[str, np.ndarray] | None
    schedule: Any
    hashes: dict[str, str]  # stage_hashes
    timings: dict[str, dict] = field(default_factory=dict)
    data_info: dict[str, Any] | None = None  # describe_data: disagreeing answers, out-of-vocabulary words
    fingerprints: dict[str, str | None] = field(default_factory=dict)  # shared_fingerprints of the files used


def _silent(message: str) -> None:
    """``say`` of the ranks other than 0 (rank 0 speaks for the run)."""


def _check_processes(config: DistillConfig) -> None:
    """Under torchrun the global batch must split evenly across processes and micro-batches (checked before any stage runs)."""
    world, t = distributed.world_size(), config.train
    if world > 1 and t.batch_size % (world * t.micro_batch_size):
        raise KPODInputError(
            f"train.batch_size: expected a multiple of train.micro_batch_size × processes = {t.micro_batch_size} × {world} "
            f"(the global batch is split evenly across processes and micro-batches), got {t.batch_size}"
        )


def distill(config: DistillConfig, out: str | os.PathLike, *, shared: str | os.PathLike | None = None,
            progress: bool = True, say: Say = print) -> dict[str, Any]:
    """Run every stage of KPOD (or of the chosen ablation) into ``out``; returns ``report.json``'s content.

    Under an initialised process group (``torchrun --nproc_per_node=N kpod distill ...``) training is
    data-parallel; every other stage (data, warm-up, token weights, difficulties, schedule, evaluation,
    report) runs on rank 0 while the other ranks wait, and they then read rank 0's artefacts. Only
    rank 0 writes files or prints.
    """
    t_start = time.perf_counter()
    config = resolve_method(config)
    _check_processes(config)
    method = method_settings(config.method)
    splits = make_splits(config.data.to_dict())  # reads --data first: bad data fails before anything is written
    if config.student.kind == "dir":
        load_student_dir(config.student.path, argument="--student")
    out = Path(out)
    shared = Path(shared) if shared is not None else out
    if not distributed.is_main():
        progress, say = False, _silent
    else:
        check_writable(out)
        check_writable(shared)
    torch.manual_seed(config.seed)
    with distributed.main_first():  # rank 0 computes and writes every stage; the others then reuse them
        prep = _prepare(config, method, splits, out, shared, progress, say)
    history, train_hash = _train_stage(config, method, prep, out, progress, say)
    with distributed.main_first():  # evaluation and report on rank 0; the others read its report
        if not distributed.is_main():
            return read_json(out / "report.json")
        return _evaluate_and_report(config, method, prep, history, train_hash, out, t_start, progress, say)


def stage_hashes(config: DistillConfig, method: dict[str, Any]) -> dict[str, str]:
    """The configuration hash of every stage ``distill`` runs, by folder name, each chained to the stages it builds on.

    ``weights`` is "" when ``method`` needs no token weights; the curriculum stages are absent when it has no curriculum.
    """
    normalisation, beta = _curriculum_settings(config, method)
    h = {"data": stage_hash(config, "data"), "warmup": stage_hash(config, "warmup")}
    up = (h["data"], h["warmup"])
    h["eval-before"] = stage_hash(config, "eval", up)
    h["weights"] = stage_hash(config, "weights", up) if _needs_weights(method, normalisation) else ""
    if method["curriculum"]:
        difficulty = h[f"difficulty-{normalisation}"] = stage_hash(config, "difficulty", (*up, h["weights"]))
        h["clusters"] = stage_hash(config, "clusters", up)
        h["schedule"] = stage_hash(config, "schedule", (difficulty, h["clusters"], str(beta), str(method["progressive"])))
    h["train"] = stage_hash(config, "train", (*up, h["weights"] if method["loss_weights"] else "", h.get("schedule", ""),
                                              json.dumps(method, sort_keys=True)))
    h["eval"] = stage_hash(config, "eval", (h["train"],))
    h["eval-val"] = stage_hash(config, "eval", (h["train"], "val"))
    return h


def _curriculum_settings(config: DistillConfig, method: dict[str, Any]) -> tuple[str, float]:
    """The difficulty normalisation and β the run uses: the method's where it fixes them, else the curriculum's."""
    cur = config.curriculum
    return method["normalisation"] or cur.normalisation, cur.beta if method["beta"] is None else method["beta"]


def _needs_weights(method: dict[str, Any], normalisation: str) -> bool:
    """Token weights are learned for the loss, or for the difficulty unless it weighs the tokens uniformly."""
    return method["loss_weights"] or (method["curriculum"] and normalisation != "uniform")


def _prepare(config: DistillConfig, method: dict[str, Any], splits: Splits, out: Path, shared: Path, progress: bool,
             say: Say) -> _Prepared:
    """Data, student (+ warm-up), accuracy before distillation, token weights and schedule."""
    hashes, timings = stage_hashes(config, method), {}
    splits = _data_stage(config, splits, out, hashes, say, timings)
    if config.preset == "smollm2-gsm" and _device().type == "cpu":
        say("[smollm2-gsm] no GPU: this preset runs on CPU too, but expect several hours on a few cores "
            "(mask learner, LoRA training and 1,000 greedy generations of SmolLM2-135M); the quick preset takes minutes")
    # what the data looks like is said before the warm-up's minutes: the only tokenizer it needs is the tiny student's,
    # which is built in (no other student is checked against a vocabulary)
    data_info = describe_data(splits, tiny_tokenizer() if config.student.kind == "tiny" else None, config.to_dict(), say)
    student, tok = _student_and_warmup(config, shared, hashes, progress, say, timings)
    student.to(_device())
    tokenized, val_tok = _tokenize(config, splits, tok, say)
    before = _eval_stage(Stage(shared, "eval-before", hashes["eval-before"], say), student, tok, splits.test, config, progress,
                         say, timings)
    weights, weights_info = None, None
    if hashes["weights"]:
        weights, weights_info = _weights_stage(config, method, student, tok, tokenized, val_tok, shared, hashes, progress, say,
                                               timings)
    schedule = None
    if method["curriculum"]:
        schedule = _curriculum_stages(config, method, student, tokenized, weights, out, shared, hashes, progress, say, timings)
    loss_weights = None
    if method["loss_weights"] and weights is not None:
        # the floor acts on the learned weights in [0, 1], before any renormalisation, so the contrast between a
        # keypoint (w = 1) and a token the learner masks (w = 0) is 1 / floor on every seed
        loss_weights = weights_for_loss(weights, config.weights.floor, renormalize=config.weights.renormalize,
                                        allow_degenerate=config.allow_degenerate)
    return _Prepared(splits, student, tok, tokenized, len(splits.train) - len(tokenized), before, weights_info, loss_weights,
                     schedule, hashes, timings, data_info, shared_fingerprints(shared))


def _tokenize(config: DistillConfig, splits: Splits, tok, say: Say) -> tuple[list, list]:
    """The training and validation examples as token ids; training examples longer than ``data.max_length`` left out."""
    d = config.data
    tokenized = tokenize_examples(splits.train, tok, step_rule=d.step_rule, max_length=d.max_length, on_too_long="skip")
    skipped = len(splits.train) - len(tokenized)
    if skipped:
        say(f"[data] {skipped} training examples longer than data.max_length={d.max_length} tokens left out")
    if not tokenized:
        raise KPODInputError(f"data.max_length: expected room for at least one training example, got {d.max_length} (all too long)")
    val_tok = tokenize_examples(splits.val, tok, step_rule=d.step_rule, max_length=d.max_length, on_too_long="skip") if splits.val else []
    return tokenized, val_tok


def _weights_stage(config: DistillConfig, method: dict[str, Any], student, tok, tokenized: list, val_tok: list, shared: Path,
                   hashes: dict[str, str], progress: bool, say: Say,
                   timings: dict[str, dict]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The mask learner's token weights of every training rationale, and what the report says of them."""
    stage = Stage(shared, "weights", hashes["weights"], say)

    def compute(folder: Path) -> dict[str, Any]:
        w = config.weights
        say(f"[weights] training the mask learner on {min(w.n_examples, len(tokenized))} examples"
            + (f", {w.restarts} restarts" if w.restarts > 1 else ""))
        learned = learn_weights(student, tokenized[: w.n_examples], val_tok[:200] or None, tokenized,
                                learner_config(dict(w.learner), config.seed), restarts=w.restarts,
                                allow_degenerate=config.allow_degenerate, progress=progress)
        restarts, ranking = [], None
        for run in learned.restarts:  # what each restart found; the kept one is ``chosen``
            weights = run.pop("weights")
            # every restart's weights kept, so that other ways to choose or combine them can be studied without training
            # the learners again; the chosen one's are token_weights.npz, written below
            run["weights_file"] = "token_weights.npz" if run["chosen"] else f"restarts/seed{run['seed']}.npz"
            if not run["chosen"]:
                save_token_weights(folder / run["weights_file"], weights, tokenized, tokenizer=tok)
            rank = keypoint_ranking(weights, tokenized, tok)
            if run["chosen"]:  # its weights are learned.weights: ranked once
                ranking = rank
            restarts.append({**{k: v for k, v in run.items() if k != "history"}, "keypoint_auc": rank["auc"] if rank else None,
                             "kept_keypoint_share": rank["kept_keypoint_share"] if rank else None})
            say(f"[weights] restart seed {run['seed']}: validation objective {run['val_objective']:.4f}"
                + (f", kept keypoint share {share_text(rank['kept_keypoint_share'])}, ROC-AUC {rank['auc']:.2f}" if rank else "")
                + (f", degenerate ({run['degenerate']})" if run["degenerate"] else "") + (" (kept)" if run["chosen"] else ""))
        if restarts:
            write_json(folder / "restarts.json", [{**r, "history": run["history"]} for r, run in zip(restarts, learned.restarts)])
        if learned.degenerate:
            say(f"[weights] WARNING: degenerate token weights ({learned.degenerate}); continuing because they were allowed")
        save_token_weights(folder / "token_weights.npz", learned.weights, tokenized, tokenizer=tok)
        stats = weight_stats(learned.weights, tokenized, tokenizer=tok)
        write_json(folder / "history.json", learned.history)
        _weight_pictures(folder, learned.weights, tokenized, tok)
        if not restarts:
            ranking = keypoint_ranking(learned.weights, tokenized, tok)
        if ranking is not None:
            say(f"[weights] keypoints: {kept_share_text(ranking)}; ROC-AUC {ranking['auc']:.2f}, "
                f"mean weight {ranking['mean_keypoint']:.2f} vs {ranking['mean_word']:.2f}")
            if warning := keypoint_warning(ranking):
                say(f"[weights] WARNING: {warning}")
        return {"degenerate": learned.degenerate, "mean": stats.mean, "std": stats.std, "kept_ratio": stats.kept_ratio,
                "top_tokens": stats.top_tokens[:10], "bottom_tokens": stats.bottom_tokens[:10], "keypoint_ranking": ranking,
                **({"restarts": restarts} if restarts else {})}

    rec = _cached(stage, compute, timings)
    if rec.get("degenerate") and not config.allow_degenerate:  # learn_weights refuses them; a finished stage may hold them
        raise KPODInputError(f"token weights in {stage.dir} are degenerate ({rec['degenerate']}); pass --allow-degenerate to use them")
    weights = load_token_weights(stage.dir / "token_weights.npz", tokenized, tokenizer=tok)
    return weights, _weights_info(config, method, rec, stage.dir)


def _weights_info(config: DistillConfig, method: dict[str, Any], rec: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The token weights' part of the report: their statistics and how they enter the loss."""
    floor = config.weights.floor
    in_loss = "no (uniform)"
    if method["loss_weights"]:
        in_loss = f"floor {floor}: {floor} + {1 - floor:g} * w" if floor else "w"
        in_loss += ", renormalised to mean 1 per rationale" if config.weights.renormalize else ""
    return {"degenerate": rec.get("degenerate"), "mean": rec.get("mean"), "kept_ratio": rec.get("kept_ratio"),
            "keypoint_ranking": rec.get("keypoint_ranking"), "in_loss": in_loss, "pictures": str(folder / "pictures"),
            **({"restarts": rec["restarts"]} if rec.get("restarts") else {})}


def _curriculum_stages(config: DistillConfig, method: dict[str, Any], student, tokenized: list,
                       weights: dict[str, np.ndarray] | None, out: Path, shared: Path, hashes: dict[str, str], progress: bool,
                       say: Say, timings: dict[str, dict]) -> ProgressiveSchedule:
    """Step difficulties, question clusters and the progressive schedule built from them."""
    normalisation, beta = _curriculum_settings(config, method)
    cur = config.curriculum

    def difficulty(folder: Path) -> dict[str, Any]:
        write_json(folder / "difficulties.json",
                   score_difficulties(student, tokenized, weights, normalisation=normalisation, progress=progress))
        return {"normalisation": normalisation}

    def clusters(folder: Path) -> dict[str, Any]:
        write_json(folder / "clusters.json", cluster(student, tokenized, n_clusters=cur.n_clusters, seed=config.seed))
        return {}

    name = f"difficulty-{normalisation}"
    _cached(Stage(shared, name, hashes[name], say), difficulty, timings)
    _cached(Stage(shared, "clusters", hashes["clusters"], say), clusters, timings)
    built: list[ProgressiveSchedule] = []

    def schedule(folder: Path) -> dict[str, Any]:
        s = build_schedule(read_json(shared / name / "difficulties.json"), read_json(shared / "clusters" / "clusters.json"),
                           n_epochs=config.train.epochs, beta=beta, p=cur.p, c0_ratio=cur.c0_ratio, solver=cur.solver,
                           progressive=method["progressive"])
        write_json(folder / "schedule.json", schedule_to_json(s))
        (folder / "summary.txt").write_text(s.summary() + "\n", encoding="utf-8")
        s.save_plots(folder)
        built.append(s)
        return {"n_stages": s.n_stages, "jump": list(s.jump())}

    stage = Stage(out, "schedule", hashes["schedule"], say)
    _cached(stage, schedule, timings)
    return built[0] if built else schedule_from_json(read_json(stage.dir / "schedule.json"))


def _train_stage(config: DistillConfig, method: dict[str, Any], prep: _Prepared, out: Path, progress: bool,
                 say: Say) -> tuple[list[dict], str]:
    """Training (data-parallel under a process group) and the saved student; returns (history, the stage's hash)."""
    tr = config.train
    settings = TrainSettings(**{k: getattr(tr, k) for k in ("epochs", "batch_size", "micro_batch_size", "lr", "warmup_ratio", "weight_decay",
                                                   "grad_clip", "normaliser", "checkpoint_every",
                                                   "fused_linear", "min_lr_ratio", "average_last")},
                             seed=config.seed, precision=config.precision)
    train_hash = prep.hashes["train"]
    stage = Stage(out, "train", train_hash, say)
    with distributed.main_first():  # rank 0 clears a stale stage before the others look
        rec = stage.finished()
        if rec is None and distributed.is_main():
            stage.start()
    if rec is None:
        model = prep.student
        if config.student.lora_r:
            model = add_lora(model, config.student.lora_r, config.student.lora_alpha)
        result = train(model, prep.tok, prep.tokenized, settings, token_weights=prep.loss_weights, schedule=prep.schedule,
                       checkpoint_dir=stage.dir, run_hash=train_hash, progress=progress, say=say)
        if distributed.is_main():
            write_json(stage.dir / "history.json", result.history)
            save_student(plain_model(model), prep.tok, out / "student")
            rec = stage.finish(steps=result.steps, resumed_at_step=result.resumed_at_step,
                               final_loss=result.history[-1]["loss"] if result.history else None)
        else:
            rec = {"stage": "train", "seconds": 0.0, "reused": False}
    prep.timings["train"] = {"seconds": rec["seconds"], "reused": rec["reused"]}
    return (read_json(stage.dir / "history.json") if distributed.is_main() else []), train_hash


def _evaluate_and_report(config: DistillConfig, method: dict[str, Any], prep: _Prepared, history: list[dict],
                         train_hash: str, out: Path, t_start: float, progress: bool, say: Say) -> dict[str, Any]:
    """Test (and validation) accuracy of the saved student, plots, ``report.json`` and ``report.md``."""
    cur, tr, splits, timings = config.curriculum, config.train, prep.splits, prep.timings
    final, final_tok = load_student_dir(out / "student", argument="distilled student")
    final.to(_device())
    after = _eval_stage(Stage(out, "eval", prep.hashes["eval"], say), final, final_tok, splits.test, config, progress, say, timings)
    val_accuracy = None
    if splits.val:  # hyper-parameters are chosen on this, never on the test split
        val = _eval_stage(Stage(out, "eval-val", prep.hashes["eval-val"], say), final, final_tok, splits.val, config, progress, say,
                          timings)
        val_accuracy = val["accuracy"]

    # report ---------------------------------------------------------------------------------
    before = prep.before
    plots_dir = out / "plots"
    plots_dir.mkdir(exist_ok=True)
    plots = [str(plot_loss(history, plots_dir / "loss.png").relative_to(out)),
             str(plot_accuracy([("before distillation", before["accuracy"]), (config.method, after["accuracy"])],
                               plots_dir / "accuracy.png").relative_to(out))]
    if prep.schedule is not None:
        plots.append(str((out / "schedule" / "budget.png").relative_to(out)))
    if prep.weights_info is not None:
        pics = sorted(Path(prep.weights_info["pictures"]).glob("*.png"))[:1]
        plots += [os.path.relpath(p, out) for p in pics]
    normalisation = method["normalisation"] or cur.normalisation
    beta = cur.beta if method["beta"] is None else method["beta"]
    report = {
        "preset": config.preset, "method": config.method, "seed": config.seed,
        "test_accuracy": after["accuracy"], "n_test": after["n"], "n_correct": after["n_correct"],
        "accuracy_before": before["accuracy"], "val_accuracy": val_accuracy, "n_val": len(splits.val), "n_train": len(prep.tokenized), "n_train_skipped_too_long": prep.skipped,
        "optimizer_steps": len(history), "normaliser": tr.normaliser, "processes": distributed.world_size(),
        "method_settings": {**method, "normalisation": normalisation, "beta": beta},
        "data": prep.data_info, "weights": prep.weights_info, "timings": timings, "total_seconds": round(time.perf_counter() - t_start, 2),
        "config": config.to_dict(), "versions": versions(), "machine": machine(),
        "shared_fingerprints": prep.fingerprints,
    }
    write_report(out, report, plots)
    say(f"[report] {out / 'report.md'}: test accuracy {after['accuracy']:.1%} (before distillation {before['accuracy']:.1%})")
    return report


def _weight_pictures(folder: Path, weights: dict[str, np.ndarray], examples, tok, count: int = 3) -> None:
    """PNG pictures of the token weights of the first few rationales."""
    from ..weighting import render_png

    pics = folder / "pictures"
    pics.mkdir(exist_ok=True)
    for ex in examples[:count]:
        render_png(list(ex.rationale_ids), weights[ex.id], tok, pics / f"{ex.id}.png", title=f"token weights: {ex.id}")

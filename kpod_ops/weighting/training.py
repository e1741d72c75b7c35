"""Training loop of the mask learner: batches, progress bar, validation, early stopping, checkpoints."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._optional import require
from ..data.tokenized import TokenizedExample
from ..errors import bad_input
from .batching import MaskBatch, check_examples, make_batch
from .degenerate import DegenerateWeightsWarning, degeneracy
from .gumbel import anneal_tau

_EVAL_SEED_OFFSET = 7919
_PROBE_SIZE = 32
_WEIGHTS_GROUP, _PREDICTOR_GROUP = 0, 1  # the optimiser's parameter groups (see _param_groups)


@torch.no_grad()
def reading_gain(learner, batch: MaskBatch, *, prefixes: bool = False) -> float:
    """How much the predictor reads the rationale: mean over examples of the answer NLL per token
    with every rationale token replaced by the mask embedding minus that with the unmasked
    rationale (nats). About 0 for a predictor that ignores the rationale.

    By default on the full rationale; with ``prefixes`` on the objective's P sampled prefixes
    (fixed draws), weighed as the objective weighs them. Negative there means that partial
    rationales mislead the predictor (see ``MaskLearnerConfig.cap_at_blank``).
    """
    was_training = learner.training
    learner.eval()
    try:
        embed = learner.weighter.embed
        rng = np.random.default_rng(learner.config.seed + _EVAL_SEED_OFFSET)
        rows, coefs = learner.prefix_rows(batch, rng, full_only=not prefixes)
        n_live = sum(n > 0 for n in batch.lengths)
        prompt = [embed(p) for p in batch.prompts]
        answer = [embed(a) for a in batch.answers]
        clean = [embed(batch.rationale[i, : batch.lengths[i]]) for i in range(len(batch.lengths))]
        hidden = [learner.mask_embedding.expand_as(r) for r in clean]
        with_r = learner.predictor(prompt, clean, answer, batch.answers, rows).float().cpu()
        without = learner.predictor(prompt, hidden, answer, batch.answers, rows).float().cpu()
    finally:
        learner.train(was_training)
    return float(((without - with_r) * torch.tensor(coefs)).sum()) / n_live


def _param_groups(learner) -> list[dict]:
    """Group 0: weight generator + mask embedding (``lr``); group 1: the predictor side (``predictor_lr``)."""
    c = learner.config
    mask = [p for n, p in learner.named_parameters() if p.requires_grad and not n.startswith("predictor.")]
    pred = [p for n, p in learner.named_parameters() if p.requires_grad and n.startswith("predictor.")]
    groups = [{}, {}]
    groups[_WEIGHTS_GROUP] = {"params": mask, "lr": c.lr}
    groups[_PREDICTOR_GROUP] = {"params": pred, "lr": c.predictor_learning_rate}  # 0.0: the predictor is not trained
    return groups


@torch.no_grad()
def evaluate(
    learner, examples: Sequence[TokenizedExample], *, seed: int | None = None, batch_size: int | None = None
) -> dict[str, float]:
    """Objective terms on ``examples`` with fixed noise and prefixes (comparable across epochs).

    Returns ``objective``, ``answer_loss``, ``mask_loss`` (example means), ``kept`` (mean keep
    probability over tokens), ``kept_hard`` (fraction of tokens with ``w > 0.5``) and
    ``reading_gain`` and ``prefix_reading_gain`` (see :func:`reading_gain`: on the full rationale and
    on the objective's prefixes, on the first 32 examples).
    """
    check_examples(examples, need_answer=True)
    c = learner.config
    seed = c.seed + _EVAL_SEED_OFFSET if seed is None else seed
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    was_training = learner.training
    learner.eval()
    totals = {"objective": 0.0, "answer_loss": 0.0, "mask_loss": 0.0}
    n_ex, kept_sum, hard_sum, n_tok = 0, 0.0, 0.0, 0
    try:
        bs = batch_size or c.batch_size
        for s in range(0, len(examples), bs):
            chunk = [ex for ex in examples[s : s + bs] if ex.rationale_len > 0]
            if not chunk:
                continue
            batch = make_batch(chunk, learner.device)
            out = learner.objective(batch, rng=rng, generator=gen)
            k = len(chunk)
            totals["objective"] += float(out["loss"]) * k
            totals["answer_loss"] += float(out["answer_loss"]) * k
            totals["mask_loss"] += float(out["mask_loss"]) * k
            n_ex += k
            w = learner.weighter.weights(batch.rationale, batch.attention_mask)[batch.attention_mask]
            kept_sum += float(w.sum())
            hard_sum += float((w > 0.5).sum())
            n_tok += int(w.numel())
    finally:
        learner.train(was_training)
    if n_ex == 0:
        raise bad_input("examples", "at least one example with a non-empty rationale", "none")
    out = {k: v / n_ex for k, v in totals.items()}
    out["kept"] = kept_sum / max(n_tok, 1)
    out["kept_hard"] = hard_sum / max(n_tok, 1)
    probe = _probe(examples, learner.device)
    out["reading_gain"] = reading_gain(learner, probe)
    out["prefix_reading_gain"] = reading_gain(learner, probe, prefixes=True)
    return out


def _probe(examples: Sequence[TokenizedExample], device) -> MaskBatch:
    return make_batch([ex for ex in examples if ex.rationale_len > 0][:_PROBE_SIZE], device)


def _collapse_advice(reason: str, record: dict, config) -> str:
    """The likely cause of degenerate weights and what to change, from the last epoch's metrics."""
    gain = record.get("val_reading_gain", float("nan"))
    if "no token is masked" in reason:
        if config.objective == "literal":
            return (
                "objective='literal' sums the answer loss over every prefix and answer token, which dwarfs "
                "alpha * L_m; use objective='normalized' (the default) or raise alpha"
            )
        return "the mask pressure is too weak for this predictor: raise alpha, or train longer (epochs)"
    if "every token is masked" in reason:
        if not gain > (config.reading_gain or 0.05):
            return (
                f"the answer predictor never learned to read the rationale (reading gain {gain:.3f} nats per "
                "answer token): train longer (epochs, more examples), raise predictor_lr, keep the warm-up "
                "(predictor_warmup, reading_gain), or use a pre-trained predictor"
            )
        prefix_gain = record.get("val_prefix_reading_gain", float("nan"))
        if prefix_gain < 0 and not config.caps_at_blank:
            return (
                f"partial rationales mislead the predictor (it does worse with a prefix visible than hidden: "
                f"prefix reading gain {prefix_gain:.3f} nats per answer token), so hiding tokens pays: set "
                "cap_at_blank=True, or let the predictor learn with the weights"
            )
        return "the mask pressure wins although the predictor reads: lower alpha, or anneal tau (tau_final)"
    return "the weights barely moved: train longer (epochs) or raise lr"


def _save(path: Path, learner, epoch: int, history: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"epoch": epoch, "config": learner.config.to_dict(), "state": learner.trainable_state(), "history": history}, tmp)
    os.replace(tmp, path)


@dataclass
class _WarmUp:
    """The predictor's warm-up: only the predictor learns until it reads the rationale (``reading_gain`` on two probes
    in a row, checked four times an epoch) or ``steps`` are spent; ``end`` is the step it ended at (None: still on)."""

    steps: int
    probe: MaskBatch | None
    probe_every: int
    threshold: float | None
    end: int | None = None
    reads: int = 0  # consecutive probes on which the predictor read the rationale

    def __post_init__(self) -> None:
        if self.steps <= 0:
            self.end = 0

    def warming(self, learner, step: int) -> bool:
        """Whether step ``step`` still belongs to the warm-up (probing the predictor when due)."""
        if self.end is None and self.probe is not None and step and step % self.probe_every == 0:
            self.reads = self.reads + 1 if reading_gain(learner, self.probe) >= self.threshold else 0
        if self.end is None and (step >= self.steps or self.reads >= 2):
            self.end = step
        return self.end is None


@dataclass
class _Selection:
    """The best epoch after the warm-up on the validation ``key`` (its parameters kept), and early stopping."""

    key: str
    patience: int | None
    best: float = math.inf
    state: dict | None = None
    stale: int = 0  # epochs since the last improvement

    def improved(self, learner, scored: dict[str, float]) -> bool:
        """Record this epoch's score; True when it is the best so far."""
        if scored[self.key] < self.best - 1e-9:
            self.best, self.state, self.stale = scored[self.key], learner.trainable_state(), 0
            return True
        self.stale += 1
        return False

    def stop(self) -> bool:
        return self.patience is not None and self.stale >= self.patience


@dataclass
class _Loop:
    """What every step of a fit shares: the random streams, the optimiser, the step count and the warm-up."""

    rng: np.random.Generator
    gen: torch.Generator
    opt: torch.optim.Optimizer
    steps_per_epoch: int
    total_steps: int
    warmup: _WarmUp
    step: int = 0
    tau: float = 0.0


def _set_learning_rates(opt: torch.optim.Optimizer, config, warming: bool) -> None:
    """The warm-up trains the predictor alone; then the weights learn, against a fixed predictor unless trained jointly."""
    opt.param_groups[_WEIGHTS_GROUP]["lr"] = 0.0 if warming else config.lr
    if not warming and not config.joint_predictor:
        opt.param_groups[_PREDICTOR_GROUP]["lr"] = 0.0


def _step(learner, loop: _Loop, batch: MaskBatch) -> dict[str, torch.Tensor]:
    """One optimiser step on ``batch``; returns the objective's terms."""
    c = learner.config
    loop.tau = anneal_tau(c.tau, c.tau_final, loop.step / max(loop.total_steps - 1, 1))
    warming = loop.warmup.warming(learner, loop.step)
    _set_learning_rates(loop.opt, c, warming)
    cap = False if warming else None  # the warm-up trains the predictor on every prefix as it is
    out = learner.objective(batch, tau=loop.tau, rng=loop.rng, generator=loop.gen, cap_at_blank=cap,
                            full_only=warming and c.warmup_rows == "full")
    loop.opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    if c.grad_clip:
        torch.nn.utils.clip_grad_norm_([p for g in loop.opt.param_groups for p in g["params"]], c.grad_clip)
    loop.opt.step()
    loop.step += 1
    return out


def _epoch(learner, loop: _Loop, train: Sequence[TokenizedExample], epoch: int, tqdm, progress: bool) -> dict[str, float]:
    """One pass over ``train`` in a fresh order; the mean of each objective term over its steps."""
    c = learner.config
    order = loop.rng.permutation(len(train))
    bar = tqdm(range(loop.steps_per_epoch), desc=f"mask learner epoch {epoch}/{c.epochs}", disable=None if progress else True,
               leave=False)  # disable=None: only on a terminal
    run = {"loss": 0.0, "answer_loss": 0.0, "mask_loss": 0.0, "kept": 0.0}
    for s in bar:
        out = _step(learner, loop, make_batch([train[i] for i in order[s * c.batch_size : (s + 1) * c.batch_size]], learner.device))
        for k in run:
            run[k] += float(out[k].detach()) / loop.steps_per_epoch
        bar.set_postfix(loss=f"{float(out['loss'].detach()):.3f}", kept=f"{float(out['kept'].detach()):.2f}", tau=f"{loop.tau:.2f}")
    bar.close()
    return run


def _start(learner, train: Sequence[TokenizedExample], scored_on: Sequence[TokenizedExample]) -> _Loop:
    """Seeded random streams, the optimiser and the warm-up of a fit (deterministic given ``config.seed``)."""
    c = learner.config
    torch.manual_seed(c.seed)
    rng = np.random.default_rng(c.seed)
    gen = torch.Generator().manual_seed(c.seed)
    opt = torch.optim.AdamW(_param_groups(learner), weight_decay=c.weight_decay)
    steps_per_epoch = math.ceil(len(train) / c.batch_size)
    total_steps = steps_per_epoch * c.epochs
    probe = _probe(scored_on, learner.device) if c.reading_gain is not None else None
    warmup = _WarmUp(math.ceil(c.predictor_warmup * total_steps), probe, max(1, steps_per_epoch // 4), c.reading_gain)
    return _Loop(rng, gen, opt, steps_per_epoch, total_steps, warmup)


def _usable(train: Sequence[TokenizedExample], val: Sequence[TokenizedExample] | None) -> list[TokenizedExample]:
    """The training examples with a rationale (both sets checked first)."""
    check_examples(train, "train", need_answer=True)
    if val is not None:
        check_examples(val, "val", need_answer=True)
    usable = [ex for ex in train if ex.rationale_len > 0]
    if not usable:
        raise bad_input("train", "at least one example with a non-empty rationale", "none")
    return usable


def fit(
    learner,
    train: Sequence[TokenizedExample],
    val: Sequence[TokenizedExample] | None = None,
    *,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    callback: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train ``learner`` on ``train``; returns one dict of metrics per epoch.

    Hyper-parameters come from ``learner.config``. Each step samples one Gumbel mask per example
    and P prefix lengths, and minimises ``L_p + alpha * L_m``. After every epoch the validation
    set (the training set if none) is scored with fixed noise; training stops after ``patience``
    epochs without improving ``monitor`` and the best parameters are restored. With
    ``checkpoint_dir`` the trainable parameters are saved each epoch (``epoch{n}.pt``) and at the
    best epoch (``best.pt``). Deterministic given ``config.seed`` (CPU).
    """
    tqdm = require("tqdm.auto", extra="weighting", feature="MaskLearner.fit").tqdm
    c = learner.config
    train = _usable(train, val)
    scored_on = val if val is not None else train
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
    loop = _start(learner, train, scored_on)
    selection = _Selection("objective" if c.monitor == "objective" else "answer_loss", c.patience)
    history: list[dict] = []
    learner.train()
    for epoch in range(1, c.epochs + 1):
        run = _epoch(learner, loop, train, epoch, tqdm, progress)
        scored = evaluate(learner, scored_on)
        record = {"epoch": epoch, "tau": loop.tau, "warmup_end_step": loop.warmup.end, **{f"train_{k}": v for k, v in run.items()},
                  **{f"val_{k}": v for k, v in scored.items()}}
        history.append(record)
        if callback is not None:
            callback(record)
        if ckpt is not None:
            _save(ckpt / f"epoch{epoch}.pt", learner, epoch, history)
        if loop.warmup.end is None:
            continue  # the weights have not started learning: nothing to select or stop on yet
        if selection.improved(learner, scored):
            if ckpt is not None:
                _save(ckpt / "best.pt", learner, epoch, history)
        elif selection.stop():
            break
    if selection.state is not None:
        learner.load_trainable_state(selection.state)
    learner.eval()
    _warn_if_degenerate(learner, scored_on, history)
    return history


def _warn_if_degenerate(learner, examples: Sequence[TokenizedExample], history: list[dict]) -> None:
    """Degenerate weights are a failed run, not a result: say so, with the likely cause and remedy."""
    weights = learner.token_weights([ex for ex in examples if ex.rationale_len > 0][:256])
    reason = degeneracy(weights)
    history[-1]["degenerate"] = reason
    if reason is not None:
        warnings.warn(
            f"mask learner: the learned weights are degenerate: {reason}. Likely cause and remedy: "
            f"{_collapse_advice(reason, history[-1], learner.config)}. Weights like these would turn KPOD "
            "into plain cross-entropy (renormalize_mean_one refuses them unless allow_degenerate=True).",
            DegenerateWeightsWarning,
            stacklevel=3,
        )

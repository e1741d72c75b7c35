"""The reference distillation loop: collator, schedule, fused loss, gradient accumulation, checkpoints.

Per optimiser step a *global batch* of ``batch_size`` sequences is split into micro-batches of
``micro_batch_size``; every micro-batch adds ``sum of its weighted token losses ÷ D`` to the
gradients, where ``D`` is the normaliser of the whole global batch — the number of sequences
(``normaliser="sequence"``, the default: the paper sums the loss over tokens and questions, and a
token's share of the loss does not change as the curriculum exposes more steps) or the number of
active tokens (``"token"``). Either way the result does not depend on how the batch is split.

Data-parallel (an initialised ``torch.distributed`` group of N processes, e.g. under ``torchrun``):
every process takes the same global batches in the same order and trains on its contiguous share
of each (``batch_size ÷ N`` sequences, in micro-batches of ``micro_batch_size``); the student is
wrapped in DDP and ``D`` is the global normaliser (the token count summed across processes), so N
processes take the same optimiser steps as one. With ``kpod distill --fsdp``
(:func:`~kpod_ops.pipeline.distributed.sharded`) the student is sharded with FSDP2 instead (every
decoder layer a unit, the rest in the root unit; parameters, gradients and optimiser state split
across the processes) and taken whole again after training. Only rank 0 writes checkpoints (whole
tensors, gathered from every rank under FSDP2); every rank resumes from them.

Checkpoints hold the trainable parameters and the optimiser state (safetensors) and the position
(JSON), written every ``checkpoint_every`` optimiser steps and at every epoch end. The data order
of an epoch and the learning rate are pure functions of (seed, epoch, step), so a run resumed from
a checkpoint takes bitwise the same steps on CPU as one that was never interrupted.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._optional import require
from ..curriculum import ProgressiveSchedule
from ..data.collator import KPODCollator
from ..data.tokenized import TokenizedExample
from ..errors import bad_input
from ..integrations.fsdp import full_tensor, like, shard_for_training, shard_optimizer_state, unshard_in_place
from ..losses import keypoint_cross_entropy, keypoint_linear_cross_entropy
from . import distributed
from .optim import autocast, lr_at, make_optimizer, set_lr
from .store import load_tensors, optimizer_from_files, optimizer_to_files, read_json, save_tensors, write_json

CHECKPOINT = "checkpoint"
FUSED_LINEAR = ("auto", True, False)


@dataclass
class TrainSettings:
    epochs: int = 6
    batch_size: int = 32
    micro_batch_size: int = 32
    lr: float = 3e-3
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    normaliser: str = "sequence"
    checkpoint_every: int = 50
    seed: int = 0
    precision: str = "fp32"
    fused_linear: bool | str = "auto"  # the loss from the hidden states, no [B, T, V] logits (see resolve_fused_linear)
    min_lr_ratio: float = 0.1  # the cosine schedule ends at min_lr_ratio × lr
    average_last: float = 0.0  # the trained model is the mean of the weights after each of the last share of steps (0: off)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "micro_batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad_input(name, "a positive int", repr(value))
        if self.batch_size % self.micro_batch_size:
            raise bad_input("batch_size", f"a multiple of micro_batch_size={self.micro_batch_size}", self.batch_size)
        if self.normaliser not in ("sequence", "token"):
            raise bad_input("normaliser", "'sequence' or 'token'", repr(self.normaliser))
        if self.precision not in ("fp32", "bf16"):
            raise bad_input("precision", "'fp32' or 'bf16'", repr(self.precision))
        if self.fused_linear not in FUSED_LINEAR:
            raise bad_input("fused_linear", "'auto', true or false", repr(self.fused_linear))
        for name in ("min_lr_ratio", "average_last"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise bad_input(name, "a number in [0, 1)", repr(value))

    def averaged_steps(self, total: int) -> int:
        """How many of the ``total`` optimiser steps end in the averaged model (0: no averaging)."""
        return max(1, round(self.average_last * total)) if self.average_last else 0


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one entry per optimiser step
    steps: int = 0
    resumed_at_step: int | None = None


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return math.ceil(n_examples / batch_size)


def _save_checkpoint(folder: Path, model: torch.nn.Module, optimizer, position: dict,
                     average: dict[str, torch.Tensor] | None = None) -> None:
    """Write a new checkpoint next to the old one, then swap (a crash leaves one complete checkpoint).
    Under FSDP2 every rank calls it (the tensors are gathered whole) and rank 0 writes."""
    params = {n: full_tensor(p.detach()) for n, p in model.named_parameters() if p.requires_grad}
    tensors, rest = optimizer_to_files(optimizer)
    tensors = {k: full_tensor(v) for k, v in tensors.items()}
    average = {k: full_tensor(v) for k, v in (average or {}).items()}
    if not distributed.is_main():
        return
    new, old, cur = folder / (CHECKPOINT + ".new"), folder / (CHECKPOINT + ".old"), folder / CHECKPOINT
    if new.exists():
        shutil.rmtree(new)
    new.mkdir(parents=True)
    save_tensors(new / "model.safetensors", params)
    save_tensors(new / "optimizer.safetensors", tensors)
    write_json(new / "optimizer.json", rest)
    if average:
        save_tensors(new / "average.safetensors", average)
    write_json(new / "state.json", position)
    if cur.exists():
        if old.exists():  # left by a run killed after its last swap, before it removed the old one
            shutil.rmtree(old)
        os.replace(cur, old)
    os.replace(new, cur)
    if old.exists():
        shutil.rmtree(old)


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint in ``folder`` (``state.json`` is written last, atomically): one a kill left
    as ``checkpoint.new`` before or between the swap's two renames, else ``checkpoint``, else ``checkpoint.old``."""
    for name in (CHECKPOINT + ".new", CHECKPOINT, CHECKPOINT + ".old"):
        if (folder / name / "state.json").is_file():
            return folder / name
    return None


def _load_checkpoint(ckpt: Path, model: torch.nn.Module, optimizer) -> dict:
    params = dict(model.named_parameters())
    saved = load_tensors(ckpt / "model.safetensors")
    missing = sorted(n for n, p in params.items() if p.requires_grad and n not in saved)
    if missing or set(saved) - set(params):
        raise bad_input(str(ckpt), "a checkpoint of this model's trainable parameters", f"mismatched names {missing[:3]}")
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(like(params[name], value))  # sharded as the parameter is under FSDP2
    optimizer_from_files(optimizer, load_tensors(ckpt / "optimizer.safetensors"), read_json(ckpt / "optimizer.json"))
    shard_optimizer_state(optimizer)
    return read_json(ckpt / "state.json")


def _load_average(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_tensors(ckpt / "average.safetensors") if (ckpt / "average.safetensors").is_file() else {}


def _accumulate_average(average: dict[str, torch.Tensor], model: torch.nn.Module, count: int) -> None:
    """Running mean of the trainable weights: ``average`` holds the mean of ``count`` models after this call."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if count == 1:
                average[name] = p.detach().float().clone()
            else:
                average[name].add_(p.detach().float() - average[name], alpha=1.0 / count)


def _normaliser(micro: list[dict[str, torch.Tensor]], n_sequences: int, kind: str, device: torch.device) -> int:
    """``D`` of one global batch: its sequences, or its active tokens summed over micro-batches and processes."""
    if kind == "sequence":
        return n_sequences
    # active label positions under shift=True: position 0 has no prediction
    local = int(sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro))
    return int(distributed.all_reduce_sum([float(local)], device)[0])


def _shard(chosen: list, rank: int, world: int) -> list:
    """This process's contiguous share of a global batch (balanced; empty only when it has < ``world`` sequences)."""
    n = len(chosen)
    return chosen[rank * n // world : (rank + 1) * n // world]


class _StudentLoss(torch.nn.Module):
    """The student and its micro-batch loss as one module, so that DDP sees the whole forward (the fused
    linear path calls the student's backbone, not its forward) and reduces every gradient on backward."""

    def __init__(self, student: torch.nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, batch: dict[str, torch.Tensor], device: torch.device, precision: str, weighted: bool,
                linear: bool) -> torch.Tensor:
        return _micro_loss(self.student, batch, device, precision, weighted, linear)


def resolve_fused_linear(model: torch.nn.Module, mode: bool | str) -> tuple[bool, str]:
    """Whether training computes the loss with the fused linear loss (no logits), and why.

    ``"auto"`` (default): wherever the student is supported (Llama-style decoder-only causal LMs
    with a plain LM head, LoRA on the other layers included) — always much smaller in memory, and
    faster at LM-scale vocabularies (slower for vocabularies of a few thousand tokens or less);
    otherwise the logits path. ``True``: an unsupported student is an error. ``False``: logits.
    """
    if mode is False:
        return False, "train.fused_linear=false"
    from ..integrations.linear_patch import supports_plain_head

    ok, why = supports_plain_head(model)  # the loss comes from hidden_and_head: the LM head's output, untransformed
    if not ok and mode is True:
        raise bad_input("train.fused_linear", "a student the fused linear loss supports (or 'auto' / false)", why)
    return ok, why


def _micro_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device, precision: str,
                weighted: bool, linear: bool) -> torch.Tensor:
    """The summed weighted token loss of one micro-batch, from the logits or (``linear``) the hidden states."""
    inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
    labels, loss_start = batch["labels"].to(device), batch["loss_start"].to(device)
    weights = batch["token_weights"].to(device) if weighted else None
    if linear:
        from ..integrations.linear_patch import hidden_and_head

        with autocast(device, precision):
            hidden, weight, bias = hidden_and_head(model, **inputs)
        return keypoint_linear_cross_entropy(hidden, weight, labels, weights, loss_start, bias, shift=True, reduction="sum")
    with autocast(device, precision):
        logits = model(**inputs).logits
    return keypoint_cross_entropy(logits, labels, weights, loss_start, shift=True, reduction="sum")


def _silent(message: str) -> None:
    """``say`` on ranks other than 0."""


def train(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[TokenizedExample],
    settings: TrainSettings,
    *,
    token_weights: Mapping[str, np.ndarray] | None = None,
    schedule: ProgressiveSchedule | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    run_hash: str = "",
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> TrainResult:
    """Distil into ``model`` (in place) on ``examples``; returns the loss history.

    ``token_weights`` (id → weight per rationale token) weight the loss; None = uniform (plain CoT
    distillation). ``schedule`` gives c_i(t) per epoch; None = the full rationale every epoch.
    With ``checkpoint_dir`` a checkpoint with the same ``run_hash`` is resumed; one with another
    hash is discarded (saying so). Under an initialised process group every process calls this with
    the same arguments and trains its share of each global batch (see the module's docstring).
    """
    require("tqdm", extra="all", feature="kpod training")
    from tqdm.auto import tqdm

    s = settings
    if not examples:
        raise bad_input("examples", "at least one training example", "none")
    world, me = distributed.world_size(), distributed.rank()
    if world > 1 and s.batch_size % (world * s.micro_batch_size):
        raise bad_input("batch_size", f"a multiple of micro_batch_size × processes = {s.micro_batch_size} × {world} "
                        "(the global batch is split evenly across processes and micro-batches)", s.batch_size)
    if not distributed.is_main():  # one voice and one progress bar: rank 0's
        say, progress = _silent, False
    n = len(examples)
    per_epoch = steps_per_epoch(n, s.batch_size)
    total = per_epoch * s.epochs
    collator = KPODCollator(tokenizer, token_weights=token_weights)
    fsdp = world > 1 and distributed.sharded()
    step_module: torch.nn.Module = _StudentLoss(model)
    if fsdp:  # before the optimiser: fully_shard replaces the parameters by their shards
        shard_for_training(step_module, model)
    optimizer = make_optimizer(model, s.lr, s.weight_decay)
    device = next(model.parameters()).device
    result = TrainResult()
    n_average = s.averaged_steps(total)
    average: dict[str, torch.Tensor] = {}
    epoch0, batch0 = 1, 0
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if folder is not None:
        with distributed.main_first():  # rank 0 clears a stale checkpoint before the others look
            ckpt = latest_checkpoint(folder)
            if ckpt is not None:
                position = read_json(ckpt / "state.json")
                if position.get("hash") != run_hash:
                    say(f"[train] checkpoint in {ckpt} has another configuration (hash {position.get('hash')} -> {run_hash}): starting over")
                    if distributed.is_main():
                        shutil.rmtree(ckpt)
                else:
                    position = _load_checkpoint(ckpt, model, optimizer)
                    params = dict(model.named_parameters())
                    average = {k: like(params[k], v.to(device)) for k, v in _load_average(ckpt).items()}
                    epoch0, batch0 = position["epoch"], position["batch"]
                    result.history, result.steps = position["history"], position["step"]
                    result.resumed_at_step = result.steps
                    say(f"[train] resuming from the checkpoint at optimiser step {result.steps} of {total}")
    linear, why = resolve_fused_linear(model, s.fused_linear)
    say(f"[train] fused linear loss: {why}" if linear
        else f"[train] loss from the logits: {why}")
    if world > 1:
        say(f"[train] data-parallel ({'FSDP2, the student sharded' if fsdp else 'DDP'}) over {world} processes: "
            f"{s.batch_size // world} sequences each per optimiser step")
    model.train()
    ddp = None
    if world > 1 and not fsdp:  # broadcasts rank 0's parameters; gradients are averaged across processes on backward
        ddp = torch.nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None)
        step_module = ddp
    weighted = token_weights is not None
    bar = tqdm(total=total, initial=result.steps, desc="distil", unit="step", disable=None if progress else True)  # None: only on a terminal
    for epoch in range(epoch0, s.epochs + 1):
        collator.given_steps = schedule.given_steps(epoch) if schedule is not None else None
        order = np.random.default_rng([s.seed, 11, epoch]).permutation(n)
        for b in range(batch0 if epoch == epoch0 else 0, per_epoch):
            chosen = [examples[i] for i in order[b * s.batch_size : (b + 1) * s.batch_size]]
            mine = _shard(chosen, me, world)
            micro = [collator(mine[j : j + s.micro_batch_size]) for j in range(0, len(mine), s.micro_batch_size)]
            denominator = max(_normaliser(micro, len(chosen), s.normaliser, device), 1)
            # DDP and FSDP2 average the gradients of the processes: scale by their number to sum them instead
            scale, real = world, len(micro)
            if not micro:  # a short last batch left this process nothing: a zero-weight pass keeps DDP / FSDP2 in step
                micro, scale = [collator(chosen[:1])], 0
            if fsdp:  # FSDP2 gathers and reduces in every micro-batch: as many on every process as on the busiest one
                busiest = -(-len(chosen) // world)
                micro += [collator(chosen[:1])] * (-(-busiest // s.micro_batch_size) - len(micro))
            lr = lr_at(result.steps, total, s.lr, s.warmup_ratio, s.min_lr_ratio)
            set_lr(optimizer, lr)
            optimizer.zero_grad(set_to_none=True)
            step_loss, given = 0.0, 0
            for i, batch in enumerate(micro):
                with ddp.no_sync() if ddp is not None and i < len(micro) - 1 else nullcontext():
                    loss = step_module(batch, device, s.precision, weighted, linear) / denominator
                    (loss * (scale if i < real else 0) if world > 1 else loss).backward()
                if i < real:
                    step_loss += float(loss.detach())
            step_loss = distributed.all_reduce_sum([step_loss], device)[0]
            if collator.given_steps is not None:
                given = int(sum(collator.given_steps[ex.id] for ex in chosen))
            if s.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], s.grad_clip)
            optimizer.step()
            result.steps += 1
            if result.steps > total - n_average:
                _accumulate_average(average, model, result.steps - (total - n_average))
            result.history.append({"step": result.steps, "epoch": epoch, "loss": step_loss, "lr": lr, "given_steps": given})
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{step_loss:.3f}")
            if folder is not None and (fsdp or distributed.is_main()) and (result.steps % s.checkpoint_every == 0 or b == per_epoch - 1):
                nxt_epoch, nxt_batch = (epoch, b + 1) if b + 1 < per_epoch else (epoch + 1, 0)
                _save_checkpoint(folder, model, optimizer, {
                    "hash": run_hash, "epoch": nxt_epoch, "batch": nxt_batch, "step": result.steps, "history": result.history,
                }, average)
    bar.close()
    if average:  # the trained model is the average of the last n_average steps' weights
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in average:
                    p.copy_(average[name].to(p.dtype))
        say(f"[train] the trained model is the mean of the weights after each of the last {n_average} optimiser steps")
    if fsdp:  # the student whole again on every rank (rank 0 saves and evaluates it)
        unshard_in_place(step_module)
    del ddp, step_module  # drops DDP's gradient hooks from the student
    model.eval()
    return result

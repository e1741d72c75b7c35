"""Data-parallel runs of the distillation job: the process group from the ``torchrun`` environment.

``torchrun --nproc_per_node=N kpod distill ...`` (or ``accelerate launch`` without FSDP / DeepSpeed:
the job does not read accelerate's sharding configuration; DeepSpeed ZeRO trains through ``KPODTrainer``)
starts N processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR`` set.
:func:`process_group` initialises ``torch.distributed`` from them (gloo on CPU, NCCL on CUDA, one
GPU per process). The job then trains data-parallel — DDP, or with ``kpod distill --fsdp`` FSDP2
(``fully_shard``: parameters, gradients and optimiser state sharded across the processes) — and
does every other stage on rank 0 while the other ranks wait, then read rank 0's artefacts
(:func:`main_first`); only rank 0 writes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import KPODInputError

# Ranks other than 0 wait at a barrier while rank 0 runs the stages that are not training (warm-up,
# mask learner, evaluation): the default timeouts (10 min for NCCL) are too short for those.
BARRIER_TIMEOUT = timedelta(hours=6)
_TRUE = ("1", "true", "yes")
_FSDP = {"on": False}  # set by process_group(fsdp=True) for the group's lifetime


def sharded() -> bool:
    """Whether training shards the student with FSDP2 (``kpod distill --fsdp`` under torchrun) instead of DDP."""
    return _FSDP["on"] and world_size() > 1


def world_size() -> int:
    """Processes of the initialised default process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (computing and writing); the others run it after rank 0 is done,
    when every stage it finished is on disk for them to read."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums of ``values`` over every process (the values themselves with one process)."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def device() -> torch.device:
    """This process's device: its GPU (``LOCAL_RANK``) when CUDA is available, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cuda")


def _requested_world() -> int:
    raw = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    try:
        return int(raw)
    except ValueError:
        raise KPODInputError(f"WORLD_SIZE: expected an int (set by torchrun), got {raw!r}") from None


def _refuse_sharded() -> None:
    """``accelerate launch`` with FSDP or DeepSpeed sets up sharding the job does not read; FSDP2 is ``--fsdp``.

    DeepSpeed ZeRO trains KPOD through ``KPODTrainer`` (``TrainingArguments(deepspeed=...)``), not
    through the distillation job, whose training loop is its own."""
    hints = {"FSDP": "", "DeepSpeed": "; DeepSpeed ZeRO trains the KPOD loss through KPODTrainer "
                                      "(TrainingArguments(deepspeed=...)), not through kpod distill"}
    for name, what in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            raise KPODInputError(
                f"{name}: expected unset (kpod distill and kpod compare shard the student themselves: DDP, or FSDP2 "
                f"with --fsdp), got {os.environ[name]!r}: accelerate's {what} configuration is not read by the job; "
                "launch with `torchrun --nproc_per_node=N -m kpod_ops.cli distill --fsdp ...` (or accelerate launch "
                f"without FSDP / DeepSpeed){hints[what]}"
            )


@contextmanager
def process_group(fsdp: bool = False) -> Iterator[int]:
    """Initialise ``torch.distributed`` from the torchrun environment when ``WORLD_SIZE`` > 1 (and destroy
    it on exit); yields the number of processes. A group someone else initialised is used as it is.
    ``fsdp``: training shards the student with FSDP2 (:func:`sharded`); it needs several processes."""
    _refuse_sharded()
    world = _requested_world()
    if fsdp and world <= 1:
        raise KPODInputError(
            f"--fsdp: expected several processes to shard the student across (torchrun --nproc_per_node=N with N > 1), "
            f"got WORLD_SIZE={world}"
        )
    _FSDP["on"] = bool(fsdp)
    try:
        with _group(world) as n:
            yield n
    finally:
        _FSDP["on"] = False


@contextmanager
def _group(world: int) -> Iterator[int]:
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        yield max(world_size(), 1)
        return
    if not dist.is_available():
        raise KPODInputError(f"WORLD_SIZE: expected 1 (this torch build has no torch.distributed), got {world}")
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise KPODInputError(
            f"WORLD_SIZE={world}: expected the torchrun environment ({', '.join(missing)} missing); start several "
            "processes with `torchrun --nproc_per_node=N -m kpod_ops.cli distill ...` (or the `kpod` script)"
        )
    cuda = torch.cuda.is_available()
    if cuda:
        local = int(os.environ["LOCAL_RANK"])
        if local >= torch.cuda.device_count():
            raise KPODInputError(
                f"LOCAL_RANK: expected one GPU per process (< {torch.cuda.device_count()} GPUs here), got {local}: "
                "start at most as many processes per node as there are GPUs"
            )
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=BARRIER_TIMEOUT)
    try:
        yield dist.get_world_size()
    finally:
        dist.destroy_process_group()

"""The fused linear loss and the KPOD trainers on sharded models: FSDP2 (``fully_shard``) and DeepSpeed ZeRO-3.

FSDP2 keeps each parameter as a ``DTensor`` shard between forwards and all-gathers it in the
forward pre-hook of the module it was sharded with (its *unit*). DeepSpeed ZeRO-3 keeps each
parameter partitioned (an empty ``data``, ``ds_id`` set) and gathers a module's own parameters in
that module's forward pre-hook. The linear patch reads the LM head's weight instead of calling the
head, so the weight it reads must be whole:

* the head sits in an FSDP2 unit above it (``fully_shard(model)`` with the head not sharded on its
  own): the unit's forward has gathered the weight before the patched forward runs, and the
  gradient flows back to the gathered parameter, which FSDP2 reduce-scatters into the shards;
* the head is an FSDP2 unit of its own (``fully_shard(model.lm_head)``, or accelerate's
  ``[final_norm, lm_head]`` unit), or its weight is partitioned by ZeRO-3: :func:`through_head`
  runs the loss *inside a call of the head* (its ``forward`` briefly replaced), so FSDP2's or
  DeepSpeed's own hooks gather the weight before the loss, release it after, gather it again for
  backward and reduce-scatter its gradient, exactly as for ``lm_head(hidden)``.

Either way the loss sees a plain ``[V, H]`` tensor, and the patch may be applied before or after
the model is sharded. A weight that is still a ``DTensor`` inside the forward (tensor parallelism,
or FSDP2 over a tensor-parallel mesh) is refused with an error, and so is a ZeRO-3 weight that is
not gathered where it is read. FSDP1 (``FullyShardedDataParallel``) is refused: use FSDP2.
DeepSpeed ZeRO-1/2 keep every parameter whole and need nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import KPODInputError, bad_input

__all__ = [
    "check_trainer_sharding", "is_fully_sharded", "is_zero3_partitioned", "sharding_refusal", "through_head", "trainer_sharding_refusal",
    "unwrapped_class",
]

_USE_FSDP2 = "use FSDP2 (torch.distributed.fsdp.fully_shard; Trainer / accelerate: fsdp_config={'fsdp_version': 2})"


def _fsdp2_class() -> type | None:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch build without torch.distributed
        return None
    return FSDPModule


def _fsdp1_class() -> type | None:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:
        return None
    return FullyShardedDataParallel


def is_zero3_partitioned(tensor: Any) -> bool:
    """Whether DeepSpeed ZeRO-3 manages ``tensor`` (it marks its partitioned parameters with ``ds_id``)."""
    return hasattr(tensor, "ds_id")


def _zero3_gathered(tensor: Any) -> bool:
    """Whether a ZeRO-3 parameter holds its whole value now (inside its module's call)."""
    status = getattr(getattr(tensor, "ds_status", None), "name", None)
    return status == "AVAILABLE" and tensor.numel() == getattr(tensor, "ds_numel", -1)


def _is_dtensor(tensor: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return False
    return isinstance(tensor, DTensor)


def is_fully_sharded(module: Any) -> bool:
    """Whether ``fully_shard`` (FSDP2) made ``module`` a unit of its own."""
    cls = _fsdp2_class()
    return cls is not None and isinstance(module, cls)


def unwrapped_class(module: Any) -> type:
    """``module``'s class before ``fully_shard`` (which swaps it for a subclass ``FSDP<Name>``)."""
    cls = type(module)
    fsdp = _fsdp2_class()
    if fsdp is not None and issubclass(cls, fsdp):
        bases = [b for b in cls.__bases__ if not issubclass(b, fsdp)]
        if len(bases) == 1:
            return bases[0]
    return cls


def sharding_refusal(model: Any, weight: Any) -> str | None:
    """Why the linear patch cannot train ``model`` whose LM-head weight is ``weight``, or None.

    FSDP2 (``fully_shard``) and DeepSpeed ZeRO-3 are accepted, before or after patching; FSDP1 and
    a ``DTensor`` weight without FSDP2 (tensor parallelism) are not.
    """
    fsdp1 = _fsdp1_class()
    fsdp2 = _fsdp2_class()
    has_fsdp2 = False
    for module in model.modules():
        if fsdp1 is not None and isinstance(module, fsdp1):
            return f"the model is wrapped in FSDP1 (FullyShardedDataParallel), which the linear patch does not support: {_USE_FSDP2}"
        has_fsdp2 = has_fsdp2 or (fsdp2 is not None and isinstance(module, fsdp2))
    if _is_dtensor(weight) and not has_fsdp2:
        return "the LM-head weight is a DTensor outside FSDP2 (tensor parallelism shards it across ranks)"
    return None


def _whole(weight: Any, head: Any) -> None:
    if is_zero3_partitioned(weight) and not _zero3_gathered(weight):
        raise bad_input(
            "model", "an LM-head weight gathered whole inside the call of the head (DeepSpeed ZeRO-3 gathers it there)",
            f"a ZeRO-3 partition ({tuple(weight.shape)} of {getattr(weight, 'ds_shape', '?')}, status "
            f"{getattr(getattr(weight, 'ds_status', None), 'name', None)}) inside the call of {type(head).__name__}: "
            "DeepSpeed's hooks are not on this head (it was partitioned outside deepspeed.initialize / zero.Init?)",
        )
    if _is_dtensor(weight):
        raise bad_input(
            "model", "an LM-head weight gathered whole inside the forward (FSDP2 units gather theirs; DDP, one process)",
            f"a DTensor with placements {tuple(weight.placements)} inside the forward of {type(head).__name__} (tensor "
            "parallelism, or FSDP2 over a tensor-parallel mesh, shards it): the fused linear loss needs every vocabulary "
            "row; use apply_kpod_loss(model, fused_linear=False)",
        )


def through_head(head: torch.nn.Module, hidden: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``loss(hidden)`` with ``head``'s parameters whole while it runs.

    When ``head`` is an FSDP2 unit or its weight is partitioned by DeepSpeed ZeRO-3, the call goes
    through ``head(hidden)`` with the head's ``forward`` replaced by ``loss`` for that one call, so
    that FSDP2's or DeepSpeed's hooks gather the weight (and again for backward) and reduce-scatter
    its gradient; ``loss`` receives the hidden states as the hooks hand them to the head (FSDP2
    casts them by its mixed-precision policy). Otherwise ``loss`` runs directly. A weight that is a
    ``DTensor``, or a ZeRO-3 partition, inside the call is refused (:class:`KPODInputError`).
    """
    if not (is_fully_sharded(head) or any(is_zero3_partitioned(p) for p in head.parameters(recurse=False))):
        _whole(head.weight, head)
        return loss(hidden)
    had_own = "forward" in head.__dict__
    saved = head.__dict__.get("forward")

    def restore() -> None:
        if had_own:
            head.forward = saved
        else:
            head.__dict__.pop("forward", None)

    def forward(h: torch.Tensor) -> torch.Tensor:
        restore()  # a call of the head inside ``loss`` (or after it) is the head's own forward again
        _whole(head.weight, head)
        return loss(h)

    head.forward = forward
    try:
        return head(hidden)
    finally:
        restore()


def trainer_sharding_refusal(trainer: Any) -> str | None:
    """Why a KPOD trainer cannot train with ``trainer``'s sharding (what Trainer / accelerate set up), or None.

    FSDP2 and DeepSpeed (ZeRO-1/2/3, data parallel) are supported; FSDP1 is not, nor DeepSpeed's
    tensor parallelism (``tensor_parallel.autotp_size`` > 1: the LM head's rows split across ranks),
    nor ``args.fsdp`` that accelerate did not turn on (it shards only across GPU / accelerator
    processes): that run would silently be DDP, every process holding the whole model.
    """
    state = getattr(getattr(trainer, "accelerator", None), "state", None)
    if getattr(trainer, "is_deepspeed_enabled", False):
        plugin = getattr(state, "deepspeed_plugin", None)
        config = getattr(getattr(plugin, "hf_ds_config", None), "config", None) or {}
        tp = (config.get("tensor_parallel") or {}).get("autotp_size", 1) if isinstance(config, dict) else 1
        if isinstance(tp, int) and tp > 1:
            return (f"DeepSpeed tensor parallelism (tensor_parallel.autotp_size={tp}), which splits the LM head across "
                    "ranks: the KPOD losses need every vocabulary row; use ZeRO data parallelism (autotp_size 1)")
        return None
    if getattr(trainer, "is_fsdp_enabled", False):
        version = getattr(getattr(state, "fsdp_plugin", None), "fsdp_version", 1)
        if version != 2:
            return f"FSDP version {version} is enabled, which the KPOD trainers do not support: {_USE_FSDP2}"
    elif getattr(getattr(trainer, "args", None), "fsdp_plugin_args", None) is not None:
        return (
            f"args.fsdp set, but accelerate did not enable FSDP for these processes "
            f"({getattr(state, 'distributed_type', None)}; it shards only across GPU / accelerator processes), so "
            "every process would hold the whole model: drop args.fsdp to train DDP, or launch one process per GPU"
        )
    return None


def check_trainer_sharding(trainer: Any) -> None:
    """Raise :class:`KPODInputError` with :func:`trainer_sharding_refusal`'s reason, if any."""
    why = trainer_sharding_refusal(trainer)
    if why is not None:
        raise KPODInputError(f"args: expected DDP, FSDP2, DeepSpeed ZeRO or a single process, got {why}")


def require_whole(weight: Any, where: str) -> None:
    """Raise :class:`KPODInputError` when ``weight`` is a ``DTensor`` shard or a ZeRO-3 partition where it must be
    whole (``where``)."""
    if is_zero3_partitioned(weight) and not _zero3_gathered(weight):
        raise bad_input(
            "model", f"an LM-head weight gathered whole {where}",
            f"a DeepSpeed ZeRO-3 partition of shape {tuple(weight.shape)}: patch the model with apply_kpod_loss (its "
            "loss runs inside the head's call, where DeepSpeed gathers the weight), or read it inside "
            "deepspeed.zero.GatheredParameters",
        )
    if _is_dtensor(weight):
        raise bad_input(
            "model", f"an LM-head weight gathered whole {where}",
            f"a DTensor with placements {tuple(weight.placements)}: call it inside the forward of the FSDP2 root (a "
            "module that runs the student and the loss, as kpod distill does), or patch the model with apply_kpod_loss",
        )


# ------------------------------------------------------------------------------- the distillation loop
def shard_for_training(root: torch.nn.Module, student: torch.nn.Module) -> None:
    """``fully_shard`` every decoder layer of ``student`` (its backbone's ``layers``) and then ``root``
    (the module whose forward runs the student and the loss), in place, on the default process group.

    The embeddings, final norm and LM head belong to ``root``'s unit: gathered for the whole step,
    so the fused linear loss reads the LM head's weight whole.
    """
    from torch.distributed.fsdp import fully_shard

    base = student.get_base_model() if hasattr(student, "get_base_model") else student
    layers = getattr(getattr(base, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise bad_input("student", "a decoder-only causal LM with model.layers (the units FSDP2 shards)",
                        type(base).__name__)
    for layer in layers:
        fully_shard(layer)
    fully_shard(root)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a ``DTensor`` (a collective: every process must call it), else ``tensor``."""
    return tensor.full_tensor() if _is_dtensor(tensor) else tensor


def like(reference: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` (a whole tensor) sharded as ``reference`` is, when ``reference`` is a ``DTensor``; else ``value``.

    Every process must hold the same ``value`` (e.g. read from one checkpoint): each cuts its own
    shard, with no communication, so processes may call it at different times.
    """
    if not _is_dtensor(reference):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(reference.device), reference.device_mesh, list(reference.placements),
                             src_data_rank=None)


def shard_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict`` with whole tensors: the per-parameter state of sharded parameters sharded
    as they are (scalars such as ``step`` are left as they are)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            entries = optimizer.state.get(p)
            if not entries or not _is_dtensor(p):
                continue
            for key, value in entries.items():
                if isinstance(value, torch.Tensor) and not _is_dtensor(value) and tuple(value.shape) == tuple(p.shape):
                    entries[key] = like(p, value)


def unshard_in_place(root: torch.nn.Module) -> None:
    """Undo :func:`shard_for_training` on every process: whole parameters (gathered), the modules' own
    classes, no FSDP2 hooks; ``root`` is then a plain module again (tied parameters stay tied)."""
    from torch.distributed.fsdp import fully_shard

    gathered: dict[int, torch.nn.Parameter] = {}
    for _, p in root.named_parameters(remove_duplicate=True):
        gathered[id(p)] = torch.nn.Parameter(full_tensor(p.detach()).clone(), requires_grad=p.requires_grad)
    for module in list(root.modules()):
        if not is_fully_sharded(module):
            continue
        state = fully_shard.state(module)
        handles = [getattr(state, name, None) for name in ("_pre_forward_hook_handle", "_post_forward_hook_handle")]
        if any(h is None for h in handles):
            raise RuntimeError(f"unshard_in_place: this torch ({torch.__version__}) keeps FSDP2's forward hooks elsewhere")
        for handle in dict.fromkeys(handles):
            handle.remove()
        module.__class__ = unwrapped_class(module)
    for module in root.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and id(p) in gathered:
                setattr(module, name, gathered[id(p)])
    left = [n for n, p in root.named_parameters() if _is_dtensor(p)]
    if left:
        raise RuntimeError(f"unshard_in_place: parameters still sharded: {left[:3]}")

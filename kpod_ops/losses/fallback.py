"""The one place the losses decide between the fused kernels and the PyTorch reference.

``impl="auto"`` runs the fused kernel where one exists for the tensors' device and otherwise the
reference, with a ``RuntimeWarning`` (once per process and reason) that names why: the reference
builds the full ``[N, V]`` logits / probabilities, several times the memory of the fused path.
``impl="fused"`` guarantees the fused kernel or raises with the same reason; ``impl="reference"``
always runs the reference, silently. A ``KPOD_CPU_CAPABILITY`` that names no CPU variant, or one this
CPU cannot run, is an error for CPU tensors under ``"auto"`` too: the user asked for a variant.
"""

from __future__ import annotations

import warnings

import torch

from .._extension import cpu_capability_error, fused_status
from ..errors import bad_input

IMPLS = ("auto", "fused", "reference")

_WARNED: set[tuple[str, str]] = set()


def use_fused(loss: str, device: torch.device, impl: str, registered: bool) -> bool:
    """Whether ``loss`` runs its fused kernel on ``device`` under ``impl`` (``registered``: whether its ops are)."""
    if impl not in IMPLS:
        raise bad_input("impl", f"one of {IMPLS}", repr(impl))
    if impl == "reference":
        return False
    if device.type == "cpu" and cpu_capability_error() is not None:
        raise RuntimeError(f"{loss}: {cpu_capability_error()}")
    ok, why = fused_status(device)
    if ok and not registered:
        ok, why = False, "the fused ops are not registered with torch (kpod_ops._C loaded without them)"
    if ok:
        return True
    if impl == "fused":
        raise RuntimeError(f"{loss}(impl='fused'): the fused kernel cannot run: {why}")
    if not torch.compiler.is_compiling() and (loss, why) not in _WARNED:
        _WARNED.add((loss, why))
        warnings.warn(
            f"{loss}: falling back to the PyTorch reference, which builds the full [N, V] logits (several times the "
            f"memory of the fused kernel): {why}. Pass impl='fused' to make this an error, impl='reference' to "
            "choose the reference silently.",
            RuntimeWarning,
            stacklevel=3,
        )
    return False

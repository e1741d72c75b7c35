"""Loading the compiled extension ``kpod_ops._C`` (torch.ops.kpod.*), degrading gracefully.

As torchao does, a missing or broken build never breaks ``import kpod_ops``: the public API then
runs the pure-PyTorch reference, a ``RuntimeWarning`` says so once at import, and
:func:`fused_available` is then False and :func:`fused_status` says why.
"""

from __future__ import annotations

import warnings

import torch

_LOAD_ERROR: str | None = None

try:  # the shared object registers its ops with the dispatcher when it is imported
    from . import _C  # noqa: F401
except Exception as exc:  # ImportError, undefined symbols from a torch/ABI mismatch, ...
    _LOAD_ERROR = f"{type(exc).__name__}: {exc}"
    # once per process (this module is imported once): the API keeps working, but slower
    warnings.warn(
        f"kpod_ops: the compiled extension kpod_ops._C did not load ({_LOAD_ERROR}); the loss runs the slower "
        f"pure-PyTorch reference. Rebuild it against the installed torch {torch.__version__} with "
        "`pip install --no-build-isolation -e .` (an isolated build compiles against another torch).",
        RuntimeWarning,
        stacklevel=2,
    )


def _kernel_table() -> dict[str, bool]:
    if _LOAD_ERROR is not None:
        return {}
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    return {"cpu": has("kpod::kce_forward", "CPU"), "cuda": has("kpod::kce_forward", "CUDA")}


# computed once at import, so that the check is a plain dict lookup under torch.compile
_KERNELS = _kernel_table()


def fused_status(device: torch.device | str | None = None) -> tuple[bool, str]:
    """Whether the fused kernels can run (on ``device`` if given), and a sentence saying why (not)."""
    if _LOAD_ERROR is not None:
        return False, f"the compiled extension kpod_ops._C did not load ({_LOAD_ERROR}); using the PyTorch reference"
    if device is None:
        return True, "kpod_ops._C is loaded"
    kind = device.type if isinstance(device, torch.device) else torch.device(device).type
    if not _KERNELS.get(kind, False):
        return False, f"kpod_ops._C has no kernel for device type {kind!r} (built without it); using the PyTorch reference"
    return True, f"kpod_ops._C has a {kind.upper()} kernel"


def fused_available(device: torch.device | str | None = None) -> bool:
    """Whether the fused kernels can run (on ``device`` if given); :func:`fused_status` says why not."""
    return fused_status(device)[0]


def cuda_kernels_built() -> bool:
    """Whether this build of ``_C`` registered CUDA kernels."""
    return _KERNELS.get("cuda", False)

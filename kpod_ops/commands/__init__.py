"""The smaller ``kpod`` sub-commands, one module each: ``teach``, ``weights``, ``schedule``, ``bench``.

Each module has ``add_parser(subparsers, formatter_class)`` (its options, every one with ``--help``)
and ``run(args) -> int``; ``kpod_ops.cli`` registers them and turns a ``KPODInputError`` into one
``kpod: error: ...`` line and exit status 2.
"""

from __future__ import annotations

import importlib
from types import ModuleType

NAMES = ("teach", "weights", "schedule", "bench")


def command(name: str) -> ModuleType:
    """The module of sub-command ``name`` (imported on use, so ``kpod --help`` stays fast)."""
    if name not in NAMES:
        raise KeyError(name)
    return importlib.import_module(f"{__name__}.{name}")

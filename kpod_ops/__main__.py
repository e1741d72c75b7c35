"""``python -m kpod_ops``: the ``kpod`` command line, or, without it, what is installed and how to start."""

from __future__ import annotations

import importlib
import sys


def about() -> str:
    """The version, whether the fused kernels load (and why not), and where to go next."""
    import kpod_ops

    ok, why = kpod_ops.fused_available()
    lines = [f"kpod_ops {kpod_ops.__version__}", f"fused kernels: {'yes' if ok else 'no'} ({why})"]
    if ok:
        for device in ("cpu", "cuda"):
            lines.append(f"  {device}: {kpod_ops.fused_available(device)[1]}")
    lines.append("Use it from Python (import kpod_ops); the README has runnable examples of every component.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``kpod_ops.cli.main`` when the command line is installed, else print :func:`about`."""
    try:
        cli = importlib.import_module("kpod_ops.cli")
    except ModuleNotFoundError as exc:
        if exc.name != "kpod_ops.cli":
            raise  # the command line exists but one of its imports is missing: show that
        print(about())
        return 0
    return int((cli.main() if argv is None else cli.main(argv)) or 0)


if __name__ == "__main__":
    sys.exit(main())

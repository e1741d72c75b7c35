"""``python -m kpod_ops``: the ``kpod`` command line; without arguments, what is installed and how to start."""

from __future__ import annotations

import importlib
import sys


def about() -> str:
    """The version, whether the fused kernels load (and why not), and where to go next."""
    import kpod_ops

    ok, why = kpod_ops.fused_status()
    lines = [f"kpod_ops {kpod_ops.__version__}", f"fused kernels: {'yes' if ok else 'no'} ({why})"]
    if ok:
        for device in ("cpu", "cuda"):
            lines.append(f"  {device}: {kpod_ops.fused_status(device)[1]}")
    lines.append("Use it from Python (import kpod_ops) or through the kpod command; the README has runnable examples.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """With arguments: run the ``kpod`` command line. Without: :func:`about` and the command's usage."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv in (["--version"], ["-V"]):
        import kpod_ops

        print(f"kpod_ops {kpod_ops.__version__}")
        return 0
    try:
        cli = importlib.import_module("kpod_ops.cli")
    except ModuleNotFoundError as exc:
        if exc.name != "kpod_ops.cli":
            raise  # the command line exists but one of its imports is missing: show that
        cli = None
    if argv and cli is not None:
        return int(cli.main(argv) or 0)
    print(about())
    if cli is not None:
        print()
        try:
            cli.main(["--help"])
        except SystemExit:  # argparse exits after printing the help
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The machine a benchmark ran on, recorded with every figure (shared by the benchmark scripts)."""

from __future__ import annotations

import os
import platform


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            return round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None


def describe() -> dict:
    """CPU model, cores, memory, Python/torch/numpy versions, threads and the allocator setting."""
    import numpy as np
    import torch

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "numpy": np.__version__,
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", "0"),
    }


def summary() -> str:
    """One line for a printed table's header."""
    d = describe()
    return (
        f"{d['cpu']}, {d['cores']} cores, {d['memory_gib']} GiB, {d['os']}, Python {d['python']}, "
        f"torch {d['torch']} ({d['torch_threads']} threads, {d['cpu_capability']}), THP_MEM_ALLOC_ENABLE={d['THP_MEM_ALLOC_ENABLE']}"
    )

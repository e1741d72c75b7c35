"""Artefacts on disk: atomic JSON, stage records with config hashes, safetensors checkpoints.

Nothing here uses pickle: tensors go to safetensors files, everything else to JSON.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import KPODInputError

logger = logging.getLogger("kpod_ops.pipeline")
RECORD = "stage.json"


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON through a temporary file (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_plain) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise KPODInputError(f"{path}: expected a JSON file written by kpod, got {exc}") from None


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _only_rank_0(action: str) -> None:
    """Under torchrun only rank 0 writes stages; the others read them after it (a broken invariant is a bug)."""
    from .distributed import is_main, rank

    if not is_main():
        raise RuntimeError(f"rank {rank()} tried to {action}: only rank 0 writes a run's stages")


class Stage:
    """One stage's folder and record: reuse it only when its configuration hash matches.

    ``stage.json`` holds the hash, the seconds the stage took and what it reports; it is written
    last, so a stage without it is unfinished. A folder whose record has another hash is removed
    (with a message saying so) before the stage runs again.
    """

    def __init__(self, root: Path, name: str, digest: str, say=print) -> None:
        self.name, self.hash, self.say = name, digest, say
        self.dir = Path(root) / name
        self.started = 0.0
        self.reused = False

    def record(self) -> dict | None:
        file = self.dir / RECORD
        return read_json(file) if file.is_file() else None

    def finished(self) -> dict | None:
        """The record if this stage is done with the same configuration; otherwise clear stale results."""
        rec = self.record()
        if rec is not None and rec.get("hash") == self.hash:
            self.say(f"[{self.name}] reusing the finished stage in {self.dir} (configuration hash {self.hash})")
            self.reused = True
            return {**rec, "reused": True}
        if rec is not None:
            _only_rank_0(f"clear the stale stage {self.dir}")
            self.say(f"[{self.name}] configuration changed (hash {rec.get('hash')} -> {self.hash}): redoing this stage")
            shutil.rmtree(self.dir)
        return None

    def start(self) -> Path:
        _only_rank_0(f"start the stage {self.dir}")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        return self.dir

    def finish(self, **info: Any) -> dict:
        rec = {"stage": self.name, "hash": self.hash, "seconds": round(time.perf_counter() - self.started, 3), **info}
        write_json(self.dir / RECORD, rec)
        return {**rec, "reused": False}


# ----------------------------------------------------------------------------- tensors
def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors file written atomically (contiguous CPU copies; shared storage allowed)."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser's state as (tensors for safetensors, JSON-able rest)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_files(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], rest: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, entries in rest.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entries)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in rest["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})

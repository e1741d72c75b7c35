"""kpod_ops: Keypoint-based Progressive chain-of-thought Distillation (KPOD, ICML 2024) as a toolkit.

The top level holds what a user of the loss needs: the fused keypoint-weighted, step-truncated
cross-entropy (C++/CUDA, ``torch.ops.kpod.*``) as functions and modules, the per-step difficulty,
the one-line Hugging Face model patch, and whether the fused kernels load. The rest lives in its
subpackage: ``kpod_ops.data`` (examples, JSONL, tokenising, collators), ``kpod_ops.weighting`` (the
mask learner), ``kpod_ops.curriculum`` (the progressive schedule), ``kpod_ops.integrations.hf``
(Trainer, PEFT, TRL adapters), ``kpod_ops.pipeline`` (``kpod distill`` from Python).
"""

from typing import Any

from ._extension import fused_available, fused_status
from .curriculum.difficulty import step_difficulty
from .errors import KPODInputError
from .losses import (
    KeypointCrossEntropy,
    KeypointLinearCrossEntropy,
    keypoint_cross_entropy,
    keypoint_linear_cross_entropy,
)

__version__ = "0.1.0"  # the only version string: pyproject.toml reads it (dynamic version)

__all__ = [
    "KPODInputError",
    "KeypointCrossEntropy",
    "KeypointLinearCrossEntropy",
    "__version__",
    "apply_kpod_loss",
    "fused_available",
    "fused_status",
    "keypoint_cross_entropy",
    "keypoint_linear_cross_entropy",
    "step_difficulty",
]


def __getattr__(name: str) -> Any:
    # imported on first use: the patch needs transformers (the "hf" extra); `import kpod_ops` does not
    if name == "apply_kpod_loss":
        from .integrations.hf import apply_kpod_loss

        return apply_kpod_loss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"apply_kpod_loss"})

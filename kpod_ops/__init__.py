"""kpod_ops: Keypoint-based Progressive chain-of-thought Distillation (KPOD, ICML 2024) as a toolkit.

Three pieces for your own training loop: a fused keypoint-weighted, step-truncated cross-entropy
(C++/CUDA, ``torch.ops.kpod.*``), a mask learner that finds keypoint tokens, and a progressive
curriculum scheduler. See the README for examples.
"""

from ._extension import fused_available
from .errors import KPODInputError
from .losses import KeypointCrossEntropy, keypoint_cross_entropy, keypoint_cross_entropy_reference

__version__ = "0.1.0"

__all__ = [
    "KPODInputError",
    "KeypointCrossEntropy",
    "fused_available",
    "keypoint_cross_entropy",
    "keypoint_cross_entropy_reference",
]

"""Losses: the fused keypoint cross-entropy, its module form and its pure-PyTorch reference."""

from .keypoint_ce import KeypointCrossEntropy, keypoint_cross_entropy
from .linear import KeypointLinearCrossEntropy, keypoint_linear_cross_entropy
from .linear_reference import keypoint_linear_cross_entropy_reference
from .reference import keypoint_cross_entropy_reference

__all__ = [
    "KeypointCrossEntropy",
    "KeypointLinearCrossEntropy",
    "keypoint_cross_entropy",
    "keypoint_cross_entropy_reference",
    "keypoint_linear_cross_entropy",
    "keypoint_linear_cross_entropy_reference",
]

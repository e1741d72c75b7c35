"""Losses: the fused keypoint cross-entropy and the loss from hidden states, as functions and modules.

``impl="reference"`` runs either one as pure PyTorch (the same results; exact higher-order gradients).
"""

from .keypoint_ce import KeypointCrossEntropy, keypoint_cross_entropy
from .linear import KeypointLinearCrossEntropy, keypoint_linear_cross_entropy

__all__ = [
    "KeypointCrossEntropy",
    "KeypointLinearCrossEntropy",
    "keypoint_cross_entropy",
    "keypoint_linear_cross_entropy",
]

"""Losses: the fused keypoint cross-entropy, its module form and its pure-PyTorch reference."""

from .keypoint_ce import KeypointCrossEntropy, keypoint_cross_entropy
from .reference import keypoint_cross_entropy_reference

__all__ = ["KeypointCrossEntropy", "keypoint_cross_entropy", "keypoint_cross_entropy_reference"]

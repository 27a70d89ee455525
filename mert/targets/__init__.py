"""Frozen teachers that produce pretraining targets on the encoder's 75 Hz grid."""

from mert.targets.base import Teacher

__all__ = ["Teacher"]

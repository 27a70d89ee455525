"""Small helpers shared by the teachers (not public API).

Shape legend: ``b`` batch, ``l`` samples, ``t`` frames, ``k`` codebooks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["check_hop", "empty_targets", "frontend_settings", "make_buffers_non_persistent"]


def check_hop(teacher: nn.Module, hop_length: int, what: str) -> None:
    """Raise ``ValueError`` unless the teacher's hop equals the encoder's (the product of its conv strides).

    Targets are truncated, never resampled in time, so a different hop would silently misalign them.
    """
    encoder_hop = math.prod(teacher.conv_stride)
    if int(hop_length) != encoder_hop:
        raise ValueError(
            f"{type(teacher).__name__}: {what} hop of {hop_length} samples does not match the encoder's hop of "
            f"{encoder_hop} samples (product of conv_stride {list(teacher.conv_stride)}); targets would not be "
            "aligned with the encoder's frames"
        )


def frontend_settings(teacher: nn.Module) -> dict[str, Any]:
    """The encoder front end a teacher was built for, JSON-able (lists, not tuples)."""
    return {"conv_kernel": list(teacher.conv_kernel), "conv_stride": list(teacher.conv_stride)}


def make_buffers_non_persistent(module: nn.Module) -> None:
    """Re-register every buffer of ``module`` (recursively) with ``persistent=False``.

    The buffers still move with ``.to(device)``, but stay out of ``state_dict``: teachers are rebuilt from
    their settings, so checkpoints need not carry (and must not be bloated by) their fixed kernels.
    """
    for sub in module.modules():
        for name, buf in list(sub.named_buffers(recurse=False)):
            delattr(sub, name)
            sub.register_buffer(name, buf, persistent=False)


def empty_targets(wav: Tensor, *trailing: int, dtype: torch.dtype) -> Tensor:
    """``(b, 0, ...)`` targets for inputs shorter than the encoder's receptive field (it produces no frames)."""
    return wav.new_zeros((wav.shape[0], 0, *trailing), dtype=dtype)

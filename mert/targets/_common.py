"""Small helpers shared by the teachers (not public API).

Shape legend: ``b`` batch, ``l`` samples, ``t`` frames, ``k`` codebooks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "check_hop",
    "empty_targets",
    "frontend_settings",
    "load_teacher_file",
    "make_buffers_non_persistent",
    "restore_fit_info",
    "saved_front_end",
]


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


def load_teacher_file(
    path: str | os.PathLike, fmt: str, version: int, kind: str, fit_command: str, writer: str
) -> tuple[Path, dict[str, Any]]:
    """``(resolved path, state)`` of a fitted teacher's file, checked to be ``fmt`` at most ``version``.

    Read with ``torch.load(weights_only=True)``, so a file carrying code is refused rather than run.

    Raises:
        FileNotFoundError: no such file (the message names ``fit_command``, which makes one).
        ValueError: unreadable, not a ``kind`` teacher file, or written by a newer mert.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{kind} teacher file {str(path)!r} does not exist; fit one with `{fit_command}`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, or a pickle carrying code
        from mert.models.checkpoint import load_error_reason

        raise ValueError(f"could not read {kind} teacher {str(path)!r}: {load_error_reason(e)}") from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        article = "an" if kind[0] in "AEIORU" else "a"  # said as letters: "an RVQ", "a k-means"
        raise ValueError(f"{str(path)!r} is not {article} {kind} teacher file (written by {writer})")
    found = state.get("format_version")
    if isinstance(found, bool) or not isinstance(found, int):
        raise ValueError(
            f"{str(path)!r} has no valid 'format_version' (got {found!r}); it was not written by {writer}, "
            "or it was edited: fit it again"
        )
    if found > version:
        raise ValueError(f"{str(path)!r} has format version {found}; upgrade mert to read it")
    return path, state


def saved_front_end(
    path: Path,
    state: dict[str, Any],
    hop: int,
    conv_kernel: Sequence[int] | None,
    conv_stride: Sequence[int] | None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The front end ``(kernel, stride)`` a loaded teacher serves: the caller's if given, else the saved one.

    Raises:
        ValueError: the caller's strides make another hop than the ``hop`` the teacher was fitted on.
    """
    kernel = tuple(int(k) for k in (state["conv_kernel"] if conv_kernel is None else conv_kernel))
    stride = tuple(int(k) for k in (state["conv_stride"] if conv_stride is None else conv_stride))
    if math.prod(stride) != hop:
        raise ValueError(
            f"{str(path)!r} was fitted on a {hop}-sample hop; an encoder with strides "
            f"{list(stride)} (hop {math.prod(stride)}) cannot use its codes"
        )
    return kernel, stride


def restore_fit_info(teacher: nn.Module, path: Path, state: dict[str, Any]) -> None:
    """Give a loaded teacher its file, its fitting record and the files its fit skipped."""
    teacher.path = path
    teacher.fit_info = dict(state.get("fit_info", {}))
    teacher.skipped_files = [tuple(x) for x in teacher.fit_info.get("skipped_files", [])]

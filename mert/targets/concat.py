"""Several code teachers as one: their codebooks side by side.

Shape legend: ``b`` batch, ``l`` samples, ``t`` frames (the encoder's 75 Hz grid), ``k`` codebooks.

MERT-v0 already predicted one codebook per feature set (MFCC, chroma): each carries other information. This
teacher generalises it to any code teachers, e.g. k-means chroma codes (pitch classes) next to a learned RVQ's
log-mel codes (timbre): ``(b, l) -> (b, t, k_1 + k_2 + ...)``. The parts must have the same codebook size, the
objective's code head having one ``v`` for every codebook.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from mert.targets.base import Teacher

__all__ = ["ConcatTargets"]


class ConcatTargets(Teacher):
    """Codes of several code teachers, concatenated along the codebook axis, in the given order.

    Args:
        teachers: code teachers built for the same encoder front end and sample rate, each with the same
            ``codebook_size``.
    Raises:
        ValueError: no teacher, a feature teacher, or different sample rates, front ends or codebook sizes.
    """

    kind = "codes"

    def __init__(self, teachers: Sequence[Teacher]):
        teachers = list(teachers)
        if not teachers:
            raise ValueError("ConcatTargets needs at least one teacher")
        first = teachers[0]
        for t in teachers:
            if getattr(t, "kind", None) != "codes":
                raise ValueError(f"ConcatTargets joins code teachers; {type(t).__name__} gives {t.kind!r}")
            for attr in ("sample_rate", "conv_kernel", "conv_stride", "codebook_size"):
                if getattr(t, attr) != getattr(first, attr):
                    raise ValueError(
                        f"ConcatTargets: every teacher needs the same {attr}; {type(first).__name__} has "
                        f"{getattr(first, attr)}, {type(t).__name__} has {getattr(t, attr)}"
                    )
        super().__init__(sample_rate=first.sample_rate, conv_kernel=first.conv_kernel, conv_stride=first.conv_stride)
        self.parts = nn.ModuleList(teachers)
        self.codebook_size = first.codebook_size
        self.num_codebooks = sum(t.num_codebooks for t in teachers)
        self.whole_file = any(getattr(t, "whole_file", False) for t in teachers)
        self.freeze()

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``(b, l)`` -> ``(b, t, k)`` int64: each part's codes (on its own terms: offsets, lengths) side by side."""
        import torch

        return torch.cat([t(wav, lengths) for t in self.parts], dim=-1)

    @property
    def frame_offset(self) -> int:
        return self.parts[0].frame_offset

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, codebooks={self.num_codebooks}x{self.codebook_size}"

    def settings(self) -> dict[str, Any]:
        """``{"class": "ConcatTargets", "teachers": [each part's settings]}``."""
        return {"class": type(self).__name__, "teachers": [t.settings() for t in self.parts]}

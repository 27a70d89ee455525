"""In-batch noise mixing (MERT-v1 in-batch mixing): other clips of the batch are added to the model input as
interference.

Shape legend: ``b`` batch, ``l`` samples.

For each clip, with probability ``prob``: draw 1 to ``max_segments`` segments (inclusive), each of a uniform
length in ``[min_seconds, max_seconds]``, cut at a uniform position from the OTHER clips of the batch
concatenated end to end (valid samples only), and add each at gain 1.0 (no SNR scaling) at a uniform position
inside the clip. Only the model input is mixed; the teachers see the clean audio. A batch of one stays clean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["MixedSegment", "mix_in_batch"]


@dataclass(frozen=True)
class MixedSegment:
    """One added segment: ``length`` samples into clip ``item`` at ``start``, taken from offset ``source_start``
    of the concatenation of the other clips."""

    item: int
    start: int
    length: int
    source_start: int


def mix_in_batch(
    wav: Tensor,
    lengths: Tensor | None = None,
    *,
    sample_rate: int = 24000,
    prob: float = 0.5,
    max_segments: int = 3,
    min_seconds: float = 0.5,
    max_seconds: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, list[MixedSegment]]:
    """Mix segments of other clips into each clip.

    Args:
        wav: ``(b, l)`` clean audio, right-padded.
        lengths: ``(b,)`` valid samples or None (all full).
        prob: probability that a clip receives noise (spec: 0.5).
        max_segments: segments per noisy clip are drawn from 1..max_segments (spec: 3).
        min_seconds, max_seconds: segment length range (spec: 0.5-1.0 s for 95M, 0.5-1.5 s for 330M).
        generator: CPU generator for reproducible mixing.
    Returns:
        ``(mixed (b, l), segments)``; ``mixed`` is a new tensor, ``wav`` is untouched.
    """
    if not 0.0 <= prob <= 1.0 or max_segments < 1 or not 0 < min_seconds <= max_seconds:
        raise ValueError(
            f"need 0 <= prob <= 1, max_segments >= 1 and 0 < min_seconds <= max_seconds, got {prob}, "
            f"{max_segments}, {min_seconds}, {max_seconds}"
        )
    b, l = wav.shape
    mixed = wav.clone()
    segments: list[MixedSegment] = []
    if b < 2 or prob == 0.0:
        return mixed, segments
    lens = lengths.tolist() if lengths is not None else [l] * b

    def uniform_int(lo: int, hi: int) -> int:  # inclusive bounds
        return lo + int(torch.randint(hi - lo + 1, (), generator=generator))

    for i in range(b):
        if float(torch.rand((), generator=generator)) >= prob:
            continue
        pool = torch.cat([wav[j, : lens[j]] for j in range(b) if j != i])  # other clips, end to end
        for _ in range(uniform_int(1, max_segments)):
            sec = min_seconds + (max_seconds - min_seconds) * float(torch.rand((), generator=generator))
            n = min(int(sec * sample_rate), lens[i], pool.shape[0])
            if n <= 0:
                continue
            src = uniform_int(0, pool.shape[0] - n)
            dst = uniform_int(0, lens[i] - n)
            mixed[i, dst : dst + n] += pool[src : src + n]
            segments.append(MixedSegment(i, dst, n, src))
    return mixed, segments

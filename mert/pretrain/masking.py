"""Masks for masked prediction: MERT's span masking and MuQ/MusicFM block masking.

Shape legend: ``b`` batch, ``t`` frames.

Span masking (MERT-v1 targets and loss: mask_prob 0.8, spans of 5 frames, at least 2 spans):

As in HuBERT/fairseq: an item of ``n`` valid frames gets ``int(mask_prob * n / span + u)`` span starts
(``u ~ U[0, 1)`` rounds stochastically), at least ``min_spans``, drawn without replacement from the
positions where a whole span fits; spans may overlap, so about 0.16 n starts cover about 55-60 % of the frames.
Padding is never masked.

Block masking (MusicFM, MuQ: 400 ms blocks, p = 0.6): the frame axis is cut into fixed blocks of ``block``
frames starting at frame 0 (10 frames at 25 Hz, 30 at 75 Hz), and each block is masked with probability
``mask_prob`` on its own, so on average a fraction ``mask_prob`` of the frames is masked and the masked runs
are whole blocks. Padding is never masked (a block that straddles the end of an item is masked up to it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["block_mask", "span_mask"]


def span_mask(
    lengths: Tensor,
    num_frames: int,
    *,
    mask_prob: float = 0.8,
    span: int = 5,
    min_spans: int = 2,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> Tensor:
    """Draw a prediction mask.

    Args:
        lengths: ``(b,)`` valid frames per item.
        num_frames: ``t``, the padded frame count.
        mask_prob: expected fraction of frames that start a span, times ``span``.
        span: frames per masked span (``mask_span_frames``).
        min_spans: lower bound on spans per item (capped by how many fit).
        generator: CPU generator for reproducible masks, or one generator per item (so an item's mask does not
            depend on which other items share its batch, e.g. on how a global batch is split over ranks).
    Returns:
        ``pred_mask (b, t)`` bool, True = masked and predicted.
    """
    if not 0.0 <= mask_prob <= 1.0 or span < 1:
        raise ValueError(f"mask_prob must be in [0, 1] and span >= 1, got {mask_prob}, {span}")
    b = lengths.shape[0]
    mask = torch.zeros(b, num_frames, dtype=torch.bool)
    gens = list(generator) if isinstance(generator, Sequence) else [generator] * b
    if len(gens) != b:
        raise ValueError(f"got {len(gens)} generators for a batch of {b}")
    for i, n in enumerate(lengths.tolist()):
        generator = gens[i]
        n = min(int(n), num_frames)
        positions = n - span + 1  # starts where a full span fits inside the valid frames
        if positions <= 0:
            mask[i, :n] = n > 0 and mask_prob > 0  # clip shorter than one span: mask what there is
            continue
        u = float(torch.rand((), generator=generator))
        k = int(mask_prob * n / span + u)
        k = min(max(min_spans, k), positions) if mask_prob > 0 else 0
        starts = torch.randperm(positions, generator=generator)[:k]
        idx = (starts[:, None] + torch.arange(span)[None, :]).flatten()
        mask[i, idx] = True
    return mask.to(lengths.device)


def block_mask(
    lengths: Tensor,
    num_frames: int,
    *,
    mask_prob: float = 0.6,
    block: int = 10,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> Tensor:
    """Draw a block mask: fixed blocks of ``block`` frames, each masked with probability ``mask_prob``.

    Args:
        lengths: ``(b,)`` valid frames per item.
        num_frames: ``t``, the padded frame count.
        mask_prob: probability that a block is masked: the expected fraction of masked frames.
        block: frames per block (``round(mask_span_seconds * frame_rate)``); blocks start at frame 0.
        generator: CPU generator, or one generator per item (an item's mask then does not depend on its batch).
    Returns:
        ``pred_mask (b, t)`` bool, True = masked and predicted; False on padding.
    """
    if not 0.0 <= mask_prob <= 1.0 or block < 1:
        raise ValueError(f"mask_prob must be in [0, 1] and block >= 1, got {mask_prob}, {block}")
    b = lengths.shape[0]
    gens = list(generator) if isinstance(generator, Sequence) else [generator] * b
    if len(gens) != b:
        raise ValueError(f"got {len(gens)} generators for a batch of {b}")
    num_blocks = -(-num_frames // block)
    # One uniform draw per block of the padded grid, per item: an item's draws do not depend on its length.
    draws = torch.stack([torch.rand(num_blocks, generator=g) for g in gens]) if b else torch.zeros(0, num_blocks)
    mask = (draws < mask_prob).repeat_interleave(block, dim=1)[:, :num_frames]  # (b, t)
    valid = torch.arange(num_frames)[None, :] < lengths.cpu().long().clamp(max=num_frames)[:, None]
    return (mask & valid).to(lengths.device)

"""Corpus statistics and a uniform frame sample, in bounded memory: what fitted teachers learn from.

Shape legend: ``l`` samples, ``t`` frames (the encoder's 75 Hz grid), ``n`` sampled frames, ``d`` feature dim.

Shared by :meth:`mert.targets.KMeansTargets.fit` and :func:`mert.targets.rvq.fit_rvq` (not public API).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mert.audio import find_audio

__all__ = ["FrameSample", "sample_frames"]

# Long files are featurised in pieces so a 10-minute track does not need gigabytes of STFT at once; the
# pieces' edges change a handful of frames, which does not matter for corpus statistics.
CHUNK_SECONDS = 30.0


@dataclass
class FrameSample:
    """What :func:`sample_frames` read.

    Attributes:
        frames: ``{name: (n, d)}`` a uniform sample without replacement of every frame read.
        mean, std: ``{name: (d,)}`` float32 statistics over every frame read (std clamped to >= 1e-5).
        num_files: inputs read; ``num_frames``: frames read (all enter the statistics).
        skipped: ``[(input, reason), ...]`` inputs that could not be used.
    """

    frames: dict[str, Tensor]
    mean: dict[str, Tensor]
    std: dict[str, Tensor]
    num_files: int
    num_frames: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


def sample_frames(
    audio: Iterable[str | os.PathLike | Tensor | np.ndarray] | str | os.PathLike,
    featurize: Callable[[Tensor], dict[str, Tensor]],
    dims: dict[str, int],
    num_frames: Callable[[int], int],
    *,
    max_frames: int,
    sample_rate: int,
    seed: int = 0,
    progress: bool = True,
    desc: str = "features",
) -> FrameSample:
    """Stream a corpus once: feature statistics over every frame and a uniform sample of ``max_frames``.

    Args:
        audio: a folder (searched recursively), a file, or a sequence of paths and/or waveforms ``(l,)`` /
            ``(channels, l)`` already at ``sample_rate``.
        featurize: ``(1, l)`` waveform -> ``{name: (1, >= num_frames(l), d)}`` features (called without grad).
        dims: ``{name: d}`` of what ``featurize`` returns.
        num_frames: encoder frames of ``l`` samples: the only frames targets ever have.
        max_frames: size of the sample.
        sample_rate: Hz; files are resampled to it.
        seed: seeds the sampling; the same inputs and seed give the same sample.
        progress: show a progress bar over the inputs.
        desc: the progress bar's label.
    Raises:
        ValueError: no input could be used.
    """
    from mert.audio import load_audio
    from mert.progress import progress_bar

    names = list(dims)
    gen = torch.Generator().manual_seed(int(seed))
    count = 0
    sums = {s: torch.zeros(dims[s], dtype=torch.float64) for s in names}
    sq_sums = {s: torch.zeros(dims[s], dtype=torch.float64) for s in names}
    # Bottom-k sampling: every frame gets a uniform random key and the max_frames smallest keys are kept,
    # an exact uniform sample without replacement of the whole corpus in bounded memory. New frames wait
    # in `pending` and are merged once they outnumber the sample, so each frame is copied O(1) times.
    sample: dict[str, Tensor] = {s: torch.empty(0, dims[s]) for s in names}
    sample_keys = torch.empty(0)
    pending: list[tuple[Tensor, dict[str, Tensor]]] = []
    num_pending = 0

    def merge() -> None:
        nonlocal sample, sample_keys, pending, num_pending
        keys = torch.cat([sample_keys, *(k for k, _ in pending)])
        feats = {s: torch.cat([sample[s], *(f[s] for _, f in pending)]) for s in names}
        keep = keys.topk(min(max_frames, keys.shape[0]), largest=False).indices
        sample_keys, sample = keys[keep], {s: f[keep] for s, f in feats.items()}
        pending, num_pending = [], 0

    if isinstance(audio, (str, os.PathLike)):  # one folder (searched recursively) or one file
        audio = find_audio(Path(audio)) if Path(audio).is_dir() else [audio]
    items = audio if isinstance(audio, Sequence) else list(audio)
    skipped: list[tuple[str, str]] = []
    num_read = 0
    chunk = int(CHUNK_SECONDS * sample_rate)
    for i, item in enumerate(progress_bar(items, desc=desc, unit="file", disable=not progress)):
        name = f"audio[{i}]" if isinstance(item, (Tensor, np.ndarray)) else str(item)
        try:
            if isinstance(item, (Tensor, np.ndarray)):
                wav = torch.as_tensor(item).float()
                wav = wav.mean(dim=0) if wav.dim() == 2 else wav
                if wav.dim() != 1:
                    raise ValueError(f"expected a waveform (l,) or (channels, l), got shape {tuple(wav.shape)}")
            else:
                wav, _ = load_audio(item, sample_rate=sample_rate)
        except (OSError, ValueError, RuntimeError) as e:
            skipped.append((name, str(e)))
            continue
        if not bool(torch.isfinite(wav).all()):
            skipped.append((name, "contains NaN or infinite samples"))
            continue
        if num_frames(wav.shape[0]) == 0:
            skipped.append((name, f"too short ({wav.shape[0]} samples) for even one encoder frame"))
            continue
        num_read += 1
        for piece in wav.split(chunk):
            t = num_frames(piece.shape[0])
            if t == 0:
                continue
            with torch.no_grad():
                feats = {s: f[0, :t] for s, f in featurize(piece[None]).items()}  # (t, d): encoder frames
            count += t
            for s, f in feats.items():
                sums[s] += f.double().sum(dim=0)
                sq_sums[s] += f.double().square().sum(dim=0)
            pending.append((torch.rand(t, generator=gen), feats))
            num_pending += t
            if num_pending >= max_frames:
                merge()
    if num_read == 0:
        listed = "; ".join(f"{f}: {r}" for f, r in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        raise ValueError(f"no usable audio among {len(skipped)} input(s): {listed}")
    merge()
    mean, std = {}, {}
    for s in names:
        m = sums[s] / count
        mean[s] = m.float()
        std[s] = (sq_sums[s] / count - m.square()).clamp_min(0).sqrt().float().clamp_min(1e-5)
    return FrameSample(sample, mean, std, num_read, count, skipped)

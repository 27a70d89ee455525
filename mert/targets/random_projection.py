"""A BEST-RQ random-projection quantiser: codes that need no download and no fitting.

Shape legend: ``b`` batch, ``l`` samples, ``t`` frames (75 Hz), ``m`` mel bands, ``k`` codebooks, ``v`` codebook
size, ``e`` code dimension.

Per frame: log-mel (80 bands, 1024-sample Hann window, hop 320, centred) -> normalised per utterance ->
``k`` frozen random projections to ``e`` dims -> index of the most cosine-similar of ``v`` random unit
vectors. Everything random is drawn from a private generator seeded with ``seed``, in a fixed order, so the
same seed gives the same codes on every machine and device.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mert.models.config import frame_lengths
from mert.targets._common import check_hop, empty_targets, frontend_settings
from mert.targets.base import Teacher
from mert.targets.features import FrameFeatures

__all__ = ["RandomProjectionTargets"]


class RandomProjectionTargets(Teacher):
    """Random-projection codes: ``(b, l) -> (b, t, num_codebooks)`` int64 in ``[0, codebook_size)``.

    Normalisation: each utterance's log-mel is standardised per mel band with the mean and standard deviation
    over its own valid frames (the first ``frame_lengths(lengths)`` frames). Per-utterance statistics need no
    corpus pass, make the codes independent of gain, and, with ``lengths``, give a clip the same codes alone
    or zero-padded in a batch. A clip that is digital silence maps to code 0 everywhere.

    Args:
        num_codebooks: ``k`` independent projections and codebooks.
        codebook_size: ``v`` codes per codebook.
        code_dim: ``e``, dimension the log-mel is projected to.
        n_mels: mel bands of the input features.
        seed: seed of the projections and codebooks.
        sample_rate: Hz of the input audio.
        n_fft: STFT window and size.
        conv_kernel, conv_stride: the encoder front end; its hop is the feature hop.

    Attributes:
        kind: ``"codes"``.
        projection: ``(k, m, e)`` buffer, Xavier-normal (std ``sqrt(2 / (m + e))``).
        codebooks: ``(k, v, e)`` buffer of unit vectors.
    """

    kind = "codes"

    def __init__(
        self,
        *,
        num_codebooks: int = 8,
        codebook_size: int = 1024,
        code_dim: int = 16,
        n_mels: int = 80,
        seed: int = 0,
        sample_rate: int = 24000,
        n_fft: int = 1024,
        conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2),
        conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2),
    ):
        super().__init__(sample_rate=sample_rate, conv_kernel=conv_kernel, conv_stride=conv_stride)
        if min(num_codebooks, codebook_size, code_dim, n_mels) < 1:
            raise ValueError("num_codebooks, codebook_size, code_dim and n_mels must be positive")
        self.num_codebooks, self.codebook_size = int(num_codebooks), int(codebook_size)
        self.code_dim, self.n_mels, self.seed = int(code_dim), int(n_mels), int(seed)
        hop = math.prod(self.conv_stride)
        check_hop(self, hop, "log-mel")
        self.features = FrameFeatures(
            sample_rate=sample_rate, hop_length=hop, n_fft=n_fft, n_mels=self.n_mels, n_mfcc=min(20, self.n_mels)
        )
        # Draw order (projections, then codebooks) is part of the format: changing it changes every code.
        gen = torch.Generator().manual_seed(self.seed)
        projection = torch.empty(self.num_codebooks, self.n_mels, self.code_dim)
        for proj in projection:  # (m, e) each; Xavier-normal as in BEST-RQ (the scale is irrelevant to cosine)
            torch.nn.init.xavier_normal_(proj, generator=gen)
        codebooks = F.normalize(
            torch.randn(self.num_codebooks, self.codebook_size, self.code_dim, generator=gen), dim=-1
        )
        # Rebuilt from the seed: kept out of state dicts like every teacher's fixed tensors.
        self.register_buffer("projection", projection, persistent=False)
        self.register_buffer("codebooks", codebooks, persistent=False)
        self._lengths: Tensor | None = None
        self.freeze()

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Codes for clean audio; see :meth:`Teacher.forward`.

        Args:
            wav: ``(b, l)`` float waveform at ``sample_rate``.
            lengths: ``(b,)`` valid samples per item, or None (every sample valid). Only the valid frames
                enter each utterance's normalisation statistics.
        Returns:
            ``(b, t, k)`` int64 codes, ``t = frame_lengths(l)``.
        """
        # The base class does not pass lengths on to compute(); hold them for the duration of this call.
        self._lengths = lengths
        try:
            return super().forward(wav, lengths)
        finally:
            self._lengths = None

    def normalized_logmel(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``(b, l)`` -> ``(b, l // hop + 1, m)`` log-mel standardised per utterance and mel band."""
        feats = self.features.logmel(wav)  # (b, t', m)
        b, t_all, _ = feats.shape
        t = self.num_frames(wav.shape[1])
        if lengths is None:
            valid = torch.full((b,), t, device=wav.device)
        else:
            lengths = torch.as_tensor(lengths, device=wav.device)
            if lengths.shape != (b,):
                raise ValueError(f"lengths must have shape ({b},), got {tuple(lengths.shape)}")
            valid = frame_lengths(lengths.clamp(max=wav.shape[1]), self.conv_kernel, self.conv_stride)
        valid = valid.clamp(min=1)
        mask = (torch.arange(t_all, device=wav.device)[None, :] < valid[:, None]).unsqueeze(-1)  # (b, t', 1)
        count = valid.to(feats.dtype)[:, None, None]
        mean = (feats * mask).sum(dim=1, keepdim=True) / count  # (b, 1, m)
        var = ((feats - mean).square() * mask).sum(dim=1, keepdim=True) / count
        return (feats - mean) / var.sqrt().clamp_min(1e-5)

    def compute(self, wav: Tensor) -> Tensor:
        """``(b, l)`` -> ``(b, l // hop + 1, k)`` int64 codes."""
        if self.num_frames(wav.shape[1]) == 0:
            return empty_targets(wav, self.num_codebooks, dtype=torch.int64)
        feats = self.normalized_logmel(wav.to(self.projection.dtype), self._lengths)  # (b, t, m)
        codes = []
        # One codebook at a time: (b, t, v) similarities instead of (b, t, k, v) for long inputs.
        for proj, book in zip(self.projection, self.codebooks):
            z = F.normalize(feats @ proj, dim=-1)  # (b, t, e)
            codes.append((z @ book.T).argmax(dim=-1))  # (b, t): nearest code by cosine similarity
        return torch.stack(codes, dim=-1)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_codebooks={self.num_codebooks}, codebook_size={self.codebook_size}, "
            f"code_dim={self.code_dim}, n_mels={self.n_mels}, seed={self.seed}"
        )

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "num_codebooks": self.num_codebooks,
            "codebook_size": self.codebook_size,
            "code_dim": self.code_dim,
            "n_mels": self.n_mels,
            "seed": self.seed,
            "n_fft": self.features.n_fft,
            **frontend_settings(self),
        }

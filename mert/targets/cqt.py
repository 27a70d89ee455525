"""MERT's musical teacher: a constant-Q transform magnitude (nnAudio ``CQT1992v2``), spec section 2.

Shape legend: ``b`` batch, ``l`` samples, ``t`` frames (75 Hz), ``f`` CQT bins.

The defaults are the spec's: 24 kHz, hop 320, fmin 32.7 Hz, 336 bins at 48 per octave (7 octaves), Hann
window, centred frames, linear magnitude (no log). The MSE head regresses these values directly.

``compression="log"`` returns ``log(magnitude + log_floor)`` instead, for small-scale recipes: linear
magnitudes are heavy-tailed (on the demo's music: median 0.009, mean 0.22, maximum 8), so an MSE on them is
dominated by the few loudest bins of the loudest clips and a small model learns to predict little more than
their average; in the log domain every note and partial above the floor counts (values about -4.6 to 2,
standard deviation ~1.7). MERT's full-scale recipes keep the spec's linear magnitude.

Cost: the lowest bin needs a 65536-tap kernel, so nnAudio's time-domain convolution is heavy: about 0.45 s
for 2 x 5 s clips on 2 CPU threads, and the 336 complex kernels take 176 MB (float32). On a GPU it is cheap;
on CPU prefer caching the targets.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from mert.targets._common import check_hop, empty_targets, frontend_settings, make_buffers_non_persistent
from mert.targets.base import Teacher

__all__ = ["CQTTargets"]


class CQTTargets(Teacher):
    """CQT magnitude frames: ``(b, l) -> (b, t, n_bins)`` float32, ``t = frame_lengths(l)``.

    Frame ``i`` is centred on sample ``i * hop_length``: the clip is padded by half the longest kernel (32768
    samples, 1.37 s, with the defaults) on each side, with zeros as MERT's own teacher (nnAudio ``center=True,
    pad_mode="constant"``, spec 2). ``pad_mode="reflect"`` mirrors the clip instead (nnAudio's default, which
    changes the first and last ~1.4 s of targets: not MERT's); clips no longer than the padding cannot be
    mirrored that far and are zero-padded either way.

    Args:
        sample_rate: Hz of the input audio.
        hop_length: samples between frames; must equal the encoder's hop.
        fmin: Hz of the lowest bin.
        n_bins: number of bins (``dim``).
        bins_per_octave: frequency resolution.
        compression: ``"linear"`` (spec) or ``"log"``: ``log(magnitude + log_floor)``.
        log_floor: magnitude added before the log (the floor that quiet bins sit on).
        pad_mode: ``"constant"`` (zeros, spec) or ``"reflect"`` at the clip's edges.
        conv_kernel, conv_stride: the encoder front end whose frame count the targets match.

    Attributes:
        kind: ``"features"``.
        dim: ``n_bins``.
        frequencies: ``(n_bins,)`` centre frequency of each bin in Hz (numpy array).
    """

    kind = "features"

    def __init__(
        self,
        *,
        sample_rate: int = 24000,
        hop_length: int = 320,
        fmin: float = 32.7,
        n_bins: int = 336,
        bins_per_octave: int = 48,
        compression: str = "linear",
        log_floor: float = 0.01,
        pad_mode: str = "constant",
        conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2),
        conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2),
    ):
        super().__init__(sample_rate=sample_rate, conv_kernel=conv_kernel, conv_stride=conv_stride)
        check_hop(self, hop_length, "CQT")
        from nnAudio.features.cqt import CQT1992v2  # lazy: nnAudio (and scipy) load only when a CQT is built

        self.hop_length, self.fmin = int(hop_length), float(fmin)
        self.n_bins, self.bins_per_octave = int(n_bins), int(bins_per_octave)
        self.dim = self.n_bins
        if compression not in ("linear", "log"):
            raise ValueError(f"CQT compression must be 'linear' or 'log', got {compression!r}")
        if not log_floor > 0:
            raise ValueError(f"CQT log_floor must be positive, got {log_floor}")
        self.compression, self.log_floor = compression, float(log_floor)
        if pad_mode not in ("constant", "reflect"):
            raise ValueError(f"CQT pad_mode must be 'constant' (zeros, MERT) or 'reflect', got {pad_mode!r}")
        self.pad_mode = pad_mode
        # center=False: we pad ourselves (below), identically to nnAudio's center=True with this pad_mode, so
        # that clips too short to reflect still work.
        self.cqt = CQT1992v2(
            sr=sample_rate,
            hop_length=self.hop_length,
            fmin=self.fmin,
            n_bins=self.n_bins,
            bins_per_octave=self.bins_per_octave,
            window="hann",
            center=False,
            output_format="Magnitude",
            verbose=False,
        )
        self.frequencies = self.cqt.frequencies
        make_buffers_non_persistent(self.cqt)  # 176 MB of fixed kernels never belong in a checkpoint
        self.freeze()

    @property
    def pad(self) -> int:
        """Samples added on each side so frame ``i`` is centred on sample ``i * hop_length``."""
        return self.cqt.kernel_width // 2

    def compute(self, wav: Tensor) -> Tensor:
        """``(b, l)`` -> ``(b, l // hop + 1, n_bins)`` CQT magnitude (linear, or its log)."""
        if self.num_frames(wav.shape[1]) == 0:
            return empty_targets(wav, self.n_bins, dtype=torch.float32)
        kernels = self.cqt.cqt_kernels_real
        x = rearrange(wav.to(kernels.dtype), "b l -> b 1 l")
        mode = "reflect" if self.pad_mode == "reflect" and wav.shape[1] > self.pad else "constant"
        x = F.pad(x, (self.pad, self.pad), mode=mode)
        mag = rearrange(self.cqt(x).float(), "b f t -> b t f")
        return torch.log(mag + self.log_floor) if self.compression == "log" else mag

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, hop_length={self.hop_length}, fmin={self.fmin}, n_bins={self.n_bins}, "
            f"bins_per_octave={self.bins_per_octave}, pad_mode='{self.pad_mode}'"
            + (f", compression='log', log_floor={self.log_floor}" if self.compression == "log" else "")
        )

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "hop_length": self.hop_length,
            "fmin": self.fmin,
            "n_bins": self.n_bins,
            "bins_per_octave": self.bins_per_octave,
            # Always written: shards cached before zero padding became the default (reflect, no key) then
            # mismatch and are refused instead of silently training on the other padding.
            "pad_mode": self.pad_mode,
            # Only when not the spec's default, so shards cached with linear targets keep matching.
            **({"compression": "log", "log_floor": self.log_floor} if self.compression == "log" else {}),
            **frontend_settings(self),
        }

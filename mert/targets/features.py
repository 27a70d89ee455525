"""Hand-crafted frame features on the encoder's 75 Hz grid: log-mel, MFCC with deltas, chroma.

Shared by :class:`~mert.targets.RandomProjectionTargets` (log-mel) and :class:`~mert.targets.KMeansTargets`
(any of the three). Every feature is an STFT with ``center=True`` at the encoder's hop, so frame ``i`` is
centred on sample ``i * hop`` and a clip of ``l`` samples gives ``l // hop + 1 >= frame_lengths(l)`` frames.

Shape legend: ``b`` batch, ``l`` samples, ``t`` frames, ``f`` STFT bins, ``m`` mel bands, ``d`` feature dim.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

__all__ = ["FrameFeatures", "FEATURE_SETS", "check_feature_sets"]

FEATURE_SETS = ("logmel", "mfcc", "chroma")

# Floor added to mel power before the log: about 100 dB below a full-scale tone's band power, so digital
# silence gives a finite, constant value instead of -inf.
_LOG_EPS = 1e-6


class FrameFeatures(nn.Module):
    """Log-mel, MFCC (+ delta, delta-delta) and chroma frames for ``(b, l)`` audio.

    The STFTs zero-pad the clip's edges (``pad_mode="constant"``) rather than reflecting: a clip then has the
    same features alone or followed by zero padding in a batch, and clips shorter than the window work.

    Args:
        sample_rate: Hz.
        hop_length: samples between frames; must be the encoder's hop (320 for MERT-v1).
        n_fft: window and FFT size of the log-mel / MFCC STFT (Hann window).
        n_mels: mel bands (HTK scale, 0 Hz to Nyquist, unnormalised triangles).
        n_mfcc: cepstral coefficients kept (orthonormal DCT-II of the log-mel); deltas triple the dimension.
        chroma_n_fft: window of the chroma STFT; longer than ``n_fft`` so low notes are a semitone apart
            (4096 samples at 24 kHz: 5.9 Hz bins).
        chroma_fmin, chroma_fmax: Hz range folded into the 12 pitch classes (C2..C8 by default).
    """

    def __init__(
        self,
        *,
        sample_rate: int = 24000,
        hop_length: int = 320,
        n_fft: int = 1024,
        n_mels: int = 80,
        n_mfcc: int = 20,
        chroma_n_fft: int = 4096,
        chroma_fmin: float = 65.41,
        chroma_fmax: float = 4186.0,
    ):
        super().__init__()
        import torchaudio.functional as AF  # lazy: `import mert.targets` stays light

        if n_mfcc > n_mels:
            raise ValueError(f"n_mfcc ({n_mfcc}) cannot exceed n_mels ({n_mels})")
        if not 0 < chroma_fmin < chroma_fmax <= sample_rate / 2:
            raise ValueError(f"need 0 < chroma_fmin < chroma_fmax <= Nyquist, got {chroma_fmin}, {chroma_fmax}")
        self.sample_rate, self.hop_length = int(sample_rate), int(hop_length)
        self.n_fft, self.n_mels, self.n_mfcc = int(n_fft), int(n_mels), int(n_mfcc)
        self.chroma_n_fft, self.chroma_fmin, self.chroma_fmax = (
            int(chroma_n_fft),
            float(chroma_fmin),
            float(chroma_fmax),
        )

        mel_fb = AF.melscale_fbanks(self.n_fft // 2 + 1, 0.0, sample_rate / 2, self.n_mels, self.sample_rate)  # (f, m)
        dct = AF.create_dct(self.n_mfcc, self.n_mels, norm="ortho")  # (m, n_mfcc)
        # Fixed kernels, rebuilt from the arguments: non-persistent so they never enter a state dict.
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.register_buffer("mel_fb", mel_fb, persistent=False)
        self.register_buffer("dct", dct, persistent=False)
        self.register_buffer("chroma_window", torch.hann_window(self.chroma_n_fft), persistent=False)
        self.register_buffer("chroma_fb", self._chroma_filterbank(), persistent=False)

    def _chroma_filterbank(self) -> Tensor:
        """``(f, 12)`` weights folding STFT bins into pitch classes (0 = C): a Gaussian of 0.5 semitone around
        each pitch class, summed over octaves, restricted to ``[chroma_fmin, chroma_fmax]``."""
        freqs = torch.arange(self.chroma_n_fft // 2 + 1, dtype=torch.float64) * self.sample_rate / self.chroma_n_fft
        in_range = (freqs >= self.chroma_fmin) & (freqs <= self.chroma_fmax)
        midi = 69.0 + 12.0 * torch.log2(freqs.clamp_min(1e-6) / 440.0)  # (f,)
        # Signed distance in semitones to each pitch class, wrapped to [-6, 6).
        dist = torch.remainder(midi[:, None] - torch.arange(12, dtype=torch.float64) + 6.0, 12.0) - 6.0  # (f, 12)
        fb = torch.exp(-0.5 * (dist / 0.5) ** 2) * in_range[:, None]
        return fb.float()

    def dim(self, feature_set: str) -> int:
        """Feature dimension ``d`` of one set."""
        dims = {"logmel": self.n_mels, "mfcc": 3 * self.n_mfcc, "chroma": 12}
        if feature_set not in dims:
            raise ValueError(f"unknown feature set {feature_set!r}; available: {list(FEATURE_SETS)}")
        return dims[feature_set]

    def config(self) -> dict[str, Any]:
        """Constructor arguments, JSON-able (saved with fitted k-means so features are recomputed identically)."""
        return {
            "sample_rate": self.sample_rate,
            "hop_length": self.hop_length,
            "n_fft": self.n_fft,
            "n_mels": self.n_mels,
            "n_mfcc": self.n_mfcc,
            "chroma_n_fft": self.chroma_n_fft,
            "chroma_fmin": self.chroma_fmin,
            "chroma_fmax": self.chroma_fmax,
        }

    def num_frames(self, num_samples: int) -> int:
        """Frames of a centred STFT: ``l // hop + 1``."""
        return num_samples // self.hop_length + 1

    def _power(self, wav: Tensor, n_fft: int, window: Tensor) -> Tensor:
        """``(b, l)`` -> ``(b, f, t)`` power spectrogram, zero-padded centred frames."""
        spec = torch.stft(
            wav,
            n_fft=n_fft,
            hop_length=self.hop_length,
            win_length=n_fft,
            window=window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        return spec.real.square() + spec.imag.square()

    def logmel(self, wav: Tensor) -> Tensor:
        """``(b, l)`` -> ``(b, t, m)`` natural-log mel power."""
        power = self._power(wav, self.n_fft, self.window)  # (b, f, t)
        mel = torch.einsum("bft,fm->btm", power, self.mel_fb)
        return torch.log(mel + _LOG_EPS)

    def mfcc(self, wav: Tensor, logmel: Tensor | None = None) -> Tensor:
        """``(b, l)`` -> ``(b, t, 3 * n_mfcc)``: MFCC, delta, delta-delta (5-frame regression windows)."""
        import torchaudio.functional as AF

        logmel = self.logmel(wav) if logmel is None else logmel
        cep = rearrange(logmel @ self.dct, "b t c -> b c t")  # compute_deltas works along the last axis
        d1 = AF.compute_deltas(cep, win_length=5)
        d2 = AF.compute_deltas(d1, win_length=5)
        return rearrange(torch.cat([cep, d1, d2], dim=1), "b c t -> b t c")

    def chroma(self, wav: Tensor) -> Tensor:
        """``(b, l)`` -> ``(b, t, 12)`` pitch-class energy, each frame divided by its maximum (0 = C)."""
        power = self._power(wav, self.chroma_n_fft, self.chroma_window)  # (b, f, t)
        chroma = torch.einsum("bft,fc->btc", power, self.chroma_fb)
        # Max-normalised as in librosa: the profile, not the loudness, is what identifies harmony.
        return chroma / chroma.amax(dim=-1, keepdim=True).clamp_min(1e-8)

    def forward(self, wav: Tensor, feature_sets: tuple[str, ...] | list[str] = FEATURE_SETS) -> dict[str, Tensor]:
        """Compute the requested sets.

        Args:
            wav: ``(b, l)`` float waveform at ``sample_rate``.
            feature_sets: names among ``FEATURE_SETS``.
        Returns:
            ``{name: (b, t, d)}`` float32, ``t = l // hop + 1``.
        """
        out: dict[str, Tensor] = {}
        logmel = None
        for name in feature_sets:
            if name in ("logmel", "mfcc") and logmel is None:
                logmel = self.logmel(wav)
            if name == "logmel":
                out[name] = logmel
            elif name == "mfcc":
                out[name] = self.mfcc(wav, logmel)
            elif name == "chroma":
                out[name] = self.chroma(wav)
            else:
                raise ValueError(f"unknown feature set {name!r}; available: {list(FEATURE_SETS)}")
        return out

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())


def check_feature_sets(feature_sets: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Validated, de-duplicated tuple of feature-set names (order kept: it is the codebook order)."""
    sets = tuple(dict.fromkeys(feature_sets))
    bad = [s for s in sets if s not in FEATURE_SETS]
    if not sets or bad:
        raise ValueError(f"feature_sets must be a non-empty subset of {list(FEATURE_SETS)}, got {list(feature_sets)}")
    return sets

"""Hand-crafted feature baselines that look like an encoder to the probe pipeline (MARBLE's MFCC baseline).

Shape legend:
    b  batch
    l  samples (at ``sample_rate`` unless said otherwise)
    t  frames (75 Hz, the MERT-v1 grid)
    d  feature dimension (the kinds' dimensions concatenated)
    f  spectral bins (STFT, mel or CQT)

``HandcraftedEncoder("mfcc")`` returns an :class:`~mert.models.encoder.EncoderOutput` with ONE hidden state
``(b, t, d)`` on exactly the frames the real encoder produces (``t = frame_lengths(l)``; frame ``i`` is centred
on the centre of the encoder's frame ``i``, sample ``i * hop + receptive_field // 2``), so
``mert probe encoder=features:mfcc`` goes through the same cache, probes, tables and plots as a MERT encoder.

Kinds (``"mfcc+chroma"`` concatenates along ``d`` in the given order; ``"all"`` = mfcc+chroma+cqt+mel):
    mel     128-band log-mel power: Hann-windowed STFT (85 ms), HTK mel triangles 0 Hz..Nyquist, natural log
            with a 1e-6 floor (about -60 dB below a full-scale tone's band power).
    mfcc    20 MFCCs (orthonormal DCT-II of that log-mel) + delta + delta-delta (5-frame regression): 60.
    chroma  12 pitch classes (0 = C) folded from a 171 ms STFT between C2 and C8 (Gaussian, 0.5 semitone),
            each frame divided by its maximum (librosa's chroma_stft convention).
    cqt     84-bin constant-Q log-magnitude, 12 bins per octave from 32.7 Hz (C1..B7; nnAudio ``CQT1992v2``'s
            kernels, :class:`mert.targets.cqt.ConstantQ`),
            natural log with a 1e-3 floor (about -84 dB below a full-scale tone).

The audio is taken to be zero outside the clip: every frame sees the clip's samples and zeros beyond its ends.
That one rule makes a clip's features the same alone, inside a right-padded batch and computed in
``chunk_seconds`` blocks (each block is computed with enough context that no window reaches its edge). Nothing
is fitted here: the probes standardise features with their train split's statistics.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import Tensor, nn

from mert.models.config import frame_lengths
from mert.models.encoder import EncoderOutput

__all__ = ["HandcraftedEncoder", "HandcraftedConfig", "KINDS", "parse_kinds"]

KINDS = ("mfcc", "chroma", "cqt", "mel")
FEATURES_VERSION = 1  # bump when a definition changes: it is part of the feature-cache fingerprint

# Feature settings at 24 kHz; window lengths are scaled to keep their duration at other rates.
_N_FFT = 2048  # 85 ms log-mel / MFCC window
_N_MELS = 128
_N_MFCC = 20
_CHROMA_N_FFT = 4096  # 171 ms: 5.9 Hz bins, so low notes are a semitone apart
_CHROMA_FMIN, _CHROMA_FMAX = 65.41, 4186.0  # C2..C8
_CQT_FMIN, _CQT_BINS, _CQT_BINS_PER_OCTAVE = 32.7, 84, 12
_CQT_LOG_FLOOR = 1e-3
_DELTA_CONTEXT = 4  # frames on each side that MFCC delta-deltas (two 5-frame regressions) read


def parse_kinds(kind: str) -> tuple[str, ...]:
    """``"mfcc+chroma"`` -> ``("mfcc", "chroma")``; ``"all"`` -> every kind; duplicates dropped, order kept.

    Raises:
        ValueError: an unknown or empty kind, naming the valid ones.
    """
    parts = [p.strip().lower() for p in str(kind).split("+")]
    out: list[str] = []
    for p in parts:
        out.extend(KINDS if p == "all" else [p])
    bad = [p for p in out if p not in KINDS]
    if bad or not out:
        raise ValueError(
            f"unknown hand-crafted feature kind {kind!r}: use one of {', '.join(KINDS)}, several joined by '+' "
            "(e.g. mfcc+chroma+cqt) or 'all'"
        )
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class HandcraftedConfig:
    """What :class:`HandcraftedEncoder` computes; ``to_dict()`` is recorded in results and fingerprints the cache.

    Attributes:
        kinds: feature kinds in concatenation order (see :data:`KINDS`).
        sample_rate: Hz the features are computed at; a multiple of 300 so the 75 Hz hop and the real
            encoder's 1/60 s receptive field are whole samples (24000 for MERT-v1: hop 320, 400 samples).
    """

    kinds: tuple[str, ...] = ("mfcc",)
    sample_rate: int = 24000

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", parse_kinds("+".join(self.kinds)))
        if int(self.sample_rate) <= 0 or int(self.sample_rate) % 300:
            raise ValueError(
                f"sample_rate must be a positive multiple of 300 Hz (whole-sample 75 Hz hop), got {self.sample_rate}"
            )

    @property
    def kind(self) -> str:
        """The canonical kind string, e.g. ``"mfcc+chroma"``."""
        return "+".join(self.kinds)

    @property
    def hop_length(self) -> int:
        """Samples between frames (320 at 24 kHz)."""
        return self.sample_rate // 75

    @property
    def receptive_field(self) -> int:
        """The real encoder's samples per frame (400 at 24 kHz); also the shortest valid input."""
        return self.sample_rate // 60

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def num_layers(self) -> int:
        return 0

    @property
    def num_hidden_states(self) -> int:
        return 1

    def samples(self, n_at_24k: int) -> int:
        """A window length given at 24 kHz, in samples at ``sample_rate`` (same duration)."""
        return max(16, round(n_at_24k * self.sample_rate / 24000))

    @property
    def dims(self) -> dict[str, int]:
        """Feature dimension of each kind, in order."""
        per_kind = {"mfcc": 3 * _N_MFCC, "chroma": 12, "cqt": _CQT_BINS, "mel": _N_MELS}
        return {k: per_kind[k] for k in self.kinds}

    @property
    def hidden_size(self) -> int:
        return sum(self.dims.values())

    def frame_lengths(self, num_samples: Tensor | int) -> Tensor | int:
        """Frames for ``num_samples`` samples: ``floor((l - receptive_field) / hop) + 1``, 0 below one frame.

        At 24 kHz this equals ``EncoderConfig.frame_lengths`` of MERT-v1's conv stack exactly.
        """
        return frame_lengths(num_samples, (self.receptive_field,), (self.hop_length,))

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "handcrafted",
            "version": FEATURES_VERSION,
            "kind": self.kind,
            "sample_rate": self.sample_rate,
            "hop_length": self.hop_length,
            "frame_rate": self.frame_rate,
            "hidden_size": self.hidden_size,
            "dims": self.dims,
            "settings": {
                "n_fft": self.samples(_N_FFT),
                "n_mels": _N_MELS,
                "n_mfcc": _N_MFCC,
                "chroma_n_fft": self.samples(_CHROMA_N_FFT),
                "chroma_fmin": _CHROMA_FMIN,
                "chroma_fmax": _CHROMA_FMAX,
                "cqt_fmin": _CQT_FMIN,
                "cqt_bins": _CQT_BINS,
                "cqt_bins_per_octave": _CQT_BINS_PER_OCTAVE,
                "cqt_log_floor": _CQT_LOG_FLOOR,
            },
        }


class HandcraftedEncoder(nn.Module):
    """A feature extractor with the interface of :class:`~mert.models.encoder.Encoder` that the probes use.

    Args:
        kind: ``"mfcc"``, ``"chroma"``, ``"cqt"``, ``"mel"``, several joined by ``+``, or ``"all"``.
        sample_rate: Hz the features are computed at (inputs at other rates are resampled).

    Attributes:
        config: :class:`HandcraftedConfig` (``to_dict()`` is JSON-able).
        sample_rate, frame_rate, hop_length, hidden_size: as on ``Encoder``.
        num_layers: 0, so ``num_hidden_states`` is 1: the features are "hidden state 0".
        strict_mert_compat: always False (read by the feature cache's fingerprint).

    Example:
        >>> enc = HandcraftedEncoder("mfcc+chroma")
        >>> out = enc(torch.zeros(2, 24000), sample_rate=24000)
        >>> out.last_hidden_state.shape, out.pooled().shape
        (torch.Size([2, 74, 72]), torch.Size([2, 1, 72]))
    """

    strict_mert_compat = False

    def __init__(self, kind: str = "mfcc", sample_rate: int = 24000):
        super().__init__()
        from mert.targets.features import FrameFeatures

        self.config = HandcraftedConfig(parse_kinds(kind), int(sample_rate))
        cfg = self.config
        self.frames = None
        if {"mfcc", "mel", "chroma"} & set(cfg.kinds):
            self.frames = FrameFeatures(
                sample_rate=cfg.sample_rate,
                hop_length=cfg.hop_length,
                n_fft=cfg.samples(_N_FFT),
                n_mels=_N_MELS,
                n_mfcc=_N_MFCC,
                chroma_n_fft=cfg.samples(_CHROMA_N_FFT),
                chroma_fmin=_CHROMA_FMIN,
                chroma_fmax=_CHROMA_FMAX,
            )
        self.cqt = None
        if "cqt" in cfg.kinds:
            from mert.targets.cqt import ConstantQ

            # No centring inside: each block's segment already holds the clip zero-extended. nnAudio's
            # CQT1992v2 kernels, cut to their support (fixed, never fingerprinted, out of state_dict).
            self.cqt = ConstantQ(
                sr=cfg.sample_rate,
                hop_length=cfg.hop_length,
                fmin=_CQT_FMIN,
                n_bins=_CQT_BINS,
                bins_per_octave=_CQT_BINS_PER_OCTAVE,
            )
        # Frames of context a block needs on each side so that no kept frame's window reaches the block's edge.
        half = max(
            cfg.samples(_N_FFT) // 2 if self.frames is not None else 0,
            cfg.samples(_CHROMA_N_FFT) // 2 if "chroma" in cfg.kinds else 0,
            self.cqt.kernel_width // 2 if self.cqt is not None else 0,
        )
        self._context = _DELTA_CONTEXT + math.ceil(half / cfg.hop_length)
        # The feature cache finds the device from the first parameter; an empty one stands in for weights.
        self.device_anchor = nn.Parameter(torch.zeros(0), requires_grad=False)
        self._warned_sample_rate = False
        self.eval()

    # ------------------------------------------------------------------ the Encoder attributes probes read
    # Read-only views of the config, as on Encoder: sample_rate, frame_rate, hop_length, num_layers,
    # hidden_size, and kind.
    sample_rate = property(lambda self: self.config.sample_rate)
    frame_rate = property(lambda self: self.config.frame_rate)
    hop_length = property(lambda self: self.config.hop_length)
    num_layers = property(lambda self: self.config.num_layers)
    hidden_size = property(lambda self: self.config.hidden_size)
    kind = property(lambda self: self.config.kind)

    def frame_lengths(self, num_samples: Tensor | int) -> Tensor | int:
        """Frames produced from ``num_samples`` samples at ``self.sample_rate`` (the real encoder's count)."""
        return self.config.frame_lengths(num_samples)

    def fingerprint(self) -> str:
        """The feature-cache key (:func:`mert.probe.cache.encoder_fingerprint`): config and version only."""
        from mert.probe.cache import encoder_fingerprint

        return encoder_fingerprint(self)

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def forward(
        self,
        wav: Tensor | np.ndarray,
        lengths: Tensor | Sequence[int] | None = None,
        sample_rate: int | None = None,
        *,
        chunk_seconds: float | None = None,
        overlap_seconds: float | None = None,  # accepted for Encoder compatibility: blocks need no overlap
        chunk_batch_size: int = 8,  # accepted for Encoder compatibility: a block holds the whole batch
        layers: str | int | Sequence[int] | None = None,  # accepted for Encoder compatibility: one state
    ) -> EncoderOutput:
        """Features of a batch of waveforms.

        Args:
            wav: ``(b, l)`` or ``(l,)`` float waveform; right-padded if items differ in length.
            lengths: ``(b,)`` valid samples per item (at ``sample_rate``), or None if all are full length.
            sample_rate: the rate of ``wav``; resampled to ``self.sample_rate`` if different (None: assumed equal,
                warned once).
            chunk_seconds: compute in blocks of this many seconds of frames (bounded memory on long audio);
                the result equals one pass. ``overlap_seconds``, ``chunk_batch_size`` and ``layers`` are accepted
                and unused (there is one state).
        Returns:
            :class:`EncoderOutput` with ``hidden_states = (x,)``, ``x`` float32 ``(b, t, d)``,
            ``t = frame_lengths(l)``, frames past an item's length zero, ``frame_rate`` 75.0.
        Raises:
            ValueError: wrong rank or dtype, NaN/inf samples, bad lengths, audio shorter than one frame.
        """
        wav, lengths = self._prepare(wav, lengths, sample_rate)
        frames = self.config.frame_lengths(lengths)  # (b,)
        t = int(frames.max())
        block = t if chunk_seconds is None else max(1, int(chunk_seconds * self.frame_rate))
        x = torch.cat([self._block(wav, a, min(a + block, t)) for a in range(0, t, block)], dim=1)  # (b, t, d)
        valid = torch.arange(t, device=x.device)[None, :] < frames.to(x.device)[:, None]  # (b, t)
        x = x.masked_fill(~valid[..., None], 0.0)
        return EncoderOutput(x, (x,), frames.to(x.device), self.frame_rate, None)

    def _prepare(
        self, wav: Tensor | np.ndarray, lengths: Tensor | Sequence[int] | None, sample_rate: int | None
    ) -> tuple[Tensor, Tensor]:
        """Validate; return ``(b, l)`` float32 at ``self.sample_rate`` with zeroed padding and ``(b,)`` lengths."""
        from mert.audio import resample

        if isinstance(wav, np.ndarray):
            wav = torch.from_numpy(wav)
        if not isinstance(wav, Tensor) or not wav.is_floating_point():
            raise ValueError(f"wav must be a floating point tensor or array, got {getattr(wav, 'dtype', type(wav))}")
        if wav.dim() == 1:
            wav = wav[None]
        if wav.dim() != 2 or wav.numel() == 0:
            raise ValueError(f"wav must have shape (batch, samples) or (samples,), got {tuple(wav.shape)}")
        b, l = wav.shape
        if lengths is None:
            lengths = torch.full((b,), l, dtype=torch.long)
        lengths = torch.as_tensor(lengths, dtype=torch.long).cpu()
        if lengths.shape != (b,) or (lengths < 1).any() or (lengths > l).any():
            raise ValueError(f"lengths must have shape ({b},) with values in [1, {l}], got {lengths.tolist()}")
        wav = wav.to(self.device_anchor.device, torch.float32)
        valid = torch.arange(l, device=wav.device)[None, :] < lengths.to(wav.device)[:, None]  # (b, l)
        wav = wav.masked_fill(~valid, 0.0)  # padding is silence, whatever the caller put there
        if not bool(torch.isfinite(wav).all()):
            raise ValueError("wav contains NaN or inf samples; clean or drop them first")
        if sample_rate is None:
            if not self._warned_sample_rate:
                warnings.warn(
                    f"no sample_rate given: assuming the audio is already at {self.sample_rate} Hz",
                    stacklevel=3,
                )
                self._warned_sample_rate = True
        elif int(sample_rate) != self.sample_rate:
            # Per item, so padding never bleeds into a clip through the resampling filter.
            items = [resample(wav[i, : int(n)], int(sample_rate), self.sample_rate) for i, n in enumerate(lengths)]
            lengths = torch.tensor([len(w) for w in items], dtype=torch.long)
            wav = torch.nn.utils.rnn.pad_sequence(items, batch_first=True)
        short = lengths < self.config.receptive_field
        if bool(short.any()):
            i = int(short.nonzero()[0, 0])
            raise ValueError(
                f"batch item {i} has {int(lengths[i])} samples at {self.sample_rate} Hz; hand-crafted features "
                f"need at least {self.config.receptive_field} (one frame of the encoder)"
            )
        return wav, lengths

    def _block(self, wav: Tensor, a: int, b: int) -> Tensor:
        """Frames ``[a, b)`` of every item: ``(b_items, l) -> (b_items, b - a, d)``.

        The segment read starts ``context`` hops before frame ``a``'s centre (zeros outside the clip), so frame
        ``j`` of every centred transform on it is global frame ``a - context + j``.
        """
        cfg, c = self.config, self._context
        start = a * cfg.hop_length + cfg.receptive_field // 2 - c * cfg.hop_length  # global sample of seg[0]
        seg_len = (b - a - 1 + 2 * c) * cfg.hop_length + 1  # a centred transform gives b - a + 2c frames
        lo, hi = max(start, 0), min(start + seg_len, wav.shape[1])
        seg = wav.new_zeros(wav.shape[0], seg_len)
        if hi > lo:
            seg[:, lo - start : hi - start] = wav[:, lo:hi]
        keep = slice(c, c + b - a)
        parts = []
        logmel = self.frames.logmel(seg) if {"mfcc", "mel"} & set(cfg.kinds) else None  # (b, t', m)
        for k in cfg.kinds:
            if k == "mel":
                parts.append(logmel[:, keep])
            elif k == "mfcc":
                parts.append(self.frames.mfcc(seg, logmel)[:, keep])  # deltas need the frames around `keep`
            elif k == "chroma":
                parts.append(self.frames.chroma(seg)[:, keep])
            else:
                # The costly kind: convolve only the kept frames; output j of this slice is centred on seg frame c + j.
                half = self.cqt.kernel_width // 2
                part = seg[:, c * cfg.hop_length - half : (c + b - a - 1) * cfg.hop_length + half + 1]
                mag = self.cqt(rearrange(part, "b l -> b 1 l"))  # (b, f, b - a)
                parts.append(rearrange(torch.log(mag + _CQT_LOG_FLOOR), "b f t -> b t f"))
        x = torch.cat(parts, dim=-1)  # (b, b - a, d)
        return x.float()

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, sample_rate={self.sample_rate}, hidden_size={self.hidden_size}"

"""`Encoder`: the public MERT encoder: input checking, resampling, padding, long-audio windows, loading.

Shape legend:
    b  batch
    l  samples (at the encoder's sample rate unless said otherwise)
    t  frames (75 Hz for MERT-v1, 25 Hz for MERT-v2 and MuQ)
    d  model width
    c  front-end channels
    n  hidden-state layers (num_layers + 1)

Contracts (``docs/embeddings.md``):
* outputs always keep the batch axis, ``(b, t, d)``, also for a 1-D input;
* ``sample_rate=`` resamples; without it the input is taken to be at ``enc.sample_rate`` (warned once);
* a clip gives the same hidden states alone and inside a right-padded batch with ``lengths`` (unless
  ``strict_mert_compat``, which reproduces transformers' padding-sensitive numerics);
* ``chunk_seconds`` bounds memory on long audio with a deterministic window/stitch that returns exactly
  ``frame_lengths(l)`` frames, identical to one pass when the audio fits in one window.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import mert.models.fast_path as fast_path
from mert.audio import check_sample_rate, load_audio, resample, resampled_length
from mert.models.checkpoint import load_checkpoint, save_checkpoint, save_hf_checkpoint
from mert.models.config import EncoderConfig
from mert.models.fast_path import cpu_has_native_bf16  # part of this module's API (__all__)
from mert.models.modules import INITIALIZER_RANGE, EncoderNetwork
from mert.models.pooling import mean_pool, parse_layers, valid_mask, weighted_layer_sum

__all__ = ["Encoder", "EncoderOutput", "INITIALIZER_RANGE", "cpu_has_native_bf16"]


@dataclass
class EncoderOutput:
    """What :class:`Encoder` returns.

    Attributes:
        last_hidden_state: ``(b, t, d)``, equal to ``hidden_states[-1]``; with ``layers=`` the deepest state
            computed.
        hidden_states: ``n`` tensors ``(b, t, d)``: the transformer input, then one per layer (MERT-v1 architecture
        semantics).
            With ``layers=`` the layers past the deepest one asked for are not computed and their slots are None.
        lengths: ``(b,)`` valid frames per item; frames beyond are padding (zeros unless strict_mert_compat).
        frame_rate: frames per second (75.0 for MERT-v1).
        features: ``(b, t, c)`` front-end output before the projection (used by the pretraining penalty); for
            the spectrogram family (``frontend="mel"``) the subsampler's output, ``(b, t, d)``.
    """

    last_hidden_state: Tensor
    hidden_states: tuple[Tensor, ...]
    lengths: Tensor
    frame_rate: float = 75.0
    features: Tensor | None = field(default=None, repr=False)

    @property
    def padding_mask(self) -> Tensor:
        """``(b, t)`` True at padded frames."""
        return ~valid_mask(self.lengths, self.last_hidden_state.shape[1])

    def stacked(self, layers: str | int | Sequence[int] | None = None) -> Tensor:
        """Chosen hidden states stacked: ``(b, n', t, d)`` (default all)."""
        idx = parse_layers(layers, len(self.hidden_states))
        missing = [i for i in idx if self.hidden_states[i] is None]
        if missing:
            raise ValueError(
                f"hidden state(s) {missing} were not computed: the encoder was called with layers= that stop "
                "before them; ask for them in that call"
            )
        return torch.stack([self.hidden_states[i] for i in idx], dim=1)

    def weighted_sum(self, weights: Tensor, layers: str | int | Sequence[int] | None = None) -> Tensor:
        """Softmax-weighted sum of the chosen layers: ``weights (n',)`` -> ``(b, t, d)``."""
        return weighted_layer_sum(self.stacked(layers), weights)

    def pooled(self, layers: str | int | Sequence[int] | None = None) -> Tensor:
        """Mean over each item's valid frames of the chosen layers: ``(b, n', d)``."""
        return mean_pool(self.stacked(layers), self.lengths)


class _GradScale(torch.autograd.Function):
    """Identity forward, gradient times ``scale`` backward: the front-end gradient multiplier (MERT-v1 architecture).

    ``x * m + x.detach() * (1 - m)`` would do the same in exact arithmetic but perturbs the forward value by
    rounding, which the following LayerNorm can amplify.
    """

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


class Encoder(EncoderNetwork):
    """MERT-style music encoder, plain PyTorch: waveform conv front end + transformer (MERT-v1, HuBERT, music2vec)
    or mel spectrogram + subsampler + Conformer (MERT-v2, MuQ), as its config says.

    The network and its initialisation are :class:`~mert.models.modules.EncoderNetwork`; this class adds the
    input contract (checks, resampling, padding, long-audio windows), precision helpers and loading.

    Args:
        config: an :class:`EncoderConfig` or a preset name (``"tiny"``, ``"95m"``, ``"330m"``, ``"mert_v2"``,
            ``"muq_large"``, ``"conformer_tiny"``, ``"conformer_small"``).
        strict_mert_compat: reproduce the original numerics on padded batches (GroupNorm statistics over the
            padded length, as transformers' HubertModel); the default is padding-invariant.

    Example:
        >>> enc = Encoder.from_pretrained("m-a-p/MERT-v1-95M")      # doctest: +SKIP
        >>> out = enc(wav, sample_rate=44100)                        # doctest: +SKIP
        >>> out.hidden_states[7].shape  # (b, t, 768) at 75 Hz       # doctest: +SKIP
    """

    def __init__(self, config: EncoderConfig | str = "95m", *, strict_mert_compat: bool = False):
        super().__init__(config)
        self.strict_mert_compat = strict_mert_compat
        self._warned_sample_rate = False
        self._warned_bf16 = False

    # ------------------------------------------------------------------ properties
    # Read-only views of the config (which travels inside every checkpoint), named as users know them.
    sample_rate = property(lambda self: self.config.sample_rate, doc="Input rate in Hz (int; 24000 for MERT-v1).")
    frame_rate = property(lambda self: self.config.frame_rate, doc="Output frames per second (float; 75.0).")
    hop_length = property(lambda self: self.config.hop_length, doc="Samples per output frame (int; 320).")
    num_layers = property(lambda self: self.config.num_layers, doc="Transformer layers (int).")
    hidden_size = property(lambda self: self.config.hidden_size, doc="Model width d (int).")

    def frame_lengths(self, num_samples: Tensor | int) -> Tensor | int:
        """Frames produced from ``num_samples`` samples at ``self.sample_rate``."""
        return self.config.frame_lengths(num_samples)

    def _weights(self) -> Tensor:
        """A parameter whose dtype and device are the model's (the mask embedding, or the first weight)."""
        return self.mask_emb if self.mask_emb is not None else next(self.parameters())

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        wav: Tensor | np.ndarray,
        lengths: Tensor | Sequence[int] | None = None,
        sample_rate: int | None = None,
        *,
        pred_mask: Tensor | None = None,
        chunk_seconds: float | None = None,
        overlap_seconds: float | None = None,
        chunk_batch_size: int = 8,
        layers: str | int | Sequence[int] | None = None,
    ) -> EncoderOutput:
        """Encode a batch of waveforms.

        Args:
            wav: ``(b, l)`` or ``(l,)`` float waveform in [-1, 1]; right-padded if items differ in length.
            lengths: ``(b,)`` valid samples per item (at ``sample_rate``), or None if all are full length.
            sample_rate: the rate of ``wav`` in Hz; resampled to ``self.sample_rate`` if different.
            pred_mask: ``(b, t)`` bool, frames to replace by ``mask_emb`` (pretraining only).
            chunk_seconds: window length for long audio; None encodes in one pass.
            overlap_seconds: overlap between windows (default 20% of ``chunk_seconds``).
            chunk_batch_size: windows encoded together; bounds memory with ``chunk_seconds``.
            layers: hidden states needed (:func:`mert.parse_layers` syntax); the transformer stops after the
                deepest, so ``layers=7`` on a 12-layer model runs 7 layers. Default: all.
        Returns:
            :class:`EncoderOutput` with ``(b, t, d)`` tensors, ``t = frame_lengths(l)``; with ``layers=`` the
            states past the deepest requested layer are None (and, with ``chunk_seconds``, every state not
            requested).
        Raises:
            ValueError: wrong rank, non-float dtype, NaN/inf samples, audio shorter than 400 samples, bad lengths.
        """
        idx = None if layers is None else parse_layers(layers, self.config.num_hidden_states)
        depth = None if idx is None else max(idx)
        wav, lengths = self._prepare(wav, lengths, sample_rate)
        if chunk_seconds is None:
            return self._encode_pass(wav, lengths, pred_mask, depth=depth)
        if pred_mask is not None:
            raise ValueError("pred_mask cannot be combined with chunk_seconds (masking is for training passes)")
        return self._encode_chunked(wav, lengths, chunk_seconds, overlap_seconds, chunk_batch_size, keep=idx)

    def _prepare(
        self, wav: Tensor | np.ndarray, lengths: Tensor | Sequence[int] | None, sample_rate: int | None
    ) -> tuple[Tensor, Tensor | None]:
        """Validate and convert the input to ``(b, l)`` at the model's rate, dtype and device."""
        if isinstance(wav, np.ndarray):
            wav = torch.from_numpy(wav)
        if not isinstance(wav, Tensor):
            raise ValueError(f"wav must be a torch.Tensor or numpy array, got {type(wav).__name__}")
        if not wav.is_floating_point():
            hint = " (e.g. int16 PCM: wav.float() / 32768)" if wav.dtype in (torch.int16, torch.int32) else ""
            raise ValueError(f"wav has dtype {wav.dtype}; expected floating point samples in [-1, 1]{hint}")
        if wav.dim() == 1:
            wav = wav[None]
        elif wav.dim() != 2:
            hint = "; for multi-channel audio mix down first, e.g. wav.mean(dim=1)" if wav.dim() == 3 else ""
            raise ValueError(f"wav must have shape (batch, samples) or (samples,), got {tuple(wav.shape)}{hint}")
        b, l = wav.shape
        if b == 0 or l == 0:
            raise ValueError(f"wav is empty: shape {tuple(wav.shape)}")
        if lengths is not None:
            lengths = torch.as_tensor(lengths, dtype=torch.long).to("cpu")
            if lengths.shape != (b,):
                raise ValueError(
                    f"lengths must have shape ({b},) to match wav {tuple(wav.shape)}, got {tuple(lengths.shape)}"
                )
            if (lengths < 1).any() or (lengths > l).any():
                raise ValueError(f"lengths must be in [1, {l}] (samples in wav), got {lengths.tolist()}")
            if bool((lengths == l).all()):
                lengths = None
        finite = torch.isfinite(wav)
        if lengths is not None:
            finite |= ~valid_mask(lengths.to(wav.device), l)  # padding may hold anything
        if not bool(finite.all()):
            bad = sorted({int(i) for i in (~finite).nonzero()[:, 0].tolist()})
            raise ValueError(f"wav contains NaN or inf samples in batch item(s) {bad[:10]}; clean or drop them first")

        if sample_rate is None:
            if not self._warned_sample_rate:
                warnings.warn(
                    f"no sample_rate given: assuming the audio is already at {self.sample_rate} Hz. Pass "
                    f"sample_rate= to resample (MERT-v1 expects {self.sample_rate} Hz; 16 kHz audio would give "
                    "wrong embeddings without an error)",
                    stacklevel=3,
                )
                self._warned_sample_rate = True
            sample_rate = self.sample_rate
        sample_rate = check_sample_rate(sample_rate, "sample_rate")  # True is not 1 Hz; 1 Hz -> 24 kHz is gigabytes
        if sample_rate != self.sample_rate:
            wav, lengths = self._resample(wav.float(), lengths, sample_rate)
            l = wav.shape[1]

        min_len = self.config.min_samples
        short = (lengths if lengths is not None else torch.tensor([l] * b)) < min_len
        if bool(short.any()):
            i = int(short.nonzero()[0, 0])
            n = int(lengths[i]) if lengths is not None else l
            raise ValueError(
                f"batch item {i} has {n} samples at {self.sample_rate} Hz ({n / self.sample_rate * 1000:.1f} ms); "
                f"the encoder needs at least {min_len} samples ({min_len / self.sample_rate * 1000:.1f} ms)"
            )

        # The waveform stays at least float32 for a bf16/fp16 model: the first conv runs in its precision.
        param = self._weights()
        if param.dtype == torch.bfloat16 and param.device.type == "cpu" and not self._warned_bf16:
            self._warned_bf16 = True
            if not cpu_has_native_bf16():
                warnings.warn(
                    "this encoder holds bf16 weights, but this CPU has no bf16 instructions (AVX512-BF16/AMX): "
                    "oneDNN emulates them, about 10x slower than float32 here. Use float32 (enc.float()) or "
                    "enc.fast(), which picks the fastest accurate precision for this machine",
                    stacklevel=3,
                )
        dtype = torch.promote_types(param.dtype, torch.float32) if param.is_floating_point() else torch.float32
        wav = wav.to(device=param.device, dtype=dtype)
        if lengths is not None:
            # Padding is zero, whatever the caller put there (as the HF feature extractor pads).
            wav = wav.masked_fill(~valid_mask(lengths.to(wav.device), wav.shape[1]), 0.0)
        if self.config.normalize_input:
            wav = self._normalize(wav, lengths)
        return wav, lengths

    def _resample(self, wav: Tensor, lengths: Tensor | None, sample_rate: int) -> tuple[Tensor, Tensor | None]:
        if lengths is None:
            return resample(wav, sample_rate, self.sample_rate), None
        # Per item, so padding never bleeds into a clip through the resampling filter.
        items = [resample(wav[i, : int(n)], sample_rate, self.sample_rate) for i, n in enumerate(lengths)]
        new_lengths = torch.tensor([len(x) for x in items], dtype=torch.long)
        out = wav.new_zeros(len(items), resampled_length(wav.shape[1], sample_rate, self.sample_rate))
        for i, x in enumerate(items):
            out[i, : len(x)] = x
        return out, new_lengths

    @staticmethod
    def _normalize(wav: Tensor, lengths: Tensor | None) -> Tensor:
        """Zero mean, unit variance per item over valid samples (Wav2Vec2FeatureExtractor's do_normalize)."""
        if lengths is None:
            return (wav - wav.mean(1, keepdim=True)) / torch.sqrt(wav.var(1, unbiased=False, keepdim=True) + 1e-7)
        valid = valid_mask(lengths.to(wav.device), wav.shape[1]).to(wav.dtype)
        n = valid.sum(1, keepdim=True)
        mean = (wav * valid).sum(1, keepdim=True) / n
        var = (((wav - mean) * valid) ** 2).sum(1, keepdim=True) / n
        return (wav - mean) / torch.sqrt(var + 1e-7) * valid

    def _encode(
        self, wav: Tensor, lengths: Tensor | None, pred_mask: Tensor | None = None, depth: int | None = None
    ) -> EncoderOutput:
        """One pass: ``wav (b, l)`` at the model rate, ``lengths (b,)`` samples or None; ``depth`` layers (all)."""
        if lengths is not None:
            lengths = lengths.to(wav.device)
        aware = lengths is not None and not self.strict_mert_compat
        mel = self.config.frontend == "mel"
        if mel:  # spectrogram family: the subsampler's output is both the features and the first block's input
            spec = self.frontend(wav, lengths if aware else None)  # (b, s, m) float32
            spec_lens = self.frontend.frame_lengths(lengths) if aware else None
            feats = self.subsampler(spec.to(self._weights().dtype), spec_lens)  # (b, t, d)
        else:
            feats = self.frontend(wav, lengths if aware else None)  # (b, t, c)
        mult = self.config.frontend_grad_mult
        if self.training and mult != 1.0 and torch.is_grad_enabled():
            feats = _GradScale.apply(feats, mult)
        b, t, _ = feats.shape
        frame_lens = (
            self.frame_lengths(lengths)
            if lengths is not None
            else torch.full((b,), t, dtype=torch.long, device=wav.device)
        )
        x = feats if mel else self.proj(feats)
        if pred_mask is not None:
            if self.mask_emb is None:
                raise ValueError(
                    f"pred_mask needs a mask embedding, and this {self.config.name!r} encoder has none "
                    "(mask_embedding=False, as in the published MERT-v2/MuQ files); build it with mask_embedding=True"
                )
            if pred_mask.shape != (b, t):
                raise ValueError(f"pred_mask must have shape ({b}, {t}) (frames), got {tuple(pred_mask.shape)}")
            x = torch.where(pred_mask.to(x.device)[..., None], self.mask_emb.to(x.dtype), x)
        valid = valid_mask(frame_lens, t) if lengths is not None else None
        states = self.transformer(x, valid, depth)
        if aware:
            keep = valid[..., None]
            states = [s.masked_fill(~keep, 0.0) for s in states]
        last = states[-1]
        states += [None] * (self.config.num_hidden_states - len(states))  # type: ignore[list-item]
        return EncoderOutput(last, tuple(states), frame_lens, self.frame_rate, feats)

    def _encode_chunked(
        self,
        wav: Tensor,
        lengths: Tensor | None,
        chunk_seconds: float,
        overlap_seconds: float | None,
        batch: int,
        keep: Sequence[int] | None = None,
        mean: bool = False,
    ) -> EncoderOutput:
        """Bounded-memory windows; each output frame comes from the window where it sits most centrally.

        Windows start on multiples of the hop (320 samples) so their frames fall exactly on the global 75 Hz
        grid; the last window is aligned to the end of the clip so it has full context. ``keep`` (hidden-state
        indices) stitches only those layers and leaves None in the other slots: all 13 layers of a 10-minute
        track at 75 Hz are 1.8 GB in float32, so `embed_file` keeps only what it returns (and no front-end
        features when the clip spans several windows: ``features`` is then ``(b, 0, c)``). ``mean`` keeps each
        kept layer's mean over valid frames, ``(b, 1, d)``, accumulated window by window.
        """
        for arg, value in (("chunk_seconds", chunk_seconds), ("overlap_seconds", overlap_seconds)):
            number = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
            finite = number and math.isfinite(value)
            if value is not None and not finite:
                raise ValueError(f"{arg} must be a finite number of seconds, got {value!r}")
        hop = self.hop_length
        window = int(round(chunk_seconds * self.sample_rate))
        if window < self.config.min_samples:
            raise ValueError(
                f"chunk_seconds={chunk_seconds} is shorter than one frame's receptive field "
                f"({self.config.min_samples} samples at {self.sample_rate} Hz)"
            )
        overlap = int(round((0.2 * chunk_seconds if overlap_seconds is None else overlap_seconds) * self.sample_rate))
        if not 0 <= overlap < window:
            raise ValueError(
                f"overlap_seconds must be in [0, chunk_seconds), got {overlap_seconds} for {chunk_seconds}"
            )
        window_frames = int(self.frame_lengths(window))
        # Step on the hop grid and never beyond the frames a window yields, so windows always touch.
        step = max(hop, min((window - overlap) // hop * hop, window_frames * hop))
        if batch < 1:
            raise ValueError(f"chunk_batch_size must be >= 1, got {batch}")

        b, l = wav.shape
        n_samples = lengths.tolist() if lengths is not None else [l] * b
        depth = None if keep is None else max(keep)
        if max(n_samples) <= window:
            return self._encode_pass(wav, lengths, depth=depth)  # fits one window: exactly a single pass
        n_frames = [int(self.frame_lengths(n)) for n in n_samples]
        t_max = max(n_frames)
        out_states: list[Tensor] | None = None
        out_feats: Tensor | None = None
        for i, n in enumerate(n_samples):
            starts = list(range(0, max(n - window, 0), step)) + [max(n - window, 0) // hop * hop]
            starts = sorted(set(starts))
            ends = [min(s + window, n) if s != starts[-1] else n for s in starts]
            # Frame ownership: split every overlap at its middle.
            first = [s // hop for s in starts]
            count = [int(self.frame_lengths(e - s)) for s, e in zip(starts, ends)]
            bounds = [0] + [(first[j + 1] + first[j] + count[j]) // 2 for j in range(len(starts) - 1)] + [n_frames[i]]
            # Group windows of equal length so no window is ever padded (exact in strict mode too).
            jobs = list(range(len(starts)))
            groups = [
                [j for j in jobs if ends[j] - starts[j] == w] for w in sorted({e - s for s, e in zip(starts, ends)})
            ]
            for group in groups:
                for k in range(0, len(group), batch):
                    part = group[k : k + batch]
                    chunk = torch.stack([wav[i, starts[j] : ends[j]] for j in part])
                    res = self._encode_pass(chunk, None, depth=depth)
                    if out_states is None:
                        d = res.last_hidden_state.shape[-1]
                        kept = range(len(res.hidden_states)) if keep is None else set(keep)
                        t_out = 1 if mean else t_max
                        out_states = [
                            s.new_zeros(b, t_out, d, dtype=torch.float32 if mean else s.dtype) if n in kept else None
                            for n, s in enumerate(res.hidden_states)
                        ]
                        # embed_file (``keep``) never returns the front-end features: 92 MB per 10 minutes.
                        t_feats = t_max if keep is None else 0
                        out_feats = res.features.new_zeros(b, t_feats, res.features.shape[-1])
                    for r, j in enumerate(part):
                        lo, hi = bounds[j], bounds[j + 1]
                        src = slice(lo - first[j], hi - first[j])
                        for dst, s in zip(out_states, res.hidden_states):
                            if dst is not None and mean:
                                dst[i, 0] += s[r, src].float().sum(dim=0) / n_frames[i]
                            elif dst is not None:
                                dst[i, lo:hi] = s[r, src]
                        if keep is None:
                            out_feats[i, lo:hi] = res.features[r, src]
        assert out_states is not None
        frame_lens = torch.tensor(n_frames, dtype=torch.long, device=wav.device)
        last = next(s for s in reversed(out_states) if s is not None)
        return EncoderOutput(last, tuple(out_states), frame_lens, self.frame_rate, out_feats)

    # ------------------------------------------------------------------ files
    @torch.inference_mode()
    def embed_file(
        self,
        path: str | os.PathLike,
        *,
        layers: str | int | Sequence[int] | None = None,
        pool: str | None = None,
        chunk_seconds: float | None = 30.0,
        overlap_seconds: float | None = None,
        chunk_batch_size: int = 1,
    ) -> Tensor:
        """Embeddings of one audio file (any soundfile-readable format, mixed to mono, resampled).

        Memory is bounded for any duration: windows of ``chunk_seconds`` are encoded ``chunk_batch_size`` at a
        time and only the chosen layers are kept (under 2 GB peak resident memory for a 10-minute track with the
        95M model in float32, all layers pooled; ``docs/benchmarks.md``).

        Args:
            path: audio file.
            layers: which hidden states (see :func:`mert.parse_layers`); default all.
            pool: ``None`` for frames or ``"mean"`` for one vector per layer.
            chunk_seconds: window length for long files (None: one pass).
            overlap_seconds: overlap between windows (default 20% of ``chunk_seconds``).
            chunk_batch_size: windows encoded together; on CPU 1 is as fast as more and keeps memory lowest.
        Returns:
            ``(n', t, d)`` frames or ``(n', d)`` pooled, for the chosen layers.
        """
        wav, sr = load_audio(path, mono=True)
        return self.embed(
            wav, sr, layers=layers, pool=pool, chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds,
            chunk_batch_size=chunk_batch_size, name=str(path),
        )  # fmt: skip

    @torch.no_grad()
    def embed(
        self,
        wav: Tensor,
        sample_rate: int | None = None,
        *,
        layers: str | int | Sequence[int] | None = None,
        pool: str | None = None,
        chunk_seconds: float | None = 30.0,
        overlap_seconds: float | None = None,
        chunk_batch_size: int = 1,
        name: str | None = None,
    ) -> Tensor:
        """Embeddings of one clip ``wav (l,)`` in bounded memory: what :meth:`embed_file` and ``mert embed`` run.

        Only the chosen layers are kept (and pooled window by window with ``pool="mean"``), so a 10-minute track
        needs no more memory than a window's worth of every layer. Arguments as :meth:`embed_file`; ``name``
        (e.g. the file) prefixes error messages.

        Returns:
            ``(n', t, d)`` frames or ``(n', d)`` pooled, for the chosen layers.
        Raises:
            ValueError: bad ``pool``/``layers``, a clip too short for one frame, or non-finite embeddings (audio
                far outside [-1, 1], e.g. samples of 1e30, overflows the encoder), naming ``name``.
        """
        if pool not in (None, "mean"):
            raise ValueError(f"pool must be None or 'mean', got {pool!r}")
        idx = parse_layers(layers, self.config.num_hidden_states)
        where = f"{name!r}: " if name else ""
        if wav.dim() != 1:
            raise ValueError(f"{where}embed takes one clip of shape (l,), got {tuple(wav.shape)}")
        try:
            wav, lengths = self._prepare(wav, None, sample_rate)
            if chunk_seconds is None:
                out = self._encode_pass(wav, lengths, depth=max(idx))
            else:
                out = self._encode_chunked(
                    wav, lengths, chunk_seconds, overlap_seconds, chunk_batch_size, keep=idx, mean=pool == "mean"
                )
        except ValueError as e:
            raise ValueError(f"{where}{e}") from None
        x = torch.stack([out.hidden_states[i][0] for i in idx])  # (n', t, d), t = 1 if pooled in windows
        x = x if pool is None else x.mean(dim=1).to(self._weights().dtype)
        if not bool(torch.isfinite(x).all()):
            peak = float(wav.abs().max())
            raise ValueError(
                f"{where}the embeddings are not finite (input peak |x| = {peak:.3g}): audio should be float "
                "samples in [-1, 1]; scale it before embedding"
            )
        return x

    # ------------------------------------------------------------------ compilation
    def compile(
        self,
        enabled: bool = True,
        *,
        mode: str | None = None,
        dynamic: bool | None = None,
        fullgraph: bool = False,
        backend: str = "inductor",
        options: dict[str, Any] | None = None,
    ) -> Encoder:
        """Run the network through :func:`torch.compile` from the next call on; returns ``self``.

        What is compiled is the tensor part of :meth:`forward` (front end, mask embedding, transformer or
        Conformer, for every call: plain, ``layers=``, ``chunk_seconds=`` windows, :meth:`embed`); the input
        checks, resampling and window bookkeeping stay eager, so bad input still gets its error message. The
        module itself is not wrapped: ``state_dict()`` keys stay as they are (no ``_orig_mod.`` prefix) and
        checkpoints load into an eager encoder. Outputs equal eager ones up to float rounding. The first call
        for each input layout compiles (seconds to minutes); a new batch or clip length compiles once more with
        dynamic shapes (``dynamic=None``), after which lengths change freely. CPU compilation needs a C++
        compiler on ``PATH`` (``g++``); ``docs/embeddings.md`` says what to do when compiling fails.

        Args:
            enabled: False returns to the eager network.
            mode, dynamic, fullgraph, backend, options: as :func:`torch.compile` takes them (``mode=None`` is
                torch's default; ``"max-autotune"`` searches kernels longer on GPUs).
        """
        self.__dict__.pop("_compiled_encode", None)
        if not enabled:
            self.__dict__.pop("_compile_options", None)
            return self
        if any(getattr(m, "mert_int8", False) for m in self.modules()):
            warnings.warn(
                "compiled, the encoder runs its linear layers in its float dtype: quantize_int8() does not apply "
                "to a compiled encoder (call enc.compile(False) to use int8)",
                stacklevel=2,
            )
        # The settings travel with the module (pickled to spawned DDP ranks, deep-copied); the compiled function
        # is made on the first call in each process and each copy (see _encode_pass).
        options = dict(mode=mode, dynamic=dynamic, fullgraph=fullgraph, backend=backend, options=options)
        self.__dict__["_compile_options"] = options
        return self

    @property
    def is_compiled(self) -> bool:
        """Whether :meth:`compile` is on."""
        return "_compile_options" in self.__dict__

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_compiled_encode", None)  # compiled code is per process; the settings rebuild it
        return state

    def _encode_pass(
        self, wav: Tensor, lengths: Tensor | None, pred_mask: Tensor | None = None, depth: int | None = None
    ) -> EncoderOutput:
        options = self.__dict__.get("_compile_options")
        if options is None or torch.compiler.is_compiling():
            return self._encode(wav, lengths, pred_mask, depth=depth)
        fn = self.__dict__.get("_compiled_encode")
        if fn is None:
            # The unbound function, called with the encoder as an argument: a module's own code, whatever copy.
            fn = self.__dict__["_compiled_encode"] = torch.compile(type(self)._encode, **options)
        return fn(self, wav, lengths, pred_mask, depth=depth)

    # ------------------------------------------------------------------ precision
    def fast(self) -> Encoder:
        """Switch to the fastest accurate inference setting for the device the weights are on; returns ``self``.

        Evaluation mode, and bf16 weights where the hardware computes bf16 natively (a CUDA device with bf16, a
        CPU with AVX512-BF16 or AMX: every hidden state keeps a mean cosine of at least 0.9998 to float32,
        ``docs/embeddings.md``), float32 elsewhere (emulated bf16 is about 10x slower than float32 on an
        AVX2-only CPU). Call it under ``torch.inference_mode()`` to get the fused CPU kernels too.
        """
        self.eval()
        device = self._weights().device
        if device.type == "cuda":
            native = torch.cuda.is_bf16_supported()
        else:
            native = device.type == "cpu" and cpu_has_native_bf16()
        return self.to(torch.bfloat16 if native else torch.float32)

    def quantize_int8(self, enabled: bool = True) -> Encoder:
        """Opt-in int8 inference on CPU: the transformer's and the projection's linear layers run as dynamic
        int8 GEMMs (weights per output channel, activations per call; fbgemm, VNNI where the CPU has it);
        the front end, the positional conv and attention stay float32. Returns ``self``.

        Applies to float32 weights under ``torch.inference_mode()``/``no_grad`` on CPU; training and other
        devices and dtypes take the normal path. Every hidden state keeps a mean cosine of at least 0.99 to
        float32 on music (tested; ``benchmarks/encoder_vs_hf.py`` measures speed and agreement).
        ``quantize_int8(False)`` turns it off.

        Raises:
            RuntimeError: this CPU or torch build has no int8 kernels (the message says why).
        """
        # Looked up in fast_path at call time, where the CPU probes live (and where tests replace this one).
        if enabled and (why := fast_path.int8_supported()) is not None:
            raise RuntimeError(f"int8 inference is not available: {why}; use float32 (or enc.fast())")
        linears = [self.proj.linear] if self.config.frontend == "conv" else []
        linears += [m for m in self.transformer.modules() if isinstance(m, torch.nn.Linear)]
        for module in linears:
            module.mert_int8 = bool(enabled)
        return self

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        strict_mert_compat: bool = False,
        **fetch: Any,
    ) -> Encoder:
        """Load an encoder (in eval mode) without executing any code from the checkpoint.

        Args:
            source: a local folder or weights file, an ``https://`` URL of a file or archive (``#sha256=``
                fragment verified), or a Hugging Face repo id such as ``"m-a-p/MERT-v1-95M"``.
            device, dtype: where and in what precision to put the weights.
            strict_mert_compat: see :class:`Encoder`.
            fetch: how to fetch ``source``, passed on to :func:`mert.hub.resolve_source`: ``revision`` (branch,
                tag or commit of a hub id), ``cache_dir`` (default ``$MERT_CACHE`` or ``~/.cache/mert``),
                ``sha256`` (expected digest of a downloaded file), ``local_files_only`` (never touch the
                network), ``token``, ``endpoint``.
        Raises:
            TypeError: a ``fetch`` keyword :func:`~mert.hub.resolve_source` does not take.
        """
        from mert.hub import resolve_source

        path = resolve_source(source, **fetch)
        config, state, meta = load_checkpoint(path)
        with torch.device("meta"):
            model = cls(config, strict_mert_compat=strict_mert_compat)
        model.load_state_dict(state, assign=True)
        model.meta = meta
        model.source = str(source)
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        return model.eval()

    def save_pretrained(
        self, folder: str | os.PathLike, meta: dict[str, Any] | None = None, *, format: str = "mert"
    ) -> Path:
        """Write a release folder; ``Encoder.from_pretrained(folder)`` reads either format back exactly.

        ``format="mert"``: ``config.json``, ``model.safetensors`` (config in its metadata), ``meta.json``.
        ``format="hf"``: transformers' HuBERT layout (``model_type: "hubert"``, ``HubertModel`` key names,
        ``preprocessor_config.json``), loadable with ``transformers.AutoModel.from_pretrained(folder)`` without
        remote code (``docs/deployment.md``).
        """
        if format == "mert":
            return save_checkpoint(folder, self.config, self.state_dict(), meta)
        if format == "hf":
            return save_hf_checkpoint(folder, self.config, self.state_dict(), meta)
        raise ValueError(f"format must be 'mert' or 'hf', got {format!r}")

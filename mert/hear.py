"""HEAR adapter: the HEAR 2021 common API over a MERT encoder, so it plugs into hear-eval-kit.

    python -m heareval.embeddings.runner mert.hear --model ./my-export --tasks-dir tasks/
    python -m heareval.embeddings.runner mert.hear --tasks-dir tasks/ --model-options '{"layers": "7"}'

The model takes audio at a rate HEAR accepts (48000 Hz by default for MERT-v1's 24 kHz: tasks are read from
``tasks/<task>/48000/``) and resamples it to the encoder's rate inside.

API (https://hearbenchmark.com/hear-api.html): :func:`load_model` returns a ``torch.nn.Module`` with the int
attributes ``sample_rate``, ``scene_embedding_size`` and ``timestamp_embedding_size``;
:func:`get_timestamp_embeddings` gives one embedding per encoder frame (75 Hz for MERT-v1, a 13.3 ms hop) with
the frame centres in milliseconds; :func:`get_scene_embeddings` is their mean over time.

What an embedding is (defaults, see :func:`load_model`): the mean of the transformer layers' hidden states
(``hidden_states[1..L]``; the pre-transformer ``hidden_states[0]`` is left out, as in MARBLE), computed on
5-second windows (MERT's pretraining crop) stitched back to one 75 Hz sequence.

Shape legend:
    s  sounds (HEAR's n_sounds)
    l  samples at ``model.sample_rate``
    t  timestamps = encoder frames
    n  selected hidden-state layers
    d  encoder width; e = embedding size (d, or n * d with ``combine="concat"``)
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from einops import rearrange
from torch import Tensor, nn

from mert.audio import resampled_length
from mert.models.encoder import Encoder
from mert.models.pooling import parse_layers

__all__ = [
    "DEFAULT_MODEL",
    "HEAR_SAMPLE_RATES",
    "HearModel",
    "default_sample_rate",
    "get_scene_embeddings",
    "get_timestamp_embeddings",
    "load_model",
]

DEFAULT_MODEL = "m-a-p/MERT-v1-95M"
# The input rates hear-validator accepts; hear-eval-kit reads a task's audio from tasks/<task>/<sample_rate>/.
HEAR_SAMPLE_RATES = (16000, 22050, 44100, 48000)


def default_sample_rate(encoder_rate: int) -> int:
    """The HEAR input rate for an encoder running at ``encoder_rate`` Hz: that rate if HEAR accepts it, else the
    lowest accepted rate that is a whole multiple of it (48000 for MERT-v1's 24000: an exact 2:1 decimation that
    keeps the whole band), else the lowest one above it, else the highest."""
    if encoder_rate in HEAR_SAMPLE_RATES:
        return encoder_rate
    for ok in (lambda r: r % encoder_rate == 0, lambda r: r >= encoder_rate):
        rates = [r for r in HEAR_SAMPLE_RATES if ok(r)]
        if rates:
            return rates[0]
    return HEAR_SAMPLE_RATES[-1]


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HearModel(nn.Module):
    """A MERT encoder with the HEAR model attributes and the embedding settings.

    Build it with :func:`load_model`. Attributes required by HEAR: ``sample_rate`` (Hz of the audio passed in),
    ``scene_embedding_size`` and ``timestamp_embedding_size`` (both ``e``).

    Args:
        encoder: the encoder (put in eval mode).
        layers: hidden states to use (:func:`mert.parse_layers` spec); None = transformer layers ``1..L``.
        combine: ``"mean"`` (width ``d``) or ``"concat"`` (width ``n * d``) over the chosen layers.
        sample_rate: rate of the audio this model is given; resampled to the encoder's rate inside. None =
            :func:`default_sample_rate` of the encoder's (48000 for MERT-v1's 24000, which HEAR does not accept).
            A rate outside :data:`HEAR_SAMPLE_RATES` works with hear-eval-kit on tasks prepared at that rate but
            fails hear-validator; it is allowed with a warning.
        chunk_seconds: window for long audio (None: one pass over the whole sound).
        overlap_seconds: overlap of consecutive windows (None: 20% of ``chunk_seconds``).
        batch_size: sounds per encoder call, and windows per encoder call for long sounds; bounds memory.
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        layers: str | int | Sequence[int] | None = None,
        combine: str = "mean",
        sample_rate: int | None = None,
        chunk_seconds: float | None = 5.0,
        overlap_seconds: float | None = None,
        batch_size: int = 8,
    ):
        super().__init__()
        self.encoder = encoder.eval()
        cfg = encoder.config
        n_states = cfg.num_hidden_states
        self.layers = parse_layers(f"1-{cfg.num_layers}" if layers is None else layers, n_states)
        if combine not in ("mean", "concat"):
            raise ValueError(f"combine must be 'mean' or 'concat', got {combine!r}")
        self.combine = combine
        if sample_rate is not None and int(sample_rate) <= 0:
            raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
        if sample_rate is not None and int(sample_rate) not in HEAR_SAMPLE_RATES:
            warnings.warn(
                f"HEAR sample_rate {int(sample_rate)} Hz is not one hear-validator accepts {HEAR_SAMPLE_RATES}; "
                f"hear-eval-kit will read tasks/<task>/{int(sample_rate)}/, so prepare the tasks at that rate",
                stacklevel=2,
            )
        if chunk_seconds is not None and chunk_seconds * cfg.sample_rate < cfg.min_samples:
            raise ValueError(
                f"chunk_seconds={chunk_seconds} is shorter than one frame's receptive field "
                f"({cfg.min_samples} samples at {cfg.sample_rate} Hz)"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.chunk_seconds = chunk_seconds
        self.overlap_seconds = overlap_seconds
        self.batch_size = int(batch_size)

        # The three attributes of the HEAR API, plain ints.
        self.sample_rate = int(sample_rate or default_sample_rate(cfg.sample_rate))
        width = cfg.hidden_size * (len(self.layers) if combine == "concat" else 1)
        self.scene_embedding_size = int(width)
        self.timestamp_embedding_size = int(width)

        # Frame i sees encoder samples [hop * i, hop * i + receptive_field); its centre is the timestamp.
        self.hop_ms = 1000.0 * cfg.hop_length / cfg.sample_rate
        self.first_timestamp_ms = 1000.0 * cfg.receptive_field / 2 / cfg.sample_rate
        # Shortest input (at self.sample_rate) that still yields one frame once resampled; shorter sounds are
        # zero-padded to it, since HEAR passes sounds of any length.
        self.min_samples = math.ceil(cfg.min_samples * self.sample_rate / cfg.sample_rate)
        self.eval()  # an embedding model: dropout and LayerDrop off

    def num_timestamps(self, num_samples: int) -> int:
        """Embeddings returned for a sound of ``num_samples`` samples at ``self.sample_rate``."""
        n = max(int(num_samples), self.min_samples)
        return int(self.encoder.frame_lengths(resampled_length(n, self.sample_rate, self.encoder.sample_rate)))

    def timestamps(self, num_frames: int) -> Tensor:
        """``(t,)`` float32 frame centres in milliseconds: ``first_timestamp_ms + i * hop_ms``."""
        i = torch.arange(num_frames, dtype=torch.float64)
        return (self.first_timestamp_ms + i * self.hop_ms).float()

    def forward(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """Same as :func:`get_timestamp_embeddings` with this model."""
        return get_timestamp_embeddings(audio, self)

    def extra_repr(self) -> str:
        return (
            f"sample_rate={self.sample_rate}, embedding_size={self.timestamp_embedding_size}, "
            f"layers={self.layers}, combine={self.combine!r}, chunk_seconds={self.chunk_seconds}"
        )


def load_model(
    model_file_path: str = "",
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    **settings,
) -> HearModel:
    """Load a MERT encoder as a HEAR model.

    Every keyword is JSON-friendly so hear-eval-kit can pass it with ``--model-options``.

    Default embedding: the mean over the transformer layers ``1..L``. The best single layer depends on the task
    (MERT-v1 probing results for MERT-v1-95M: pitch 1, singer 2, emotion 5, instrument 6, genre 7, key 8, technique 9)
    while HEAR asks for one embedding for every task, so the mean keeps low- and mid-layer information at width ``d``
    (768 for 95M) instead of ``L * d`` for a concatenation. For MERT-v1-330M (pre-LN) the residual
    streams grow with depth, so its mean leans towards the deep layers; pass ``layers`` to pick others.

    Args:
        model_file_path: anything :meth:`mert.Encoder.from_pretrained` accepts (release folder, weights file,
            ``https://`` URL, Hugging Face id); empty = ``m-a-p/MERT-v1-95M``.
        device: where to put the model (hear-eval-kit moves it to the GPU itself).
        dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``; embeddings are returned as float32.
        revision, cache_dir, local_files_only: passed to :meth:`mert.Encoder.from_pretrained`.
        **settings: the embedding settings of :class:`HearModel`, with its defaults: ``layers`` (``"7"``,
            ``"1-12"``, ``[4, 8]``, ``"last"``, ``"all"``; None = ``1..L``), ``combine`` (``"mean"`` or
            ``"concat"``), ``sample_rate`` (of the audio HEAR will pass; None: the encoder's rate if HEAR accepts
            it, else the lowest accepted whole multiple of it, see :func:`default_sample_rate`),
            ``chunk_seconds`` (5.0; None encodes each sound in one pass, memory growing with length),
            ``overlap_seconds`` and ``batch_size`` (8 sounds, and windows, per encoder call).
    Returns:
        A :class:`HearModel` in eval mode.
    Raises:
        TypeError: a keyword that is not a setting, before anything is loaded.
    """
    # The settings are HearModel's keywords, declared (with their defaults) only there; an unknown one fails here,
    # before a checkpoint is downloaded.
    inspect.signature(HearModel).bind(None, **settings)
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        dtype = _DTYPES[dtype]
    encoder = Encoder.from_pretrained(
        model_file_path or DEFAULT_MODEL,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        device=device,
        dtype=dtype,
    )
    return HearModel(encoder, **settings)


def _check(audio: Tensor | np.ndarray, model: nn.Module) -> Tensor:
    if not isinstance(model, HearModel):
        raise ValueError(f"model must be the HearModel returned by mert.hear.load_model, got {type(model).__name__}")
    if isinstance(audio, np.ndarray):
        audio = torch.from_numpy(audio)
    if not isinstance(audio, Tensor):
        raise ValueError(f"audio must be a torch.Tensor of shape (n_sounds, n_samples), got {type(audio).__name__}")
    if audio.dim() != 2:
        hint = "; for one sound use audio[None]" if audio.dim() == 1 else ""
        raise ValueError(f"audio must have shape (n_sounds, n_samples), got {tuple(audio.shape)}{hint}")
    if not audio.is_floating_point():
        raise ValueError(f"audio has dtype {audio.dtype}; expected floating point samples in [-1, 1]")
    if audio.shape[0] == 0 or audio.shape[1] == 0:
        raise ValueError(f"audio is empty: shape {tuple(audio.shape)} (n_sounds, n_samples)")
    bad = ~torch.isfinite(audio).all(dim=1)
    if bool(bad.any()):
        idx = bad.nonzero()[:, 0].tolist()
        raise ValueError(f"audio contains NaN or inf samples in sound(s) {idx[:10]}")
    return audio


def _embed(audio: Tensor, model: HearModel, pool_time: bool) -> Tensor:
    """``(s, l)`` -> ``(s, t, e)`` timestamp embeddings, or ``(s, e)`` with ``pool_time``; float32."""
    out_device = audio.device
    if audio.shape[1] < model.min_samples:
        audio = nn.functional.pad(audio, (0, model.min_samples - audio.shape[1]))
    parts = []
    for i in range(0, audio.shape[0], model.batch_size):
        res = model.encoder(
            audio[i : i + model.batch_size],
            sample_rate=model.sample_rate,
            chunk_seconds=model.chunk_seconds,
            overlap_seconds=model.overlap_seconds,
            chunk_batch_size=model.batch_size,
            layers=model.layers,  # stops after the deepest one asked for; the others are never stitched or kept
        )
        states = [res.hidden_states[j] for j in model.layers]  # n x (b, t, d)
        del res
        if model.combine == "mean":
            # A running sum rather than a stacked (n, b, t, d) copy: long sounds hold L + 1 such tensors already.
            x = states[0].float().clone()
            for s in states[1:]:
                x += s.float()
            x /= len(states)  # (b, t, d)
        else:
            x = rearrange(torch.stack(states).float(), "n b t d -> b t (n d)")
        del states
        if pool_time:
            x = x.mean(dim=1)  # (b, e)
        parts.append(x.to(out_device))
    return torch.cat(parts)


@torch.inference_mode()
def get_timestamp_embeddings(audio: Tensor, model: nn.Module) -> tuple[Tensor, Tensor]:
    """Embeddings at the encoder's frame rate, with their centre times.

    Args:
        audio: ``(s, l)`` float mono audio in [-1, 1] at ``model.sample_rate``.
        model: a :class:`HearModel` from :func:`load_model`.
    Returns:
        ``embeddings (s, t, e)`` float32 and ``timestamps (s, t)`` float32 in milliseconds, on ``audio``'s
        device; ``t = model.num_timestamps(l)`` (a sound shorter than one frame's receptive field is
        zero-padded to give one embedding).
    Raises:
        ValueError: a wrong model object, a non-2-D or non-float tensor, an empty batch, NaN/inf samples.
    """
    audio = _check(audio, model)
    emb = _embed(audio, model, pool_time=False)
    ts = model.timestamps(emb.shape[1]).to(emb.device)
    return emb, ts.expand(emb.shape[0], -1).contiguous()


@torch.inference_mode()
def get_scene_embeddings(audio: Tensor, model: nn.Module) -> Tensor:
    """One embedding per sound: the mean over time of :func:`get_timestamp_embeddings`.

    Args:
        audio: ``(s, l)`` float mono audio in [-1, 1] at ``model.sample_rate``.
        model: a :class:`HearModel` from :func:`load_model`.
    Returns:
        ``(s, e)`` float32 on ``audio``'s device.
    """
    audio = _check(audio, model)
    return _embed(audio, model, pool_time=True)

"""A learned residual vector quantiser as the acoustic teacher, fitted on your own corpus (MuQ's Mel-RVQ idea).

Shape legend: ``b`` batch, ``l`` samples, ``t`` frames (the encoder's 75 Hz grid), ``n`` frames in a training
batch, ``f`` input bins per frame, ``c`` context frames stacked (``2 * context + 1``), ``d`` latent dim,
``k`` codebooks, ``v`` codes per codebook.

MERT's acoustic teacher is EnCodec: a waveform RVQ-VAE trained on general audio, whose weights cannot be
downloaded offline. MuQ (Zhu et al. 2025) replaced it with a residual VQ on mel frames that trains in minutes and
found it a better target. This module is that kind of teacher:

    log-mel (or log-CQT) frames -> per-bin standardisation -> stack +-context frames -> linear (or MLP) to d
    -> K residual codebooks (EMA updates, k-means initialisation, dead-code restarts) -> linear back to the frames

trained to reconstruct its input (MSE on standardised frames, plus a commitment term). Frozen, it maps a
waveform to ``(b, t, k)`` codes on the encoder's frame grid like every other teacher.

Fitting: :func:`fit_rvq` or ``mert targets fit-rvq AUDIO_DIR_OR_MANIFEST --out rvq.pt``. The file holds the
configuration, the weights, the training summary (reconstruction, perplexity per codebook) and a SHA-256 of
the weights, which :meth:`RVQTargets.load` verifies.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mert.fileio import torch_save_atomic
from mert.models.checkpoint import weights_sha256
from mert.models.config import frame_lengths
from mert.targets._common import check_hop, empty_targets, saved_front_end
from mert.targets._sampling import sample_frames
from mert.targets.base import FittedTeacher, FrontEnd
from mert.targets.kmeans import kmeans

__all__ = ["RVQConfig", "RVQTargets", "ResidualVQ", "fit_rvq"]

INPUTS = ("logmel", "cqt")
STD_FLOOR = 0.1  # nats of log power or magnitude: the smallest per-bin spread standardisation divides by


# ---------------------------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class RVQConfig:
    """What an RVQ teacher computes (saved in its file; the fit's own settings are :func:`fit_rvq` arguments).

    Attributes:
        input: ``"logmel"`` (log mel power, ``n_mels`` bands, ``n_fft`` window) or ``"cqt"`` (log CQT magnitude,
            ``cqt_bins`` from ``cqt_fmin`` at ``cqt_bins_per_octave``).
        context: frames stacked on each side of the quantised frame (0: one frame).
        dim: latent size ``d`` that the codebooks quantise.
        hidden: 0 for a linear encoder and decoder (MuQ's Mel-RVQ), else the width of one GELU hidden layer.
        num_codebooks: ``k``; codebook_size: ``v``.
        sample_rate, hop_length: Hz and samples per frame: the hop must be the encoder's.
    """

    input: str = "logmel"
    n_mels: int = 128
    n_fft: int = 2048
    cqt_fmin: float = 32.7
    cqt_bins: int = 84
    cqt_bins_per_octave: int = 12
    context: int = 0
    dim: int = 64
    hidden: int = 0
    num_codebooks: int = 8
    codebook_size: int = 1024
    sample_rate: int = 24000
    hop_length: int = 320

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise ValueError(f"RVQConfig.input must be one of {INPUTS}, got {self.input!r}")
        for name in ("n_mels", "n_fft", "cqt_bins", "cqt_bins_per_octave", "dim", "num_codebooks", "sample_rate"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"RVQConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.codebook_size, int) or self.codebook_size < 2:
            raise ValueError(f"RVQConfig.codebook_size must be an integer >= 2, got {self.codebook_size!r}")
        if not isinstance(self.context, int) or self.context < 0:
            raise ValueError(f"RVQConfig.context must be an integer >= 0, got {self.context!r}")
        if not isinstance(self.hidden, int) or self.hidden < 0:
            raise ValueError(f"RVQConfig.hidden must be an integer >= 0, got {self.hidden!r}")

    @property
    def bins(self) -> int:
        """``f``: bins per input frame."""
        return self.n_mels if self.input == "logmel" else self.cqt_bins

    @property
    def input_dim(self) -> int:
        """``c * f``: what the encoder reads per frame."""
        return (2 * self.context + 1) * self.bins

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RVQConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown RVQConfig field(s) {unknown}")
        return cls(**dict(d))


class FrameInput(nn.Module):
    """``(b, l)`` -> ``(b, l // hop + 1, f)`` log frames centred on sample ``i * hop`` (fixed, no parameters)."""

    def __init__(self, config: RVQConfig):
        super().__init__()
        self.config = config
        if config.input == "logmel":
            from mert.targets.features import FrameFeatures

            self.mel = FrameFeatures(
                sample_rate=config.sample_rate,
                hop_length=config.hop_length,
                n_fft=config.n_fft,
                n_mels=config.n_mels,
                n_mfcc=min(20, config.n_mels),
            )
        else:
            from mert.targets.cqt import CQTTargets

            self.cqt = CQTTargets(
                sample_rate=config.sample_rate,
                hop_length=config.hop_length,
                fmin=config.cqt_fmin,
                n_bins=config.cqt_bins,
                bins_per_octave=config.cqt_bins_per_octave,
                compression="log",
                log_floor=1e-3,
                conv_kernel=(config.hop_length,),
                conv_stride=(config.hop_length,),
            )

    def forward(self, wav: Tensor) -> Tensor:
        if self.config.input == "logmel":
            return self.mel(wav, ("logmel",))["logmel"]
        return self.cqt.compute(wav)


def stack_context(frames: Tensor, context: int) -> Tensor:
    """``(b, t, f)`` -> ``(b, t, c * f)``: each frame with ``context`` neighbours on each side (edges repeated)."""
    if context == 0:
        return frames
    padded = torch.cat([frames[:, :1].expand(-1, context, -1), frames, frames[:, -1:].expand(-1, context, -1)], 1)
    windows = padded.unfold(1, 2 * context + 1, 1)  # (b, t, f, c)
    return rearrange(windows, "b t f c -> b t (c f)")


# ---------------------------------------------------------------------------------------------- quantiser
class ResidualVQ(nn.Module):
    """``k`` codebooks applied in turn to what the previous ones left, with EMA codebook updates.

    Codebooks are buffers, not parameters: they move by exponential moving averages of the vectors assigned to
    them (VQ-VAE-2, SoundStream, EnCodec), start as k-means centres of the first batch's residuals, and a code
    whose average use falls below ``dead_threshold`` assignments per batch is restarted on a random residual of
    the current batch (otherwise it is never used again).
    """

    def __init__(
        self,
        num_codebooks: int,
        codebook_size: int,
        dim: int,
        *,
        decay: float = 0.99,
        dead_threshold: float = 1.0,
        eps: float = 1e-5,
    ):
        super().__init__()
        self.num_codebooks, self.codebook_size, self.dim = num_codebooks, codebook_size, dim
        self.decay, self.dead_threshold, self.eps = float(decay), float(dead_threshold), float(eps)
        self.register_buffer("codebooks", torch.zeros(num_codebooks, codebook_size, dim))  # (k, v, d)
        self.register_buffer("ema_count", torch.zeros(num_codebooks, codebook_size))  # (k, v)
        self.register_buffer("ema_sum", torch.zeros(num_codebooks, codebook_size, dim))  # (k, v, d)
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @staticmethod
    def _nearest(x: Tensor, book: Tensor) -> Tensor:
        """``(n, d), (v, d)`` -> ``(n,)`` index of the nearest code (squared Euclidean; first on ties).

        ``|x|^2`` is the same for every code of a row, so only ``|c|^2 - 2 x.c`` is formed: one fused GEMM.
        """
        return torch.addmm(book.square().sum(1), x, book.T, alpha=-2.0).argmin(dim=1)  # (n, v) -> (n,)

    @torch.no_grad()
    def init_from(self, z: Tensor, *, seed: int = 0, iters: int = 20) -> None:
        """k-means initialisation of every codebook on ``(n, d)`` latents, stage by stage on the residuals."""
        if z.shape[0] < self.codebook_size:
            raise ValueError(
                f"initialising {self.codebook_size}-code codebooks needs at least {self.codebook_size} frames, "
                f"got {z.shape[0]}: use a smaller codebook_size or more audio"
            )
        residual = z.detach().float()
        for k in range(self.num_codebooks):
            centres, _ = kmeans(residual, self.codebook_size, iters=iters, seed=seed + k)
            self.codebooks[k] = centres
            self.ema_sum[k] = centres
            self.ema_count[k] = 1.0
            residual = residual - centres[self._nearest(residual, centres)]
        self.initialised.fill_(True)

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(n, d)`` -> codes ``(n, k)`` int64 and the quantised latent ``(n, d)`` (no update, no gradient)."""
        residual, out, codes = z, torch.zeros_like(z), []
        for k in range(self.num_codebooks):
            idx = self._nearest(residual, self.codebooks[k])
            q = self.codebooks[k][idx]
            out, residual = out + q, residual - q
            codes.append(idx)
        return torch.stack(codes, dim=1), out

    @torch.no_grad()
    def _update(self, k: int, residual: Tensor, idx: Tensor, gen: torch.Generator | None) -> None:
        """EMA step of codebook ``k`` towards the mean of the ``(n, d)`` residuals assigned to each code."""
        counts = torch.bincount(idx, minlength=self.codebook_size).to(residual.dtype)
        sums = torch.zeros_like(self.codebooks[k]).index_add_(0, idx, residual)
        self.ema_count[k].mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum[k].mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.ema_count[k].sum()
        # Laplace smoothing keeps rarely used codes from dividing by ~0.
        smoothed = (self.ema_count[k] + self.eps) / (n + self.codebook_size * self.eps) * n
        self.codebooks[k] = self.ema_sum[k] / smoothed[:, None]
        dead = self.ema_count[k] < self.dead_threshold
        if bool(dead.any()):
            pick = torch.randint(residual.shape[0], (int(dead.sum()),), generator=gen).to(residual.device)
            self.codebooks[k][dead] = residual[pick]
            self.ema_sum[k][dead] = residual[pick]
            self.ema_count[k][dead] = self.dead_threshold

    def forward(self, z: Tensor, *, update: bool, gen: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Quantise ``(n, d)`` latents; with ``update``, move the codebooks (EMA) and restart dead codes.

        Returns:
            the straight-through quantised latent ``(n, d)`` (gradients pass to ``z`` unchanged), codes
            ``(n, k)`` and the commitment loss (mean squared distance of ``z`` to its quantisation).
        """
        zd = z.detach()
        residual, quantised, codes = zd, torch.zeros_like(zd), []
        for k in range(self.num_codebooks):
            book = self.codebooks[k]
            idx = self._nearest(residual, book)
            q = book[idx]  # a copy: quantised with the codebook as it was; the update is for the next batch
            if update:
                self._update(k, residual, idx, gen)
            quantised, residual = quantised + q, residual - q
            codes.append(idx)
        commit = F.mse_loss(z, quantised)
        return z + (quantised - z).detach(), torch.stack(codes, dim=1), commit


class RVQModel(nn.Module):
    """Standardise -> encode -> residual VQ -> decode, on ``(n, c * f)`` stacked frames."""

    def __init__(self, config: RVQConfig, *, decay: float = 0.99, dead_threshold: float = 1.0):
        super().__init__()
        self.config = config
        n_in, d, h = config.input_dim, config.dim, config.hidden
        self.register_buffer("mean", torch.zeros(config.bins))  # (f,) per-bin statistics of the corpus
        self.register_buffer("std", torch.ones(config.bins))
        if h:
            self.encoder: nn.Module = nn.Sequential(nn.Linear(n_in, h), nn.GELU(), nn.Linear(h, d))
            self.decoder: nn.Module = nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, n_in))
        else:
            self.encoder, self.decoder = nn.Linear(n_in, d), nn.Linear(d, n_in)
        self.rvq = ResidualVQ(config.num_codebooks, config.codebook_size, d, decay=decay, dead_threshold=dead_threshold)

    def standardise(self, frames: Tensor) -> Tensor:
        """``(b, t, f)`` raw log frames -> ``(b, t, c * f)`` standardised, context stacked."""
        return stack_context((frames - self.mean) / self.std, self.config.context)

    def forward(self, x: Tensor, *, update: bool, gen: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(n, c * f)`` standardised frames -> reconstruction ``(n, c * f)``, codes ``(n, k)``, commitment."""
        zq, codes, commit = self.rvq(self.encoder(x), update=update, gen=gen)
        return self.decoder(zq), codes, commit


# ---------------------------------------------------------------------------------------------- teacher
class RVQTargets(FittedTeacher):
    """Learned RVQ codes of log-mel or log-CQT frames: ``(b, l) -> (b, t, k)`` int64, ``t = frame_lengths(l)``.

    Build it with :func:`fit_rvq` (or ``mert targets fit-rvq``), keep it with :meth:`save`, rebuild it with
    :meth:`load` / ``build_teacher("rvq", path=...)``. ``settings()`` names the file and its checksum, so
    shards cached with one fitted teacher are refused for another written to the same path.

    Args:
        config: what the teacher computes.
        state: :class:`RVQModel` state dict (statistics, encoder, codebooks, decoder).
        conv_kernel, conv_stride: the encoder front end; its hop must be ``config.hop_length``.

    Attributes:
        kind: ``"codes"``; ``num_codebooks``, ``codebook_size``: from the config.
        path, sha256: the file it was saved to or loaded from and the checksum of its weights.
        fit_info: JSON-able training summary (files, frames, steps, reconstruction, perplexity per codebook).
    """

    kind = "codes"
    FORMAT = "mert.targets.rvq"
    FORMAT_VERSION = 1
    KIND = "RVQ"
    FIT_COMMAND = "mert targets fit-rvq"

    def __init__(
        self,
        *,
        config: RVQConfig | Mapping[str, Any],
        state: Mapping[str, Tensor],
        conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2),
        conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2),
    ):
        config = config if isinstance(config, RVQConfig) else RVQConfig.from_dict(config)
        super().__init__(sample_rate=config.sample_rate, conv_kernel=conv_kernel, conv_stride=conv_stride)
        check_hop(self, config.hop_length, "RVQ frame")
        self.config = config
        self.num_codebooks, self.codebook_size = config.num_codebooks, config.codebook_size
        self.frames = FrameInput(config)
        self.model = RVQModel(config)
        missing, unexpected = self.model.load_state_dict(dict(state), strict=False)
        if missing or unexpected:
            raise ValueError(f"RVQ teacher weights do not match its config: missing {missing}, unexpected {unexpected}")
        # Fixed tensors come from the saved file (see settings()); keep them out of state dicts.
        from mert.targets._common import make_buffers_non_persistent

        for p in list(self.model.parameters()):
            p.requires_grad_(False)
        self._to_buffers(self.model)
        make_buffers_non_persistent(self)
        self.path: Path | None = None
        self.sha256: str | None = None
        self.fit_info: dict[str, Any] = {}
        self.skipped_files: list[tuple[str, str]] = []
        self.freeze()

    @staticmethod
    def _to_buffers(module: nn.Module) -> None:
        """Parameters -> buffers: a teacher is never trained and its tensors never enter a state dict."""
        for sub in module.modules():
            for name, p in list(sub.named_parameters(recurse=False)):
                delattr(sub, name)
                sub.register_buffer(name, p.detach().clone(), persistent=False)

    def compute(self, wav: Tensor) -> Tensor:
        """``(b, l)`` -> ``(b, l // hop + 1, k)`` int64 codes."""
        if self.num_frames(wav.shape[1]) == 0:
            return empty_targets(wav, self.num_codebooks, dtype=torch.int64)
        x = self.model.standardise(self.frames(wav))  # (b, t, c*f)
        codes, _ = self.model.rvq.quantize(self.model.encoder(rearrange(x, "b t f -> (b t) f")))
        return rearrange(codes, "(b t) k -> b t k", b=wav.shape[0])

    # ------------------------------------------------------------------ persistence
    def weights(self) -> dict[str, Tensor]:
        """The :class:`RVQModel` state dict (CPU copies), as saved."""
        # Parameters became non-persistent buffers of the same names (_to_buffers): read them as buffers.
        return {name: buf.detach().cpu().clone() for name, buf in self.model.named_buffers()}

    def to_dict(self) -> dict[str, Any]:
        """Everything :meth:`load` needs: plain tensors, strings and numbers (safe for ``weights_only=True``)."""
        weights = self.weights()
        return {
            "format": self.FORMAT,
            "format_version": self.FORMAT_VERSION,
            "config": self.config.to_dict(),
            "conv_kernel": list(self.conv_kernel),
            "conv_stride": list(self.conv_stride),
            "weights": weights,
            "sha256": weights_sha256(weights),
            "fit_info": self.fit_info,
        }

    def saved(self, state: dict[str, Any]) -> None:
        self.sha256 = state["sha256"]

    @classmethod
    def fitted_rate(cls, state: dict[str, Any]) -> int:
        return int(state["config"]["sample_rate"])

    @classmethod
    def from_state(
        cls, path: Path, state: dict[str, Any], front_end: FrontEnd, sha256: str | None = None
    ) -> RVQTargets:
        """Rebuild from :meth:`to_dict`'s state (what :meth:`FittedTeacher.load` calls); ``sha256``: the digest
        the weights must have (what ``settings()`` recorded), checked as is the digest the file was saved with."""
        actual = weights_sha256(state["weights"])
        if actual != state.get("sha256"):
            raise ValueError(
                f"RVQ teacher {str(path)!r} is damaged: its weights' SHA-256 is not the one it was saved with"
            )
        if sha256 is not None and sha256 != actual:
            raise ValueError(
                f"RVQ teacher {str(path)!r} has weights {actual[:12]}..., not the {sha256[:12]}... this run or its "
                "cached targets were made with: it was refitted or replaced"
            )
        config = RVQConfig.from_dict(state["config"])
        kernel, stride = saved_front_end(path, state, config.hop_length, *front_end)
        teacher = cls(config=config, state=state["weights"], conv_kernel=kernel, conv_stride=stride)
        teacher.sha256 = actual
        return teacher

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"{super().extra_repr()}, input={c.input}, context={c.context}, dim={c.dim}, "
            f"codebooks={c.num_codebooks}x{c.codebook_size}, path={None if self.path is None else str(self.path)!r}"
        )

    def settings(self) -> dict[str, Any]:
        """``{"class", "sample_rate", "path", "sha256"}``: the saved file holds everything else."""
        return {**super().settings(), "path": str(self.path), "sha256": self.sha256}


# ---------------------------------------------------------------------------------------------- fitting
def perplexity(codes: Tensor, codebook_size: int) -> list[float]:
    """``(n, k)`` codes -> per-codebook perplexity (exp of the entropy of code use): codes effectively in use."""
    out = []
    for k in range(codes.shape[1]):
        p = torch.bincount(codes[:, k], minlength=codebook_size).double()
        p = p / p.sum()
        out.append(float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())))
    return out


def _fingerprint(config: RVQConfig, fit_args: Mapping[str, Any], sample: Tensor) -> str:
    h = hashlib.sha256(json.dumps([config.to_dict(), dict(fit_args)], sort_keys=True).encode())
    h.update(sample.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def fit_rvq(
    audio: Iterable[str | os.PathLike | Tensor | np.ndarray] | str | os.PathLike,
    config: RVQConfig | None = None,
    *,
    steps: int = 1000,
    batch_frames: int = 4096,
    lr: float = 1e-3,
    commitment: float = 0.25,
    decay: float = 0.99,
    dead_threshold: float = 1.0,
    max_frames: int = 300_000,
    min_usage: float = 0.02,
    seed: int = 0,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 200,
    device: str | torch.device = "cpu",
    progress: bool = True,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2),
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2),
) -> RVQTargets:
    """Train an RVQ teacher on a corpus's frames.

    One pass over the corpus computes per-bin statistics over every frame and keeps a uniform sample of
    ``max_frames`` encoder frames (95 % to train on, 5 % held out); training draws ``batch_frames`` random
    frames per step. Batches are drawn from a generator seeded by ``(seed, step)``, so an interrupted fit
    resumed from ``checkpoint`` ends with the same teacher as an uninterrupted one.

    Args:
        audio: a folder, a file, or paths and/or waveforms ``(l,)`` / ``(channels, l)`` at the config's rate.
            Unreadable, empty, too short or non-finite inputs are skipped, counted and listed in ``fit_info``.
        config: the teacher to fit (defaults: log-mel 128, 8 x 1024 codes, d=64).
        steps: optimiser steps; batch_frames: frames per step; lr: Adam learning rate of encoder and decoder.
        commitment: weight of the commitment loss (the encoder's pull towards its codes).
        decay, dead_threshold: EMA decay of the codebooks, and the average assignments per batch below which a
            code is restarted.
        max_frames: frames kept from the corpus.
        min_usage: refuse the teacher when a codebook's perplexity on held-out frames is below
            ``max(2, min_usage * codebook_size)`` (a collapsed codebook carries no information).
        seed: seeds sampling, initialisation and batches.
        checkpoint: a file for the training state: written every ``checkpoint_every`` steps, resumed from when
            its data and settings match, removed when the fit ends.
        device: where to train (``"cuda"`` if you have one; the frames are small either way).
        progress: progress bar with the reconstruction error and the smallest codebook perplexity.
        callback: called as ``callback(step, metrics)`` after every step (e.g. for logging).
        conv_kernel, conv_stride: the encoder front end: its hop must be ``config.hop_length``.
    Returns:
        The fitted teacher (``path`` None until :meth:`RVQTargets.save`).
    Raises:
        ValueError: no usable audio, fewer frames than codes, or a collapsed codebook.
    """
    from mert.progress import progress_bar

    config = config or RVQConfig()
    if math.prod(conv_stride) != config.hop_length:
        raise ValueError(
            f"RVQ hop_length {config.hop_length} does not match the encoder's hop {math.prod(conv_stride)} "
            f"(product of conv_stride {list(conv_stride)})"
        )
    for name, value in (("steps", steps), ("batch_frames", batch_frames), ("max_frames", max_frames)):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    device = torch.device(device)
    t_start = time.perf_counter()
    frames_in = FrameInput(config)

    def num_frames(num_samples: int) -> int:
        return int(frame_lengths(num_samples, tuple(conv_kernel), tuple(conv_stride)))

    def featurize(wav: Tensor) -> dict[str, Tensor]:
        return {"frames": stack_context(frames_in(wav), config.context)}

    try:
        got = sample_frames(
            audio,
            featurize,
            {"frames": config.input_dim},
            num_frames,
            max_frames=max_frames,
            sample_rate=config.sample_rate,
            seed=seed,
            progress=progress,
            desc="RVQ frames",
        )
    except ValueError as e:
        raise ValueError(f"{e} (fitting an RVQ teacher)") from None
    sample = got.frames["frames"]  # (n, c*f), stacked raw frames
    bins = config.bins
    # Per-bin statistics: the centre frame's bins (every frame is the centre of one window).
    centre = slice(config.context * bins, (config.context + 1) * bins)
    # A bin whose log level hardly moves (leakage far from any partial, digital silence) is not scaled up to unit
    # variance: STD_FLOOR nats (0.4 dB) is below anything audible, so its float noise does not become "content".
    mean, std = got.mean["frames"][centre], got.std["frames"][centre].clamp_min(STD_FLOOR)
    x_all = (sample - mean.repeat(2 * config.context + 1)) / std.repeat(2 * config.context + 1)
    n_total = x_all.shape[0]
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    n_held = max(1, n_total // 20) if n_total >= 40 else 0
    held, train = x_all[perm[:n_held]], x_all[perm[n_held:]]
    if train.shape[0] < config.codebook_size:
        raise ValueError(
            f"the corpus gave {train.shape[0]} training frames, fewer than codebook_size={config.codebook_size}: "
            "give more audio or a smaller codebook"
        )

    with torch.random.fork_rng(devices=[]):  # seeded encoder/decoder initialisation; the caller's RNG untouched
        torch.manual_seed(seed)
        model = RVQModel(config, decay=decay, dead_threshold=dead_threshold)
    model.mean.copy_(mean)
    model.std.copy_(std)
    model.to(device)
    opt = torch.optim.Adam([p for p in model.parameters()], lr=lr)
    fit_args = dict(
        steps=steps, batch_frames=batch_frames, lr=lr, commitment=commitment, decay=decay,
        dead_threshold=dead_threshold, max_frames=max_frames, seed=seed,
    )  # fmt: skip
    fingerprint = _fingerprint(config, {k: v for k, v in fit_args.items() if k != "steps"}, sample)
    start, history = 0, []
    ckpt = Path(checkpoint).expanduser() if checkpoint is not None else None
    if ckpt is not None and ckpt.is_file():
        try:
            saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as e:  # a partial write or another file: start afresh rather than fail
            from mert.models.checkpoint import load_error_reason

            reason = load_error_reason(e)
            warnings.warn(f"RVQ fit: ignoring unreadable checkpoint {str(ckpt)!r} ({reason})", stacklevel=2)
            saved = None
        if saved is not None and saved.get("fingerprint") == fingerprint and saved["step"] <= steps:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            start, history = int(saved["step"]), list(saved.get("history", []))
        elif saved is not None:
            warnings.warn(
                f"RVQ fit: checkpoint {str(ckpt)!r} is for other data or settings; starting afresh", stacklevel=2
            )

    def save_checkpoint(step: int) -> None:
        if ckpt is None:
            return
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "history": history}
        torch_save_atomic(ckpt, {**state, "fingerprint": fingerprint})

    train_dev = train.to(device)
    if not bool(model.rvq.initialised):
        g = torch.Generator().manual_seed(seed)
        n_init = min(train.shape[0], max(batch_frames, 8 * config.codebook_size))
        init = train_dev[torch.randperm(train.shape[0], generator=g)[:n_init].to(device)]
        with torch.no_grad():
            model.rvq.init_from(model.encoder(init), seed=seed)
    bar = progress_bar(total=steps, initial=start, desc="fit-rvq", unit="step", disable=not progress)
    model.train()
    for step in range(start, steps):
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(train.shape[0], (min(batch_frames, train.shape[0]),), generator=g)
        x = train_dev[idx.to(device)]
        recon, codes, commit = model(x, update=True, gen=g)
        rec = F.mse_loss(recon, x)
        loss = rec + commitment * commit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        metrics = {"recon": rec.detach().item(), "commit": commit.detach().item()}
        if step % 10 == 0 or step == steps - 1:
            ppl = perplexity(codes.cpu(), config.codebook_size)
            metrics["min_perplexity"] = min(ppl)
            history.append({"step": step + 1, **metrics})
            bar.set_postfix(recon=f"{metrics['recon']:.3f}", ppl=f"{min(ppl):.0f}")
        bar.update(1)
        if callback is not None:
            callback(step + 1, metrics)
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            save_checkpoint(step + 1)
    bar.close()

    model.eval()
    evaluate = held if held.shape[0] else train
    with torch.no_grad():
        recon, codes, _ = model(evaluate.to(device), update=False)
        held_mse = float(F.mse_loss(recon, evaluate.to(device)))
    ppl = perplexity(codes.cpu(), config.codebook_size)
    teacher = RVQTargets(
        config=config,
        state={k: v.detach().cpu() for k, v in model.state_dict().items()},
        conv_kernel=conv_kernel,
        conv_stride=conv_stride,
    )
    teacher.skipped_files = got.skipped
    teacher.fit_info = {
        "num_files": got.num_files,
        "num_frames": got.num_frames,
        "num_frames_used": n_total,
        "held_out_frames": int(evaluate.shape[0]),
        "fit": fit_args,
        # Standardised frames have unit variance per bin: 1 - held_out_mse is the variance explained.
        "held_out_mse": held_mse,
        "perplexity": ppl,
        "seconds": time.perf_counter() - t_start,
        "history": history[-50:],
        "skipped_files": [list(x) for x in got.skipped],
    }
    floor = max(2.0, min_usage * config.codebook_size)
    collapsed = [k for k, p in enumerate(ppl) if p < floor]
    if collapsed:
        raise ValueError(
            f"RVQ teacher collapsed: codebook(s) {collapsed} have perplexity "
            f"{', '.join(f'{ppl[k]:.1f}' for k in collapsed)} on {evaluate.shape[0]} held-out frames, below "
            f"{floor:g} (min_usage {min_usage} x {config.codebook_size} codes); their codes carry almost no "
            "information. Use more varied audio, fewer codes or fewer codebooks"
        )
    if ckpt is not None and ckpt.is_file():
        ckpt.unlink()
    if got.skipped:
        warnings.warn(f"RVQ fit skipped {len(got.skipped)} unusable input(s); see .skipped_files", stacklevel=2)
    return teacher

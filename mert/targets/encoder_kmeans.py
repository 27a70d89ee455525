"""The second-iteration teacher (HuBERT iteration 2): k-means cluster ids of an encoder's own layer-K features.

Shape legend: ``b`` batch, ``l`` samples, ``t`` frames (the encoder's grid), ``n`` sampled frames,
``d`` the source encoder's width, ``v`` clusters.

A first pretraining run learns from hand-crafted or random targets; re-clustering that run's hidden states gives
targets that follow what the model has already learned (HuBERT's second iteration; MuQ reports +0.3 on its
mean). The teacher file holds the source encoder itself (config and weights, with their SHA-256), the layer,
the standardisation statistics and the centroids, so it needs nothing else to run and cannot silently follow a
run folder that kept training. Its codes live on the source encoder's frame grid, so only an encoder with the
same front end (sample rate, kernels and strides) can train on them; anything else is refused on load.

Fitting: ``EncoderKMeansTargets.fit(source, files, layer=K)`` or
``mert targets fit-kmeans AUDIO_DIR --from-encoder RUN_OR_EXPORT --layer K --out km2.pt``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mert.models.checkpoint import weights_sha256
from mert.targets._common import empty_targets
from mert.targets._sampling import sample_frames
from mert.targets.base import FittedTeacher, FrontEnd
from mert.targets.kmeans import _nearest, kmeans

__all__ = ["EncoderKMeansTargets"]


def _grid(sample_rate: int, kernel: Sequence[int], stride: Sequence[int]) -> dict[str, Any]:
    hop = math.prod(stride)
    return {
        "sample_rate": int(sample_rate),
        "conv_kernel": [int(k) for k in kernel],
        "conv_stride": [int(s) for s in stride],
        "hop_length": int(hop),
        "frame_rate": sample_rate / hop,
    }


class EncoderKMeansTargets(FittedTeacher):
    """k-means codes of a frozen encoder's layer-``K`` features: ``(b, l) -> (b, t, 1)`` int64.

    Build it with :meth:`fit` (or ``mert targets fit-kmeans --from-encoder``), keep it with :meth:`save`,
    rebuild it with :meth:`load` / ``build_teacher("encoder_kmeans", path=...)``.

    Args:
        encoder: the source encoder (frozen; kept in the teacher file).
        layer: hidden state read, ``0..num_layers`` (0 = the transformer input).
        centroids: ``(v, d)`` cluster centres in standardised feature space.
        mean, std: ``(d,)`` standardisation statistics of that layer over the fitting corpus.
        identity: where the encoder came from (``source``, ``name``, ``global_step``), for the record.

    Attributes:
        kind: ``"codes"``; ``num_codebooks`` 1; ``codebook_size`` ``v``.
        encoder_sha256: digest of the source encoder's weights (:func:`mert.models.checkpoint.weights_sha256`).
        grid: the frame grid of the codes (sample rate, the grid's kernels and strides, hop, frame rate; for the
            mel family the kernels and strides of ``EncoderConfig.frame_kernel``/``frame_stride``).
    """

    kind = "codes"
    FORMAT = "mert.targets.encoder_kmeans"
    FORMAT_VERSION = 1
    KIND = "encoder k-means"
    FIT_COMMAND = "mert targets fit-kmeans AUDIO_DIR --from-encoder RUN_OR_EXPORT --layer K"

    def __init__(
        self,
        *,
        encoder: Any,
        layer: int,
        centroids: Tensor,
        mean: Tensor,
        std: Tensor,
        identity: Mapping[str, Any] | None = None,
    ):
        cfg = encoder.config
        super().__init__(sample_rate=cfg.sample_rate, conv_kernel=cfg.frame_kernel, conv_stride=cfg.frame_stride)
        if not 0 <= int(layer) < cfg.num_hidden_states:
            raise ValueError(
                f"layer must be in [0, {cfg.num_hidden_states - 1}] for a {cfg.num_layers}-layer encoder, got {layer}"
            )
        d = cfg.hidden_size
        if centroids.dim() != 2 or centroids.shape[1] != d or tuple(mean.shape) != (d,) or tuple(std.shape) != (d,):
            raise ValueError(
                f"centroids must be (clusters, {d}) and mean/std ({d},) for an encoder of width {d}, got "
                f"{tuple(centroids.shape)}, {tuple(mean.shape)}, {tuple(std.shape)}"
            )
        self.encoder = encoder.eval()
        self.layer = int(layer)
        self.num_codebooks = 1
        self.codebook_size = int(centroids.shape[0])
        self.register_buffer("centroids", centroids.detach().float().clone(), persistent=False)
        self.register_buffer("mean", mean.detach().float().clone(), persistent=False)
        self.register_buffer("std", std.detach().float().clamp_min(1e-5).clone(), persistent=False)
        self.identity = dict(identity or {})
        self.encoder_sha256 = weights_sha256(encoder.state_dict())
        self.grid = _grid(cfg.sample_rate, cfg.frame_kernel, cfg.frame_stride)
        self.path: Path | None = None
        self.skipped_files: list[tuple[str, str]] = []
        self.fit_info: dict[str, Any] = {}
        self.freeze()

    @property
    def frame_offset(self) -> int:
        """0: the source encoder's frames are the codes' frames (no centring to correct)."""
        return 0

    def layer_features(self, wav: Tensor) -> Tensor:
        """``(b, l)`` -> ``(b, t, d)`` the source encoder's hidden state ``layer`` (inference mode)."""
        return self.encoder(wav, layers=self.layer).hidden_states[self.layer]

    def compute(self, wav: Tensor) -> Tensor:
        """``(b, l)`` -> ``(b, t, 1)`` int64 cluster ids."""
        if self.num_frames(wav.shape[1]) == 0:
            return empty_targets(wav, 1, dtype=torch.int64)
        f = (self.layer_features(wav).float() - self.mean) / self.std  # (b, t, d)
        idx, _ = _nearest(f.flatten(0, 1), self.centroids)
        return idx.view(*f.shape[:2], 1)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        encoder: Any,
        audio: Iterable[str | os.PathLike | Tensor | np.ndarray],
        *,
        layer: int,
        num_clusters: int = 500,
        max_frames: int = 200_000,
        iters: int = 50,
        seed: int = 0,
        progress: bool = True,
        identity: Mapping[str, Any] | None = None,
    ) -> EncoderKMeansTargets:
        """Fit standardisation statistics and k-means on an encoder's layer-``layer`` features of a corpus.

        Args:
            encoder: the :class:`~mert.Encoder` to re-cluster (from a run folder:
                :func:`mert.pretrain.reload.load_run_encoder`).
            audio: audio file paths (resampled to the encoder's rate) and/or waveforms ``(l,)`` at that rate.
            layer: hidden state to cluster (HuBERT's second iteration used the 6th of 12 layers).
            num_clusters: ``v`` (HuBERT iteration 2: 500).
            max_frames: frames sampled for k-means; statistics use every frame.
            iters: maximum Lloyd iterations.
            seed: seeds the frame sample and k-means++.
            progress: show a progress bar.
            identity: where the encoder came from, kept in the file (default: its ``source`` and config name).
        Returns:
            The fitted teacher (``path`` None until :meth:`save`).
        Raises:
            ValueError: a layer the encoder does not have, no usable audio, or fewer frames than clusters.
        """
        enc = encoder.eval()
        identity = dict(identity or {"source": getattr(enc, "source", None), "name": enc.config.name})
        n = enc.config.num_hidden_states
        if not 0 <= int(layer) < n:
            raise ValueError(f"layer must be in [0, {n - 1}] for a {enc.config.num_layers}-layer encoder, got {layer}")
        if num_clusters < 2 or max_frames < num_clusters:
            raise ValueError(f"need 2 <= num_clusters <= max_frames, got {num_clusters}, {max_frames}")
        layer = int(layer)

        def featurize(wav: Tensor) -> dict[str, Tensor]:
            with torch.inference_mode():
                return {"layer": enc(wav, layers=layer).hidden_states[layer].float().clone()}

        try:
            got = sample_frames(
                audio,
                featurize,
                {"layer": enc.config.hidden_size},
                lambda num_samples: int(enc.frame_lengths(num_samples)),
                max_frames=max_frames,
                sample_rate=enc.sample_rate,
                seed=seed,
                progress=progress,
                desc=f"layer {layer} features",
            )
        except ValueError as e:
            raise ValueError(f"{e} (fitting k-means on encoder features)") from None
        if got.skipped:
            warnings.warn(f"k-means fit skipped {len(got.skipped)} unusable input(s); see .skipped_files", stacklevel=2)
        z = (got.frames["layer"] - got.mean["layer"]) / got.std["layer"]
        centroids, inertia = kmeans(z, num_clusters, iters=iters, seed=seed)
        teacher = cls(
            encoder=enc,
            layer=layer,
            centroids=centroids,
            mean=got.mean["layer"],
            std=got.std["layer"],
            identity=identity,
        )
        teacher.skipped_files = got.skipped
        teacher.fit_info = {
            "num_files": got.num_files,
            "num_frames": got.num_frames,
            "num_frames_used": int(z.shape[0]),
            "num_clusters": num_clusters,
            "iters": iters,
            "seed": seed,
            "inertia": inertia,
            "skipped_files": [list(x) for x in got.skipped],
        }
        return teacher

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """Everything :meth:`load` needs, the source encoder included (safe for ``torch.load(weights_only=True)``)."""
        return {
            "format": self.FORMAT,
            "format_version": self.FORMAT_VERSION,
            "sample_rate": self.sample_rate,
            "layer": self.layer,
            "grid": dict(self.grid),
            "encoder": dict(self.identity),
            "encoder_config": self.encoder.config.to_dict(),
            "encoder_state": {k: v.detach().cpu().clone() for k, v in self.encoder.state_dict().items()},
            "encoder_sha256": self.encoder_sha256,
            "centroids": self.centroids.detach().cpu().clone(),
            "mean": self.mean.detach().cpu().clone(),
            "std": self.std.detach().cpu().clone(),
            "fit_info": self.fit_info,
        }

    @classmethod
    def from_state(
        cls, path: Path, state: dict[str, Any], front_end: FrontEnd, encoder_sha256: str | None = None
    ) -> EncoderKMeansTargets:
        """Rebuild from :meth:`to_dict`'s state; ``front_end`` is the training encoder's ``(conv_kernel,
        conv_stride)``, which must be the source encoder's: its codes exist on that frame grid only."""
        from mert.models.config import EncoderConfig
        from mert.models.encoder import Encoder

        config = EncoderConfig.from_dict(state["encoder_config"])
        grid = _grid(config.sample_rate, config.frame_kernel, config.frame_stride)
        kernel, stride = front_end
        asked = _grid(
            config.sample_rate,
            config.frame_kernel if kernel is None else kernel,
            config.frame_stride if stride is None else stride,
        )
        if asked != grid:
            raise ValueError(
                f"{str(path)!r} holds codes on the frame grid of the encoder it was fitted from "
                f"({grid['frame_rate']:g} Hz: kernels {grid['conv_kernel']}, strides {grid['conv_stride']}), but the "
                f"encoder being trained has kernels {asked['conv_kernel']}, strides {asked['conv_stride']} "
                f"({asked['frame_rate']:g} Hz); fit the teacher from an encoder with the same front end"
            )
        enc = Encoder(config)
        enc.load_state_dict(state["encoder_state"])
        teacher = cls(
            encoder=enc,
            layer=int(state["layer"]),
            centroids=state["centroids"],
            mean=state["mean"],
            std=state["std"],
            identity=state.get("encoder") or {},
        )
        if teacher.encoder_sha256 != state["encoder_sha256"]:
            raise ValueError(f"{str(path)!r}: the encoder weights do not match their recorded SHA-256 (damaged file)")
        if encoder_sha256 is not None and encoder_sha256 != teacher.encoder_sha256:
            raise ValueError(
                f"{str(path)!r} was fitted from encoder {teacher.encoder_sha256[:12]}, not the {encoder_sha256[:12]} "
                "this run's settings name"
            )
        return teacher

    def settings(self) -> dict[str, Any]:
        """``{"class", "sample_rate", "path", "layer", "encoder_sha256"}``: the file holds everything else."""
        return {**super().settings(), "layer": self.layer, "encoder_sha256": self.encoder_sha256}

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, layer={self.layer}, codebook_size={self.codebook_size}, "
            f"encoder={self.identity.get('name')!r} ({self.encoder_sha256[:12]})"
        )

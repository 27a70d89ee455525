"""MERT-v0's baseline teacher: k-means cluster ids of hand-crafted frame features.

Shape legend: ``b`` batch, ``l`` samples, ``t`` frames (75 Hz), ``n`` sampled frames, ``d`` feature dim,
``v`` clusters, ``k`` codebooks (one per feature set).

Each feature set (``"mfcc"``, ``"chroma"``, ``"logmel"``; see :mod:`mert.targets.features`) is standardised with
statistics fitted on the corpus and clustered on its own, and becomes one codebook: ``("mfcc", "chroma")``
gives 2 codes per frame. Spec section 2 reports why both matter: in MERT's key-detection ablation MFCC
k-means alone reached 15.1% and adding chroma 55.1%.

Fitting: ``KMeansTargets.fit(files_or_wavs)`` or the command ``mert targets fit-kmeans AUDIO_DIR --out km.pt``.
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

from mert.models.config import frame_lengths
from mert.targets._common import check_hop, empty_targets, saved_front_end
from mert.targets._sampling import sample_frames
from mert.targets.base import FittedTeacher, FrontEnd
from mert.targets.features import FrameFeatures, check_feature_sets

__all__ = ["KMeansTargets", "kmeans"]

_ASSIGN_CHUNK = 65536  # rows per distance matrix in k-means


# ---------------------------------------------------------------------------------------------- k-means
def _nearest(x: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """``(n, d), (v, d)`` -> index ``(n,)`` and squared distance ``(n,)`` of each row's nearest centroid."""
    c_sq = centroids.square().sum(dim=1)  # (v,)
    idx, dist = [], []
    for rows in x.split(_ASSIGN_CHUNK):
        d2 = rows.square().sum(dim=1, keepdim=True) - 2 * rows @ centroids.T + c_sq  # (n, v)
        best = d2.min(dim=1)
        idx.append(best.indices)
        dist.append(best.values.clamp_min(0))
    return torch.cat(idx), torch.cat(dist)


def _kmeans_pp(x: Tensor, num_clusters: int, gen: torch.Generator) -> Tensor:
    """k-means++ seeding: each new centre drawn with probability proportional to its squared distance."""
    n = x.shape[0]
    centres = [x[int(torch.randint(n, (1,), generator=gen))]]
    d2 = (x - centres[0]).square().sum(dim=1)  # (n,)
    for _ in range(1, num_clusters):
        total = float(d2.sum())
        # Fewer distinct points than clusters: every point is already a centre, pick uniformly.
        probs = d2 / total if total > 0 else torch.full_like(d2, 1.0 / n)
        i = int(torch.multinomial(probs, 1, generator=gen))
        centres.append(x[i])
        d2 = torch.minimum(d2, (x - x[i]).square().sum(dim=1))
    return torch.stack(centres)


def kmeans(x: Tensor, num_clusters: int, *, iters: int = 50, seed: int = 0) -> tuple[Tensor, float]:
    """Full-batch Lloyd k-means with k-means++ initialisation.

    Args:
        x: ``(n, d)`` float points, ``n >= num_clusters``.
        num_clusters: ``v``.
        iters: maximum Lloyd iterations; stops early when no assignment changes.
        seed: seed of a private generator (the global RNG is untouched).
    Returns:
        ``(centroids (v, d), inertia)`` with inertia the mean squared distance to the nearest centroid.
    """
    if x.shape[0] < num_clusters:
        raise ValueError(f"k-means needs at least as many frames as clusters: {x.shape[0]} < {num_clusters}")
    gen = torch.Generator().manual_seed(int(seed))
    x = x.float()
    centroids = _kmeans_pp(x, num_clusters, gen)
    assign = None
    for _ in range(iters):
        new_assign, d2 = _nearest(x, centroids)
        if assign is not None and torch.equal(new_assign, assign):
            break
        assign = new_assign
        counts = torch.bincount(assign, minlength=num_clusters)  # (v,)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        updated = sums / counts.clamp_min(1)[:, None].to(x.dtype)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, updated)
        if bool(empty.any()):
            # A dead cluster takes over the points worst served by the others (largest distances first).
            far = d2.argsort(descending=True)[: int(empty.sum())]
            centroids[empty] = x[far]
    _, d2 = _nearest(x, centroids)
    return centroids, float(d2.mean())


# ---------------------------------------------------------------------------------------------- teacher
class KMeansTargets(FittedTeacher):
    """k-means codes of hand-crafted features: ``(b, l) -> (b, t, k)`` int64, ``t = frame_lengths(l)``.

    Build it with :meth:`fit` (or ``mert targets fit-kmeans``), keep it with :meth:`save`, rebuild it with
    :meth:`load` / ``build_teacher("kmeans", path=...)``. ``settings()`` points at the saved file, so save a
    fitted teacher before training with it.

    Args:
        centroids: ``{feature_set: (v, d)}`` cluster centres in standardised feature space; the mapping's
            order is the codebook order.
        mean, std: ``{feature_set: (d,)}`` standardisation statistics fitted on the same corpus.
        features: :class:`FrameFeatures` arguments (``FrameFeatures.config()``); defaults when None.
        sample_rate: Hz of the input audio.
        conv_kernel, conv_stride: the encoder front end; its hop is the feature hop.

    Attributes:
        kind: ``"codes"``.
        feature_sets: codebook order, e.g. ``("mfcc", "chroma")``.
        num_codebooks: ``len(feature_sets)``; ``codebook_size``: clusters per codebook.
        path: the file it was saved to or loaded from (None until then).
        skipped_files: ``[(file, reason), ...]`` inputs that :meth:`fit` could not use.
        fit_info: JSON-able summary of the fit (files, frames, inertia, skips).
    """

    kind = "codes"
    FORMAT = "mert.targets.kmeans"
    FORMAT_VERSION = 1
    KIND = "k-means"
    FIT_COMMAND = "mert targets fit-kmeans"

    def __init__(
        self,
        *,
        centroids: Mapping[str, Tensor],
        mean: Mapping[str, Tensor],
        std: Mapping[str, Tensor],
        features: Mapping[str, Any] | None = None,
        sample_rate: int = 24000,
        conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2),
        conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2),
    ):
        super().__init__(sample_rate=sample_rate, conv_kernel=conv_kernel, conv_stride=conv_stride)
        self.feature_sets = check_feature_sets(list(centroids))
        hop = math.prod(self.conv_stride)
        features = {"sample_rate": sample_rate, "hop_length": hop, **(features or {})}
        if features["sample_rate"] != sample_rate:
            raise ValueError(f"features were computed at {features['sample_rate']} Hz, not sample_rate={sample_rate}")
        check_hop(self, features["hop_length"], "feature")
        self.features = FrameFeatures(**features)
        sizes = {name: tuple(c.shape) for name, c in centroids.items()}
        if len({v for v, _ in sizes.values()}) != 1:
            raise ValueError(f"every feature set needs the same number of clusters, got {sizes}")
        self.num_codebooks = len(self.feature_sets)
        self.codebook_size = next(iter(sizes.values()))[0]
        for name in self.feature_sets:
            d = self.features.dim(name)
            for what, table, shape in (
                ("centroids", centroids, (self.codebook_size, d)),
                ("mean", mean, (d,)),
                ("std", std, (d,)),
            ):
                if name not in table or tuple(table[name].shape) != shape:
                    got = tuple(table[name].shape) if name in table else "missing"
                    raise ValueError(f"{what}[{name!r}] must have shape {shape}, got {got}")
            # Fixed tensors come from the saved file (see settings()); keep them out of state dicts.
            self.register_buffer(f"centroids_{name}", centroids[name].detach().float().clone(), persistent=False)
            self.register_buffer(f"mean_{name}", mean[name].detach().float().clone(), persistent=False)
            self.register_buffer(f"std_{name}", std[name].detach().float().clamp_min(1e-5).clone(), persistent=False)
        self.path: Path | None = None
        self.skipped_files: list[tuple[str, str]] = []
        self.fit_info: dict[str, Any] = {}
        self.freeze()

    # ------------------------------------------------------------------ running
    def standardized_features(self, wav: Tensor) -> dict[str, Tensor]:
        """``(b, l)`` -> ``{feature_set: (b, l // hop + 1, d)}`` standardised with the fitted statistics."""
        feats = self.features(wav, self.feature_sets)
        return {n: (f - getattr(self, f"mean_{n}")) / getattr(self, f"std_{n}") for n, f in feats.items()}

    def compute(self, wav: Tensor) -> Tensor:
        """``(b, l)`` -> ``(b, l // hop + 1, k)`` int64 cluster ids."""
        if self.num_frames(wav.shape[1]) == 0:
            return empty_targets(wav, self.num_codebooks, dtype=torch.int64)
        feats = self.standardized_features(wav.to(self.features.window.dtype))
        codes = []
        for name in self.feature_sets:
            f = feats[name]  # (b, t, d)
            idx, _ = _nearest(f.flatten(0, 1), getattr(self, f"centroids_{name}"))
            codes.append(idx.view(f.shape[:2]))
        return torch.stack(codes, dim=-1)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        audio: Iterable[str | os.PathLike | Tensor | np.ndarray],
        *,
        feature_sets: Sequence[str] = ("mfcc", "chroma"),
        num_clusters: int = 100,
        max_frames: int = 200_000,
        iters: int = 50,
        seed: int = 0,
        progress: bool = True,
        sample_rate: int = 24000,
        features: Mapping[str, Any] | None = None,
        conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2),
        conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2),
    ) -> KMeansTargets:
        """Fit standardisation statistics and one k-means per feature set on a corpus.

        Statistics use every frame; k-means uses a uniform random sample of at most ``max_frames`` frames
        (drawn on the fly, so memory stays bounded on large corpora). Unreadable, empty, too short or
        non-finite inputs are skipped, counted, listed in ``skipped_files`` and reported with a warning.

        Args:
            audio: audio file paths (read with :func:`mert.audio.load_audio`, resampled to ``sample_rate``)
                and/or waveforms ``(l,)`` or ``(channels, l)`` already at ``sample_rate``.
            feature_sets: names among ``"mfcc"`` (20 MFCC + deltas + delta-deltas, 60 dims), ``"chroma"``
                (12), ``"logmel"`` (80); one codebook each, in this order.
            num_clusters: clusters per feature set (``codebook_size``); HuBERT's first iteration used 100.
            max_frames: frames sampled for k-means.
            iters: maximum Lloyd iterations.
            seed: seeds frame sampling and k-means++; same inputs and seed give the same teacher.
            progress: show a progress bar over the inputs.
            sample_rate: Hz.
            features: :class:`FrameFeatures` overrides (e.g. ``{"n_mfcc": 13}``).
            conv_kernel, conv_stride: the encoder front end.
        Returns:
            The fitted teacher (``path`` None until :meth:`save`).
        Raises:
            ValueError: no input could be used, or fewer frames than clusters.
        """
        sets = check_feature_sets(list(feature_sets))
        if num_clusters < 2:
            raise ValueError(f"num_clusters must be at least 2, got {num_clusters}")
        if max_frames < num_clusters:
            raise ValueError(f"max_frames ({max_frames}) must be at least num_clusters ({num_clusters})")
        extractor = FrameFeatures(
            **{"sample_rate": sample_rate, "hop_length": math.prod(conv_stride), **(features or {})}
        )

        def num_frames(num_samples: int) -> int:  # the encoder's frames: the only ones targets ever have
            return int(frame_lengths(num_samples, tuple(conv_kernel), tuple(conv_stride)))

        try:
            got = sample_frames(
                audio,
                lambda wav: extractor(wav, sets),
                {s: extractor.dim(s) for s in sets},
                num_frames,
                max_frames=max_frames,
                sample_rate=sample_rate,
                seed=seed,
                progress=progress,
                desc="k-means features",
            )
        except ValueError as e:
            raise ValueError(f"{e} (fitting k-means)") from None
        skipped = got.skipped
        if skipped:
            warnings.warn(f"k-means fit skipped {len(skipped)} unusable input(s); see .skipped_files", stacklevel=2)
        centroids, inertia = {}, {}
        for j, s in enumerate(sets):
            z = (got.frames[s] - got.mean[s]) / got.std[s]
            centroids[s], inertia[s] = kmeans(z, num_clusters, iters=iters, seed=seed + j)
        mean, std = got.mean, got.std
        teacher = cls(
            centroids=centroids,
            mean=mean,
            std=std,
            features=extractor.config(),
            sample_rate=sample_rate,
            conv_kernel=conv_kernel,
            conv_stride=conv_stride,
        )
        teacher.skipped_files = skipped
        teacher.fit_info = {
            "num_files": got.num_files,
            "num_frames": got.num_frames,
            "num_frames_used": int(next(iter(got.frames.values())).shape[0]),
            "num_clusters": num_clusters,
            "iters": iters,
            "seed": seed,
            "inertia": inertia,
            "skipped_files": [list(x) for x in skipped],
        }
        return teacher

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """Everything :meth:`load` needs: plain tensors, strings and numbers (safe for ``weights_only=True``)."""
        return {
            "format": self.FORMAT,
            "format_version": self.FORMAT_VERSION,
            "feature_sets": list(self.feature_sets),
            "num_clusters": self.codebook_size,
            "sample_rate": self.sample_rate,
            "conv_kernel": list(self.conv_kernel),
            "conv_stride": list(self.conv_stride),
            "features": self.features.config(),
            "centroids": {n: getattr(self, f"centroids_{n}").detach().cpu().clone() for n in self.feature_sets},
            "mean": {n: getattr(self, f"mean_{n}").detach().cpu().clone() for n in self.feature_sets},
            "std": {n: getattr(self, f"std_{n}").detach().cpu().clone() for n in self.feature_sets},
            "fit_info": self.fit_info,
        }

    @classmethod
    def from_state(cls, path: Path, state: dict[str, Any], front_end: FrontEnd) -> KMeansTargets:
        """Rebuild from :meth:`to_dict`'s state (what :meth:`FittedTeacher.load` calls)."""
        kernel, stride = saved_front_end(path, state, math.prod(state["conv_stride"]), *front_end)
        return cls(
            centroids={n: state["centroids"][n] for n in state["feature_sets"]},
            mean=state["mean"],
            std=state["std"],
            features=state["features"],
            sample_rate=int(state["sample_rate"]),
            conv_kernel=kernel,
            conv_stride=stride,
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, feature_sets={list(self.feature_sets)}, codebook_size={self.codebook_size}, "
            f"path={None if self.path is None else str(self.path)!r}"
        )

"""Teachers by name, so configs can swap them: ``build_teacher("cqt")``, ``build_teacher("kmeans", path=...)``.

``teacher_from_settings(teacher.settings())`` rebuilds any teacher from the dict written into checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mert.targets.base import Teacher
from mert.targets.concat import ConcatTargets
from mert.targets.cqt import CQTTargets
from mert.targets.encodec import EncodecTargets
from mert.targets.encoder_kmeans import EncoderKMeansTargets
from mert.targets.kmeans import KMeansTargets
from mert.targets.random_projection import RandomProjectionTargets
from mert.targets.rvq import RVQTargets

__all__ = ["TEACHERS", "build_teacher", "teacher_from_settings"]


def _kmeans(*, path: str, sample_rate: int | None = None) -> KMeansTargets:
    return KMeansTargets.load(path, sample_rate=sample_rate)


def _rvq(*, path: str, sample_rate: int | None = None, sha256: str | None = None) -> RVQTargets:
    return RVQTargets.load(path, sample_rate=sample_rate, sha256=sha256)


def _encoder_kmeans(
    *, path: str, sample_rate: int | None = None, layer: int | None = None, encoder_sha256: str | None = None
) -> EncoderKMeansTargets:
    teacher = EncoderKMeansTargets.load(path, sample_rate=sample_rate, encoder_sha256=encoder_sha256)
    if layer is not None and int(layer) != teacher.layer:
        raise ValueError(f"{path!r} clusters layer {teacher.layer}, not the layer {layer} these settings name")
    return teacher


def _concat(*, teachers: list[Teacher | Mapping[str, Any]]) -> ConcatTargets:
    return ConcatTargets([t if isinstance(t, Teacher) else teacher_from_settings(t) for t in teachers])


TEACHERS: dict[str, Callable[..., Teacher]] = {
    "encodec": EncodecTargets,  # MERT-v1 targets and loss acoustic teacher; needs the published weights
    "cqt": CQTTargets,  # MERT-v1 targets and loss musical teacher
    "random_projection": RandomProjectionTargets,  # BEST-RQ; offline, no fitting
    "kmeans": _kmeans,  # MERT-v0 baseline; fitted with `mert targets fit-kmeans`
    "rvq": _rvq,  # learned residual VQ on log-mel/CQT frames; fitted with `mert targets fit-rvq`
    "encoder_kmeans": _encoder_kmeans,  # k-means of an encoder's own layer (HuBERT iteration 2)
    "concat": _concat,  # several code teachers' codebooks side by side
}
_BY_CLASS = {
    "EncodecTargets": "encodec",
    "CQTTargets": "cqt",
    "RandomProjectionTargets": "random_projection",
    "KMeansTargets": "kmeans",
    "RVQTargets": "rvq",
    "ConcatTargets": "concat",
    "EncoderKMeansTargets": "encoder_kmeans",
}


def build_teacher(name: str, **kwargs: Any) -> Teacher:
    """Build a teacher by name.

    Args:
        name: ``"encodec"``, ``"cqt"``, ``"random_projection"``, ``"kmeans"``, ``"rvq"``, ``"encoder_kmeans"``
            or ``"concat"``
            (``-`` and ``_`` are interchangeable; class names such as ``"CQTTargets"`` work too).
        **kwargs: the teacher's constructor arguments; ``"kmeans"`` takes ``path=`` (a file written by
            ``KMeansTargets.save`` or ``mert targets fit-kmeans``) and optionally ``sample_rate=``; ``"rvq"`` takes
            ``path=`` (``mert targets fit-rvq``) and optionally ``sample_rate=`` and ``sha256=``;
            ``"encoder_kmeans"`` takes ``path=`` (``mert targets fit-kmeans --from-encoder``); ``"concat"``
            takes ``teachers=`` (teachers or their settings dicts).
    Raises:
        ValueError: unknown name.
    """
    key = _BY_CLASS.get(name, name.lower().replace("-", "_"))
    if key not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; available: {sorted(TEACHERS)}")
    return TEACHERS[key](**kwargs)


def teacher_from_settings(settings: Mapping[str, Any]) -> Teacher:
    """Rebuild a teacher from its :meth:`Teacher.settings` dict (``"class"`` names the teacher)."""
    settings = dict(settings)
    if "class" not in settings:
        raise ValueError(f"teacher settings need a 'class' entry, got keys {sorted(settings)}")
    name = settings.pop("class")
    for key in ("conv_kernel", "conv_stride"):
        if key in settings:  # JSON gives lists
            settings[key] = tuple(settings[key])
    return build_teacher(name, **settings)

"""Frozen teachers that produce pretraining targets on the encoder's 75 Hz grid.

Every teacher maps ``(b, l)`` clean audio to ``(b, t, ...)`` targets with ``t = frame_lengths(l)``:
``EncodecTargets`` and ``CQTTargets`` are MERT-v1's two teachers (MERT-v1 targets and loss);
``RandomProjectionTargets``, ``KMeansTargets`` and ``RVQTargets`` (a residual VQ fitted on your corpus) work without
downloads; ``EncoderKMeansTargets`` re-clusters a pretrained encoder's own features (a second
iteration). Importing this package is light: nnAudio, EnCodec and torchaudio load when a teacher is built.
"""

from mert.targets.base import FittedTeacher, Teacher
from mert.targets.concat import ConcatTargets
from mert.targets.cqt import CQTTargets
from mert.targets.encodec import EncodecTargets
from mert.targets.encoder_kmeans import EncoderKMeansTargets
from mert.targets.factory import TEACHERS, build_teacher, teacher_from_settings
from mert.targets.features import FrameFeatures
from mert.targets.kmeans import KMeansTargets
from mert.targets.random_projection import RandomProjectionTargets
from mert.targets.rvq import RVQConfig, RVQTargets, fit_rvq

__all__ = [
    "CQTTargets",
    "ConcatTargets",
    "EncodecTargets",
    "EncoderKMeansTargets",
    "FrameFeatures",
    "KMeansTargets",
    "RVQConfig",
    "RVQTargets",
    "RandomProjectionTargets",
    "TEACHERS",
    "FittedTeacher",
    "Teacher",
    "build_teacher",
    "fit_rvq",
    "teacher_from_settings",
]

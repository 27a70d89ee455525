"""The interface every frozen teacher implements.

Shape legend: ``b`` batch, ``l`` samples, ``t`` frames (the encoder's 75 Hz grid), ``k`` codebooks,
``f`` feature bins.

A teacher maps clean audio to targets on the encoder's frame grid: ``(b, l) -> (b, t, k)`` int64 codes or
``(b, t, f)`` float features, with ``t == frame_lengths(l)`` exactly, so the objective never has to guess an
alignment. Teachers are frozen: no parameter requires grad, they stay in eval mode even when the parent module
is put in train mode, they run without autograd, and their state is kept out of ``state_dict`` by the
objective (they are rebuilt from their own settings, never exported with the encoder).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from mert.models.config import frame_lengths, receptive_field

__all__ = ["FittedTeacher", "FrontEnd", "Teacher"]

# The encoder front end a loaded teacher is asked to serve: (conv_kernel, conv_stride), None for the saved one.
FrontEnd = tuple[Sequence[int] | None, Sequence[int] | None]


class Teacher(nn.Module):
    """Base class of frozen target generators.

    Subclasses set ``kind`` and either ``num_codebooks``/``codebook_size`` (codes) or ``dim`` (features),
    implement :meth:`compute`, and call :meth:`freeze` at the end of ``__init__``.
    """

    kind: Literal["codes", "features"]
    num_codebooks: int = 0
    codebook_size: int = 0
    dim: int = 0
    # True for teachers with memory (EnCodec's LSTM: a frame depends on all audio before it). The original encodes
    # each whole file once and crops the codes, so cached shards compute such a teacher over the whole file and
    # cut each segment's targets from it (mert.data.shards); on the fly, a crop is encoded on its own.
    whole_file: bool = False

    def __init__(
        self,
        sample_rate: int = 24000,
        conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2),
        conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2),
    ):
        super().__init__()
        self.sample_rate = sample_rate
        # The encoder's front end, to know the exact frame count targets must have.
        self.conv_kernel, self.conv_stride = tuple(conv_kernel), tuple(conv_stride)

    def freeze(self) -> Teacher:
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> Teacher:  # noqa: ARG002 - a teacher is always in eval mode
        return super().train(False)

    def num_frames(self, num_samples: int) -> int:
        """Frames the encoder produces for ``num_samples`` samples; targets have exactly this many."""
        return int(frame_lengths(num_samples, self.conv_kernel, self.conv_stride))

    @property
    def frame_offset(self) -> int:
        """Teacher frames skipped before the first target: 0 for MERT-v1's front end (400-sample receptive field).

        Teachers compute centred frames (frame ``j`` centred on sample ``j * hop``) and target ``i`` is teacher
        frame ``i + offset``. A front end with a wider receptive field centres its frames later by half the
        extra width; the offset follows it, so a frame's targets describe the audio the frame is centred on.
        """
        extra = receptive_field(self.conv_kernel, self.conv_stride) - receptive_field()  # MERT-v1's: 400
        return max(0, round(extra / 2 / math.prod(self.conv_stride)))

    def compute(self, wav: Tensor) -> Tensor:
        """``(b, l)`` float at ``sample_rate`` -> ``(b, t', ...)`` with ``t' >= num_frames(l)``."""
        raise NotImplementedError

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Targets for clean audio.

        Args:
            wav: ``(b, l)`` float waveform at ``self.sample_rate``.
            lengths: ``(b,)`` valid samples, or None. Each item's targets are computed on its valid samples
                only; frames past an item's length are zero (the objective never predicts them).
        Returns:
            ``(b, t, k)`` int64 codes or ``(b, t, f)`` float features, ``t = frame_lengths(l)``.
        """
        if wav.dim() != 2:
            raise ValueError(f"{type(self).__name__} expects wav of shape (batch, samples), got {tuple(wav.shape)}")
        t = self.num_frames(wav.shape[1])
        if lengths is not None and bool((lengths.to("cpu") != wav.shape[1]).any()):
            # Each item on exactly its own samples, grouped by length: a clip's targets are then the same alone,
            # in a padded batch and in cached shards (edge padding of the CQT/STFT would otherwise see zeros).
            lens = lengths.tolist()
            out = None
            for n in sorted(set(lens)):
                idx = [i for i, m in enumerate(lens) if m == n]
                part = self.forward(wav[idx, : int(n)], None)
                if out is None:
                    out = part.new_zeros((wav.shape[0], t, *part.shape[2:]))
                out[idx, : part.shape[1]] = part
            return out
        # Targets are computed in float32 even inside a bf16-mixed training step: autocast off.
        with torch.inference_mode(), torch.autocast(wav.device.type, enabled=False):
            out = self.compute(wav.float())
        offset = self.frame_offset if t > 0 else 0
        if out.shape[1] < t + offset:
            raise ValueError(
                f"{type(self).__name__} produced {out.shape[1]} frames for {wav.shape[1]} samples; the encoder "
                f"produces {t} (from teacher frame {offset}). Check the teacher's hop length and sample rate."
            )
        # clone() outside inference mode: a normal tensor that autograd may save (cross-entropy saves targets).
        return out[:, offset : offset + t].clone()

    def extra_repr(self) -> str:
        return f"kind={self.kind}, sample_rate={self.sample_rate}"

    def settings(self) -> dict[str, Any]:
        """What rebuilds this teacher (written into checkpoints' meta.json, never its tensors)."""
        return {"class": type(self).__name__, "sample_rate": self.sample_rate}


class FittedTeacher(Teacher):
    """A teacher fitted on a corpus and kept in one file (k-means, RVQ): one save/load protocol for all of them.

    Subclasses set the class constants, implement :meth:`to_dict` (what :meth:`save` writes) and
    :meth:`from_state` (rebuild from it, with the checks of their own), and set ``self.path = None`` in
    ``__init__``.
    """

    FORMAT: ClassVar[str]  # the file's "format" field: what it must say to be read as this class
    FORMAT_VERSION: ClassVar[int]
    KIND: ClassVar[str]  # for messages: "k-means", "RVQ"
    FIT_COMMAND: ClassVar[str]  # the command that makes such a file

    path: Path | None

    def to_dict(self) -> dict[str, Any]:
        """Everything that rebuilds the teacher, as plain tensors and values (``torch.load(weights_only=True)``)."""
        raise NotImplementedError

    @classmethod
    def from_state(cls, path: Path, state: dict[str, Any], front_end: FrontEnd, **checks: Any) -> FittedTeacher:
        """Rebuild from :meth:`to_dict`'s ``state`` read from ``path``; ``front_end`` is the caller's
        ``(conv_kernel, conv_stride)`` (None: the saved ones) and ``checks`` the class's own (a digest)."""
        raise NotImplementedError

    @classmethod
    def fitted_rate(cls, state: dict[str, Any]) -> int:
        """The sample rate (Hz) the teacher in :meth:`to_dict`'s ``state`` was fitted at."""
        return int(state["sample_rate"])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the teacher with ``torch.save`` (atomically) and remember ``path`` for :meth:`settings`."""
        from mert.fileio import torch_save_atomic

        path = Path(path).expanduser().resolve()
        state = self.to_dict()
        torch_save_atomic(path, state)
        self.path = path
        self.saved(state)
        return path

    def saved(self, state: dict[str, Any]) -> None:
        """Called by :meth:`save` after writing ``state`` (RVQ remembers its digest)."""

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        conv_kernel: Sequence[int] | None = None,
        conv_stride: Sequence[int] | None = None,
        sample_rate: int | None = None,
        **checks: Any,
    ) -> FittedTeacher:
        """Rebuild a teacher written by :meth:`save` (read with ``torch.load(weights_only=True)``).

        Args:
            path: the file.
            conv_kernel, conv_stride: the front end of the encoder the codes are for, if not the one the file was
                fitted for; its hop (the product of the strides) must be the fitted hop.
            sample_rate: if given, the rate the caller will feed; must equal the fitted rate.
            checks: the class's own (RVQ: ``sha256=``, the digest the weights must have).
        Raises:
            FileNotFoundError: no such file.
            ValueError: not this kind of teacher file, a newer format, or a failed check (rate, hop, digest).
            TypeError: a check this class does not know.
        """
        import inspect

        from mert.targets._common import load_teacher_file, restore_fit_info

        known = set(inspect.signature(cls.from_state).parameters) - {"path", "state", "front_end"}
        if unknown := sorted(set(checks) - known):
            raise TypeError(f"{cls.__name__}.load() got an unexpected keyword argument {unknown[0]!r}")
        path, state = load_teacher_file(
            path, cls.FORMAT, cls.FORMAT_VERSION, cls.KIND, cls.FIT_COMMAND, f"{cls.__name__}.save"
        )
        try:  # a file of the right format whose entries are missing or of the wrong type: name it, no traceback
            fitted = cls.fitted_rate(state)
            if sample_rate is not None and int(sample_rate) != fitted:
                raise ValueError(f"{str(path)!r} was fitted at {fitted} Hz, not {sample_rate} Hz")
            teacher = cls.from_state(path, state, (conv_kernel, conv_stride), **checks)
        except (KeyError, TypeError, AttributeError, IndexError) as e:
            missing = isinstance(e, KeyError) and e.args
            what = f"entry {e.args[0]!r} is missing" if missing else f"{type(e).__name__}: {e}"
            raise ValueError(
                f"{str(path)!r} is not a complete {cls.KIND} teacher file ({what}); fit it again"
            ) from None
        restore_fit_info(teacher, path, state)
        return teacher

    def settings(self) -> dict[str, Any]:
        """``{"class", "sample_rate", "path"}`` (and what subclasses add): the saved file holds everything else.

        Raises:
            RuntimeError: the teacher was fitted but never saved, so nothing could rebuild it.
        """
        if self.path is None:
            raise RuntimeError(
                f"this {type(self).__name__} was never saved, so its settings cannot rebuild it: call .save(path) first"
            )
        return {**super().settings(), "path": str(self.path)}

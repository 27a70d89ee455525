"""The one place audio files are found, read and resampled (soundfile + torchaudio.functional; no torchaudio I/O).

Everything that touches audio files goes through here: :data:`AUDIO_EXTENSIONS` and :func:`find_audio` (which
files count as audio), :func:`read_audio` (a whole file or a segment of one, mono or not, at any rate),
:func:`load_audio` (a whole file) and :func:`resample`.

Shape legend: ``l`` samples, ``b`` batch.
"""

from __future__ import annotations

import math
import os
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "AUDIO_EXTENSIONS",
    "TruncatedAudioWarning",
    "declared_wav_frames",
    "find_audio",
    "load_audio",
    "read_audio",
    "read_frames",
    "resample",
    "resampled_length",
]

# ``.au`` is GTZAN's format; every reader here is libsndfile, which reads all of these.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".opus", ".au")


def find_audio(root: str | os.PathLike, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> list[Path]:
    """Audio files under ``root`` (recursively), sorted so that every machine lists a corpus in the same order.

    Args:
        root: a folder (searched recursively) or a single file (returned as is when its ending matches).
        extensions: file name endings that count as audio, case-insensitive, with or without the dot.
    Returns:
        Paths as found under ``root`` (not resolved). macOS resource forks (``._name``), which carry an audio
        ending but hold no audio, are left out.
    Raises:
        FileNotFoundError: ``root`` does not exist.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"audio folder {str(root)!r} does not exist")
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    candidates = [root] if root.is_file() else root.rglob("*")
    return sorted(p for p in candidates if p.suffix.lower() in exts and not p.name.startswith("._") and p.is_file())


class TruncatedAudioWarning(UserWarning):
    """A file holds fewer samples than its header declares (a cut-off download or copy)."""


def declared_wav_frames(path: str | os.PathLike) -> int | None:
    """Frames a RIFF/WAVE file's header declares (its ``data`` chunk size / block size), or None when the file
    is not a plain WAV or declares no size (streamed WAVs write 0 or 0xFFFFFFFF).

    Why: libsndfile silently reads what is there of a truncated WAV and reports that as the length, so a file
    cut to 478 of 72000 frames would otherwise be embedded as if complete.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block = None
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if cid == b"fmt ":
                    fmt = f.read(size)
                    if len(fmt) < 14:
                        return None
                    block = struct.unpack("<H", fmt[12:14])[0]  # nBlockAlign: bytes per frame
                    if size % 2:
                        f.read(1)
                elif cid == b"data":
                    if not block or size in (0, 0xFFFFFFFF):
                        return None
                    return size // block
                else:
                    f.seek(size + size % 2, os.SEEK_CUR)
    except OSError:
        return None


def resampled_length(num_samples: int, orig_sr: int, new_sr: int) -> int:
    """Samples produced by :func:`resample` from ``num_samples`` (ceil(n * new / orig), as torchaudio)."""
    return -(-num_samples * new_sr // orig_sr)


_MAX_REDUCED_RATE = 1000  # torchaudio's sinc kernel grows with orig / gcd(orig, new): 47999 -> 24000 took 19 GB


def _tractable_rate(orig_sr: int, new_sr: int) -> int:
    """``orig_sr``, or the nearest rate whose ratio to ``new_sr`` reduces to a small fraction.

    Odd rates such as 47999 Hz (a clock a hair off 48 kHz) make the exact polyphase kernel gigabytes large.
    Reading such a file as 48000 Hz shifts pitch and tempo by ``|orig - snapped| / orig`` (2e-5 here), far
    below what an embedding can hear; a shift above 0.1 % is never made.
    """
    if orig_sr // math.gcd(orig_sr, new_sr) <= _MAX_REDUCED_RATE:
        return orig_sr
    for delta in range(1, max(1, orig_sr // 1000) + 1):
        for cand in (orig_sr - delta, orig_sr + delta):
            if cand > 0 and cand // math.gcd(cand, new_sr) <= _MAX_REDUCED_RATE:
                return cand
    return orig_sr


def resample(wav: Tensor, orig_sr: int, new_sr: int) -> Tensor:
    """Band-limited resampling along the last axis: ``(..., l) -> (..., l')``.

    ``l' = ceil(l * new_sr / orig_sr)`` (:func:`resampled_length`). A rate whose exact conversion would need an
    enormous filter (see :func:`_tractable_rate`) is treated as the nearest tractable one, within 0.1 %.
    """
    if orig_sr == new_sr:
        return wav
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    import torchaudio.functional as AF

    orig_sr, new_sr = int(orig_sr), int(new_sr)
    snapped = _tractable_rate(orig_sr, new_sr)
    out = AF.resample(wav, snapped, new_sr)
    if snapped != orig_sr:  # keep the promised length
        target = resampled_length(wav.shape[-1], orig_sr, new_sr)
        out = torch.nn.functional.pad(out, (0, max(0, target - out.shape[-1])))[..., :target]
    return out


def read_audio(
    path: str | os.PathLike,
    start: float = 0.0,
    stop: float | None = None,
    *,
    sample_rate: int | None = None,
    mono: bool = True,
) -> tuple[Tensor, int]:
    """Read a file, or the segment ``[start, stop)`` seconds of it, as float32; only the segment is decoded.

    Args:
        path: audio file (wav, flac, ogg, mp3 where libsndfile supports it, ...).
        start: segment start, seconds from the beginning of the file.
        stop: segment end, seconds (clipped to the file's end); None reads to the end.
        sample_rate: resample to this rate if given; otherwise keep the file's rate.
        mono: average the channels.
    Returns:
        ``(wav, sr)`` with ``wav`` ``(l,)`` if mono else ``(channels, l)``. Segment bounds are rounded to the
        nearest sample of the file's own rate, so ``start=n / sr`` reads from sample ``n`` exactly.
    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable or empty file, a negative start, or a start at or past the end (the message
            names the file).
    Warns:
        TruncatedAudioWarning: a WAV read to its end holds fewer samples than its header declares.
    """
    import soundfile as sf

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"audio file {str(path)!r} does not exist")
    if start < 0:
        raise ValueError(f"audio file {str(path)!r}: segment start {start} s is negative")
    try:
        with sf.SoundFile(str(path)) as f:
            sr, frames = int(f.samplerate), int(f.frames)
            first = int(round(start * sr))
            last = frames if stop is None else min(frames, int(round(stop * sr)))
            if frames > 0 and first >= frames:
                raise ValueError(f"segment start {start} s is past the end ({frames / sr:.2f} s)")
            wav = read_frames(f, first, last - first, mono=mono)
    except Exception as e:  # ours above; soundfile raises LibsndfileError / RuntimeError / TypeError by format
        raise ValueError(f"could not read audio file {str(path)!r}: {e}") from None
    if wav.shape[-1] == 0:
        raise ValueError(f"audio file {str(path)!r} is empty (0 samples)")
    if stop is None:
        declared = declared_wav_frames(path)
        if declared is not None and declared > first + wav.shape[-1]:
            n = first + wav.shape[-1]
            warnings.warn(
                f"audio file {str(path)!r} is truncated: its header declares {declared} frames, {n} are "
                f"present ({n / sr:.3f} s of {declared / sr:.3f} s); using what is there",
                TruncatedAudioWarning,
                stacklevel=3,
            )
    if sample_rate is not None and sample_rate != sr:
        wav = resample(wav, sr, sample_rate)
        sr = sample_rate
    return wav, int(sr)


def read_frames(f: Any, first: int, count: int, *, mono: bool = True) -> Tensor:
    """``count`` frames from frame ``first`` of an open ``soundfile.SoundFile`` (fewer at its end), as float32
    ``(l,)`` mixed to mono, else ``(channels, l)``; for callers that already hold the file open."""
    if first:
        f.seek(first)
    data = f.read(max(0, count), dtype="float32", always_2d=True)  # (l, channels)
    wav = torch.from_numpy(np.ascontiguousarray(data.T))  # (channels, l)
    return wav.mean(dim=0) if mono else wav


def load_audio(path: str | os.PathLike, sample_rate: int | None = None, mono: bool = True) -> tuple[Tensor, int]:
    """Read a whole file as float32: :func:`read_audio` without a segment.

    Returns:
        ``(wav, sr)`` with ``wav`` ``(l,)`` if mono else ``(channels, l)``.
    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable or empty file (the message names the file).
    """
    return read_audio(path, sample_rate=sample_rate, mono=mono)

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
    "DEFAULT_MAX_SECONDS",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "TruncatedAudioWarning",
    "check_header",
    "check_sample_rate",
    "declared_wav_frames",
    "find_audio",
    "load_audio",
    "max_seconds_limit",
    "read_audio",
    "read_frames",
    "resample",
    "resampled_length",
]

# ``.au`` is GTZAN's format; every reader here is libsndfile, which reads all of these.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".opus", ".au")


def find_audio(
    root: str | os.PathLike,
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
    *,
    skipped: list[tuple[str, str]] | None = None,
) -> list[Path]:
    """Audio files under ``root`` (recursively), sorted so that every machine lists a corpus in the same order.

    The scan rule (the one scanner every command uses):

    - symlinked folders are followed; a folder whose real path was already scanned (a link loop such as
      ``sub/loop -> ..``, or a second link to the same disk) is not entered again;
    - a file reached twice (a symlinked file beside the folder it points into) is listed once, under the first
      path in sorted order;
    - folders that cannot be listed, files that cannot be read (permission denied), broken links and
      non-regular files with an audio ending (FIFOs, sockets, devices) are left out and reported in ``skipped``;
    - macOS resource forks (``._name``), which carry an audio ending but hold no audio, are left out silently.

    Args:
        root: a folder (searched recursively) or a single file (returned as is when its ending matches).
        extensions: file name endings that count as audio, case-insensitive, with or without the dot.
        skipped: if given, ``(path, reason)`` is appended for everything left out (other than resource forks);
            if None, what was left out is logged as a warning.
    Returns:
        Paths as found under ``root`` (not resolved).
    Raises:
        FileNotFoundError: ``root`` does not exist.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"audio folder {str(root)!r} does not exist")
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    report: list[tuple[str, str]] = []
    found: list[Path] = []
    if root.is_dir():
        _walk(root, exts, found, report)
    elif root.suffix.lower() in exts:
        reason = _unusable_file(root)
        (report.append((str(root), reason)) if reason else found.append(root))
    found.sort()
    seen: dict[str, Path] = {}
    files = []
    for p in found:
        real = os.path.realpath(p)
        if real in seen:
            report.append((str(p), f"same file as {str(seen[real])!r} (listed once)"))
        else:
            seen[real] = p
            files.append(p)
    if skipped is not None:
        skipped.extend(report)
    elif report:
        import logging

        logging.getLogger(__name__).warning(
            "%d path(s) under %s left out: %s", len(report), root, "; ".join(f"{p}: {r}" for p, r in report[:5])
        )
    return files


def _unusable_file(path: Path) -> str | None:
    """Why an audio-named path cannot be read as a file (None when it can): a broken link, a FIFO, no access."""
    import stat

    try:
        st = path.stat()
    except FileNotFoundError:
        return f"broken symlink (to {os.readlink(path)!r})" if path.is_symlink() else "vanished during the scan"
    except OSError as e:
        return f"unreadable file: {e.strerror or e}"
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file ({_file_kind(st.st_mode)}); not read"
    if not os.access(path, os.R_OK):
        return "unreadable file: permission denied"
    return None


def _file_kind(mode: int) -> str:
    import stat

    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _walk(root: Path, exts: set[str], found: list[Path], report: list[tuple[str, str]]) -> None:
    """Depth-first scan in sorted order, following symlinked folders once each (by real path)."""
    visited: dict[str, Path] = {}
    stack = [root]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in visited:
            if folder.is_symlink():  # a loop or a second link to a scanned folder: not a failure, but said
                report.append((str(folder), f"symlink to a folder already scanned ({str(visited[real])!r})"))
            continue
        visited[real] = folder
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            report.append((str(folder), f"unreadable folder: {e.strerror or e}"))
            continue
        subdirs = []
        for entry in entries:
            path = folder / entry.name
            try:
                is_dir = entry.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append(path)
                continue
            if path.suffix.lower() not in exts or entry.name.startswith("._"):
                continue
            reason = _unusable_file(path)
            (report.append((str(path), reason)) if reason else found.append(path))
        stack.extend(reversed(subdirs))


MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 768_000
DEFAULT_MAX_SECONDS = 4 * 3600.0
MAX_SECONDS_ENV = "MERT_MAX_AUDIO_SECONDS"
# Bytes per frame and channel of uncompressed subtypes: a header claiming more frames than that allows is a lie.
_PCM_BYTES = {
    "PCM_S8": 1, "PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8, "ULAW": 1, "ALAW": 1,
}  # fmt: skip
_PLAIN_CONTAINERS = {"WAV", "WAVEX", "RF64", "W64", "AIFF", "AU", "RAW"}
# Compressed formats: even digital silence in FLAC's largest blocks costs more than a byte per 65536 frames.
_MAX_FRAMES_PER_BYTE = 65536


def max_seconds_limit() -> float:
    """The longest audio file accepted, in seconds: ``$MERT_MAX_AUDIO_SECONDS`` or 4 hours."""
    text = os.environ.get(MAX_SECONDS_ENV)
    if not text:
        return DEFAULT_MAX_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{MAX_SECONDS_ENV}={text!r} must be a positive number of seconds")
    return value


def check_sample_rate(value: Any, name: str = "sample_rate") -> int:
    """``value`` as an integer rate in Hz within [1 kHz, 768 kHz], or a ValueError naming ``name``.

    Refuses bools (``True`` would be 1 Hz), non-integral or non-finite floats and rates outside the range:
    resampling from 1 Hz or to 50 MHz asks for gigabytes.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer number of Hz, got {value!r}")
    try:
        number = float(value) if not isinstance(value, int) else value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer number of Hz, got {value!r}") from None
    if isinstance(number, float) and (not math.isfinite(number) or number != int(number)):
        raise ValueError(f"{name} must be an integer number of Hz, got {value!r}")
    rate = int(number)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ValueError(f"{name}={rate} Hz is outside the supported range [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz")
    return rate


def check_header(
    info: Any, size: int | None = None, *, max_seconds: float | None = None, name: str | None = None
) -> None:
    """Refuse an audio header that cannot be true or would cost too much, before anything is allocated.

    Args:
        info: an open ``soundfile.SoundFile`` or ``soundfile.info`` result (``samplerate``, ``frames``,
            ``channels``, ``subtype``).
        size: the file's size in bytes (frame counts beyond what it can hold are refused).
        max_seconds: the longest duration accepted (default :func:`max_seconds_limit`).
        name: the file, for the message.
    Raises:
        ValueError: a sample rate outside [1 kHz, 768 kHz], more frames than the file's bytes can hold, or a
            duration above ``max_seconds``; the message says which and how to change the limit.
    """
    where = f"audio file {name!r}: " if name else ""
    sr, frames, channels = int(info.samplerate), int(info.frames), max(1, int(info.channels))
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise ValueError(
            f"{where}header sample rate {sr} Hz is outside [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz; "
            "the header is damaged or the file is not audio"
        )
    if size is not None and frames > 0:
        plain = str(getattr(info, "format", "")) in _PLAIN_CONTAINERS  # FLAC reports PCM_16 too: compressed
        per_frame = _PCM_BYTES.get(str(getattr(info, "subtype", ""))) if plain else None
        limit = size // (per_frame * channels) if per_frame else size * _MAX_FRAMES_PER_BYTE
        if frames > limit + 1:
            raise ValueError(
                f"{where}header declares {frames} frames, more than its {size} bytes can hold; the header is damaged"
            )
    limit_s = max_seconds_limit() if max_seconds is None else max_seconds
    if frames / sr > limit_s:
        raise ValueError(
            f"{where}{frames / sr:.1f} s long, above the {limit_s:g} s limit (set {MAX_SECONDS_ENV} or "
            "--max-seconds to accept longer files)"
        )


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
    if orig_sr == new_sr and not isinstance(orig_sr, bool) and not isinstance(new_sr, bool):
        return wav
    import torchaudio.functional as AF

    # Every resampler call passes here: a bool, a non-integral or an absurd rate (1 Hz -> 24 kHz is gigabytes)
    # is refused before the filter is built.
    orig_sr, new_sr = check_sample_rate(orig_sr, "orig_sr"), check_sample_rate(new_sr, "new_sr")
    snapped = _tractable_rate(orig_sr, new_sr)
    out = AF.resample(wav, snapped, new_sr)
    if snapped != orig_sr:  # keep the promised length
        target = resampled_length(wav.shape[-1], orig_sr, new_sr)
        out = torch.nn.functional.pad(out, (0, max(0, target - out.shape[-1])))[..., :target]
    return out


def _check_readable(path: Path) -> int:
    """The size of the regular, readable file ``path``; else an error saying which of those it is not."""
    import stat

    try:
        st = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"audio file {str(path)!r} does not exist") from None
    except PermissionError:
        raise PermissionError(f"audio file {str(path)!r}: permission denied (its folder cannot be searched)") from None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"audio file {str(path)!r} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"audio file {str(path)!r} is {_file_kind(st.st_mode)}, not a regular file; not read")
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise PermissionError(f"audio file {str(path)!r}: permission denied (not readable by this user)") from None
    return int(st.st_size)


def read_audio(
    path: str | os.PathLike,
    start: float = 0.0,
    stop: float | None = None,
    *,
    sample_rate: int | None = None,
    mono: bool = True,
    max_seconds: float | None = None,
) -> tuple[Tensor, int]:
    """Read a file, or the segment ``[start, stop)`` seconds of it, as float32; only the segment is decoded.

    Args:
        path: audio file (wav, flac, ogg, mp3 where libsndfile supports it, ...).
        start: segment start, seconds from the beginning of the file.
        stop: segment end, seconds (clipped to the file's end); None reads to the end.
        sample_rate: resample to this rate if given; otherwise keep the file's rate.
        mono: average the channels.
        max_seconds: longest file accepted (default :func:`max_seconds_limit`, 4 h).
    Returns:
        ``(wav, sr)`` with ``wav`` ``(l,)`` if mono else ``(channels, l)``. Segment bounds are rounded to the
        nearest sample of the file's own rate, so ``start=n / sr`` reads from sample ``n`` exactly.
    Raises:
        FileNotFoundError: no such file.
        PermissionError: the file cannot be read (permission denied).
        IsADirectoryError: ``path`` is a folder.
        ValueError: unreadable or empty file, a non-regular file (FIFO, device), a header that cannot be true
            (see :func:`check_header`), a negative start, or a start at or past the end (the message names the
            file).
    Warns:
        TruncatedAudioWarning: a WAV read to its end holds fewer samples than its header declares.
    """
    import soundfile as sf

    path = Path(path).expanduser()
    size = _check_readable(path)
    if start < 0:
        raise ValueError(f"audio file {str(path)!r}: segment start {start} s is negative")
    try:
        with sf.SoundFile(str(path)) as f:
            check_header(f, size, max_seconds=max_seconds)
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


def load_audio(
    path: str | os.PathLike, sample_rate: int | None = None, mono: bool = True, *, max_seconds: float | None = None
) -> tuple[Tensor, int]:
    """Read a whole file as float32: :func:`read_audio` without a segment.

    Returns:
        ``(wav, sr)`` with ``wav`` ``(l,)`` if mono else ``(channels, l)``.
    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable or empty file (the message names the file).
    """
    return read_audio(path, sample_rate=sample_rate, mono=mono, max_seconds=max_seconds)

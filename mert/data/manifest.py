"""Manifests: the list of audio files a training run reads, with their lengths, as a small TSV file.

A manifest is written once by scanning a folder (``mert data manifest AUDIO_DIR --out train.tsv``) and read at
the start of every run, so datasets know every file's length without opening it. Format::

    path<TAB>num_samples<TAB>sample_rate<TAB>channels
    pop/song1.flac<TAB>5292000<TAB>44100<TAB>2
    /mnt/other/song2.wav<TAB>1440000<TAB>24000<TAB>1

``num_samples`` counts frames per channel at the file's own ``sample_rate``. Paths under the manifest's folder are
stored relative to it (the folder can be moved or mounted elsewhere as a whole); other paths are absolute.

Shape legend: none (no tensors here).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mert.audio import AUDIO_EXTENSIONS, check_header, find_audio
from mert.fileio import write_text_atomic

__all__ = [
    "MANIFEST_HEADER",
    "ManifestEntry",
    "ScanResult",
    "hold_out",
    "read_manifest",
    "scan_audio",
    "write_manifest",
]

MANIFEST_HEADER = ("path", "num_samples", "sample_rate", "channels")


@dataclass(frozen=True)
class ManifestEntry:
    """One audio file of a corpus.

    Attributes:
        path: the file (absolute after :func:`scan_audio` and :func:`read_manifest`).
        num_samples: frames per channel at the file's own rate.
        sample_rate: the file's sample rate, Hz.
        channels: channel count of the file (datasets mix down to mono).
    """

    path: str
    num_samples: int
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        """Duration in seconds."""
        return self.num_samples / self.sample_rate


@dataclass
class ScanResult:
    """What :func:`scan_audio` found.

    Attributes:
        entries: usable files, sorted by path.
        skipped: ``(path, reason)`` for every candidate file that was left out.
    """

    entries: list[ManifestEntry] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Total duration of the usable files, seconds."""
        return sum(e.seconds for e in self.entries)


def scan_audio(
    root: str | os.PathLike,
    *,
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
    min_seconds: float = 0.0,
    progress: bool = True,
    max_seconds: float | None = None,
) -> ScanResult:
    """Find the audio files under ``root`` and read their headers (no decoding).

    Args:
        root: folder searched recursively (a single file is accepted too); the scan rule (symlinked folders,
            unreadable and non-regular files) is :func:`mert.audio.find_audio`'s.
        extensions: file name endings to consider, case-insensitive.
        min_seconds: files shorter than this are skipped.
        progress: show a tqdm progress bar.
        max_seconds: longer files are skipped (default :func:`mert.audio.max_seconds_limit`, 4 h).
    Returns:
        A :class:`ScanResult`; files that cannot be opened, have no samples, a header that cannot be true
        (:func:`mert.audio.check_header`) or are too short or too long are listed in ``skipped`` with the reason
        instead of raising, so one bad file does not stop a scan of thousands. Folders and files the scan could
        not read are listed there too.
    Raises:
        FileNotFoundError: ``root`` does not exist.
    """
    import soundfile as sf

    from mert.progress import progress_bar

    root = Path(root).expanduser().absolute()
    if not root.exists():
        raise FileNotFoundError(f"audio folder {str(root)!r} does not exist")
    result = ScanResult()
    # Sorted so that manifests (and everything seeded by entry index) are the same on every machine.
    candidates = find_audio(root, extensions, skipped=result.skipped)
    for p in progress_bar(candidates, desc="scan", unit="file", disable=not progress):
        name = str(p)
        try:
            size = p.stat().st_size
        except OSError as e:
            result.skipped.append((name, f"cannot stat: {e}"))
            continue
        if size == 0:
            result.skipped.append((name, "empty file (0 bytes)"))
            continue
        try:
            info = sf.info(name)
        except Exception as e:  # libsndfile raises LibsndfileError / RuntimeError / TypeError depending on format
            result.skipped.append((name, f"unreadable: {e}"))
            continue
        if info.frames <= 0 or info.samplerate <= 0:
            result.skipped.append((name, "no audio samples"))
            continue
        try:
            check_header(info, size, max_seconds=max_seconds)
        except ValueError as e:
            result.skipped.append((name, str(e)))
            continue
        entry = ManifestEntry(name, int(info.frames), int(info.samplerate), int(info.channels))
        if entry.seconds < min_seconds:
            result.skipped.append((name, f"too short ({entry.seconds:.2f} s < min_seconds {min_seconds:g} s)"))
            continue
        result.entries.append(entry)
    return result


def _check_path(path: str) -> str:
    if any(c in path for c in "\t\n\r"):
        raise ValueError(f"path {path!r} contains a tab or newline and cannot be stored in a TSV manifest")
    return path


def hold_out(
    entries: Sequence[ManifestEntry], percent: float, seed: int = 0
) -> tuple[list[ManifestEntry], list[ManifestEntry]]:
    """``(train, valid)``: a seeded random ``percent`` of the files held out for validation, at least one left to
    train on; both keep the entries' order. Files, not classes: a pretraining corpus has no labels to stratify by
    (labelled sets use :func:`mert.data.splits.seeded_split`).

    Raises:
        ValueError: ``percent`` outside ``[0, 100)``.
    """
    if not 0.0 <= percent < 100.0:
        raise ValueError(f"the held-out percent must be in [0, 100), got {percent}")
    n_valid = min(int(round(len(entries) * percent / 100)), max(0, len(entries) - 1))
    held = set(np.random.default_rng(seed).permutation(len(entries))[:n_valid].tolist())
    return [e for i, e in enumerate(entries) if i not in held], [e for i, e in enumerate(entries) if i in held]


def write_manifest(path: str | os.PathLike, entries: Iterable[ManifestEntry]) -> Path:
    """Write a manifest TSV (see the module docstring for the format), atomically.

    Args:
        path: the manifest file to write; its folder is created.
        entries: the files; relative entry paths are taken relative to the current directory.
    Returns:
        The manifest path.
    """
    path = Path(path).expanduser().absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = path.parent.resolve()
    lines = ["\t".join(MANIFEST_HEADER)]
    for e in entries:
        p = Path(e.path).expanduser().absolute()
        try:
            # Relative to the (symlink-resolved) manifest folder, so the pair moves together.
            stored = p.resolve().relative_to(folder).as_posix()
        except ValueError:
            stored = str(p)
        lines.append(f"{_check_path(stored)}\t{int(e.num_samples)}\t{int(e.sample_rate)}\t{int(e.channels)}")
    write_text_atomic(path, "\n".join(lines) + "\n")  # readers never see a half-written manifest
    return path


def read_manifest(path: str | os.PathLike) -> list[ManifestEntry]:
    """Read a manifest written by :func:`write_manifest`.

    Args:
        path: the TSV file.
    Returns:
        Entries in file order, with absolute paths (relative ones resolved against the manifest's folder).
    Raises:
        FileNotFoundError: no such manifest.
        ValueError: a wrong header or a malformed line; the message names the file and the line number.
    """
    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise FileNotFoundError(f"manifest {str(path)!r} does not exist")
    folder = path.parent
    entries: list[ManifestEntry] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if lineno == 1:
                if tuple(line.split("\t")) != MANIFEST_HEADER:
                    raise ValueError(
                        f"{path}:1: expected the header {chr(9).join(MANIFEST_HEADER)!r} (tab-separated), got "
                        f"{line[:200]!r}; write manifests with `mert data manifest`"
                    )
                continue
            if not line.strip():
                continue  # tolerate blank lines (hand-edited files)
            fields = line.split("\t")
            if len(fields) != 4:
                raise ValueError(f"{path}:{lineno}: expected 4 tab-separated fields, got {len(fields)}: {line[:200]!r}")
            p, *numbers = fields
            try:
                num_samples, sample_rate, channels = (int(x) for x in numbers)
            except ValueError:
                raise ValueError(
                    f"{path}:{lineno}: num_samples, sample_rate and channels must be integers, got {numbers}"
                ) from None
            if not p or num_samples < 0 or sample_rate <= 0 or channels <= 0:
                raise ValueError(
                    f"{path}:{lineno}: need a path, num_samples >= 0, sample_rate > 0 and channels > 0, got {line!r}"
                )
            full = Path(p) if Path(p).is_absolute() else folder / p
            entries.append(ManifestEntry(os.path.normpath(full), num_samples, sample_rate, channels))
    return entries

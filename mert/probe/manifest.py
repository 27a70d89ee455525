"""Probe manifests: one labelled clip per row, and the one reader and writer of the CSV/TSV file.

A manifest is a CSV (``.csv``) or TSV (``.tsv``; on reading, any other extension) with a header row and the
columns ``path,label[,split][,start,end]``, UTF-8. Relative paths are relative to the manifest's folder (or a
given root). The label encodings per task type are in :mod:`mert.probe.tasks`. ``mert probe manifest``
(:mod:`mert.cli.probe`, over :mod:`mert.probe.layouts`) writes these files and ``mert probe``, the probe monitor
and the feature cache read them. (The pretraining manifest, :mod:`mert.data.manifest`, is another format: path,
frames, rate, channels.)

Shape legend: none (no tensors here).
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mert.fileio import open_atomic

__all__ = ["ManifestRow", "read_manifest", "write_manifest"]

_SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "val": "valid", "validation": "valid"}
_SPLIT_ALIASES |= {"dev": "valid", "test": "test", "eval": "test", "evaluation": "test"}


@dataclass(frozen=True)
class ManifestRow:
    """One labelled clip: an audio file (or a segment of it), its raw label and its split.

    Attributes:
        path: the audio file (a ``str`` is turned into a ``Path``); absolute once read or scanned.
        label: encoded as the task type requires (see :mod:`mert.probe.tasks`).
        split: ``train``, ``valid``, ``test`` or None (then a seeded split is made).
        start, end: seconds within the file, or None for the whole file.
        row: the line number in the manifest it was read from (1 is the header); 0 when not read from a file.
    """

    path: Path
    label: str
    split: str | None = None
    start: float | None = None
    end: float | None = None
    row: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.path, Path):
            object.__setattr__(self, "path", Path(self.path))

    @property
    def key(self) -> str:
        """Identifies the audio this row reads (path, segment, file size and mtime): the feature cache key."""
        try:
            st = self.path.stat()
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        text = f"{self.path.resolve()}|{self.start}|{self.end}|{stamp}"
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def write_manifest(path: str | os.PathLike, rows: Iterable[ManifestRow]) -> Path:
    """Write rows as a CSV (``.csv``) or TSV (``.tsv``) manifest, UTF-8, atomically.

    The argument order is :func:`mert.data.manifest.write_manifest`'s (file first). Paths under the manifest's
    folder are stored relative to it (the folder can move as a whole); other paths stay absolute. The header is
    ``path,label,split`` plus ``start,end`` when any row has them.

    Returns:
        The manifest path, absolute.
    Raises:
        TypeError: ``path`` is not a path (the rows first: the order before 0.2).
        ValueError: the file name does not end in ``.csv`` or ``.tsv``, or there are no rows.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"write_manifest(path, rows) takes the file first; got a {type(path).__name__} as path")
    out = Path(path).expanduser().absolute()
    delimiter = {".csv": ",", ".tsv": "\t"}.get(out.suffix.lower())
    if delimiter is None:
        raise ValueError(f"manifest {str(out)!r} must end in .csv (comma) or .tsv (tab)")
    rows = list(rows)
    if not rows:
        raise ValueError(f"no rows to write to {str(out)!r}")
    with_times = any(r.start is not None or r.end is not None for r in rows)
    header = ["path", "label", "split"] + (["start", "end"] if with_times else [])
    out.parent.mkdir(parents=True, exist_ok=True)
    with open_atomic(out, newline="") as f:
        w = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        w.writerow(header)
        for r in rows:
            p = r.path
            if p.is_relative_to(out.parent):  # else outside the manifest folder: keep it absolute
                p = p.relative_to(out.parent)
            fields = [p.as_posix(), r.label, r.split or ""]
            if with_times:
                fields += ["" if r.start is None else f"{r.start:g}", "" if r.end is None else f"{r.end:g}"]
            w.writerow(fields)
    return out


def _float_or_none(value: str | None, what: str, where: str) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{where}: {what} must be a number of seconds, got {value!r}") from None


def read_manifest(path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[ManifestRow]:
    """Read a probe manifest (see the module docstring for the format); split aliases (``val``, ``dev``, ...)
    are normalised to ``train``/``valid``/``test``.

    Args:
        path: the manifest; ``,``-separated when it ends in ``.csv``, else tab-separated.
        root: folder relative paths are under (default: the manifest's folder).
    Raises:
        FileNotFoundError: the manifest does not exist.
        ValueError: not UTF-8, no header, a missing ``path``/``label`` column, an empty path, a bad split name or
            segment bound, or no rows; the message names the file and the row.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"probing manifest {str(path)!r} does not exist")
    base = Path(root).expanduser() if root else path.parent
    delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        with open(path, encoding="utf-8-sig") as f:
            f.read()
    except UnicodeDecodeError as e:
        raise ValueError(
            f"manifest {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8"
        ) from None
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = [c.strip().lower() for c in (reader.fieldnames or [])]
        missing = [c for c in ("path", "label") if c not in columns]
        if missing:
            raise ValueError(
                f"manifest {str(path)!r} has columns {columns or 'none'}; it needs a header row with 'path' and "
                f"'label' (optional 'split', 'start', 'end'), separated by {'commas' if delimiter == ',' else 'tabs'}"
            )
        out = []
        for i, raw in enumerate(reader, start=2):  # row 1 is the header
            rec = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
            where = f"{path.name} row {i}"
            if not rec.get("path"):
                if not any(rec.values()):
                    continue  # blank line
                raise ValueError(f"{where}: empty 'path'")
            split = rec.get("split") or None
            if split is not None:
                if split.lower() not in _SPLIT_ALIASES:
                    raise ValueError(f"{where}: unknown split {split!r}; use train, valid or test")
                split = _SPLIT_ALIASES[split.lower()]
            start = _float_or_none(rec.get("start"), "start", where)
            end = _float_or_none(rec.get("end"), "end", where)
            if start is not None and start < 0 or (end is not None and end <= (start or 0.0)):
                raise ValueError(f"{where}: segment start={start} end={end} is empty or negative")
            audio = Path(rec["path"]).expanduser()
            out.append(
                ManifestRow(audio if audio.is_absolute() else base / audio, rec.get("label", ""), split, start, end, i)
            )
    if not out:
        raise ValueError(f"manifest {str(path)!r} has no rows")
    return out

"""GiantSteps key detection (24 keys): one checkout, or MARBLE's pair of checkouts (test and train/valid).

Shape legend: none (no tensors here).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from mert.audio import find_audio
from mert.probe.layouts.common import SPLIT_FRACTIONS, VALID_FRACTION, LayoutResult, check_root, finish, split_by_label
from mert.probe.manifest import ManifestRow

__all__ = ["GIANTSTEPS_EXPECTED", "giantsteps", "normalize_key"]

GIANTSTEPS_EXPECTED = (
    "a giantsteps-key-dataset or giantsteps-mtg-key-dataset checkout with annotations/key/<id>.LOFI.key and "
    "the audio (audio/<id>.LOFI.mp3), or a folder holding both checkouts"
)
_PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_NATURALS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_MODES = {"major": "major", "maj": "major", "minor": "minor", "min": "minor"}


def normalize_key(text: str) -> str:
    """A key annotation as one of 24 canonical names with sharps, e.g. ``"db Major"`` -> ``"C# major"``.

    Raises:
        ValueError: not a single ``<tonic> <major|minor>`` key (e.g. two keys joined by ``/``, or ``-``).
    """
    if "/" in text or "," in text:
        raise ValueError(f"more than one key in {text.strip()!r}")
    fields = text.split()
    if len(fields) < 2:
        raise ValueError(f"not a '<tonic> <major|minor>' key: {text.strip()!r}")
    tonic, mode = fields[0], fields[1].lower()
    letter, accidentals = tonic[:1].upper(), tonic[1:].replace("♯", "#").replace("♭", "b")
    if letter not in _NATURALS or mode not in _MODES or any(a not in "#b" for a in accidentals):
        raise ValueError(f"not a '<tonic> <major|minor>' key: {text.strip()!r}")
    pc = (_NATURALS[letter] + accidentals.count("#") - accidentals.count("b")) % 12
    return f"{_PITCH_CLASSES[pc]} {_MODES[mode]}"


def _giantsteps_folder(folder: Path, result: LayoutResult) -> list[tuple[str, str]]:
    """``(audio path, canonical key)`` for one checkout; skips go to ``result``."""
    key_dir = folder / "annotations" / "key"
    key_files = sorted(key_dir.glob("*.key")) if key_dir.is_dir() else sorted(folder.rglob("*.key"))
    if not key_files:
        raise FileNotFoundError(
            f"giantsteps: no *.key annotation files under {str(folder)!r}; expected {GIANTSTEPS_EXPECTED}"
        )
    audio = {p.stem: p for p in reversed(find_audio(folder))}  # reversed: the sorted-first file wins
    # giantsteps-mtg-key-dataset: keep confident single-key tracks only, as Korzeniowski & Widmer and MARBLE.
    confidence: dict[str, str] = {}
    ann = folder / "annotations" / "annotations.txt"
    if ann.is_file():
        with open(ann, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                if row.get("ID"):
                    confidence[row["ID"]] = row.get("C", "")
        result.notes.append(f"{folder.name}: kept tracks with confidence C == 2 in annotations/annotations.txt")
    out, seen = [], set()
    for kf in key_files:
        stem = kf.stem  # "<id>.LOFI"
        if stem in seen:  # the same id in two annotation folders: the first (sorted) wins
            continue
        seen.add(stem)
        track_id = stem.split(".")[0]
        if stem not in audio:
            result.skipped.append((str(kf), "key annotation without audio file"))
            continue
        if confidence and _as_int(confidence.get(track_id)) != 2:
            result.skipped.append((str(audio[stem]), "key confidence C != 2 (or not listed) in annotations.txt"))
            continue
        try:
            lines = kf.read_text(encoding="utf-8").strip().splitlines()
            label = normalize_key(lines[0] if lines else "")
        except (ValueError, UnicodeDecodeError) as e:
            result.skipped.append((str(kf), f"unusable key annotation: {e}"))
            continue
        out.append((str(audio[stem]), label))
    for stem in sorted(set(audio) - {kf.stem for kf in key_files}):
        result.skipped.append((str(audio[stem]), "audio without key annotation"))
    return out


def _as_int(text: str | None) -> int | None:
    try:
        return int(float(text or ""))
    except ValueError:
        return None


def giantsteps(root: str | os.PathLike, *, split: str | None = None, seed: int = 0) -> LayoutResult:
    """GiantSteps key detection, 24 classes with enharmonic spellings merged (``Db major`` -> ``C# major``).

    ROOT is one checkout, or a folder holding ``giantsteps-key-dataset*`` (the 604-track test set) and
    ``giantsteps-mtg-key-dataset*`` (train/valid), MARBLE's arrangement.

    Args:
        root: see ``GIANTSTEPS_EXPECTED``.
        split: for a single checkout: ``test`` (all rows test), ``train`` (seeded train/valid), or None
            (seeded 80/10/10, stratified by key).
        seed: seed of the seeded splits.
    """
    if split not in (None, "train", "test"):
        raise ValueError(f"giantsteps: split must be 'train', 'test' or None, got {split!r}")
    path = check_root(root, "giantsteps", GIANTSTEPS_EXPECTED)
    result = LayoutResult("giantsteps", "giantsteps_key")
    test_dirs = sorted(p for p in path.glob("giantsteps-key-dataset*") if p.is_dir())
    train_dirs = sorted(p for p in path.glob("giantsteps-mtg-key-dataset*") if p.is_dir())
    if test_dirs or train_dirs:
        if split is not None:
            raise ValueError(
                f"giantsteps: {str(path)!r} holds the checkouts themselves, which fix the splits; leave out --split"
            )
        parts = [(d, "test") for d in test_dirs] + [(d, "train") for d in train_dirs]
        result.notes.append("test = giantsteps-key-dataset, train/valid = giantsteps-mtg-key-dataset (MARBLE)")
    else:
        parts = [(path, split)]
    for folder, role in parts:
        items = _giantsteps_folder(folder, result)
        paths, labels = [p for p, _ in items], [lab for _, lab in items]
        if role == "test":
            assignment = dict.fromkeys(paths, "test")
        else:
            fractions = (1 - VALID_FRACTION, VALID_FRACTION, 0.0) if role == "train" else SPLIT_FRACTIONS
            assignment = split_by_label(paths, labels, fractions, seed)
            result.notes.append(f"{folder.name}: seeded split stratified by key (seed {seed})")
        result.rows.extend(ManifestRow(p, lab, assignment[p]) for p, lab in items)
    return finish(result, path, GIANTSTEPS_EXPECTED)

"""GTZAN genre classification (10 classes): the genre folders and, when present, the fault-filtered split lists.

Shape legend: none (no tensors here).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mert.audio import AUDIO_EXTENSIONS, find_audio
from mert.probe.layouts.common import (
    SPLIT_FRACTIONS,
    SPLITS,
    LayoutResult,
    check_root,
    find_file,
    finish,
    split_by_label,
)
from mert.probe.manifest import ManifestRow

__all__ = ["GTZAN_EXPECTED", "GTZAN_GENRES", "gtzan", "gtzan_audio", "gtzan_splits"]

GTZAN_GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")

GTZAN_EXPECTED = (
    "ROOT/genres/<genre>/<genre>.000NN.wav|.au (also ROOT/Data/genres_original/..., Kaggle), optionally "
    "train_filtered.txt, valid_filtered.txt, test_filtered.txt (lines like blues/blues.00012.wav) in ROOT"
)
_GTZAN_NAME = re.compile(r"^([a-z]+)\.(\d{5})$")


def gtzan_audio(root: Path, result: LayoutResult) -> dict[str, Path]:
    """``"<genre>/<genre>.000NN"`` -> audio file, from the first folder that holds genre subfolders."""
    candidates = [root / "genres", root / "Data" / "genres_original", root / "genres_original", root, root / "gtzan"]
    candidates += sorted(p for p in root.glob("*/genres") if p.is_dir())
    audio_root = next((c for c in candidates if any((c / g).is_dir() for g in GTZAN_GENRES)), None)
    if audio_root is None:
        raise FileNotFoundError(
            f"gtzan: no genre folders (blues/, classical/, ...) under {str(root)!r}; expected {GTZAN_EXPECTED}"
        )
    found: dict[str, Path] = {}
    for p in find_audio(audio_root):
        m = _GTZAN_NAME.match(p.stem)
        rel = p.relative_to(audio_root)
        if len(rel.parts) != 2 or m is None or m.group(1) != rel.parts[0]:
            result.skipped.append((str(p), "not named <genre>/<genre>.000NN"))
            continue
        key = f"{rel.parts[0]}/{p.stem}"
        if key in found:  # e.g. both .au and .wav: keep the first (sorted, so .au)
            result.skipped.append((str(p), f"duplicate of {found[key].name}"))
            continue
        found[key] = p
    return found


def gtzan_splits(root: Path, keys: list[str], labels: list[str], seed: int, result: LayoutResult) -> dict[str, str]:
    """The fault-filtered split when its three files are in ROOT (or below), else a seeded stratified split."""
    names = {s: f"{s}_filtered.txt" for s in SPLITS}
    first = find_file(root, names["train"])
    folder = first.parent if first is not None else root
    present = {s: folder / n for s, n in names.items() if (folder / n).is_file()}
    if not present:
        result.notes.append(f"no *_filtered.txt split files: seeded stratified 80/10/10 split (seed {seed})")
        return split_by_label(keys, labels, SPLIT_FRACTIONS, seed)
    if len(present) != 3:
        missing = sorted(set(names.values()) - {p.name for p in present.values()})
        raise FileNotFoundError(f"gtzan: {str(folder)!r} has only some split files, missing {missing}")
    out: dict[str, str] = {}
    for split, path in present.items():
        for line in path.read_text(encoding="utf-8").splitlines():
            entry = line.strip()
            if entry:
                # Lists name .wav files; the original distribution has .au, so match without the extension.
                if Path(entry).suffix.lower() in AUDIO_EXTENSIONS:
                    entry = entry[: -len(Path(entry).suffix)]
                out[entry.replace("\\", "/")] = split
    result.notes.append(f"split from the fault-filtered lists in {str(folder)!r}")
    listed_missing = sorted(set(out) - set(keys))
    for key in listed_missing:
        result.skipped.append((key, "listed in a *_filtered.txt file but no audio file"))
    return out


def gtzan(root: str | os.PathLike, *, seed: int = 0) -> LayoutResult:
    """GTZAN genre classification (10 classes).

    Args:
        root: the GTZAN folder (see ``GTZAN_EXPECTED``).
        seed: seed of the fallback split when the fault-filtered lists are absent.
    Returns:
        Rows labelled with the genre; files outside the filtered lists are skipped and counted.
    """
    path = check_root(root, "gtzan", GTZAN_EXPECTED)
    result = LayoutResult("gtzan", "gtzan_genre")
    audio = gtzan_audio(path, result)
    keys = sorted(audio)
    splits = gtzan_splits(path, keys, [k.split("/")[0] for k in keys], seed, result)
    for key in keys:
        if key not in splits:
            result.skipped.append((str(audio[key]), "not in the fault-filtered split lists"))
            continue
        result.rows.append(ManifestRow(str(audio[key]), key.split("/")[0], splits[key]))
    return finish(result, path, GTZAN_EXPECTED)

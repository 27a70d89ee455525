"""Any class-per-folder collection: the label is the folder name, the split seeded or from split folders.

Shape legend: none (no tensors here).
"""

from __future__ import annotations

import os
from pathlib import Path

from mert.audio import find_audio
from mert.probe.layouts.common import LayoutResult, check_root, finish, split_by_label
from mert.probe.manifest import ManifestRow

__all__ = ["FOLDERS_EXPECTED", "folders"]

FOLDERS_EXPECTED = (
    "ROOT/<label>/.../*.wav|.flac|... (one folder per class), or ROOT/{train,valid,test}/<label>/... to fix the split"
)


def folders(root: str | os.PathLike, *, seed: int = 0) -> LayoutResult:
    """Any class-per-folder collection (e.g. recordings sorted by instrument): the label is the folder name.

    ``ROOT/<label>/**/<audio>`` gets a seeded split stratified by label (80/10/10); with top-level folders
    ``train``, ``valid`` (or ``val``/``validation``) and ``test``, ``ROOT/<split>/<label>/**/<audio>`` keeps that
    split. Files directly in ROOT have no label and are skipped.
    """
    path = check_root(root, "folders", FOLDERS_EXPECTED)
    result = LayoutResult("folders", "multiclass")
    split_dirs = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}
    top = [d for d in sorted(path.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    fixed = bool(top) and all(d.name.lower() in split_dirs for d in top)
    items: list[tuple[Path, str, str | None]] = []
    for audio in find_audio(path, skipped=result.skipped):  # unreadable, non-regular, loops: listed
        parts = audio.relative_to(path).parts
        if fixed:
            if len(parts) < 3:
                result.skipped.append((str(audio), "not inside ROOT/<split>/<label>/"))
                continue
            items.append((audio, parts[1], split_dirs[parts[0].lower()]))
        elif len(parts) < 2:
            result.skipped.append((str(audio), "directly in ROOT (no label folder)"))
        else:
            items.append((audio, parts[0], None))
    if fixed:
        result.notes.append("split from the train/valid/test folders")
        splits = {str(a): sp for a, _, sp in items}
    else:
        result.notes.append(f"seeded stratified 80/10/10 split (seed {seed})")
        splits = split_by_label([str(a) for a, _, _ in items], [lab for _, lab, _ in items], (0.8, 0.1, 0.1), seed)
    result.rows = [ManifestRow(str(a), lab, splits[str(a)]) for a, lab, _ in items]
    return finish(result, path, FOLDERS_EXPECTED)

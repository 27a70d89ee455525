"""VocalSet singing technique (MARBLE's held-out singers) or singer identification.

Shape legend: none (no tensors here).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from mert.audio import find_audio
from mert.probe.layouts.common import SPLIT_FRACTIONS, VALID_FRACTION, LayoutResult, check_root, finish, split_by_label
from mert.probe.manifest import ManifestRow

__all__ = ["MARBLE_VOCALSET_TECHNIQUES", "VOCALSET_EXPECTED", "VOCALSET_TEST_SINGERS", "vocalset"]

# MARBLE's VocalSet technique split (its preprocess.py): these five singers are the test set.
VOCALSET_TEST_SINGERS = ("f2", "f8", "m3", "m5", "m10")
# The 10 techniques MARBLE's technique task keeps (the other 7 folders are dynamics/tempo variants).
MARBLE_VOCALSET_TECHNIQUES = (
    "belt",
    "breathy",
    "inhaled",
    "lip_trill",
    "spoken",
    "straight",
    "trill",
    "trillo",
    "vibrato",
    "vocal_fry",
)


VOCALSET_EXPECTED = "ROOT/FULL/<singer>/<context>/<technique>/<file>.wav with singers f1..f9, m1..m11"
_SINGER = re.compile(r"^[fm]\d+$")


def vocalset(
    root: str | os.PathLike,
    *,
    task: str = "technique",
    seed: int = 0,
    techniques: Sequence[str] | None = None,
) -> LayoutResult:
    """VocalSet singing technique or singer identification.

    ``technique``: classes are the technique folders present (or ``techniques``; MARBLE's 10 are
    ``MARBLE_VOCALSET_TECHNIQUES``); singers ``VOCALSET_TEST_SINGERS`` (f2, f8, m3, m5, m10, as MARBLE) are the
    test set, the other singers' files get a seeded stratified train/valid split. ``singer``: 20 classes, a
    seeded 80/10/10 split by file, stratified by singer.

    Args:
        root: see ``VOCALSET_EXPECTED``.
        task: ``technique`` or ``singer``.
        seed: seed of the split.
        techniques: keep only these technique folders (technique task); None keeps all.
    """
    if task not in ("technique", "singer"):
        raise ValueError(f"vocalset: task must be 'technique' or 'singer', got {task!r}")
    path = check_root(root, "vocalset", VOCALSET_EXPECTED)
    result = LayoutResult("vocalset", f"vocalset_{task}")
    candidates = [path / "FULL", path, *sorted(path.glob("*/FULL"))]
    full = next((c for c in candidates if c.is_dir() and any(_SINGER.match(p.name) for p in c.iterdir())), None)
    if full is None:
        raise FileNotFoundError(
            f"vocalset: no singer folders (f1, m1, ...) under {str(path)!r}; expected {VOCALSET_EXPECTED}"
        )
    keep = set(techniques) if techniques else None
    items: list[tuple[str, str, str]] = []  # (path, singer, technique)
    for p in find_audio(full):
        rel = p.relative_to(full).parts
        if len(rel) != 4 or not _SINGER.match(rel[0]):
            result.skipped.append((str(p), "not at <singer>/<context>/<technique>/<file>"))
            continue
        if task == "technique" and keep is not None and rel[2] not in keep:
            result.skipped.append((str(p), "technique not selected"))
            continue
        items.append((str(p), rel[0], rel[2]))
    if task == "technique":
        test_singers = set(VOCALSET_TEST_SINGERS)
        rest = [(p, t) for p, s, t in items if s not in test_singers]
        assignment = {p: "test" for p, s, _ in items if s in test_singers}
        assignment.update(
            split_by_label([p for p, _ in rest], [t for _, t in rest], (1 - VALID_FRACTION, VALID_FRACTION, 0.0), seed)
        )
        singers = ", ".join(VOCALSET_TEST_SINGERS)
        result.notes.append(f"test singers {singers} (MARBLE); seeded valid split of the others (seed {seed})")
        result.rows.extend(ManifestRow(p, t, assignment[p]) for p, _, t in items)
    else:
        assignment = split_by_label([p for p, _, _ in items], [s for _, s, _ in items], SPLIT_FRACTIONS, seed)
        result.notes.append(f"seeded 80/10/10 split by file, stratified by singer (seed {seed})")
        result.rows.extend(ManifestRow(p, s, assignment[p]) for p, s, _ in items)
    return finish(result, path, VOCALSET_EXPECTED)

"""What every layout shares: the scan result, root and file checks, and the seeded split by label.

Shape legend: none (no tensors here).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mert.data.splits import SPLITS, seeded_split
from mert.probe.manifest import ManifestRow

__all__ = [
    "SPLITS",
    "SPLIT_FRACTIONS",
    "VALID_FRACTION",
    "LayoutResult",
    "check_root",
    "find_file",
    "finish",
    "first_existing",
    "fmt_number",
    "split_by_label",
]

SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # train/valid/test of a seeded split
VALID_FRACTION = 0.1  # of the non-test part, where the test set is fixed by the data set


@dataclass
class LayoutResult:
    """What a layout scan found.

    Attributes:
        layout: the layout name (``gtzan``, ``nsynth``, ...).
        task: the probe task these rows are for (``gtzan_genre``, ``nsynth_pitch``, ...).
        rows: manifest rows, sorted by path.
        skipped: ``(file or id, reason)`` for every candidate that was left out.
        notes: decisions worth knowing (which split was used, subsampling).
    """

    layout: str
    task: str
    rows: list[ManifestRow] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def split_counts(self) -> dict[str, int]:
        """Rows per split (None counted as ``"none"``)."""
        return dict(Counter(r.split or "none" for r in self.rows))

    def skipped_by_reason(self) -> dict[str, list[str]]:
        """Skipped items grouped by reason, in first-seen order."""
        out: dict[str, list[str]] = {}
        for item, reason in self.skipped:
            out.setdefault(reason, []).append(item)
        return out

    def report(self, examples: int = 3) -> str:
        """A short human-readable summary: rows per split, labels, skips by reason with a few examples."""
        counts = self.split_counts()
        per_split = ", ".join(f"{s} {counts[s]}" for s in (*SPLITS, "none") if s in counts)
        n_labels = len({r.label for r in self.rows})
        lines = [f"{self.layout} -> {self.task}: {len(self.rows)} rows ({per_split}); {n_labels} distinct labels"]
        lines += [f"  note: {n}" for n in self.notes]
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)}:")
            for reason, items in self.skipped_by_reason().items():
                shown = ", ".join(items[:examples]) + (", ..." if len(items) > examples else "")
                lines.append(f"    {len(items)} x {reason}: {shown}")
        return "\n".join(lines)


def check_root(root: str | os.PathLike, layout: str, expected: str) -> Path:
    """``root`` as an absolute folder, or a ``FileNotFoundError`` that says what the layout expects there."""
    path = Path(root).expanduser().absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"{layout}: folder {str(path)!r} does not exist; expected {expected}")
    return path


def first_existing(candidates: Iterable[Path], kind: str = "file") -> Path | None:
    """The first candidate that is a file (``kind="file"``) or a folder (``kind="dir"``)."""
    for c in candidates:
        if c.is_file() if kind == "file" else c.is_dir():
            return c
    return None


def find_file(root: Path, name: str, preferred: Sequence[str] = ("",)) -> Path | None:
    """``root/<preferred>/name`` in order, else the first match anywhere under ``root`` (sorted)."""
    hit = first_existing(root / p / name for p in preferred)
    return hit or next(iter(sorted(root.rglob(name))), None)


def split_by_label(
    items: Sequence[str], labels: Sequence[str] | None, fractions: Sequence[float], seed: int
) -> dict[str, str]:
    """Item -> split by :func:`mert.data.splits.seeded_split`, stratified by label (None: not stratified).

    ``fractions`` are for ``(train, valid, test)`` (test may be 0). Items are sorted first, so the result depends
    only on the set of items, their labels and the seed, not on the order a folder scan found them in.
    """
    order = sorted(range(len(items)), key=lambda i: items[i])
    strata = np.array(["" if labels is None else labels[i] for i in order], dtype=object)
    return dict(zip((items[i] for i in order), seeded_split(strata, seed, fractions).tolist()))


def finish(result: LayoutResult, root: Path, expected: str) -> LayoutResult:
    """Sort the rows by path and segment; raise when there is none; note the splits that got no row."""
    result.rows.sort(key=lambda r: (str(r.path), r.start or 0.0))
    if not result.rows:
        reasons = "; ".join(f"{len(v)} x {k}" for k, v in result.skipped_by_reason().items()) or "nothing found"
        raise ValueError(f"{result.layout}: no usable clips under {str(root)!r} ({reasons}); expected {expected}")
    counts = result.split_counts()
    empty = [s for s in SPLITS if s not in counts]
    if empty:  # e.g. a test-only checkout, or classes too small for a seeded cut
        result.notes.append(f"no {'/'.join(empty)} rows")
    return result


def fmt_number(x: float) -> str:
    """A label number with up to 10 significant digits and no trailing zeros."""
    return format(x, ".10g")

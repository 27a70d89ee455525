"""MagnaTagATune top-k tagging: annotations_final.csv, the mp3 folders 0..f, optionally Won et al.'s split.

Shape legend: none (no tensors here).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from mert.probe.layouts.common import SPLITS, LayoutResult, check_root, find_file, finish, first_existing
from mert.probe.manifest import ManifestRow

__all__ = ["MTT_EXPECTED", "mtt"]

MTT_EXPECTED = (
    "ROOT/annotations_final.csv (tab-separated: clip_id, 188 tags, mp3_path) and ROOT/mp3/0..f/<clip>.mp3 "
    "(or the 0..f folders directly in ROOT); optionally Won et al.'s train.npy, valid.npy, test.npy"
)


def _read_won_split(split_dir: Path) -> dict[str, str]:
    import numpy as np

    out: dict[str, str] = {}
    for split in SPLITS:
        f = first_existing([split_dir / f"{split}.npy", split_dir / f"{split}_new.npy"])
        if f is None:
            raise FileNotFoundError(f"mtt: {str(split_dir)!r} has no {split}.npy (Won et al. split files)")
        try:
            entries = np.load(f, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"mtt: cannot read {str(f)!r} as an array of strings: {e}") from None
        for entry in entries.tolist():
            # Entries are "<index>\t<folder>/<clip>.mp3".
            out[str(entry).split("\t")[-1].strip()] = split
    return out


def mtt(root: str | os.PathLike, *, top_k: int = 50, split_dir: str | os.PathLike | None = None) -> LayoutResult:
    """MagnaTagATune tagging over the ``top_k`` most frequent tags (multi-label, ``;``-joined).

    Args:
        root: see ``MTT_EXPECTED``.
        top_k: tags kept, ranked by clip count over the whole annotation file (ties: file column order).
        split_dir: folder of Won et al.'s ``train.npy``/``valid.npy``/``test.npy``; None uses them when they sit
            in ROOT or ROOT/split, else the standard folder split (0-b train, c valid, d-f test).
    Returns:
        Rows with the clip's top-k tags; clips with none of them are skipped (and counted).
    """
    if top_k < 1:
        raise ValueError(f"mtt: top_k must be >= 1, got {top_k}")
    path = check_root(root, "mtt", MTT_EXPECTED)
    result = LayoutResult("mtt", "mtt_tagging")
    ann = find_file(path, "annotations_final.csv")
    if ann is None:
        raise FileNotFoundError(f"mtt: no annotations_final.csv under {str(path)!r}; expected {MTT_EXPECTED}")
    with open(ann, encoding="utf-8", newline="") as f:
        table = list(csv.reader(f, delimiter="\t"))
    if not table or len(table[0]) < 3 or table[0][0].strip() != "clip_id" or table[0][-1].strip() != "mp3_path":
        raise ValueError(f"mtt: {str(ann)!r} does not start with a 'clip_id ... mp3_path' tab-separated header")
    tags = [t.strip() for t in table[0][1:-1]]
    body = [r for r in table[1:] if len(r) == len(tags) + 2]
    for r in table[1:]:
        if len(r) != len(tags) + 2 and any(c.strip() for c in r):
            reason = f"annotation row with {len(r)} fields, expected {len(tags) + 2}"
            result.skipped.append((r[0] if r else "?", reason))
    counts = [sum(r[1 + j].strip() == "1" for r in body) for j in range(len(tags))]
    ranked = sorted(range(len(tags)), key=lambda j: (-counts[j], j))[:top_k]
    result.notes.append(f"top {len(ranked)} of {len(tags)} tags by clip count")

    audio_dir = first_existing([path / "mp3", path / "MTT" / "mp3", path / "audio", path], "dir")
    if not any((audio_dir / c).is_dir() for c in "0123456789abcdef"):
        found = [p for p in path.rglob("0") if p.is_dir() and (p.parent / "f").is_dir()]
        if not found:
            raise FileNotFoundError(f"mtt: no mp3 folders 0..f under {str(path)!r}; expected {MTT_EXPECTED}")
        audio_dir = sorted(found)[0].parent

    if split_dir is None:
        candidates = (path, path / "split", path / "split" / "mtat")
        split_dir = next((d for d in candidates if (d / "train.npy").is_file()), None)
    won = _read_won_split(Path(split_dir)) if split_dir is not None else None
    if won is not None:
        result.notes.append(f"split from Won et al.'s lists in {str(split_dir)!r}")
    else:
        result.notes.append("standard folder split: 0-b train, c valid, d-f test")

    for r in body:
        rel = r[-1].strip()
        wav = audio_dir / rel
        if not rel or not wav.is_file():
            result.skipped.append((str(wav), "in annotations_final.csv but no audio file"))
            continue
        label = ";".join(tags[j] for j in ranked if r[1 + j].strip() == "1")
        if not label:
            result.skipped.append((str(wav), f"no top-{top_k} tag"))
            continue
        if won is not None:
            split = won.get(rel)
            if split is None:
                result.skipped.append((str(wav), "not in Won et al.'s split lists"))
                continue
        else:
            c = rel[0].lower()
            if c not in "0123456789abcdef":
                result.skipped.append((str(wav), "mp3_path is not under a 0..f folder"))
                continue
            split = "train" if int(c, 16) < 12 else "valid" if c == "c" else "test"
        result.rows.append(ManifestRow(str(wav), label, split))
    return finish(result, path, MTT_EXPECTED)

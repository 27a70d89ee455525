"""Emomusic static emotion regression (valence;arousal), with the MediaEval 2013 evaluation set as test.

Shape legend: none (no tensors here).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from mert.audio import find_audio
from mert.probe.layouts.common import (
    SPLIT_FRACTIONS,
    VALID_FRACTION,
    LayoutResult,
    check_root,
    find_file,
    finish,
    first_existing,
    fmt_number,
    split_by_label,
)
from mert.probe.manifest import ManifestRow

__all__ = ["EMO_EXPECTED", "emo"]

EMO_EXPECTED = (
    "ROOT/clips_45seconds/<song_id>.mp3 and ROOT/annotations/static_annotations.csv (song_id, mean_arousal, "
    "std_arousal, mean_valence, std_valence); optionally annotations/songs_info.csv for the MediaEval 2013 split"
)


def _read_csv_stripped(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(f)]


def emo(root: str | os.PathLike, *, seed: int = 0) -> LayoutResult:
    """Emomusic (1000 songs) static emotion regression: label ``valence;arousal`` (the annotations' means).

    The test set is the MediaEval 2013 evaluation set when ``songs_info.csv`` is present (as MARBLE), with a
    seeded valid split of the rest; otherwise a seeded 80/10/10 split. Values are stored as annotated (1-9
    scale): standardise targets in the probe.

    Args:
        root: see ``EMO_EXPECTED``.
        seed: seed of the split.
    """
    path = check_root(root, "emo", EMO_EXPECTED)
    result = LayoutResult("emo", "emo_regression")
    ann = find_file(path, "static_annotations.csv", ("annotations", ""))
    if ann is None:
        raise FileNotFoundError(f"emo: no static_annotations.csv under {str(path)!r}; expected {EMO_EXPECTED}")
    audio_dir = first_existing([path / "clips_45seconds", *sorted(path.rglob("clips_45seconds"))], "dir")
    if audio_dir is None:
        raise FileNotFoundError(f"emo: no clips_45seconds/ folder under {str(path)!r}; expected {EMO_EXPECTED}")
    audio = {p.stem: p for p in reversed(find_audio(audio_dir))}
    rows = _read_csv_stripped(ann)
    need = {"song_id", "mean_valence", "mean_arousal"}
    if rows and not need <= set(rows[0]):
        raise ValueError(f"emo: {str(ann)!r} lacks column(s) {sorted(need - set(rows[0]))}; expected {EMO_EXPECTED}")
    labelled: dict[str, tuple[Path, str]] = {}
    annotated: set[str] = set()
    for row in rows:
        try:
            sid = str(int(float(row["song_id"])))
            annotated.add(sid)
            valence, arousal = float(row["mean_valence"]), float(row["mean_arousal"])
        except ValueError:
            result.skipped.append((f"song_id {row.get('song_id')!r} in {ann.name}", "non-numeric annotation"))
            continue
        if sid not in audio:
            result.skipped.append((str(audio_dir / f"{sid}.mp3"), "annotated but no audio file"))
            continue
        labelled[sid] = (audio[sid], f"{fmt_number(valence)};{fmt_number(arousal)}")
    for sid in sorted(set(audio) - annotated, key=lambda s: (len(s), s)):
        result.skipped.append((str(audio[sid]), "no static annotation"))

    ids = sorted(labelled)
    info = find_file(path, "songs_info.csv", ("annotations", ""))
    official: dict[str, str] = {}
    if info is not None:
        for row in _read_csv_stripped(info):
            col = next((k for k in row if k.lower().startswith("mediaeval")), None)
            try:
                official[str(int(float(row.get("song_id", ""))))] = row[col].lower() if col else ""
            except ValueError:
                continue  # a blank or malformed line; the song then falls into the seeded part
        official = {k: v for k, v in official.items() if v}
    if official:
        test = [i for i in ids if official.get(i) == "evaluation"]
        rest = [i for i in ids if official.get(i) != "evaluation"]
        assignment = dict.fromkeys(test, "test")
        assignment.update(split_by_label(rest, None, (1 - VALID_FRACTION, VALID_FRACTION, 0.0), seed))
        result.notes.append(f"test = MediaEval 2013 evaluation set ({str(info)!r}); seeded valid split (seed {seed})")
    else:
        assignment = split_by_label(ids, None, SPLIT_FRACTIONS, seed)
        result.notes.append(f"seeded 80/10/10 split (seed {seed})")
    result.rows.extend(ManifestRow(str(labelled[i][0]), labelled[i][1], assignment[i]) for i in ids)
    return finish(result, path, EMO_EXPECTED)

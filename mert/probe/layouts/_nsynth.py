"""NSynth instrument family or pitch, in the data set's own train/valid/test folders.

Shape legend: none (no tensors here).
"""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict

from mert.probe.layouts.common import SPLITS, LayoutResult, check_root, finish
from mert.probe.manifest import ManifestRow

__all__ = ["NSYNTH_EXPECTED", "NSYNTH_FIELDS", "nsynth"]

NSYNTH_EXPECTED = "ROOT/nsynth-{train,valid,test}/examples.json and ROOT/nsynth-*/audio/<note_str>.wav"
NSYNTH_FIELDS = {"instrument": "instrument_family_str", "pitch": "pitch"}


def nsynth(
    root: str | os.PathLike, *, task: str = "instrument", max_per_class: int | None = None, seed: int = 0
) -> LayoutResult:
    """NSynth instrument family (11 classes) or pitch (MIDI note number as the class name).

    Args:
        root: the folder holding ``nsynth-train``, ``nsynth-valid``, ``nsynth-test`` (see ``NSYNTH_EXPECTED``).
        task: ``instrument`` (``instrument_family_str``) or ``pitch`` (``pitch``).
        max_per_class: keep at most this many train clips per class (seeded), since train has 289k clips.
        seed: seed of the subsampling.
    """
    if task not in NSYNTH_FIELDS:
        raise ValueError(f"nsynth: task must be one of {sorted(NSYNTH_FIELDS)}, got {task!r}")
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(f"nsynth: max_per_class must be >= 1, got {max_per_class}")
    path = check_root(root, "nsynth", NSYNTH_EXPECTED)
    result = LayoutResult("nsynth", f"nsynth_{task}")
    key = NSYNTH_FIELDS[task]
    found_any = False
    for split in SPLITS:
        folder = path / f"nsynth-{split}"
        meta_path = folder / "examples.json"
        if not meta_path.is_file():
            if folder.is_dir():
                raise FileNotFoundError(f"nsynth: {str(meta_path)!r} is missing; expected {NSYNTH_EXPECTED}")
            result.notes.append(f"no {folder.name}/ folder: no {split} rows")
            continue
        found_any = True
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"nsynth: {str(meta_path)!r} is not valid JSON: {e}") from None
        audio_dir = folder / "audio"
        # One directory listing instead of 289k stat calls.
        present = {e.name for e in os.scandir(audio_dir)} if audio_dir.is_dir() else set()
        rows = []
        for note, info in sorted(meta.items()):
            wav = audio_dir / f"{note}.wav"
            if wav.name not in present:
                result.skipped.append((str(wav), "in examples.json but no audio file"))
                continue
            if not isinstance(info, dict) or key not in info:
                result.skipped.append((str(wav), f"examples.json entry has no {key!r}"))
                continue
            rows.append(ManifestRow(str(wav), str(info[key]), split))
        if split == "train" and max_per_class is not None:
            rows = _subsample(rows, max_per_class, seed, result)
        result.rows.extend(rows)
    if not found_any:
        raise FileNotFoundError(
            f"nsynth: none of nsynth-train/valid/test under {str(path)!r}; expected {NSYNTH_EXPECTED}"
        )
    return finish(result, path, NSYNTH_EXPECTED)


def _subsample(rows: list[ManifestRow], max_per_class: int, seed: int, result: LayoutResult) -> list[ManifestRow]:
    by_label: dict[str, list[ManifestRow]] = defaultdict(list)
    for r in rows:
        by_label[r.label].append(r)
    rng = random.Random(seed)
    kept = []
    for label in sorted(by_label):
        group = by_label[label]
        kept.extend(group if len(group) <= max_per_class else rng.sample(group, max_per_class))
    result.notes.append(
        f"train subsampled to at most {max_per_class} clips per class (seed {seed}): kept {len(kept)} of {len(rows)}"
    )
    return kept

"""GTZAN beat tracking: GTZAN's audio (found as by the gtzan layout) with the gtzan_tempo_beat annotations.

Shape legend: none (no tensors here).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mert.probe.layouts._gtzan import gtzan_audio, gtzan_splits
from mert.probe.layouts.common import LayoutResult, check_root, finish, first_existing, fmt_number
from mert.probe.manifest import ManifestRow

__all__ = ["GTZAN_BEAT_EXPECTED", "gtzan_beat"]

GTZAN_BEAT_EXPECTED = (
    "GTZAN audio as for the gtzan layout plus beat annotations ROOT/beats/gtzan_<genre>_000NN.beats (the "
    "gtzan_tempo_beat layout; also ROOT/gtzan_tempo_beat*/beats/), one beat per line: time [beat_number]"
)


def _read_beats(path: Path) -> list[float]:
    times = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        t = float(fields[0])
        if not t >= 0.0:  # also rejects NaN
            raise ValueError(f"negative or NaN beat time {fields[0]!r}")
        times.append(t)
    return sorted(times)


def gtzan_beat(root: str | os.PathLike, *, seed: int = 0) -> LayoutResult:
    """GTZAN beat tracking: label = the beat times in seconds, ``;``-joined.

    Args:
        root: a folder with the GTZAN audio and the ``beats/`` annotation folder (see ``GTZAN_BEAT_EXPECTED``).
        seed: seed of the fallback split when the fault-filtered lists are absent.
    """
    path = check_root(root, "gtzan-beat", GTZAN_BEAT_EXPECTED)
    result = LayoutResult("gtzan-beat", "gtzan_beat")
    beats_dir = first_existing(
        [path / "beats", *sorted(path.glob("gtzan_tempo_beat*/beats")), *sorted(path.glob("*/beats"))], "dir"
    )
    if beats_dir is None:
        hit = next(iter(sorted(path.rglob("*.beats"))), None)
        if hit is None:
            raise FileNotFoundError(f"gtzan-beat: no *.beats files under {str(path)!r}; expected {GTZAN_BEAT_EXPECTED}")
        beats_dir = hit.parent
    audio = gtzan_audio(path, result)
    annotations: dict[str, Path] = {}
    for p in sorted(beats_dir.glob("*.beats")):
        m = re.match(r"^gtzan_([a-z]+)_(\d{5})$", p.stem)
        if m is None:
            result.skipped.append((str(p), "annotation not named gtzan_<genre>_000NN.beats"))
            continue
        annotations[f"{m.group(1)}/{m.group(1)}.{m.group(2)}"] = p
    keys = sorted(audio)
    splits = gtzan_splits(path, keys, [k.split("/")[0] for k in keys], seed, result)
    for key in sorted(set(annotations) - set(audio)):
        result.skipped.append((str(annotations[key]), "beat annotation without audio file"))
    for key in keys:
        if key not in annotations:
            result.skipped.append((str(audio[key]), "no beat annotation"))
            continue
        if key not in splits:
            result.skipped.append((str(audio[key]), "not in the fault-filtered split lists"))
            continue
        try:
            times = _read_beats(annotations[key])
        except (ValueError, UnicodeDecodeError) as e:
            result.skipped.append((str(annotations[key]), f"unreadable beat annotation: {e}"))
            continue
        if not times:
            result.skipped.append((str(annotations[key]), "beat annotation has no beats"))
            continue
        result.rows.append(ManifestRow(str(audio[key]), ";".join(fmt_number(t) for t in times), splits[key]))
    return finish(result, path, GTZAN_BEAT_EXPECTED)

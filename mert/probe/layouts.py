"""Probing data sets as users have them on disk -> labelled manifests for ``mert probe``.

    mert probe manifest gtzan /data/gtzan --out gtzan_genre.csv
    mert probe manifest nsynth /data/nsynth --task pitch --max-per-class 500 --out nsynth_pitch.csv

One function per layout scans the folder a public download unpacks to and returns a :class:`LayoutResult`: the
manifest rows plus what was left out and why (a missing audio file, a clip without a usable label, a file
outside the official split), so nothing disappears silently. Labels follow the manifest contract read by
``mert.probe.tasks``: a class name (multi-class), ``;``-joined tags (multi-label), ``;``-joined numbers
(regression) or ``;``-joined event times in seconds (beat tracking). Audio files are not opened here: the
feature cache decodes them and reports the unreadable ones (GTZAN's ``jazz.00054.wav`` stays listed on purpose).

Splits: the data set's own split wherever one exists (GTZAN fault-filtered lists, NSynth folders, MagnaTagATune
folders or Won et al. lists, VocalSet held-out singers as in MARBLE, the EMO MediaEval 2013 evaluation set);
otherwise a seeded split, stratified by label for classification, 80/10/10 (train/valid/test).

Shape legend: none (no tensors here).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mert.audio import AUDIO_EXTENSIONS, find_audio

__all__ = [
    "LAYOUTS",
    "MARBLE_VOCALSET_TECHNIQUES",
    "VOCALSET_TEST_SINGERS",
    "LayoutResult",
    "ManifestRow",
    "emo",
    "folders",
    "giantsteps",
    "gtzan",
    "gtzan_beat",
    "manifest_cli",
    "mtt",
    "normalize_key",
    "nsynth",
    "vocalset",
    "write_manifest",
]

SPLITS = ("train", "valid", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # train/valid/test of a seeded split
VALID_FRACTION = 0.1  # of the non-test part, where the test set is fixed by the data set

GTZAN_GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")
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


# ---------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class ManifestRow:
    """One labelled clip.

    Attributes:
        path: the audio file, absolute.
        label: encoded as the task type requires (see the module docstring).
        split: ``train``, ``valid``, ``test`` or None.
        start, end: seconds within the file, or None for the whole file.
    """

    path: str
    label: str
    split: str | None = None
    start: float | None = None
    end: float | None = None


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


def write_manifest(rows: Iterable[ManifestRow], out_path: str | os.PathLike) -> Path:
    """Write rows as a CSV (``.csv``) or TSV (``.tsv``) manifest, UTF-8, atomically.

    Paths under the manifest's folder are stored relative to it (the folder can move as a whole); other paths
    stay absolute. The header is ``path,label,split`` plus ``start,end`` when any row has them.

    Returns:
        The manifest path.
    Raises:
        ValueError: the file name does not end in ``.csv`` or ``.tsv``, or there are no rows.
    """
    out = Path(out_path).expanduser().absolute()
    delimiter = {".csv": ",", ".tsv": "\t"}.get(out.suffix.lower())
    if delimiter is None:
        raise ValueError(f"manifest {str(out)!r} must end in .csv (comma) or .tsv (tab)")
    rows = list(rows)
    if not rows:
        raise ValueError(f"no rows to write to {str(out)!r}")
    with_times = any(r.start is not None or r.end is not None for r in rows)
    header = ["path", "label", "split"] + (["start", "end"] if with_times else [])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        w.writerow(header)
        for r in rows:
            p = Path(r.path)
            if p.is_relative_to(out.parent):  # else outside the manifest folder: keep it absolute
                p = p.relative_to(out.parent)
            fields = [p.as_posix(), r.label, r.split or ""]
            if with_times:
                fields += ["" if r.start is None else f"{r.start:g}", "" if r.end is None else f"{r.end:g}"]
            w.writerow(fields)
    os.replace(tmp, out)
    return out


# ---------------------------------------------------------------------------------------------- helpers
def _root(root: str | os.PathLike, layout: str, expected: str) -> Path:
    path = Path(root).expanduser().absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"{layout}: folder {str(path)!r} does not exist; expected {expected}")
    return path


def _first_existing(candidates: Iterable[Path], kind: str = "file") -> Path | None:
    for c in candidates:
        if c.is_file() if kind == "file" else c.is_dir():
            return c
    return None


def _find_file(root: Path, name: str, preferred: Sequence[str] = ("",)) -> Path | None:
    """``root/<preferred>/name`` in order, else the first match anywhere under ``root`` (sorted)."""
    hit = _first_existing(root / p / name for p in preferred)
    return hit or next(iter(sorted(root.rglob(name))), None)


def _seeded_split(
    items: Sequence[str], labels: Sequence[str] | None, fractions: Sequence[float], seed: int
) -> dict[str, str]:
    """Assign each item a split, stratified by label: per class, shuffled, then cut by ``fractions``.

    ``fractions`` are for ``(train, valid, test)`` (test may be 0). Items and classes are sorted before
    shuffling, so the result depends only on the set of items, the labels and the seed.
    """
    by_class: dict[str, list[str]] = defaultdict(list)
    for i, item in enumerate(items):
        by_class["" if labels is None else labels[i]].append(item)
    rng = random.Random(seed)
    out: dict[str, str] = {}
    for cls in sorted(by_class):
        members = sorted(by_class[cls])
        rng.shuffle(members)
        n = len(members)
        n_test = int(n * fractions[2] + 0.5)  # half up, not Python's half-to-even
        n_valid = int(n * fractions[1] + 0.5)
        if n_test + n_valid >= n:  # tiny classes: keep at least one item to train on
            n_test, n_valid = min(n_test, max(n - 1, 0)), min(n_valid, max(n - 1 - n_test, 0))
        for j, item in enumerate(members):
            out[item] = "test" if j < n_test else "valid" if j < n_test + n_valid else "train"
    return out


def _finish(result: LayoutResult, root: Path, expected: str) -> LayoutResult:
    result.rows.sort(key=lambda r: (r.path, r.start or 0.0))
    if not result.rows:
        reasons = "; ".join(f"{len(v)} x {k}" for k, v in result.skipped_by_reason().items()) or "nothing found"
        raise ValueError(f"{result.layout}: no usable clips under {str(root)!r} ({reasons}); expected {expected}")
    counts = result.split_counts()
    empty = [s for s in SPLITS if s not in counts]
    if empty:  # e.g. a test-only checkout, or classes too small for a seeded cut
        result.notes.append(f"no {'/'.join(empty)} rows")
    return result


def _fmt_number(x: float) -> str:
    return format(x, ".10g")


# ---------------------------------------------------------------------------------------------- GTZAN
GTZAN_EXPECTED = (
    "ROOT/genres/<genre>/<genre>.000NN.wav|.au (also ROOT/Data/genres_original/..., Kaggle), optionally "
    "train_filtered.txt, valid_filtered.txt, test_filtered.txt (lines like blues/blues.00012.wav) in ROOT"
)
_GTZAN_NAME = re.compile(r"^([a-z]+)\.(\d{5})$")


def _gtzan_audio(root: Path, result: LayoutResult) -> dict[str, Path]:
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


def _gtzan_splits(root: Path, keys: list[str], labels: list[str], seed: int, result: LayoutResult) -> dict[str, str]:
    """The fault-filtered split when its three files are in ROOT (or below), else a seeded stratified split."""
    names = {s: f"{s}_filtered.txt" for s in SPLITS}
    first = _find_file(root, names["train"])
    folder = first.parent if first is not None else root
    present = {s: folder / n for s, n in names.items() if (folder / n).is_file()}
    if not present:
        result.notes.append(f"no *_filtered.txt split files: seeded stratified 80/10/10 split (seed {seed})")
        return _seeded_split(keys, labels, SPLIT_FRACTIONS, seed)
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
    path = _root(root, "gtzan", GTZAN_EXPECTED)
    result = LayoutResult("gtzan", "gtzan_genre")
    audio = _gtzan_audio(path, result)
    keys = sorted(audio)
    splits = _gtzan_splits(path, keys, [k.split("/")[0] for k in keys], seed, result)
    for key in keys:
        if key not in splits:
            result.skipped.append((str(audio[key]), "not in the fault-filtered split lists"))
            continue
        result.rows.append(ManifestRow(str(audio[key]), key.split("/")[0], splits[key]))
    return _finish(result, path, GTZAN_EXPECTED)


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
    path = _root(root, "gtzan-beat", GTZAN_BEAT_EXPECTED)
    result = LayoutResult("gtzan-beat", "gtzan_beat")
    beats_dir = _first_existing(
        [path / "beats", *sorted(path.glob("gtzan_tempo_beat*/beats")), *sorted(path.glob("*/beats"))], "dir"
    )
    if beats_dir is None:
        hit = next(iter(sorted(path.rglob("*.beats"))), None)
        if hit is None:
            raise FileNotFoundError(f"gtzan-beat: no *.beats files under {str(path)!r}; expected {GTZAN_BEAT_EXPECTED}")
        beats_dir = hit.parent
    audio = _gtzan_audio(path, result)
    annotations: dict[str, Path] = {}
    for p in sorted(beats_dir.glob("*.beats")):
        m = re.match(r"^gtzan_([a-z]+)_(\d{5})$", p.stem)
        if m is None:
            result.skipped.append((str(p), "annotation not named gtzan_<genre>_000NN.beats"))
            continue
        annotations[f"{m.group(1)}/{m.group(1)}.{m.group(2)}"] = p
    keys = sorted(audio)
    splits = _gtzan_splits(path, keys, [k.split("/")[0] for k in keys], seed, result)
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
        result.rows.append(ManifestRow(str(audio[key]), ";".join(_fmt_number(t) for t in times), splits[key]))
    return _finish(result, path, GTZAN_BEAT_EXPECTED)


# ---------------------------------------------------------------------------------------------- NSynth
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
    path = _root(root, "nsynth", NSYNTH_EXPECTED)
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
    return _finish(result, path, NSYNTH_EXPECTED)


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


# ---------------------------------------------------------------------------------------------- GiantSteps
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
    path = _root(root, "giantsteps", GIANTSTEPS_EXPECTED)
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
            assignment = _seeded_split(paths, labels, fractions, seed)
            result.notes.append(f"{folder.name}: seeded split stratified by key (seed {seed})")
        result.rows.extend(ManifestRow(p, lab, assignment[p]) for p, lab in items)
    return _finish(result, path, GIANTSTEPS_EXPECTED)


# ---------------------------------------------------------------------------------------------- MagnaTagATune
MTT_EXPECTED = (
    "ROOT/annotations_final.csv (tab-separated: clip_id, 188 tags, mp3_path) and ROOT/mp3/0..f/<clip>.mp3 "
    "(or the 0..f folders directly in ROOT); optionally Won et al.'s train.npy, valid.npy, test.npy"
)


def _read_won_split(split_dir: Path) -> dict[str, str]:
    import numpy as np

    out: dict[str, str] = {}
    for split in SPLITS:
        f = _first_existing([split_dir / f"{split}.npy", split_dir / f"{split}_new.npy"])
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
    path = _root(root, "mtt", MTT_EXPECTED)
    result = LayoutResult("mtt", "mtt_tagging")
    ann = _find_file(path, "annotations_final.csv")
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

    audio_dir = _first_existing([path / "mp3", path / "MTT" / "mp3", path / "audio", path], "dir")
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
    return _finish(result, path, MTT_EXPECTED)


# ---------------------------------------------------------------------------------------------- EMO
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
    path = _root(root, "emo", EMO_EXPECTED)
    result = LayoutResult("emo", "emo_regression")
    ann = _find_file(path, "static_annotations.csv", ("annotations", ""))
    if ann is None:
        raise FileNotFoundError(f"emo: no static_annotations.csv under {str(path)!r}; expected {EMO_EXPECTED}")
    audio_dir = _first_existing([path / "clips_45seconds", *sorted(path.rglob("clips_45seconds"))], "dir")
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
        labelled[sid] = (audio[sid], f"{_fmt_number(valence)};{_fmt_number(arousal)}")
    for sid in sorted(set(audio) - annotated, key=lambda s: (len(s), s)):
        result.skipped.append((str(audio[sid]), "no static annotation"))

    ids = sorted(labelled)
    info = _find_file(path, "songs_info.csv", ("annotations", ""))
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
        assignment.update(_seeded_split(rest, None, (1 - VALID_FRACTION, VALID_FRACTION, 0.0), seed))
        result.notes.append(f"test = MediaEval 2013 evaluation set ({str(info)!r}); seeded valid split (seed {seed})")
    else:
        assignment = _seeded_split(ids, None, SPLIT_FRACTIONS, seed)
        result.notes.append(f"seeded 80/10/10 split (seed {seed})")
    result.rows.extend(ManifestRow(str(labelled[i][0]), labelled[i][1], assignment[i]) for i in ids)
    return _finish(result, path, EMO_EXPECTED)


# ---------------------------------------------------------------------------------------------- VocalSet
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
    path = _root(root, "vocalset", VOCALSET_EXPECTED)
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
            _seeded_split([p for p, _ in rest], [t for _, t in rest], (1 - VALID_FRACTION, VALID_FRACTION, 0.0), seed)
        )
        singers = ", ".join(VOCALSET_TEST_SINGERS)
        result.notes.append(f"test singers {singers} (MARBLE); seeded valid split of the others (seed {seed})")
        result.rows.extend(ManifestRow(p, t, assignment[p]) for p, _, t in items)
    else:
        assignment = _seeded_split([p for p, _, _ in items], [s for _, s, _ in items], SPLIT_FRACTIONS, seed)
        result.notes.append(f"seeded 80/10/10 split by file, stratified by singer (seed {seed})")
        result.rows.extend(ManifestRow(p, s, assignment[p]) for p, s, _ in items)
    return _finish(result, path, VOCALSET_EXPECTED)


# ---------------------------------------------------------------------------------------------- CLI
# layout -> (function, {short task name: probe task name}, CLI options it accepts)
_FOLDERS_EXPECTED = (
    "ROOT/<label>/.../*.wav|.flac|... (one folder per class), or ROOT/{train,valid,test}/<label>/... to fix the split"
)


def folders(root: str | os.PathLike, *, seed: int = 0) -> LayoutResult:
    """Any class-per-folder collection (e.g. recordings sorted by instrument): the label is the folder name.

    ``ROOT/<label>/**/<audio>`` gets a seeded split stratified by label (80/10/10); with top-level folders
    ``train``, ``valid`` (or ``val``/``validation``) and ``test``, ``ROOT/<split>/<label>/**/<audio>`` keeps that
    split. Files directly in ROOT have no label and are skipped.
    """
    path = _root(root, "folders", _FOLDERS_EXPECTED)
    result = LayoutResult("folders", "multiclass")
    split_dirs = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}
    top = [d for d in sorted(path.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    fixed = bool(top) and all(d.name.lower() in split_dirs for d in top)
    items: list[tuple[Path, str, str | None]] = []
    for audio in find_audio(path):
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
        splits = _seeded_split([str(a) for a, _, _ in items], [lab for _, lab, _ in items], (0.8, 0.1, 0.1), seed)
    result.rows = [ManifestRow(str(a), lab, splits[str(a)]) for a, lab, _ in items]
    return _finish(result, path, _FOLDERS_EXPECTED)


LAYOUTS: dict[str, tuple[Callable[..., LayoutResult], dict[str, str], tuple[str, ...]]] = {
    "folders": (folders, {"multiclass": "multiclass"}, ("seed",)),
    "gtzan": (gtzan, {"genre": "gtzan_genre"}, ("seed",)),
    "gtzan-beat": (gtzan_beat, {"beat": "gtzan_beat"}, ("seed",)),
    "nsynth": (nsynth, {"instrument": "nsynth_instrument", "pitch": "nsynth_pitch"}, ("seed", "max_per_class")),
    "giantsteps": (giantsteps, {"key": "giantsteps_key"}, ("seed", "split")),
    "mtt": (mtt, {"tagging": "mtt_tagging"}, ("split_dir",)),
    "emo": (emo, {"regression": "emo_regression"}, ("seed",)),
    "vocalset": (
        vocalset,
        {"technique": "vocalset_technique", "singer": "vocalset_singer"},
        ("seed", "techniques"),
    ),
}


def manifest_cli(argv: list[str] | None = None) -> int:
    """``mert probe manifest LAYOUT ROOT --out FILE [--task T] [--seed S] ...``.

    Returns:
        0 when a manifest was written, 1 when the folder does not match the layout or yields no clip.
    """
    ap = argparse.ArgumentParser(
        prog="mert probe manifest",
        description="Turn a probing data set, as downloaded, into a labelled manifest (path,label,split).",
    )
    ap.add_argument("layout", choices=sorted(LAYOUTS), help="the data set's on-disk layout")
    ap.add_argument("root", help="the data set's folder")
    ap.add_argument("--out", required=True, help="manifest to write (.csv or .tsv)")
    ap.add_argument("--task", help="nsynth: instrument|pitch; vocalset: technique|singer (default: the first)")
    ap.add_argument("--seed", type=int, default=0, help="seed of seeded splits and subsampling (default 0)")
    ap.add_argument("--max-per-class", type=int, help="nsynth: at most this many train clips per class")
    ap.add_argument("--split", choices=["train", "test"], help="giantsteps: which split this checkout is")
    ap.add_argument("--split-dir", help="mtt: folder with Won et al.'s train.npy/valid.npy/test.npy")
    ap.add_argument("--techniques", help="vocalset technique: comma-separated folders to keep, or 'marble'")
    ap.add_argument("--report", help="also write the skipped items (item, reason) to this TSV file")
    args = ap.parse_args(argv)
    prog = "mert probe manifest"

    fn, tasks, accepted = LAYOUTS[args.layout]
    given = {
        "max_per_class": args.max_per_class,
        "split": args.split,
        "split_dir": args.split_dir,
        "techniques": args.techniques,
    }
    for name, value in given.items():
        if value is not None and name not in accepted:
            ap.error(f"--{name.replace('_', '-')} does not apply to the {args.layout} layout")
    kwargs = {k: v for k, v in given.items() if v is not None}
    if "seed" in accepted:
        kwargs["seed"] = args.seed
    if "techniques" in kwargs:
        t = kwargs["techniques"]
        kwargs["techniques"] = list(MARBLE_VOCALSET_TECHNIQUES) if t == "marble" else [x for x in t.split(",") if x]
    task = next(iter(tasks))
    if args.task is not None:
        short = {v: k for k, v in tasks.items()}.get(args.task, args.task)
        if short not in tasks:
            ap.error(f"--task for {args.layout} must be one of {sorted(tasks) + sorted(tasks.values())}")
        task = short
    if len(tasks) > 1:
        kwargs["task"] = task
        if "techniques" in kwargs and task != "technique":
            ap.error("--techniques applies to the vocalset technique task only")

    try:
        result = fn(args.root, **kwargs)
        out = write_manifest(result.rows, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    if args.report:  # files first, so a closed stdout (| head) cannot lose them
        rep = Path(args.report)
        rep.parent.mkdir(parents=True, exist_ok=True)
        lines = ["item\treason"] + [f"{i}\t{' '.join(r.split())}" for i, r in result.skipped]
        rep.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(result.report())
    print(f"wrote {out}\nnext: mert probe task={result.task} data.manifest={out}")
    return 0

"""Labelled probing data sets: a CSV/TSV manifest, a task type, its labels and its splits.

Shape legend: ``N`` examples, ``C`` classes or tags, ``R`` regression outputs, ``t`` label frames.

A manifest is a CSV (``.csv``) or TSV (``.tsv``, or any other extension) with a header row and the columns
``path,label[,split][,start,end]``. Relative paths are relative to ``root`` (default: the manifest's folder).
Label encodings per task type:

* ``multiclass``: the class name;
* ``multilabel``: tags joined by ``;``;
* ``regression``: a number, or several joined by ``;`` (e.g. ``valence;arousal``);
* ``beat`` and ``onset``: event times in seconds (relative to ``start``) joined by ``;``;
* ``frame_multiclass``: segments ``start:end:label`` (seconds) joined by ``;``; frames outside every segment
  take the class ``none``.

``auto`` infers the type from the labels (all numeric: regression; any ``;``: multilabel; else multiclass).
Splits come from the ``split`` column (``train``/``valid``/``test``; ``val``/``validation``/``dev`` accepted)
or, when it is absent or empty, from a seeded split stratified by class.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["TASK_TYPES", "SPLITS", "Example", "ProbeDataset", "TaskSpec", "load_manifest", "infer_task_type"]

TASK_TYPES = ("multiclass", "multilabel", "regression", "beat", "onset", "frame_multiclass")
SPLITS = ("train", "valid", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "val": "valid", "validation": "valid"}
_SPLIT_ALIASES |= {"dev": "valid", "test": "test", "eval": "test", "evaluation": "test"}
_FRAME_TYPES = ("beat", "onset", "frame_multiclass")
EVENT_TYPES = ("beat", "onset")  # labels are event times; scored by F-measure within a tolerance window
NONE_CLASS = "none"


@dataclass(frozen=True)
class TaskSpec:
    """What a probe predicts and how it is scored.

    Attributes:
        name: task name (file and table names).
        type: one of :data:`TASK_TYPES`, or ``auto`` to infer it from the labels.
        metrics: metric names to report; the first is the one early stopping and layer choice use.
            Empty: the type's defaults (accuracy/macro_f1, roc_auc/average_precision, r2, beat_f1, onset_f1,
            frame_accuracy/frame_macro_f1).
        frame_rate: label frames per second for frame-level types (features are pooled to this rate).
        beat_tolerance_seconds: hit window of the event F-measure (mir_eval's defaults: 0.07 s for beats,
            0.05 s for onsets).
        output_names: names of regression outputs (``valence``, ``arousal``), for metrics like ``r2_valence``.
    """

    name: str = "task"
    type: str = "auto"
    metrics: tuple[str, ...] = ()
    frame_rate: float = 25.0
    beat_tolerance_seconds: float = 0.07
    output_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.type != "auto" and self.type not in TASK_TYPES:
            raise ValueError(f"unknown task type {self.type!r}; expected 'auto' or one of {', '.join(TASK_TYPES)}")
        if self.frame_rate <= 0:
            raise ValueError(f"frame_rate must be positive, got {self.frame_rate}")
        object.__setattr__(self, "metrics", tuple(self.metrics))
        object.__setattr__(self, "output_names", tuple(self.output_names))

    @property
    def frame_level(self) -> bool:
        return self.type in _FRAME_TYPES

    def resolved_metrics(self) -> tuple[str, ...]:
        if self.metrics:
            return self.metrics
        return {
            "multiclass": ("accuracy", "macro_f1"),
            "multilabel": ("roc_auc", "average_precision"),
            "regression": ("r2",),
            "beat": ("beat_f1",),
            "onset": ("onset_f1",),
            "frame_multiclass": ("frame_accuracy", "frame_macro_f1"),
        }[self.type]


@dataclass(frozen=True)
class Example:
    """One manifest row: an audio file (or a segment of it), its raw label and its split."""

    path: Path
    label: str
    split: str | None
    start: float | None = None
    end: float | None = None
    row: int = 0

    @property
    def key(self) -> str:
        """Identifies the audio this example reads (path, segment, file size and mtime): the feature cache key."""
        try:
            st = self.path.stat()
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        text = f"{self.path.resolve()}|{self.start}|{self.end}|{stamp}"
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def _float_or_none(value: str | None, what: str, where: str) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{where}: {what} must be a number of seconds, got {value!r}") from None


def load_manifest(path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[Example]:
    """Read a probing manifest (see the module docstring for the format).

    Raises:
        FileNotFoundError: the manifest does not exist.
        ValueError: no header, a missing ``path``/``label`` column, an empty path, a bad split name or
            segment bound; the message names the file and the row.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"probing manifest {str(path)!r} does not exist")
    base = Path(root).expanduser() if root else path.parent
    delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        with open(path, encoding="utf-8-sig") as f:
            f.read()
    except UnicodeDecodeError as e:
        raise ValueError(
            f"manifest {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8"
        ) from None
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = [c.strip().lower() for c in (reader.fieldnames or [])]
        missing = [c for c in ("path", "label") if c not in columns]
        if missing:
            raise ValueError(
                f"manifest {str(path)!r} has columns {columns or 'none'}; it needs a header row with 'path' and "
                f"'label' (optional 'split', 'start', 'end'), separated by {'commas' if delimiter == ',' else 'tabs'}"
            )
        out = []
        for i, raw in enumerate(reader, start=2):  # row 1 is the header
            rec = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
            where = f"{path.name} row {i}"
            if not rec.get("path"):
                if not any(rec.values()):
                    continue  # blank line
                raise ValueError(f"{where}: empty 'path'")
            split = rec.get("split") or None
            if split is not None:
                if split.lower() not in _SPLIT_ALIASES:
                    raise ValueError(f"{where}: unknown split {split!r}; use train, valid or test")
                split = _SPLIT_ALIASES[split.lower()]
            start = _float_or_none(rec.get("start"), "start", where)
            end = _float_or_none(rec.get("end"), "end", where)
            if start is not None and start < 0 or (end is not None and end <= (start or 0.0)):
                raise ValueError(f"{where}: segment start={start} end={end} is empty or negative")
            audio = Path(rec["path"]).expanduser()
            out.append(
                Example(audio if audio.is_absolute() else base / audio, rec.get("label", ""), split, start, end, i)
            )
    if not out:
        raise ValueError(f"manifest {str(path)!r} has no rows")
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def infer_task_type(labels: Sequence[str]) -> str:
    """``regression`` when every label is numbers, ``multilabel`` when any has ``;``, else ``multiclass``."""
    if all(lab and all(_is_number(p) for p in lab.split(";")) for lab in labels):
        return "regression"
    if any(";" in lab for lab in labels):
        return "multilabel"
    return "multiclass"


@dataclass
class ProbeDataset:
    """A manifest with parsed labels and a split per example.

    Attributes:
        examples: the manifest rows, in file order.
        task: the task with ``type`` resolved (never ``auto``).
        classes: class or tag names (multiclass, multilabel, frame_multiclass); empty otherwise.
        targets: ``(N,)`` int64 class indices, ``(N, C)`` float multi-hot or ``(N, R)`` float regression values;
            None for frame-level tasks (their targets depend on each clip's length: :meth:`frame_targets`).
        splits: ``(N,)`` array of ``train``/``valid``/``test``.
    """

    examples: list[Example]
    task: TaskSpec
    classes: list[str] = field(default_factory=list)
    targets: np.ndarray | None = None
    splits: np.ndarray = field(default_factory=lambda: np.array([], dtype=object))
    events: list[np.ndarray] = field(default_factory=list)
    segments: list[list[tuple[float, float, int]]] = field(default_factory=list)

    @classmethod
    def from_manifest(
        cls,
        manifest: str | os.PathLike,
        task: TaskSpec,
        *,
        root: str | os.PathLike | None = None,
        split_seed: int = 0,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    ) -> ProbeDataset:
        """Read ``manifest`` and parse its labels for ``task`` (inferring the type when it is ``auto``)."""
        examples = load_manifest(manifest, root)
        labels = [e.label for e in examples]
        if task.type == "auto":
            task = TaskSpec(**{**task.__dict__, "type": infer_task_type(labels)})
        ds = cls(examples, task)
        ds._parse_labels(Path(manifest).name)
        ds.splits = ds._make_splits(split_seed, split_fractions)
        return ds

    def _parse_labels(self, name: str) -> None:
        kind = self.task.type
        where = [f"{name} row {e.row}" for e in self.examples]
        if kind == "multiclass":
            self.classes = sorted({lab for lab in (e.label for e in self.examples)})
            if "" in self.classes:
                raise ValueError(f"{where[[e.label for e in self.examples].index('')]}: empty label")
            index = {c: i for i, c in enumerate(self.classes)}
            self.targets = np.array([index[e.label] for e in self.examples], dtype=np.int64)
        elif kind == "multilabel":
            tag_lists = [[t.strip() for t in e.label.split(";") if t.strip()] for e in self.examples]
            self.classes = sorted({t for tags in tag_lists for t in tags})
            index = {c: i for i, c in enumerate(self.classes)}
            self.targets = np.zeros((len(self.examples), len(self.classes)), dtype=np.float32)
            for i, tags in enumerate(tag_lists):
                self.targets[i, [index[t] for t in tags]] = 1.0
        elif kind == "regression":
            rows = []
            for w, e in zip(where, self.examples):
                parts = e.label.split(";")
                if not all(_is_number(p) for p in parts):
                    raise ValueError(f"{w}: regression label {e.label!r} is not a number (or numbers joined by ';')")
                rows.append([float(p) for p in parts])
            if len({len(r) for r in rows}) != 1:
                raise ValueError(
                    f"{name}: regression labels have different numbers of values {sorted({len(r) for r in rows})}"
                )
            self.targets = np.array(rows, dtype=np.float32)
        elif kind in EVENT_TYPES:
            for w, e in zip(where, self.examples):
                parts = [p for p in e.label.split(";") if p.strip()]
                if not all(_is_number(p) for p in parts):
                    raise ValueError(f"{w}: {kind} label must be times in seconds joined by ';', got {e.label[:60]!r}")
                self.events.append(np.sort(np.array([float(p) for p in parts], dtype=np.float64)))
        else:  # frame_multiclass
            raw = []
            for w, e in zip(where, self.examples):
                segs = []
                for part in filter(None, (p.strip() for p in e.label.split(";"))):
                    bits = part.split(":", 2)
                    if len(bits) != 3 or not _is_number(bits[0]) or not _is_number(bits[1]):
                        raise ValueError(f"{w}: frame label segments are 'start:end:label' joined by ';', got {part!r}")
                    segs.append((float(bits[0]), float(bits[1]), bits[2]))
                raw.append(segs)
            self.classes = [NONE_CLASS, *sorted({s[2] for segs in raw for s in segs} - {NONE_CLASS})]
            index = {c: i for i, c in enumerate(self.classes)}
            self.segments = [[(a, b, index[c]) for a, b, c in segs] for segs in raw]

    def _make_splits(self, seed: int, fractions: Sequence[float]) -> np.ndarray:
        given = [e.split for e in self.examples]
        if all(s is not None for s in given):
            splits = np.array(given, dtype=object)
        elif any(s is not None for s in given):
            n = sum(s is None for s in given)
            raise ValueError(f"{n} of {len(given)} manifest rows have no split: give every row one, or none")
        else:
            # Segments of one recording stay together, or a split would test on the audio it trained on.
            paths = [str(e.path) for e in self.examples]
            first = {}
            for i, p in enumerate(paths):
                first.setdefault(p, i)
            files = list(first)
            per_file = seeded_split(self.strata()[[first[p] for p in files]], seed, fractions)
            of_file = dict(zip(files, per_file))
            splits = np.array([of_file[p] for p in paths], dtype=object)
        where: dict[str, set] = {}
        for e, sp in zip(self.examples, splits):
            where.setdefault(str(e.path), set()).add(sp)
        shared = [p for p, sps in where.items() if len(sps) > 1]
        if shared:
            log.warning(
                "%d files have segments in more than one split (e.g. %s): the test split then scores audio the "
                "probe trained on",
                len(shared),
                shared[0],
            )
        for s in SPLITS:
            if not (splits == s).any():
                raise ValueError(
                    f"the {s} split is empty: the probe needs train, valid and test examples "
                    f"(split column or split_fractions; {len(splits)} examples in all)"
                )
        self._warn_thin_classes(splits, seeded=not all(s is not None for s in given))
        return splits

    def _warn_thin_classes(self, splits: np.ndarray, seeded: bool) -> None:
        """Say what happens to classes the probe cannot learn or score: one without a training example is never
        predicted (its valid/test examples count as errors), and a class too small for the seeded split to reach
        every split is trained on but scored in fewer splits (or not at all)."""
        if self.task.type != "multiclass" or not self.classes:
            return
        targets = np.asarray(self.targets)
        for c, name in enumerate(self.classes):
            where = {s: int(((targets == c) & (splits == s)).sum()) for s in SPLITS}
            if where["train"] == 0:
                log.warning(
                    "class %r has no training example (valid %d, test %d): the probe can never predict it, so "
                    "those examples stay in their splits and count as errors; add training examples or drop them",
                    name,
                    where["valid"],
                    where["test"],
                )
            elif seeded and (where["valid"] == 0 or where["test"] == 0):
                log.warning(
                    "class %r has only %d example(s): the seeded split put them in %s, so %s never score it",
                    name,
                    sum(where.values()),
                    " and ".join(s for s in SPLITS if where[s]),
                    " and ".join(s for s in SPLITS if not where[s]),
                )

    def strata(self) -> np.ndarray:
        """``(N,)`` labels to stratify a split by: the class, the first tag, or nothing."""
        if self.task.type == "multiclass":
            return self.targets
        if self.task.type == "multilabel":
            return self.targets.argmax(1) if self.targets.size else np.zeros(len(self.examples), dtype=np.int64)
        return np.zeros(len(self.examples), dtype=np.int64)

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split)

    def frame_targets(self, i: int, num_frames: int) -> np.ndarray:
        """Frame labels of example ``i`` at ``task.frame_rate``: ``(t,)`` 0/1 beats or class indices."""
        rate = self.task.frame_rate
        if self.task.type in EVENT_TYPES:
            out = np.zeros(num_frames, dtype=np.int64)
            idx = np.round(self.events[i] * rate).astype(np.int64)
            out[idx[(idx >= 0) & (idx < num_frames)]] = 1
            return out
        out = np.zeros(num_frames, dtype=np.int64)  # "none"
        centres = (np.arange(num_frames) + 0.5) / rate
        for a, b, c in self.segments[i]:
            out[(centres >= a) & (centres < b)] = c
        return out

    def fingerprint(self) -> str:
        """Identifies the audio the data set reads (for the feature cache; labels and splits do not matter)."""
        h = hashlib.sha256()
        for e in self.examples:
            h.update(e.key.encode())
        return h.hexdigest()[:16]

    def summary(self) -> dict:
        counts = Counter(self.splits.tolist())
        return {
            "task": self.task.name,
            "type": self.task.type,
            "examples": len(self.examples),
            "splits": {s: counts.get(s, 0) for s in SPLITS},
            "classes": len(self.classes) if self.classes else None,
        }


def seeded_split(strata: np.ndarray, seed: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> np.ndarray:
    """Train/valid/test per example, stratified: each stratum is shuffled and cut by ``fractions``.

    A stratum too small to reach every split keeps at least one example in train first, then valid.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    rng = np.random.default_rng(seed)
    out = np.empty(len(strata), dtype=object)
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        rng.shuffle(idx)
        n = len(idx)
        n_test = int(round(fr[2] * n))
        n_valid = int(round(fr[1] * n))
        if n - n_test - n_valid < 1:  # tiny strata: train first
            n_test, n_valid = max(0, min(n_test, n - 2)), max(0, min(n_valid, n - 1))
        out[idx[: n - n_valid - n_test]] = "train"
        out[idx[n - n_valid - n_test : n - n_test]] = "valid"
        out[idx[n - n_test :]] = "test"
    return out

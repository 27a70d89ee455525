"""Labelled probing data sets: a CSV/TSV manifest, a task type, its labels and its splits.

Shape legend: ``N`` examples, ``C`` classes or tags, ``R`` regression outputs, ``t`` label frames.

A manifest (read and written by :mod:`mert.probe.manifest`) is a CSV (``.csv``) or TSV (``.tsv``, or any other
extension) with a header row and the columns ``path,label[,split][,start,end]``. Relative paths are relative to
``root`` (default: the manifest's folder).
Label encodings per task type:

* ``multiclass``: the class name;
* ``multilabel``: tags joined by ``;``;
* ``regression``: a number, or several joined by ``;`` (e.g. ``valence;arousal``);
* ``beat`` and ``onset``: event times in seconds (relative to ``start``) joined by ``;``;
* ``frame_multiclass``: segments ``start:end:label`` (seconds) joined by ``;``; frames outside every segment
  take the class ``none``.

``auto`` infers the type from the labels: whole numbers (``0``, ``1``, ``11``: class ids, the usual encoding of
keys and genres) are classes (tags when joined by ``;``); other numbers (``0.25``, ``1e-3``) are regression; any
``;``: multilabel; else multiclass. Integer targets meant as quantities (tempo, year) need the regression type.
A manifest with fewer than two classes (or a constant regression target), or listing one file and segment twice
with different labels, is refused with the counts.
Splits come from the ``split`` column (``train``/``valid``/``test``; ``val``/``validation``/``dev`` accepted)
or, when it is absent or empty, from :func:`mert.data.splits.seeded_split`, stratified by class.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mert.data.splits import SPLITS, seeded_split
from mert.probe.manifest import ManifestRow, read_manifest

log = logging.getLogger(__name__)

__all__ = ["TASK_TYPES", "SPLITS", "ProbeDataset", "TaskSpec", "infer_task_type"]

TASK_TYPES = ("multiclass", "multilabel", "regression", "beat", "onset", "frame_multiclass")
_FRAME_TYPES = ("beat", "onset", "frame_multiclass")
EVENT_TYPES = ("beat", "onset")  # labels are event times; scored by F-measure within a tolerance window
NONE_CLASS = "none"
_INTEGER = re.compile(r"[+-]?\d+")


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


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _is_integer(s: str) -> bool:
    return bool(_INTEGER.fullmatch(s.strip()))


def infer_task_type(labels: Sequence[str]) -> str:
    """The task type ``auto`` stands for: ``regression`` when every label is numbers and some are not whole numbers;
    ``multilabel`` when any has ``;``; else ``multiclass`` (integer labels are class ids, as keys 0-11 are)."""
    numeric = all(lab and all(_is_number(p) for p in lab.split(";")) for lab in labels)
    if numeric and not all(_is_integer(p) for lab in labels for p in lab.split(";")):
        return "regression"
    if numeric:
        distinct = len({lab for lab in labels})
        if distinct > 20:  # many distinct whole numbers may well be a quantity (tempo, year)
            log.warning(
                "the labels are %d distinct whole numbers, read as class ids; if they are quantities (tempo, year), "
                "set the task type to regression",
                distinct,
            )
    if any(";" in lab for lab in labels):
        return "multilabel"
    return "multiclass"


def _refuse_conflicting_labels(examples: Sequence[ManifestRow], name: str) -> None:
    """One file and segment listed with two different labels would train on contradictions: refuse it.

    Raises:
        ValueError: with the number of such clips and the first one (its rows and labels).
    """
    seen: dict[tuple[str, float | None, float | None], ManifestRow] = {}
    conflicts: list[tuple[ManifestRow, ManifestRow]] = []
    for e in examples:
        key = (os.path.normpath(e.path), e.start, e.end)
        first = seen.setdefault(key, e)
        if first is not e and first.label != e.label:
            conflicts.append((first, e))
    if conflicts:
        a, b = conflicts[0]
        clips = len({(os.path.normpath(x.path), x.start, x.end) for x, _ in conflicts})
        raise ValueError(
            f"{name}: {clips} clip(s) are listed more than once with different labels ({len(conflicts)} conflicting "
            f"rows), e.g. {str(a.path)!r} is {a.label!r} in row {a.row} and {b.label!r} in row {b.row}; keep one "
            "label per clip"
        )


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

    examples: list[ManifestRow]
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
        examples = read_manifest(manifest, root)
        _refuse_conflicting_labels(examples, Path(manifest).name)
        labels = [e.label for e in examples]
        if task.type == "auto":
            task = TaskSpec(**{**task.__dict__, "type": infer_task_type(labels)})
        ds = cls(examples, task)
        ds._parse_labels(Path(manifest).name)
        ds._refuse_unlearnable(Path(manifest).name)
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

    def _refuse_unlearnable(self, name: str) -> None:
        """A target with one value teaches nothing and scores 100 % (or r2 = -inf): refuse it, with the counts."""
        kind, n = self.task.type, len(self.examples)
        if kind == "multiclass" and len(self.classes) < 2:
            raise ValueError(
                f"{name}: every one of the {n} examples has the label {self.classes[0]!r}; a classifier needs at "
                "least two classes (add examples of other classes)"
            )
        if kind == "multilabel" and len({tuple(row) for row in np.asarray(self.targets).tolist()}) < 2:
            raise ValueError(f"{name}: all {n} examples carry the same tags {self.classes}; nothing is left to predict")
        if kind == "regression" and n and bool((np.asarray(self.targets) == self.targets[0]).all()):
            raise ValueError(f"{name}: all {n} regression targets equal {self.targets[0].tolist()}; nothing to predict")
        if kind == "frame_multiclass" and len(self.classes) < 2:
            raise ValueError(f"{name}: none of the {n} examples has a labelled segment; nothing to predict")

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

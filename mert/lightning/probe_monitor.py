"""`ProbeMonitor`: linear probes on a small labelled held-out set while pretraining runs.

Shape legend: ``N`` clips, ``n`` hidden-state layers, ``d`` width, ``C`` classes, ``l`` samples.

A pretraining loss that falls says nothing about whether the representation is any good: the demo's encoder
once probed worse than a randomly initialised one of the same shape, and nobody saw it until the run was over.
This callback puts the answer on the training curves. Every ``every_n_steps`` optimiser steps (and when
training ends) it mean-pools every hidden layer of a fixed held-out set, fits a closed-form ridge probe per
task and layer (deterministic, milliseconds), and logs test accuracies next to two reference lines scored
once on the same clips: a randomly initialised encoder of the same config, and hand-crafted features.

It runs on global rank 0 only, with no collective calls: the other ranks just wait at their next all-reduce.
Outputs in ``RUN_DIR/monitor/``: ``scores.csv`` (every score), ``curves.png`` and ``held_out.json`` (what the
reference rows were computed on, so a resumed run reads them back instead of recomputing).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor, nn

from mert.fileio import atomic_path, open_atomic, write_json_atomic
from mert.probe.features import pooled_features

log = logging.getLogger(__name__)

__all__ = [
    "ProbeMonitor",
    "HeldOutSet",
    "RidgeResult",
    "TaskScores",
    "ridge_probe",
    "pooled_features",
    "score_features",
    "plot_curves",
    "SYNTHETIC_SEED_BASE",
]

# Training corpora render clip i of corpus seed s from seed s * 1_000_003 + i, and the demo probes from
# 10_000_000 + ...: clips from 20_500_000 on cannot be training clips for any corpus under 500k clips.
SYNTHETIC_SEED_BASE = 20_500_000
# Probe-task clips: mert.data.probe_tasks seeds from this base (the demo's final test clips start at 10^12).
PROBE_TASK_SEED_BASE = SYNTHETIC_SEED_BASE * 10**5
HANDCRAFTED = ("mfcc", "chroma", "cqt", "mfcc+chroma+cqt")
RIDGE_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1e3, 1e4)  # on standardised features: X^T X has diagonal N_train
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
PRETRAINED, RANDOM, CHANCE = "pretrained", "random", "chance"
COLUMNS = ("step", "encoder", "task", "layer", "val", "test")


# ---------------------------------------------------------------------------------------------- held-out set
def _natural(value: str) -> tuple:
    """Sort numbers numerically ("2" < "10") and everything else as text."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def _encode_labels(raw: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """``(N,)`` class indices (-1 where the label is empty) and the sorted class names."""
    classes = sorted({r for r in raw if r != ""}, key=_natural)
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index.get(r, -1) for r in raw], dtype=np.int64), classes


@dataclass
class HeldOutSet:
    """Labelled clips held in memory for the whole run.

    Attributes:
        clips: ``N`` mono waveforms ``(l,)`` float32 at ``sample_rate``.
        labels: task -> ``(N,)`` int64 class indices; -1 marks a clip without a label for that task.
        classes: task -> class names.
        splits: ``(N,)`` ``train``/``valid``/``test``.
        sample_rate: Hz.
        source: ``synthetic``, ``probe tasks`` or the manifest path.
        extra_splits: further seeded splits of the same clips; scores are averaged over ``[splits, *extra_splits]``
            (a few dozen test clips make one split's accuracy jump by several points).
    """

    clips: list[Tensor]
    labels: dict[str, np.ndarray]
    classes: dict[str, list[str]]
    splits: np.ndarray
    sample_rate: int
    source: str
    extra_splits: list[np.ndarray] = field(default_factory=list)

    @property
    def split_sets(self) -> list[np.ndarray]:
        return [self.splits, *self.extra_splits]

    @classmethod
    def synthetic(
        cls, tasks: Sequence[str], *, clips: int, seconds: float, sample_rate: int, seed: int = 0, repeats: int = 1
    ) -> HeldOutSet:
        """Render ``clips`` clips of ``seconds`` with :func:`mert.data.synthetic.render_clip`; ``tasks`` are
        fields of its ``ClipLabels`` (whatever ``to_dict()`` returns), each treated as categorical. A field
        left at its dataclass default (the generator's "does not apply": -1, 0.0, "") is no label for that
        clip. Names the generator does not have are skipped with a warning (it gains and renames labels)."""
        from dataclasses import MISSING, fields

        from mert.data.synthetic import ClipLabels, render_clip

        names = sorted(f.name for f in fields(ClipLabels))
        not_applicable = {f.name: f.default for f in fields(ClipLabels) if f.default is not MISSING}
        known = [t for t in tasks if t in names]
        unknown = [t for t in tasks if t not in names]
        if not known:
            raise ValueError(f"probe monitor: unknown synthetic label(s) {unknown}; the generator has {names}")
        if unknown:
            log.warning("probe monitor: skipping unknown synthetic label(s) %s; the generator has %s", unknown, names)
        try:  # a generator with several clip kinds (music, notes, chords): the training corpus's mixture
            from mert.data.synthetic import clip_kind
        except ImportError:
            clip_kind = None
        waves, raw = [], []
        for i in range(clips):
            extra = {} if clip_kind is None else {"kind": clip_kind(i)}
            wav, lab = render_clip(seconds, sample_rate, seed=SYNTHETIC_SEED_BASE + i, **extra)
            waves.append(torch.from_numpy(np.asarray(wav, dtype=np.float32)))
            values = lab.to_dict()
            raw.append(
                {t: "" if t in not_applicable and values[t] == not_applicable[t] else str(values[t]) for t in known}
            )
        labels = {t: [r[t] for r in raw] for t in known}
        return cls._finish(waves, labels, None, sample_rate, "synthetic", seed, repeats=repeats)

    @classmethod
    def probe_tasks(
        cls,
        tasks: Sequence[str],
        *,
        clips: int,
        seconds: float,
        sample_rate: int,
        seed: int = 0,
        note_seconds: float | None = None,
        repeats: int = 1,
    ) -> HeldOutSet:
        """``clips`` class-balanced clips per task of :mod:`mert.data.probe_tasks` (``mert demo``'s tasks: key,
        instrument, tempo, pitch, chord), each labelled for its own task only, split 60/20/20 within each class.

        Music clips are ``seconds`` long, notes and chords ``note_seconds`` (default: ``seconds``). Their seeds
        are neither corpus seeds nor the demo's final test clips (``SYNTHETIC_SEED_BASE`` x 10^5).
        """
        from mert.data.probe_tasks import TASKS, probe_jobs
        from mert.data.synthetic import render_clip

        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"probe monitor: unknown probe task(s) {unknown}; the probe tasks are {list(TASKS)}")
        waves, raw, strata = [], {t: [] for t in tasks}, []
        for name in tasks:
            task, index = TASKS[name], list(TASKS).index(name)
            length = seconds if task.kind == "music" else (note_seconds or seconds)
            jobs = probe_jobs(task, clips, length, sample_rate, seed, index, seed_base=PROBE_TASK_SEED_BASE)
            for job in jobs:
                wav, lab = render_clip(**job)
                waves.append(torch.from_numpy(np.asarray(wav, dtype=np.float32)))
                value = str(getattr(lab, task.field))
                for t in tasks:
                    raw[t].append(value if t == name else "")
                strata.append(f"{name}:{value}")
        return cls._finish(waves, raw, None, sample_rate, "probe tasks", seed, repeats=repeats, strata=np.array(strata))

    @classmethod
    def from_manifest(
        cls,
        manifest: str | os.PathLike,
        tasks: Sequence[str],
        *,
        clips: int,
        seconds: float,
        sample_rate: int,
        seed: int = 0,
        root: str | os.PathLike | None = None,
        repeats: int = 1,
    ) -> HeldOutSet:
        """Read a ``mert probe`` manifest (``path,label[,split][,start,end]``); ``tasks`` name its label columns
        (``label`` and any others). At most ``clips`` rows (a seeded subset) and ``seconds`` from each clip's
        middle are read; unreadable files are skipped with a warning."""
        from mert.probe.cache import read_example
        from mert.probe.manifest import read_manifest

        path = Path(manifest).expanduser()
        examples = read_manifest(path, root)
        columns = _manifest_columns(path, [t for t in tasks if t.lower() != "label"])
        if len(examples) > clips:
            keep = np.sort(np.random.default_rng(seed).permutation(len(examples))[:clips])
            examples = [examples[i] for i in keep]
        waves, raw, given, skipped = [], {t: [] for t in tasks}, [], []
        for e in examples:
            try:
                wav = read_example(_middle(e, seconds), sample_rate)
            except (OSError, ValueError, RuntimeError) as err:
                skipped.append(f"{e.path}: {err}")
                continue
            if wav.shape[0] < 400:  # shorter than one encoder frame
                skipped.append(f"{e.path}: shorter than 400 samples")
                continue
            waves.append(wav[: int(round(seconds * sample_rate))])
            for t in tasks:
                raw[t].append(e.label if t.lower() == "label" else columns[e.row][t.lower()])
            given.append(e.split)
        if skipped:
            log.warning("probe monitor: skipped %d unreadable clips of %s, e.g. %s", len(skipped), path, skipped[0])
        if not waves:
            raise ValueError(f"probe monitor: no readable clip in {str(path)!r}")
        if any(s is not None for s in given) and not all(s is not None for s in given):
            raise ValueError(f"probe monitor: some rows of {str(path)!r} have a split and some do not")
        splits = np.array(given, dtype=object) if given[0] is not None else None
        return cls._finish(waves, raw, splits, sample_rate, str(path), seed, repeats=repeats)

    @classmethod
    def _finish(
        cls,
        waves: list[Tensor],
        raw: dict[str, list[str]],
        splits: np.ndarray | None,
        sample_rate: int,
        source: str,
        seed: int,
        *,
        repeats: int = 1,
        strata: np.ndarray | None = None,
    ) -> HeldOutSet:
        from mert.data.splits import seeded_split

        labels, classes = {}, {}
        for t, values in raw.items():
            labels[t], classes[t] = _encode_labels(values)
            if len(classes[t]) < 2:
                raise ValueError(f"probe monitor: task {t!r} has {len(classes[t])} class(es) in {source}; need 2+")
        extra = []
        if splits is None:  # stratified (by default by the first task), so every split sees its classes
            strata = next(iter(labels.values())) if strata is None else strata
            splits = seeded_split(strata, seed, SPLIT_FRACTIONS)
            extra = [seeded_split(strata, seed + r, SPLIT_FRACTIONS) for r in range(1, max(1, repeats))]
        for t, y in labels.items():
            for sp in [splits, *extra]:
                for s in ("train", "valid", "test"):
                    if not ((sp == s) & (y >= 0)).any():
                        raise ValueError(
                            f"probe monitor: task {t!r} has no labelled clip in the {s} split of {source} "
                            f"({len(waves)} clips); add clips"
                        )
        return cls(waves, labels, classes, splits, int(sample_rate), source, extra)

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "clips": len(self.clips),
            "seconds": round(sum(len(c) for c in self.clips) / self.sample_rate, 3),
            "sample_rate": self.sample_rate,
            "splits": {s: int((self.splits == s).sum()) for s in ("train", "valid", "test")},
            "split_repeats": len(self.split_sets),
            "classes": self.classes,
        }


def _manifest_columns(path: Path, columns: Sequence[str]) -> dict[int, dict[str, str]]:
    """Extra label columns of a manifest by row number (numbered as :func:`mert.probe.manifest.read_manifest`)."""
    if not columns:
        return {}
    delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = [c.strip().lower() for c in (reader.fieldnames or [])]
        missing = [c for c in columns if c.lower() not in header]
        if missing:
            raise ValueError(f"probe monitor: manifest {str(path)!r} has no column(s) {missing}; its columns: {header}")
        return {
            i: {(k or "").strip().lower(): (v or "").strip() for k, v in rec.items() if k is not None}
            for i, rec in enumerate(reader, start=2)
        }


def _middle(example: Any, seconds: float) -> Any:
    """The example narrowed to its middle ``seconds`` (reads a few seconds, not a whole track)."""
    import soundfile as sf

    try:
        duration = sf.info(str(example.path)).duration
    except Exception:  # unreadable: read_example raises the message that names the file
        return example
    start = example.start or 0.0
    end = min(example.end if example.end is not None else duration, duration)
    if end - start <= seconds:
        return example
    mid = start + (end - start - seconds) / 2
    return replace(example, start=mid, end=mid + seconds)


# ---------------------------------------------------------------------------------------------- features, probes
@dataclass(frozen=True)
class RidgeResult:
    """Accuracies of the ridge probe at the regularisation ``alpha`` chosen on validation."""

    val: float
    test: float
    alpha: float


def ridge_probe(
    x_train: Tensor,
    y_train: Tensor,
    x_val: Tensor,
    y_val: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    *,
    num_classes: int | None = None,
    alphas: Sequence[float] = RIDGE_ALPHAS,
) -> RidgeResult:
    """Closed-form ridge regression onto one-hot targets, scored by argmax accuracy.

    Features are standardised with the training split's statistics; one SVD of the training features gives
    the solution for every ``alpha`` of the grid, and the one with the best validation accuracy is kept (ties:
    the larger ``alpha``). Deterministic and a few milliseconds for hundreds of clips.

    Args:
        x_*: ``(N, d)`` features; y_*: ``(N,)`` integer labels in ``[0, num_classes)``.
    """
    xs = [torch.as_tensor(x, dtype=torch.float64) for x in (x_train, x_val, x_test)]
    ys = [torch.as_tensor(y, dtype=torch.int64) for y in (y_train, y_val, y_test)]
    c = num_classes or int(max(int(y.max()) for y in ys if y.numel())) + 1
    mean, std = xs[0].mean(0), xs[0].std(0, unbiased=False)
    std = torch.where(std > 1e-8 * std.max().clamp(min=1e-30), std, torch.ones_like(std))  # constant dims -> 0
    xs = [(x - mean) / std for x in xs]
    onehot = torch.nn.functional.one_hot(ys[0], c).double()  # (N, C)
    y_mean = onehot.mean(0)
    u, s, vh = torch.linalg.svd(xs[0], full_matrices=False)  # centred X = U S V^T
    uty = u.T @ (onehot - y_mean)  # (r, C)
    best: RidgeResult | None = None
    for alpha in sorted(alphas, reverse=True):
        w = vh.T @ ((s / (s**2 + alpha))[:, None] * uty)  # (d, C) = (X^T X + alpha I)^-1 X^T Y
        val, test = (_accuracy(x @ w + y_mean, y) for x, y in zip(xs[1:], ys[1:]))
        if best is None or val > best.val:
            best = RidgeResult(val, test, float(alpha))
    assert best is not None
    return best


def _accuracy(scores: Tensor, y: Tensor) -> float:
    return float((scores.argmax(1) == y).double().mean()) if y.numel() else float("nan")


@dataclass(frozen=True)
class TaskScores:
    """One task's probe per layer and the layer chosen on validation (ties: the lower layer)."""

    layers: tuple[RidgeResult, ...]
    best_layer: int

    @property
    def best(self) -> RidgeResult:
        return self.layers[self.best_layer]


def _split_indices(held_out: HeldOutSet, task: str, splits: np.ndarray | None = None) -> list[np.ndarray]:
    labelled = held_out.labels[task] >= 0
    splits = held_out.splits if splits is None else splits
    return [np.flatnonzero(labelled & (splits == s)) for s in ("train", "valid", "test")]


def _mean_result(results: Sequence[RidgeResult]) -> RidgeResult:
    """Validation and test accuracy averaged over splits (the alpha reported is the first split's)."""
    return RidgeResult(
        float(np.mean([r.val for r in results])), float(np.mean([r.test for r in results])), results[0].alpha
    )


def score_features(feats: Tensor, held_out: HeldOutSet) -> dict[str, TaskScores]:
    """A ridge probe per task and per layer of ``(N, n, d)`` features, averaged over the held-out set's splits."""
    out = {}
    for task, labels in held_out.labels.items():
        y = torch.from_numpy(labels)
        layers = []
        for i in range(feats.shape[1]):
            x, per_split = feats[:, i], []
            for splits in held_out.split_sets:
                args = [t for j in _split_indices(held_out, task, splits) for t in (x[j], y[j])]
                per_split.append(ridge_probe(*args, num_classes=len(held_out.classes[task])))
            layers.append(_mean_result(per_split))
        best = max(range(len(layers)), key=lambda i: (layers[i].val, -i))
        out[task] = TaskScores(tuple(layers), best)
    return out


def chance_scores(held_out: HeldOutSet) -> dict[str, RidgeResult]:
    """Accuracy of always answering the training split's most frequent class (averaged over the splits)."""
    out = {}
    for task, labels in held_out.labels.items():
        per_split = []
        for splits in held_out.split_sets:
            tr, va, te = (labels[j] for j in _split_indices(held_out, task, splits))
            majority = int(np.bincount(tr).argmax())
            per_split.append(RidgeResult(float((va == majority).mean()), float((te == majority).mean()), 0.0))
        out[task] = _mean_result(per_split)
    return out


# ---------------------------------------------------------------------------------------------- rows and plot
def _rows_of(step: int, encoder: str, scores: dict[str, TaskScores]) -> list[dict[str, Any]]:
    rows = []
    for task, sc in scores.items():
        for layer, r in [*((str(i), r) for i, r in enumerate(sc.layers)), ("best", sc.best)]:
            rows.append(_row(step, encoder, task, layer, r))
    return rows


def _row(step: int, encoder: str, task: str, layer: str, r: RidgeResult) -> dict[str, Any]:
    # Rounded as scores.csv stores them, so rows read back after a resume equal the ones computed.
    return {
        "step": step,
        "encoder": encoder,
        "task": task,
        "layer": layer,
        "val": round(r.val, 6),
        "test": round(r.test, 6),
    }


def _best_rows(rows: list[dict[str, Any]], encoder: str, task: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["encoder"] == encoder and r["task"] == task and r["layer"] == "best"]


def _reference_lines(rows: list[dict[str, Any]], task: str) -> dict[str, tuple[str, float]]:
    """``random``, ``handcrafted`` (the hand-crafted feature best on validation) and ``chance`` test scores."""
    out = {}
    for name in (RANDOM, CHANCE):
        found = _best_rows(rows, name, task)
        if found:
            out[name] = (name, found[-1]["test"])
    crafted = [r for r in rows if r["layer"] == "best" and r["task"] == task]
    crafted = [r for r in crafted if r["encoder"] not in (PRETRAINED, RANDOM, CHANCE)]
    if crafted:
        top = max(crafted, key=lambda r: r["val"])
        out["handcrafted"] = (top["encoder"], top["test"])
    return out


def plot_curves(rows: list[dict[str, Any]], path: str | os.PathLike) -> bool:
    """One panel per task: the pretrained encoder's best-layer test accuracy against the step, with the
    random-init, best hand-crafted and chance lines; with several tasks a last panel has their mean (each line
    averaged over the tasks: hand-crafted is the best kind of each task). False (nothing written) without
    matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    if not tasks:
        return False
    panels = tasks + (["mean of tasks"] if len(tasks) > 1 else [])
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * nrows), layout="constrained")  # no pyplot: no global state
    FigureCanvasAgg(fig)
    curves = {t: dict(sorted((r["step"], r["test"]) for r in _best_rows(rows, PRETRAINED, t))) for t in tasks}
    refs = {t: _reference_lines(rows, t) for t in tasks}
    if len(tasks) > 1:  # steps every task was scored at; reference lines present for every task
        steps = set.intersection(*(set(c) for c in curves.values()))
        curves["mean of tasks"] = {st: sum(curves[t][st] for t in tasks) / len(tasks) for st in sorted(steps)}
        kinds = set.intersection(*(set(r) for r in refs.values()))
        refs["mean of tasks"] = {
            kind: ("best per task" if kind == "handcrafted" else refs[tasks[0]][kind][0],
                   sum(refs[t][kind][1] for t in tasks) / len(tasks))
            for kind in kinds
        }  # fmt: skip
    for k, task in enumerate(panels):
        ax = fig.add_subplot(nrows, cols, k + 1)
        pts = sorted(curves[task].items())
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="C0", ms=3, label="pretrained (best layer)")
        styles = {RANDOM: ("C3", "--"), "handcrafted": ("C2", ":"), CHANCE: ("0.5", "-")}
        for kind, (name, value) in sorted(refs[task].items()):
            color, ls = styles[kind]
            label = {RANDOM: "random init", CHANCE: "chance"}.get(kind, f"hand-crafted ({name})")
            ax.axhline(value, color=color, ls=ls, lw=1.2, label=label)
        ax.set_title(task)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(fontsize=7, loc="best")
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return True


def _write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    with open_atomic(path, newline="") as f:  # a run killed mid-write keeps the previous file
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "val": f"{r['val']:.6f}", "test": f"{r['test']:.6f}"})


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [
            {**r, "step": int(r["step"]), "val": float(r["val"]), "test": float(r["test"])} for r in csv.DictReader(f)
        ]


# ---------------------------------------------------------------------------------------------- the callback
class ProbeMonitor(pl.Callback):
    """Probes the encoder being pretrained on a labelled held-out set, against random-init and hand-crafted
    reference lines (see the module docstring and ``docs/monitor.md``).

    Args:
        every_n_steps: optimiser steps between evaluations (also one when training ends).
        manifest: a ``mert probe`` manifest of labelled audio; None renders a synthetic set in memory.
        tasks: the synthetic set's tasks: with ``synthetic_set="mixture"``, fields of
            ``mert.data.synthetic.ClipLabels`` on clips of the training mixture, each categorical; with
            ``"probe_tasks"``, names of :mod:`mert.data.probe_tasks` (``mert demo``'s key, instrument, tempo,
            pitch, chord), each on its own class-balanced clips.
        synthetic_set: ``"mixture"`` or ``"probe_tasks"`` (see ``tasks``); ignored with a manifest.
        manifest_tasks: the manifest's label columns, one task each (``label`` and any extra columns).
        root: folder of the manifest's relative paths (default: the manifest's folder).
        clips: held-out clips (a seeded subset of a longer manifest; per task with ``"probe_tasks"``); split
            60/20/20 unless the manifest has a ``split`` column.
        seconds: audio per clip (the middle of longer files).
        note_seconds: length of the note and chord clips of ``"probe_tasks"`` (default: ``seconds``).
        split_repeats: seeded splits the scores are averaged over (without a manifest ``split`` column).
        seed: the random-init reference's initialisation seed and the split seed.
        run_dir: where ``monitor/`` is written (default: the trainer's ``default_root_dir``).
        handcrafted: hand-crafted references (``mert.probe.handcrafted.HandcraftedEncoder`` kinds).
        batch_size: clips per forward pass.
    """

    def __init__(
        self,
        every_n_steps: int = 100,
        *,
        manifest: str | os.PathLike | None = None,
        tasks: Sequence[str] = ("key", "instrument", "tempo_bpm", "style"),
        manifest_tasks: Sequence[str] = ("label",),
        root: str | os.PathLike | None = None,
        synthetic_set: str = "mixture",
        clips: int = 120,
        seconds: float = 3.0,
        note_seconds: float | None = None,
        split_repeats: int = 1,
        seed: int = 0,
        run_dir: str | os.PathLike | None = None,
        handcrafted: Sequence[str] = HANDCRAFTED,
        batch_size: int = 16,
    ):
        if every_n_steps < 1 or clips < 5 or seconds <= 0 or batch_size < 1 or split_repeats < 1:
            raise ValueError(
                f"probe monitor: need every_n_steps >= 1, clips >= 5, seconds > 0, batch_size >= 1 and "
                f"split_repeats >= 1, got {every_n_steps}, {clips}, {seconds}, {batch_size}, {split_repeats}"
            )
        if synthetic_set not in ("mixture", "probe_tasks"):
            raise ValueError(f"probe monitor: synthetic_set must be 'mixture' or 'probe_tasks', got {synthetic_set!r}")
        self.synthetic_set, self.split_repeats = synthetic_set, int(split_repeats)
        self.note_seconds = None if note_seconds is None else float(note_seconds)
        self.every_n_steps = int(every_n_steps)
        self.manifest = None if manifest in (None, "") else str(manifest)
        self.tasks = list(manifest_tasks if self.manifest else tasks)
        if not self.tasks:
            raise ValueError("probe monitor: no tasks given")
        if self.manifest is not None and not Path(self.manifest).expanduser().is_file():
            raise FileNotFoundError(f"probe monitor: manifest {self.manifest!r} does not exist")
        self.root = None if root is None else str(root)
        self.clips, self.seconds, self.seed = int(clips), float(seconds), int(seed)
        self.run_dir = None if run_dir is None else str(run_dir)
        self.handcrafted = list(handcrafted or ())
        self.batch_size = int(batch_size)
        # Built on rank 0 when training starts (this object is pickled to spawned ranks before that).
        self.held_out: HeldOutSet | None = None
        self.rows: list[dict[str, Any]] = []
        self._folder: Path | None = None
        self._disabled = False

    # ------------------------------------------------------------------ public helpers
    def evaluate(self, encoder: nn.Module) -> dict[str, TaskScores]:
        """Probe scores of ``encoder`` on the held-out set (which must be built: :meth:`build_held_out`)."""
        return score_features(self._features(encoder), self.held_out)

    def _features(self, encoder: nn.Module) -> Tensor:
        assert self.held_out is not None, "build_held_out() first"
        return pooled_features(encoder, self.held_out.clips, self.held_out.sample_rate, batch_size=self.batch_size)

    def build_held_out(self, sample_rate: int) -> HeldOutSet:
        if self.held_out is None or self.held_out.sample_rate != sample_rate:
            common = {"clips": self.clips, "seconds": self.seconds, "sample_rate": sample_rate, "seed": self.seed}
            if self.manifest:
                self.held_out = HeldOutSet.from_manifest(
                    self.manifest, self.tasks, root=self.root, **common, repeats=self.split_repeats
                )
            elif self.synthetic_set == "probe_tasks":
                self.held_out = HeldOutSet.probe_tasks(
                    self.tasks, **common, note_seconds=self.note_seconds, repeats=self.split_repeats
                )
            else:
                self.held_out = HeldOutSet.synthetic(self.tasks, **common, repeats=self.split_repeats)
        return self.held_out

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not self._supported(trainer):
            return
        t0 = time.perf_counter()
        encoder = self._encoder(pl_module)
        self._folder = Path(self.run_dir or trainer.default_root_dir) / "monitor"
        self._folder.mkdir(parents=True, exist_ok=True)
        held_out = self.build_held_out(encoder.sample_rate)
        signature = {
            "held_out": {k: v for k, v in held_out.summary().items()},
            "tasks": self.tasks,
            "synthetic_set": None if self.manifest else self.synthetic_set,
            "seed": self.seed,
            "encoder_config": encoder.config.to_dict(),
            "handcrafted": self.handcrafted,
        }
        sig_path = self._folder / "held_out.json"
        same = sig_path.is_file() and json.loads(sig_path.read_text()) == json.loads(json.dumps(signature))
        step = trainer.global_step
        # A resumed run keeps the scores up to its checkpoint; later ones are recomputed as it gets there again.
        old = _read_rows(self._folder / "scores.csv")
        self.rows = [r for r in old if r["encoder"] != PRETRAINED or r["step"] <= step]
        refs = [r for r in self.rows if r["encoder"] != PRETRAINED]
        wanted = {RANDOM, CHANCE, *self._available_handcrafted()}
        if not same or not wanted <= {r["encoder"] for r in refs}:
            if self.rows and not same:
                log.warning("probe monitor: the held-out set or encoder changed; %s starts over", self._folder)
            self.rows = [r for r in self.rows if r["encoder"] == PRETRAINED] if same else []
            self.rows = self._reference_rows(encoder, step) + self.rows
            write_json_atomic(sig_path, signature)
        metrics = {}
        for r in self.rows:
            if r["encoder"] != PRETRAINED and r["layer"] == "best":
                metrics[f"monitor_ref/{r['encoder']}/{r['task']}"] = r["test"]
        for task in self.tasks:
            crafted = _reference_lines(self.rows, task).get("handcrafted")
            if crafted is not None:
                metrics[f"monitor_ref/handcrafted_best/{task}"] = crafted[1]
        metrics["monitor_ref/seconds"] = time.perf_counter() - t0
        self._save()
        self._log(trainer, metrics, step)
        log.info("probe monitor: references ready in %.1f s (%s)", metrics["monitor_ref/seconds"], held_out.summary())

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # With gradient accumulation this fires once per micro-batch; evaluated steps are skipped.
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0:
            self._maybe_evaluate(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step > 0:
            self._maybe_evaluate(trainer, pl_module)

    # ------------------------------------------------------------------ internals
    def _maybe_evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or self.held_out is None or self._disabled:
            return
        step = trainer.global_step
        if any(r["encoder"] == PRETRAINED and r["step"] == step for r in self.rows):
            return
        t0 = time.perf_counter()
        try:
            scores = self.evaluate(self._encoder(pl_module))
        except Exception:
            # A monitoring failure (out of memory, say) must not end a long run: report it and stop monitoring.
            log.exception("probe monitor: evaluation at step %d failed; monitoring is off for this run", step)
            self._disabled = True
            return
        self.rows += _rows_of(step, PRETRAINED, scores)
        self._save()
        metrics: dict[str, float] = {}
        for task, sc in scores.items():
            metrics.update({f"monitor/{task}/layer_{i}": r.test for i, r in enumerate(sc.layers)})
            metrics[f"monitor/{task}/best"] = sc.best.test
            metrics[f"monitor/{task}/best_layer"] = float(sc.best_layer)
        metrics["monitor/mean_best"] = float(np.mean([sc.best.test for sc in scores.values()]))
        metrics["monitor/seconds"] = time.perf_counter() - t0
        self._log(trainer, metrics, step)
        log.info("probe monitor: step %d, mean best-layer test accuracy %.3f", step, metrics["monitor/mean_best"])

    def _reference_rows(self, encoder: nn.Module, step: int) -> list[dict[str, Any]]:
        from mert.models.encoder import Encoder

        assert self.held_out is not None
        # Same config and seed as the run's own initialisation; the fork keeps training's RNG stream untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            random = Encoder(encoder.config, strict_mert_compat=getattr(encoder, "strict_mert_compat", False))
        device = next(encoder.parameters()).device
        rows = _rows_of(step, RANDOM, self.evaluate(random.to(device)))
        del random
        for name, r in chance_scores(self.held_out).items():
            rows.append(_row(step, CHANCE, name, "best", r))
        kinds = self._available_handcrafted()
        if kinds:
            from mert.probe.handcrafted import HandcraftedEncoder, parse_kinds

            # Mean pooling commutes with concatenation along d: "mfcc+chroma" reuses the parts' pooled features.
            pooled: dict[str, Tensor] = {}
            for kind in kinds:
                for part in parse_kinds(kind):
                    if part not in pooled:
                        extractor = HandcraftedEncoder(kind=part, sample_rate=self.held_out.sample_rate).to(device)
                        pooled[part] = self._features(extractor)
                feats = torch.cat([pooled[part] for part in parse_kinds(kind)], dim=-1)  # (N, 1, d)
                rows += _rows_of(step, kind, score_features(feats, self.held_out))
        return rows

    def _available_handcrafted(self) -> list[str]:
        if not self.handcrafted:
            return []
        try:
            import mert.probe.handcrafted  # noqa: F401
        except ImportError as e:
            log.warning("probe monitor: no hand-crafted reference lines (%s)", e)
            return []
        return self.handcrafted

    def _save(self) -> None:
        assert self._folder is not None
        _write_rows(self.rows, self._folder / "scores.csv")
        plot_curves(self.rows, self._folder / "curves.png")

    @staticmethod
    def _log(trainer: pl.Trainer, metrics: dict[str, float], step: int) -> None:
        # Straight to the loggers: self.log() is not allowed in on_train_end and only flushes on logging steps.
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            logger.save()

    @staticmethod
    def _encoder(pl_module: pl.LightningModule) -> nn.Module:
        objective = getattr(pl_module, "objective", None)
        encoder = getattr(objective, "encoder", None)
        if encoder is None:
            raise TypeError(f"probe monitor: {type(pl_module).__name__} has no objective.encoder to probe")
        return encoder

    def _supported(self, trainer: pl.Trainer) -> bool:
        # A sharded encoder needs every rank in its forward pass, which a rank-0-only monitor cannot give.
        if "fsdp" in type(trainer.strategy).__name__.lower() or "deepspeed" in type(trainer.strategy).__name__.lower():
            if not self._disabled:
                log.warning("probe monitor: off under %s (sharded weights)", type(trainer.strategy).__name__)
            self._disabled = True
            return False
        return True

"""The synthetic generator's labelled probe tasks: what `mert demo` and the probe monitor score encoders on.

Each task renders its own class-balanced clips with :func:`mert.data.synthetic.render_clip` (music, single
notes or chords, the class fixed by one argument) from seeds no training corpus uses:

| task | clips | classes |
|---|---|---|
| key | music with melody or chords | 12 tonics |
| instrument | single notes | 10 families |
| tempo | music with drums | 5 tempi |
| pitch | single notes of octaves 2-6 | 12 pitch classes |
| chord | chords | 6 qualities |
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ProbeTask", "TASKS", "PROBE_SEED_BASE", "probe_jobs", "split_clips"]

PROBE_SEED_BASE = 10**12  # probe clip seeds start here; corpus clip seeds are seed * 1_000_003 + index


@dataclass(frozen=True)
class ProbeTask:
    """A demo probe task: which clips to render and which label to predict."""

    name: str
    kind: str  # render_clip kind
    field: str  # ClipLabels field that holds the class
    classes: tuple
    override: str  # render_clip argument that fixes the class
    arrangements: tuple[str, ...] = ()  # music only: arrangements to draw from (weighted as in the corpus)


def _tasks() -> dict[str, ProbeTask]:
    from mert.data.synthetic import ARRANGEMENTS, CHORDS, INSTRUMENTS, TEMPI_BPM

    pitched = tuple(a for a, (parts, _) in ARRANGEMENTS.items() if {"melody", "chords"} & set(parts))
    drummed = tuple(a for a, (parts, _) in ARRANGEMENTS.items() if "drums" in parts)
    tasks = [
        ProbeTask("key", "music", "key", tuple(range(12)), "key", pitched),  # a key needs harmony or melody
        ProbeTask("instrument", "note", "instrument", INSTRUMENTS, "instrument"),
        ProbeTask("tempo", "music", "tempo_bpm", TEMPI_BPM, "tempo_bpm", drummed),
        ProbeTask("pitch", "note", "pitch", tuple(range(12)), "pitch"),
        ProbeTask("chord", "chord", "chord", tuple(CHORDS), "chord"),
    ]
    return {t.name: t for t in tasks}


TASKS = _tasks()


def probe_jobs(
    task: ProbeTask,
    n: int,
    seconds: float,
    sample_rate: int,
    seed: int,
    task_index: int,
    *,
    seed_base: int = PROBE_SEED_BASE,
) -> list:
    """``render_clip`` arguments of ``n`` class-balanced clips of ``task`` (class ``i % C`` for clip ``i``).

    Seeds start at ``seed_base`` (10^12; plus 10^9 per task and 10^6 per demo seed), far from the corpus's
    ``seed * 1_000_003 + index``, so no probe clip is ever a pretraining clip. The probe monitor uses another
    base, so its clips are not the demo's final test clips either.
    """
    import numpy as np

    from mert.data.synthetic import ARRANGEMENTS

    rng = np.random.default_rng([seed, task_index])
    jobs = []
    for i in range(n):
        job: dict[str, Any] = dict(
            seconds=seconds,
            sample_rate=sample_rate,
            seed=seed_base + task_index * 10**9 + seed * 10**6 + i,
            kind=task.kind,
        )
        job[task.override] = task.classes[i % len(task.classes)]
        if task.arrangements:  # drawn with the corpus's weights among the arrangements the task can use
            w = np.array([ARRANGEMENTS[a][1] for a in task.arrangements])
            job["arrangement"] = task.arrangements[int(rng.choice(len(w), p=w / w.sum()))]
        jobs.append(job)
    return jobs


def split_clips(task: ProbeTask, rendered: Sequence, seed: int = 0) -> dict[str, tuple[list, list]]:
    """Rendered ``(wav, labels)`` of :func:`probe_jobs` split 60/20/20 within each class.

    The split is :func:`mert.data.splits.seeded_split` stratified by class (the one every probe split uses);
    each split lists its clips class by class, in rendering order within a class.

    Returns:
        ``{"train" | "val" | "test": (clips, class indices)}``.
    """
    from mert.data.splits import seeded_split

    classes = [task.classes.index(getattr(labels, task.field)) for _, labels in rendered]
    assignment = seeded_split(classes, seed, (0.6, 0.2, 0.2))
    splits: dict[str, tuple[list, list]] = {"train": ([], []), "val": ([], []), "test": ([], [])}
    for i in sorted(range(len(rendered)), key=lambda i: classes[i]):  # stable: rendering order within a class
        clips, ys = splits["val" if assignment[i] == "valid" else assignment[i]]
        clips.append(rendered[i][0])
        ys.append(classes[i])
    return splits

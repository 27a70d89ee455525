"""`mert demo`'s parts without a training run: probe clip sets, the table, the verdict and the --strict rule,
progress lines.

(The whole demo runs, tiny, in test_readme.py.)"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from mert.data.splits import seeded_split
from mert.data.synthetic import ARRANGEMENTS, ClipLabels
from mert.demo import TASKS, format_table, probe_jobs, progress_lines, split_clips, verdict, verdict_line


def _results(pretrained: dict, random: dict, hand: dict) -> dict:
    """A results dict as main() writes it, from test accuracies per task."""
    tasks = {t: {"classes": list(TASKS[t].classes), "chance": 1 / len(TASKS[t].classes)} for t in TASKS}

    def enc(acc: dict) -> dict:
        return {
            t: {"best_layer": 2, "test_accuracy": a, "per_layer": [{"val": a, "test": a}] * 3} for t, a in acc.items()
        }

    res = {"tasks": tasks, "pretrained": enc(pretrained), "random": enc(random)}
    res["handcrafted"] = {t: {"best": "chroma", "test_accuracy": a} for t, a in hand.items()}
    mean = lambda d: sum(d.values()) / len(d)  # noqa: E731
    res["mean"] = {
        "chance": mean({t: v["chance"] for t, v in tasks.items()}),
        "random": mean(random),
        "pretrained": mean(pretrained),
        "handcrafted": mean(hand),
    }
    return res


def test_table_and_verdict():
    names = list(TASKS)
    rnd = dict.fromkeys(names, 0.4)
    good = _results(dict.fromkeys(names, 0.6), rnd, dict.fromkeys(names, 0.5))
    assert verdict(good) == []
    table = format_table(good).splitlines()
    assert table[0] == (
        "| task (classes) | chance | random encoder | hand-crafted (which) | pretrained encoder | margin vs random |"
    )
    assert table[2] == "| key (12) | 8.3% | 40.0% (layer 2) | 50.0% (chroma) | 60.0% (layer 2) | +20.0 |"
    assert table[-1].startswith("| **mean** | 12.7% | 40.0% | 50.0% | 60.0% | +20.0 |")
    assert len(table) == 2 + len(names) + 1 and all(line.count("|") == 7 for line in table)

    assert verdict_line(good) == (
        "pretrained 60.0% on the mean: ahead of the random encoder (40.0%, +20.0; ahead on 5 of 5 tasks), "
        "ahead of hand-crafted features (50.0%, +10.0)"
    )

    # --strict asks only for the mean over random: one task level, hand-crafted ahead, still no failure.
    mixed = _results({**dict.fromkeys(names, 0.6), "pitch": 0.4}, rnd, dict.fromkeys(names, 0.7))
    assert verdict(mixed) == []
    assert verdict_line(mixed) == (
        "pretrained 56.0% on the mean: ahead of the random encoder (40.0%, +16.0; ahead on 4 of 5 tasks), "
        "behind hand-crafted features (70.0%, -14.0)"
    )
    level = _results(rnd, rnd, dict.fromkeys(names, 0.7))
    assert verdict(level) == ["the pretrained encoder's mean (40.0%) is not ahead of the random encoder's (40.0%)"]
    assert verdict_line(level).startswith("pretrained 40.0% on the mean: not ahead of the random encoder (40.0%, +0.0;")


def test_probe_clips_are_balanced_held_out_and_fit_their_task():
    for i, (name, task) in enumerate(TASKS.items()):
        jobs = probe_jobs(task, 60, 2.0, 24000, seed=3, task_index=i)
        counts = Counter(j[task.override] for j in jobs)
        assert set(counts) == set(task.classes) and max(counts.values()) - min(counts.values()) <= 1, name
        assert all(j["kind"] == task.kind for j in jobs)
        assert min(j["seed"] for j in jobs) >= 10**12  # corpus seeds are seed * 1_000_003 + index
        assert jobs == probe_jobs(task, 60, 2.0, 24000, seed=3, task_index=i)
        for j in jobs:  # key needs harmony or melody; tempo needs drums
            parts = ARRANGEMENTS[j["arrangement"]][0] if "arrangement" in j else ()
            assert name != "key" or {"melody", "chords"} & set(parts)
            assert name != "tempo" or "drums" in parts
    seeds = [{j["seed"] for j in probe_jobs(t, 60, 2.0, 24000, 3, i)} for i, t in enumerate(TASKS.values())]
    assert len(set.union(*seeds)) == 5 * 60


def test_split_clips_is_60_20_20_within_each_class():
    task = TASKS["chord"]
    rendered = [(f"clip{i}", ClipLabels("chord", chord=task.classes[i % 6])) for i in range(60)]
    splits = split_clips(task, rendered)
    assert {s: len(splits[s][0]) for s in splits} == {"train": 36, "val": 12, "test": 12}
    for s, (_, ys) in splits.items():
        assert Counter(ys) == dict.fromkeys(range(6), len(ys) // 6), s
    # The package's one seeded split (stratified by class), listed class by class in rendering order.
    expected = seeded_split([i % 6 for i in range(60)], 0, (0.6, 0.2, 0.2))
    for s, name in (("train", "train"), ("val", "valid"), ("test", "test")):
        assert splits[s][0] == sorted(
            (f"clip{i}" for i in range(60) if expected[i] == name), key=lambda c: int(c[4:]) % 6
        )
    assert split_clips(task, rendered, seed=1)["train"][0] != splits["train"][0]


def test_progress_lines_print_about_ten_lines(capsys):
    pytest.importorskip("lightning")
    cb = progress_lines(total_steps=50)
    trainer = SimpleNamespace(global_step=0, is_global_zero=True, callback_metrics={})
    cb.on_train_start(trainer, None)
    for step in range(1, 51):
        trainer.global_step = step
        trainer.callback_metrics = {"train/loss": 5.0 - step / 50}
        cb.on_train_batch_end(trainer, None, None, None, step)
        cb.on_train_batch_end(trainer, None, None, None, step)  # a second micro-batch of the same step
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 10 and lines[0].startswith("pretrain: step 5/50 | loss 4.900 |") and "ETA" in lines[0]
    assert lines[-1].startswith("pretrain: step 50/50 |") and lines[-1].endswith("ETA 0:00")


def test_demo_options_name_a_known_experiment():
    from mert.demo import DEMO_EXPERIMENTS, DemoOptions

    assert {"demo_cpu", "cpu_hour", "conformer_kmeans", "conformer_cpu_hour"} <= set(DEMO_EXPERIMENTS)
    assert DemoOptions().max_steps is None and DemoOptions().teacher == "kmeans"
    assert DemoOptions(experiment="conformer_melrvq").teacher == "rvq"
    assert DemoOptions(experiment="conformer_rp", teacher="kmeans").teacher == "kmeans"
    with pytest.raises(ValueError, match="--experiment must be one of"):
        DemoOptions(experiment="tiny_cpu")
    with pytest.raises(ValueError, match="--max-steps"):
        DemoOptions(max_steps=0)
    with pytest.raises(ValueError, match="kmeans\\+rvq works with the 75 Hz experiments"):
        DemoOptions(experiment="conformer_kmeans", teacher="kmeans+rvq")


@pytest.mark.slow
def test_cpu_hour_runs_through_the_demo_for_a_few_steps(tmp_path, capsys):
    """The hour recipe through `mert demo --experiment cpu_hour`, cut to 3 steps on a tiny model."""
    import json

    pytest.importorskip("lightning")
    from mert.cli import main as cli

    quick = ["--max-steps", "3", "--corpus-clips", "12", "--probe-clips", "48", "--model", "tiny", "--seconds", "1"]
    quick += ["--note-seconds", "1", "--segment-seconds", "1", "--out", str(tmp_path / "d")]
    assert cli(["demo", "--experiment", "cpu_hour", *quick]) == 0
    summary = json.loads((tmp_path / "d" / "results.json").read_text())["pretraining"]
    assert summary["steps"] == 3 and summary["seconds_per_sample"] == 1.0
    assert "name: cpu_hour" in (tmp_path / "d" / "run" / "config.yaml").read_text()

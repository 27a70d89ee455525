"""ProbeMonitor: the ridge probe, deterministic scores, rank 0 only, a manifest set, and a real tiny run."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")

from mert import Encoder  # noqa: E402
from mert.lightning.probe_monitor import HeldOutSet, ProbeMonitor, ridge_probe  # noqa: E402


def _blobs(n: int, classes: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-dependent means plus noise: ``(n, d)`` features and ``(n,)`` labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = torch.randn(classes, d, generator=g)
    return centres[y] + 0.8 * torch.randn(n, d, generator=g), y


def test_ridge_probe_informative_beats_chance_shuffled_does_not():
    x, y = _blobs(300, 5, 24, seed=0)
    parts = [(x[a:b], y[a:b]) for a, b in ((0, 180), (180, 240), (240, 300))]
    args = [t for p in parts for t in p]
    good = ridge_probe(*args)
    assert good.test > 0.9 and good.val > 0.9
    # Shuffled training labels carry no information: the probe stays near chance (0.2).
    shuffled = y[:180][torch.randperm(180, generator=torch.Generator().manual_seed(1))]
    bad = ridge_probe(x[:180], shuffled, *args[2:])
    assert bad.test < 0.35
    assert ridge_probe(*args) == good  # closed form: identical numbers every time


def test_ridge_probe_ignores_constant_features():
    x, y = _blobs(90, 3, 8, seed=2)
    x = torch.cat([x, torch.full((90, 4), 7.0)], dim=1)  # zero-variance columns must not produce NaN
    r = ridge_probe(x[:60], y[:60], x[60:75], y[60:75], x[75:], y[75:])
    assert np.isfinite([r.val, r.test]).all() and r.test > 0.8


TASKS = ["key", "tempo_bpm"]  # synthetic labels of every version of the generator


@pytest.fixture(scope="module")
def monitor() -> ProbeMonitor:
    m = ProbeMonitor(every_n_steps=5, tasks=TASKS, clips=30, seconds=1.0, handcrafted=[])
    m.build_held_out(24000)
    return m


def test_held_out_set_is_deterministic_and_split(monitor):
    h = monitor.held_out
    assert len(h.clips) == 30 and all(c.shape == (24000,) for c in h.clips)
    assert sorted(h.labels) == TASKS
    counts = {s: int((h.splits == s).sum()) for s in ("train", "valid", "test")}
    assert counts["train"] >= 15 and counts["valid"] >= 4 and counts["test"] >= 4
    again = HeldOutSet.synthetic(TASKS, clips=30, seconds=1.0, sample_rate=24000)
    assert all(torch.equal(a, b) for a, b in zip(h.clips, again.clips))
    assert (again.splits == h.splits).all()
    with pytest.raises(ValueError, match="unknown synthetic label"):
        HeldOutSet.synthetic(["no_such_label"], clips=10, seconds=0.5, sample_rate=24000)


def test_scores_are_deterministic_and_modes_restored(monitor):
    torch.manual_seed(0)
    enc = Encoder("tiny").train()
    enc.frontend.eval()  # a frozen part must stay in eval mode after the monitor
    first = monitor.evaluate(enc)
    second = monitor.evaluate(enc)
    assert first == second
    assert enc.training and not enc.frontend.training and enc.transformer.training
    assert set(first) == set(TASKS)
    assert all(len(s.layers) == enc.num_layers + 1 for s in first.values())


def _fake_trainer(tmp_path: Path, *, rank_zero: bool, step: int) -> SimpleNamespace:
    return SimpleNamespace(
        is_global_zero=rank_zero,
        global_step=step,
        default_root_dir=str(tmp_path),
        loggers=[],
        strategy=SimpleNamespace(),
    )


def test_other_ranks_do_nothing(tmp_path):
    m = ProbeMonitor(every_n_steps=1, tasks=TASKS, clips=10, seconds=0.5, run_dir=str(tmp_path))
    module = SimpleNamespace(objective=SimpleNamespace(encoder=Encoder("tiny")))
    trainer = _fake_trainer(tmp_path, rank_zero=False, step=1)
    m.on_train_start(trainer, module)
    m.on_train_batch_end(trainer, module, None, None, 0)
    m.on_train_end(trainer, module)
    assert m.held_out is None and m.rows == []
    assert not (tmp_path / "monitor").exists()


def test_hooks_on_rank_zero_write_scores(tmp_path):
    m = ProbeMonitor(every_n_steps=2, tasks=TASKS, clips=30, seconds=1.0, handcrafted=[], run_dir=str(tmp_path))
    torch.manual_seed(0)
    module = SimpleNamespace(objective=SimpleNamespace(encoder=Encoder("tiny")))
    m.on_train_start(_fake_trainer(tmp_path, rank_zero=True, step=0), module)
    for step in (1, 2, 2, 3):  # step 2 twice: gradient accumulation calls the hook per micro-batch
        m.on_train_batch_end(_fake_trainer(tmp_path, rank_zero=True, step=step), module, None, None, 0)
    m.on_train_end(_fake_trainer(tmp_path, rank_zero=True, step=3), module)
    with open(tmp_path / "monitor" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    steps = sorted({int(r["step"]) for r in rows if r["encoder"] == "pretrained"})
    assert steps == [2, 3]
    assert {r["encoder"] for r in rows} == {"pretrained", "random", "chance"}
    # A restart at step 2 keeps the references and the scores up to step 2, and drops later ones.
    again = ProbeMonitor(every_n_steps=2, tasks=TASKS, clips=30, seconds=1.0, handcrafted=[], run_dir=str(tmp_path))
    again.on_train_start(_fake_trainer(tmp_path, rank_zero=True, step=2), module)
    assert sorted({r["step"] for r in again.rows if r["encoder"] == "pretrained"}) == [2]
    assert [r for r in again.rows if r["encoder"] == "random"] == [r for r in m.rows if r["encoder"] == "random"]


def test_manifest_held_out_set(tmp_path):
    import soundfile as sf

    from mert.data.synthetic import render_clip

    rows = []
    for i in range(24):
        wav, _ = render_clip(1.5, 16000, seed=i)
        sf.write(tmp_path / f"c{i}.wav", wav, 16000)
        rows.append({"path": f"c{i}.wav", "label": "ab"[i % 2], "group": "xyz"[i % 3]})
    manifest = tmp_path / "held_out.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "group"])
        writer.writeheader()
        writer.writerows(rows)
    m = ProbeMonitor(manifest=str(manifest), manifest_tasks=["label", "group"], clips=20, seconds=1.0, handcrafted=[])
    h = m.build_held_out(24000)
    assert len(h.clips) == 20 and all(c.shape == (24000,) for c in h.clips)  # capped, resampled, cropped
    assert h.classes == {"label": ["a", "b"], "group": ["x", "y", "z"]}
    scores = m.evaluate(Encoder("tiny"))
    assert set(scores) == {"label", "group"} and all(0 <= s.best.test <= 1 for s in scores.values())
    with pytest.raises(ValueError, match="no column"):
        ProbeMonitor(manifest=str(manifest), manifest_tasks=["genre"], clips=20, seconds=1.0).build_held_out(24000)


def test_tiny_cpu_pretraining_writes_monitor(tmp_path):
    from mert.cli import main as cli

    run = tmp_path / "run"
    overrides = ["logger=csv", "data.dataset.num_clips=16", "data.dataset.seconds=1.0", "trainer.max_steps=4"]
    overrides += ["callbacks.probe_monitor.every_n_steps=2", f"run_dir={run}"]
    assert cli(["pretrain", "experiment=tiny_cpu", *overrides]) == 0
    with open(run / "monitor" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    encoders = {r["encoder"] for r in rows}
    assert {"pretrained", "random", "chance", "mfcc", "chroma", "mfcc+chroma"} <= encoders  # tiny_cpu's references
    assert sorted({int(r["step"]) for r in rows if r["encoder"] == "pretrained"}) == [2, 4]
    assert set(TASKS) <= {r["task"] for r in rows}
    with open(next((run / "csv").glob("version_*/metrics.csv"))) as f:
        metrics = list(csv.DictReader(f))
    assert "monitor/mean_best" in metrics[0] and "monitor/seconds" in metrics[0]
    assert any(r.get("monitor_ref/random/key") for r in metrics)
    assert any(r.get("monitor_ref/handcrafted_best/key") for r in metrics)
    assert sum(bool(r["monitor/mean_best"]) for r in metrics) == 2
    pytest.importorskip("matplotlib")
    assert (run / "monitor" / "curves.png").stat().st_size > 1000


def test_probe_task_set_is_balanced_labelled_per_task_and_averaged_over_splits():
    """`synthetic_set="probe_tasks"`: each task on its own class-balanced clips (the demo's tasks, other seeds),
    split 60/20/20 within every class, and scores averaged over `split_repeats` seeded splits."""
    from mert.data.probe_tasks import TASKS as PROBE_TASKS
    from mert.data.probe_tasks import probe_jobs
    from mert.lightning.probe_monitor import _split_indices, score_features

    tasks = ["pitch", "chord"]
    h = HeldOutSet.probe_tasks(tasks, clips=60, seconds=1.0, note_seconds=0.5, sample_rate=24000, repeats=3)
    assert len(h.clips) == 120 and h.clips[0].shape == (12000,) and len(h.split_sets) == 3
    for i, t in enumerate(tasks):
        y = h.labels[t]
        mine = y >= 0
        assert mine.sum() == 60 and (mine[:60] if i == 0 else mine[60:]).all()  # labelled for its own task only
        assert np.bincount(y[mine]).tolist() == [60 // len(PROBE_TASKS[t].classes)] * len(PROBE_TASKS[t].classes)
        for splits in h.split_sets:  # every class in every split
            for idx in _split_indices(h, t, splits):
                assert set(y[idx]) == set(range(len(PROBE_TASKS[t].classes)))
    assert not all((s == h.splits).all() for s in h.extra_splits)
    # Not the demo's final test clips: another seed base.
    demo_seeds = {j["seed"] for j in probe_jobs(PROBE_TASKS["pitch"], 60, 0.5, 24000, 0, 3)}
    from mert.lightning.probe_monitor import PROBE_TASK_SEED_BASE

    assert max(demo_seeds) + 10**10 < PROBE_TASK_SEED_BASE
    again = HeldOutSet.probe_tasks(tasks, clips=60, seconds=1.0, note_seconds=0.5, sample_rate=24000, repeats=3)
    assert all(torch.equal(a, b) for a, b in zip(h.clips, again.clips))
    # Averaged scores: the mean of the per-split probes.
    feats = torch.randn(120, 2, 6, generator=torch.Generator().manual_seed(0))
    avg = score_features(feats, h)
    singles = [score_features(feats, HeldOutSet(h.clips, h.labels, h.classes, s, 24000, "x")) for s in h.split_sets]
    for t in tasks:
        for layer in range(2):
            expected = np.mean([sc[t].layers[layer].test for sc in singles])
            assert avg[t].layers[layer].test == pytest.approx(expected)
    with pytest.raises(ValueError, match="unknown probe task"):
        HeldOutSet.probe_tasks(["tempo_bpm"], clips=10, seconds=0.5, sample_rate=24000)
    with pytest.raises(ValueError, match="synthetic_set"):
        ProbeMonitor(synthetic_set="demo")

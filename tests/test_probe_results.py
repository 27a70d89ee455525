"""Probe results that carry their uncertainty: n_test, bootstrap intervals, small-split warnings, `compare`."""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mert.cli import main as cli
from mert.probe.probes import ProbeConfig, ProbeData, bootstrap_interval, run_probes, scorer
from tests.helpers import QUICK_PROBE_ARGS as ARGS

SR = 16000


def _run(small_set, tmp_path, *extra) -> tuple[Path, dict]:
    run_dir = tmp_path / "run"
    args = [f"data.manifest={small_set['manifest']}", f"features.cache_dir={tmp_path / 'cache'}"]
    assert cli(["probe", *ARGS, *args, f"run_dir={run_dir}", *extra]) == 0
    return run_dir, json.loads((run_dir / "results.json").read_text())


def _data(n_test: int, correct: float, seed: int = 0) -> tuple[ProbeData, torch.Tensor]:
    """A 2-class task whose test outputs are right on a ``correct`` share of ``n_test`` items."""
    g = torch.Generator().manual_seed(seed)
    y = {s: torch.randint(0, 2, (n,), generator=g) for s, n in (("train", 8), ("valid", 8), ("test", n_test))}
    x = {s: torch.randn(len(v), 2, 3) for s, v in y.items()}
    data = ProbeData(
        x, y, "multiclass", 2, ("accuracy",), scorer("multiclass", {s: v.numpy() for s, v in y.items()}, ["accuracy"])
    )
    right = torch.zeros(n_test, dtype=torch.bool)
    right[: int(round(correct * n_test))] = True
    pred = torch.where(right, y["test"], 1 - y["test"])
    return data, torch.nn.functional.one_hot(pred, 2).float()  # (N, C)


def test_bootstrap_interval_covers_the_score_and_narrows_with_more_items():
    small, out_small = _data(20, 0.7)
    big, out_big = _data(1000, 0.7)
    lo_s, hi_s = bootstrap_interval(small, [out_small], resamples=400, seed=0)["accuracy"]
    lo_b, hi_b = bootstrap_interval(big, [out_big], resamples=400, seed=0)["accuracy"]
    assert lo_s < 0.7 < hi_s and lo_b < 0.7 < hi_b
    # The binomial standard error at p=0.7: 0.10 for 20 items, 0.0145 for 1000: a 95 % interval ~4 of them wide.
    assert 0.25 < hi_s - lo_s < 0.55, (lo_s, hi_s)
    assert 0.04 < hi_b - lo_b < 0.075, (lo_b, hi_b)
    assert bootstrap_interval(small, [out_small], resamples=400, seed=0) == {"accuracy": (lo_s, hi_s)}  # seeded
    assert bootstrap_interval(small, [out_small], resamples=400, seed=1) != {"accuracy": (lo_s, hi_s)}
    perfect, out = _data(30, 1.0)
    assert bootstrap_interval(perfect, [out, out], resamples=100) == {"accuracy": (1.0, 1.0)}


def test_run_probes_reports_n_test_and_intervals_for_best_and_weighted():
    data, _ = _data(40, 0.5)
    cfg = ProbeConfig(head="linear", lrs=(1e-2,), seeds=(0, 1), max_epochs=3, patience=2)
    res = run_probes(data, 2, cfg, bootstrap=200, bootstrap_seed=0).to_dict()
    assert res["n_test"] == 40 and res["bootstrap"] == {"resamples": 200, "seed": 0, "level": 0.95}
    best = res["candidates"][res["best_candidate"]]["test"]["accuracy"]
    assert best["ci_low"] <= best["mean"] <= best["ci_high"]
    assert "ci_low" in res["candidates"]["weighted"]["test"]["accuracy"]
    others = [c for c in res["candidates"] if c not in (res["best_candidate"], "weighted")]
    assert all("ci_low" not in res["candidates"][c]["test"]["accuracy"] for c in others)
    assert "ci_low" not in run_probes(data, 2, cfg).to_dict()["candidates"]["weighted"]["test"]["accuracy"]


def test_a_tiny_test_split_prints_n_test_and_a_warning(small_set, tmp_path, capsys):
    run_dir, res = _run(small_set, tmp_path)
    assert res["n_test"] == 3 and res["results"]["n_test"] == 3
    (warning,) = [w for w in res["warnings"] if "test items" in w]
    assert "only 3 test items" in warning and "head seeds only" in warning
    best = res["results"]["candidates"][res["results"]["best_candidate"]]["test"]["accuracy"]
    assert 0 <= best["ci_low"] <= best["ci_high"] <= 1
    table = (run_dir / "results.md").read_text()
    assert "n_test = 3" in table and "only 3 test items" in table
    assert f"[{100 * best['ci_low']:.1f}, {100 * best['ci_high']:.1f}]" in table
    err = capsys.readouterr().err
    assert "only 3 test items" in err  # the warning reaches the console, not only the files


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _copy_run(res: dict, folder: Path, **changes) -> Path:
    r = copy.deepcopy(res)
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            r[section][field] = value
        else:
            r[section] = value
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(r))
    return folder


@pytest.fixture(scope="module")
def one_run(small_set, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("one_run")
    return _run(small_set, tmp)[1]


def test_compare_shows_protocol_chance_and_n_test_and_flags_other_protocols(one_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    _copy_run(one_run, runs / "a")
    mlp = dict(one_run["probe"], head="mlp", seeds=[0, 1, 2])
    _copy_run(one_run, runs / "b", probe=mlp, encoder=dict(one_run["encoder"], source="random:other"))
    capsys.readouterr()
    assert cli(["probe", "compare", str(runs), "--out", str(tmp_path / "t.csv")]) == 0  # a parent folder
    table = capsys.readouterr().out
    assert "| metric | random:tiny (linear, 2 LRs, 2 seeds, <= 5 epochs) | random:other (mlp, 2 LRs, 3 seeds" in table
    assert "|  | protocol | linear, 2 LRs, 2 seeds, <= 5 epochs | mlp, 2 LRs, 3 seeds, <= 5 epochs |" in table
    assert "different protocols" in table
    assert "| set.csv: auto | n_test | 3 | 3 |" in table
    chance = 100 * one_run["chance"]["accuracy"]
    assert f"| set.csv: auto | accuracy (chance) | {chance:.1f} | {chance:.1f} |" in table
    rows = list(csv.reader(io.StringIO((tmp_path / "t.csv").read_text())))
    assert rows[0][:3] == ["data", "metric", "random:tiny (linear, 2 LRs, 2 seeds, <= 5 epochs) mean"]
    best = [r for r in rows if r[1] == "accuracy (best layer)"][0]
    cand = one_run["results"]["candidates"][one_run["results"]["best_candidate"]]["test"]["accuracy"]
    assert [float(v) for v in best[2:6]] == pytest.approx([cand["mean"], cand["std"], cand["ci_low"], cand["ci_high"]])
    assert cli(["probe", "compare", str(runs / "a"), str(runs / "a"), "--out", str(tmp_path / "t.json")]) == 0
    got = json.loads((tmp_path / "t.json").read_text())
    assert got["protocols_differ"] is False and len(got["columns"]) == 1  # the same run given twice counts once
    assert "different protocols" not in capsys.readouterr().out


def test_compare_keeps_two_data_sets_with_one_file_name_apart(one_run, tmp_path, capsys):
    a = _copy_run(one_run, tmp_path / "a", data__manifest="setA/train.csv", data__manifest_sha256="a" * 64)
    b = _copy_run(one_run, tmp_path / "b", data__manifest="setB/train.csv", data__manifest_sha256="b" * 64)
    capsys.readouterr()
    assert cli(["probe", "compare", str(a), str(b)]) == 0
    table = capsys.readouterr().out
    assert (
        "| train.csv: auto | n_test | 3 | - |" in table and "| train.csv: auto (bbbbbbbb) | n_test | - | 3 |" in table
    )


def test_compare_refuses_to_write_over_its_input_and_non_results_json(one_run, tmp_path, capsys):
    run = _copy_run(one_run, tmp_path / "run")
    before = hashlib.sha256((run / "results.json").read_bytes()).hexdigest()
    capsys.readouterr()
    for out in (run / "results.json", tmp_path / "elsewhere" / "results.json"):
        assert cli(["probe", "compare", str(run), "--out", str(out)]) == 1
        assert "--out" in capsys.readouterr().err
    assert hashlib.sha256((run / "results.json").read_bytes()).hexdigest() == before
    # Nor over another file that is not a table of ours (a manifest, notes), while its own tables are replaced.
    notes = tmp_path / "notes.md"
    notes.write_text("# my notes\n")
    assert cli(["probe", "compare", str(run), "--out", str(notes)]) == 1
    assert "was not written by `mert probe compare`" in capsys.readouterr().err and notes.read_text() == "# my notes\n"
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,label\na.wav,x\n")
    other = _copy_run(one_run, tmp_path / "run2", data=dict(one_run["data"], manifest=str(manifest)))
    assert cli(["probe", "compare", str(other), "--out", str(manifest)]) == 1
    assert "would destroy the input" in capsys.readouterr().err and manifest.read_text() == "path,label\na.wav,x\n"
    for name in ("t.md", "t.csv", "t.json"):
        for _ in range(2):  # the second time over its own earlier table
            assert cli(["probe", "compare", str(run), "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    assert cli(["probe", "compare", str(run), "--out", str(tmp_path / "x.txt")]) == 1
    assert ".md, .csv or .json" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text('{"a": 1}')
    assert cli(["probe", "compare", str(other)]) == 1
    err = capsys.readouterr().err
    assert "is not a `mert probe` results file" in err and "'task'" in err and "Traceback" not in err
    other.write_text("not json")
    assert cli(["probe", "compare", str(other)]) == 1
    assert "is not JSON" in capsys.readouterr().err


def test_plot_hours_reads_audio_hours_and_skips_unknown_runs(one_run, tmp_path, capsys):
    encs = []
    for hours in (2.0, 40.0):
        enc = tmp_path / f"enc{hours:g}"
        enc.mkdir()
        key = "audio_hours_seen" if hours < 10 else "audio_hours"  # the second: an older export's meta.json
        (enc / "meta.json").write_text(json.dumps({"training": {key: hours}}))
        encs.append(_copy_run(one_run, tmp_path / f"run{hours:g}", encoder=dict(one_run["encoder"], source=str(enc))))
    unknown = _copy_run(one_run, tmp_path / "hub", encoder=dict(one_run["encoder"], source="m-a-p/MERT-v1-95M"))
    capsys.readouterr()
    png = tmp_path / "hours.png"
    assert cli(["probe", "compare", *map(str, encs), str(unknown), "--plot-hours", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    err = capsys.readouterr().err
    assert "m-a-p/MERT-v1-95M: audio-hours seen unknown" in err and str(encs[0]) not in err
    assert cli(["probe", "compare", str(unknown), "--plot-hours", str(tmp_path / "none.png")]) == 1
    assert "no run has known audio-hours" in capsys.readouterr().err
    assert not (tmp_path / "none.png").exists()
    np.testing.assert_equal(png.stat().st_size > 1000, True)


# --- run folders ------------------------------------------------------------------------------------------------


def _probe_under(runs: Path, manifest: Path, cache: Path, *extra: str) -> None:
    args = [f"data.manifest={manifest}", f"features.cache_dir={cache}", f"runs_root={runs}"]
    assert cli(["probe", *ARGS, *args, *extra]) == 0


def _results_under(runs: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(runs)): json.loads(p.read_text()) for p in sorted(runs.rglob("results.json"))}


@pytest.mark.slow
def test_protocols_and_data_sets_write_separate_folders(small_set, tmp_path):
    runs, cache, manifest = tmp_path / "runs", tmp_path / "cache", small_set["manifest"]
    _probe_under(runs, manifest, cache)
    _probe_under(runs, manifest, cache, "protocol=marble", "probe.lrs=[0.01]", "probe.seeds=[0]")
    # Two manifests with one file name (the same clips, another label set): another data set.
    other = tmp_path / "setB" / "set.csv"
    other.parent.mkdir()
    other.write_text(manifest.read_text().replace("sine", "tone").replace("\naudio/", f"\n{small_set['root']}/audio/"))
    _probe_under(runs, other, cache)
    got = _results_under(runs)
    names = sorted(got)
    assert len(names) == 3, names
    quick = "quick-features.window_seconds_1.0_probe.max_epochs_5"  # ARGS: the protocol, then the settings given
    assert sum(n.endswith(f"random_tiny/{quick}") for n in names) == 2  # same settings, two data sets
    marble = "marble-features.window_seconds_1.0_probe.lrs_0.01_probe.max_epochs_5_probe.seeds_0"
    assert any(n.endswith(f"random_tiny/{marble}") for n in names)
    assert len({n.split("/")[1] for n in names}) == 2 and all(n.split("/")[1].startswith("set-") for n in names)
    assert {tuple(r["task"]["classes"]) for r in got.values()} == {("pluck", "saw", "sine"), ("pluck", "saw", "tone")}
    assert {r["probe"]["head"] for r in got.values()} == {"linear", "mlp"}


def test_settings_fingerprint_follows_what_changes_scores(small_set):
    from mert.probe.run import manifest_identity, settings_fingerprint
    from mert.probe.tasks import TaskSpec

    mid = manifest_identity(small_set["manifest"])
    base = {"encoder": "random:tiny", "data": {"manifest": "m.csv"}, "probe": {"head": "linear", "max_parallel": 96}}
    fp = settings_fingerprint(base, TaskSpec(name="auto"), mid)
    same = [
        {**base, "progress": False, "run_dir": "x", "device": "cuda"},
        {**base, "probe": {"head": "linear", "max_parallel": 8}},
        {**base, "features": {"cache_dir": "/elsewhere", "batch_size": 2}},
    ]
    assert all(settings_fingerprint(c, TaskSpec(name="auto"), mid) == fp for c in same)
    other = [
        {**base, "random_seed": 1},
        {**base, "probe": {"head": "mlp"}},
        {**base, "features": {"window_seconds": 2.0}},
        {**base, "data": {"manifest": "m.csv", "split_seed": 1}},
        {**base, "encoder": "random:small"},
    ]
    fps = [settings_fingerprint(c, TaskSpec(name="auto"), mid) for c in other]
    fps.append(settings_fingerprint(base, TaskSpec(name="auto", type="regression"), mid))
    fps.append(settings_fingerprint(base, TaskSpec(name="auto"), manifest_identity(small_set["manifest"], "/other")))
    assert len(set(fps) | {fp}) == len(fps) + 1


def test_a_folder_holding_other_settings_is_never_reused(small_set, tmp_path, capsys):
    from mert.probe.run import probe_run_dir
    from mert.probe.tasks import TaskSpec

    cfg = {"encoder": "random:tiny", "runs_root": str(tmp_path), "data": {"manifest": "x/set.csv"}}
    first = probe_run_dir(cfg, TaskSpec(name="auto"), "ab" * 32, "f" * 12)
    first.mkdir(parents=True)
    (first / "results.json").write_text(json.dumps({"settings_fingerprint": "e" * 12}))
    second = probe_run_dir(cfg, TaskSpec(name="auto"), "ab" * 32, "f" * 12)
    assert second != first and second.name.endswith("f" * 12) and second.parent == first.parent
    (first / "results.json").write_text(json.dumps({"settings_fingerprint": "f" * 12}))
    assert probe_run_dir(cfg, TaskSpec(name="auto"), "ab" * 32, "f" * 12) == first  # a rerun: same folder


@pytest.mark.slow
def test_an_explicit_run_dir_of_other_settings_is_refused_unless_overwrite(small_set, tmp_path, capsys):
    run_dir, _ = _run(small_set, tmp_path)
    capsys.readouterr()
    args = [f"data.manifest={small_set['manifest']}", f"features.cache_dir={tmp_path / 'cache'}", f"run_dir={run_dir}"]
    assert cli(["probe", *ARGS, *args, "random_seed=5"]) == 1
    err = capsys.readouterr().err
    assert f"run_dir={run_dir} holds the results of a probe with other settings" in err and "overwrite=true" in err
    assert err.count("error:") == 1
    assert cli(["probe", *ARGS, *args, "random_seed=5", "overwrite=true"]) == 0


@pytest.mark.slow
def test_multirun_writes_under_runs_root_only(small_set, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    runs = tmp_path / "runs"
    _probe_under(runs, small_set["manifest"], tmp_path / "cache", "-m", "probe.max_epochs=3,4", "probe.seeds=[0]")
    assert list(work.iterdir()) == []  # no multirun/DATE/TIME folders in the working directory
    names = sorted(_results_under(runs))
    assert len(names) == 2, names
    assert names[0].endswith("_probe.max_epochs_3_probe.seeds_0") and names[1].endswith(
        "_probe.max_epochs_4_probe.seeds_0"
    )


def _scored(res: dict, source: str, task: str, score: float) -> dict:
    """A copy of ``res`` for another encoder and task whose best candidate scored ``score`` (a fraction)."""
    r = copy.deepcopy(res)
    r["encoder"] = dict(r["encoder"], source=source)
    r["task"] = dict(r["task"], name=task)
    best = r["results"]["best_candidate"]
    r["results"]["candidates"][best]["test"][r["task"]["metrics"][0]]["mean"] = score
    return r


def test_learning_curve_averages_seeds_and_draws_random_and_hand_crafted_lines(one_run, tmp_path):
    from mert.probe.run import learning_curve

    encs = {}
    for name, hours in (("demo-0", 4.0), ("demo-1", 4.0), ("hour-0", 60.0)):
        enc = tmp_path / name
        enc.mkdir()
        (enc / "meta.json").write_text(json.dumps({"training": {"audio_hours_seen": hours}}))
        (enc / "config.json").write_text(json.dumps({"name": "conformer_small"}))
        encs[name] = str(enc)
    scores = {  # (pitch, key)
        encs["demo-0"]: (0.90, 0.60), encs["demo-1"]: (0.80, 0.70), encs["hour-0"]: (0.95, 0.85),
        f"random:{encs['demo-0']}": (0.70, 0.50), "features:all": (0.96, 0.90), "m-a-p/MERT-v1-95M": (0.5, 0.5),
    }  # fmt: skip
    tasks = ("pitch", "key")
    results = [_scored(one_run, src, task, s[i]) for src, s in scores.items() for i, task in enumerate(tasks)]
    panels, skipped = learning_curve(results)
    data = Path(one_run["data"]["manifest"]).name
    mean = panels["mean over 2 tasks"]
    assert list(panels)[0] == "mean over 2 tasks" and len(panels) == 3
    assert sorted(mean["curves"]["conformer_small"]) == [(4.0, pytest.approx(75.0)), (4.0, pytest.approx(75.0)),
                                                          (60.0, pytest.approx(90.0))]  # fmt: skip
    references = {"random conformer_small": pytest.approx(60.0), "hand-crafted (all)": pytest.approx(93.0)}
    assert mean["references"] == references
    metric = one_run["task"]["metrics"][0]
    assert panels[f"{data}: key ({metric})"]["curves"]["conformer_small"][2] == (60.0, pytest.approx(85.0))
    assert skipped == ["m-a-p/MERT-v1-95M: audio-hours seen unknown, left out of the plot"]

"""Probing: manifests, splits, metrics, probes, feature cache and `mert probe` end to end on generated data."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mert import Encoder
from mert.cli import main as cli
from mert.data.splits import seeded_split
from mert.probe import metrics as M
from mert.probe.cache import FeatureCache, FeatureSpec
from mert.probe.manifest import read_manifest
from mert.probe.probes import WEIGHTED, ProbeConfig, ProbeData, run_probes, scorer
from mert.probe.tasks import ProbeDataset, TaskSpec, infer_task_type
from tests.helpers import timbre_clip

SR = 16000  # files are written at 16 kHz so every read is resampled to the encoder's 24 kHz


def _write_manifest(path: Path, rows: list[dict], columns=("path", "label")) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), delimiter="," if path.suffix == ".csv" else "\t")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in columns})
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """60 synthetic 2 s clips with timbre, tempo and beat labels, plus manifests for every task type."""
    root = tmp_path_factory.mktemp("probe_corpus")
    (root / "audio").mkdir()
    rows = []
    for i in range(60):
        timbre = ("sine", "saw", "pluck")[i % 3]
        tempo = (90.0, 150.0)[i % 2]
        wav = timbre_clip(2.0, timbre, tempo, seed=500 + i)
        name = f"audio/c{i:02d}.wav"
        sf.write(root / name, wav, SR)
        beat_n = int(60.0 / tempo * SR)  # timbre_clip's beat grid
        beats = [k * beat_n / SR for k in range(64) if k * beat_n < len(wav)]
        # Frame task: 1 s of this timbre, then 1 s of the next one.
        other = ("sine", "saw", "pluck")[(i + 1) % 3]
        seg = np.concatenate([timbre_clip(1.0, t, 120.0, seed=900 + i) for t in (timbre, other)])
        sf.write(root / f"audio/s{i:02d}.wav", seg, SR)
        rows.append(
            {
                "path": name,
                "timbre": timbre,
                "tags": f"{timbre};{'tempo_slow' if tempo < 120 else 'tempo_fast'}",  # strata: the timbre
                # Regression target the audio determines (a random encoder hears timbre, not tempo).
                "brightness": f"{ {'sine': 1.0, 'saw': 2.0, 'pluck': 3.0}[timbre] + 0.1 * np.sin(i):.4f}",
                "beats": ";".join(f"{b:.4f}" for b in beats),
                "segments": f"0:1:{timbre};1:2:{other}",
                "seg_path": f"audio/s{i:02d}.wav",
            }
        )
    manifests = {}
    for task, col in [
        ("multiclass", "timbre"),
        ("multilabel", "tags"),
        ("regression", "brightness"),
        ("beat", "beats"),
    ]:
        manifests[task] = _write_manifest(root / f"{task}.csv", [{"path": r["path"], "label": r[col]} for r in rows])
    manifests["frame_multiclass"] = _write_manifest(
        root / "frames.tsv", [{"path": r["seg_path"], "label": r["segments"]} for r in rows]
    )
    torch.manual_seed(0)
    enc = Encoder("tiny")
    enc.save_pretrained(root / "encoder")
    return {"root": root, "rows": rows, "manifests": manifests, "encoder": root / "encoder"}


# --- manifests and splits -------------------------------------------------------------------------------------


def test_manifest_columns_relative_paths_segments_and_splits(tmp_path):
    m = _write_manifest(
        tmp_path / "m.csv",
        [
            {"path": "a.wav", "label": "x", "split": "train", "start": "1.5", "end": "3"},
            {"path": "/abs/b.wav", "label": "y", "split": "val"},
        ],
        columns=("path", "label", "split", "start", "end"),
    )
    ex = read_manifest(m)
    assert ex[0].path == tmp_path / "a.wav" and (ex[0].start, ex[0].end, ex[0].split) == (1.5, 3.0, "train")
    assert ex[1].path == Path("/abs/b.wav") and ex[1].split == "valid" and ex[1].start is None
    assert read_manifest(m, root=tmp_path / "r")[0].path == tmp_path / "r" / "a.wav"


@pytest.mark.parametrize(
    ("rows", "columns", "message"),
    [
        ([{"file": "a.wav", "label": "x"}], ("file", "label"), "needs a header row with 'path' and 'label'"),
        ([{"path": "a.wav", "label": "x", "split": "holdout"}], ("path", "label", "split"), "unknown split 'holdout'"),
        ([{"path": "a.wav", "label": "x", "start": "2", "end": "1"}], ("path", "label", "start", "end"), "row 2"),
        ([{"path": "", "label": "x"}], ("path", "label"), "empty 'path'"),
    ],
)
def test_bad_manifests_name_the_problem(tmp_path, rows, columns, message):
    with pytest.raises(ValueError, match=message):
        read_manifest(_write_manifest(tmp_path / "bad.csv", rows, columns))


def test_missing_manifest():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_manifest("/no/such/manifest.csv")


def test_task_type_inference_and_label_parsing(corpus):
    for task, expected in [("multiclass", "multiclass"), ("multilabel", "multilabel"), ("regression", "regression")]:
        ds = ProbeDataset.from_manifest(corpus["manifests"][task], TaskSpec(type="auto"))
        assert ds.task.type == expected
    ml = ProbeDataset.from_manifest(corpus["manifests"]["multilabel"], TaskSpec(type="multilabel"))
    assert ml.classes == sorted({"sine", "saw", "pluck", "tempo_slow", "tempo_fast"} & set(ml.classes))
    assert ml.targets.shape == (60, len(ml.classes)) and (ml.targets.sum(1) == 2).all()
    assert infer_task_type(["1.5", "2"]) == "regression" and infer_task_type(["a", "b;c"]) == "multilabel"


def test_regression_label_that_is_not_a_number(tmp_path):
    m = _write_manifest(tmp_path / "r.csv", [{"path": "a.wav", "label": "fast"}] * 3)
    with pytest.raises(ValueError, match="r.csv row 2: regression label 'fast' is not a number"):
        ProbeDataset.from_manifest(m, TaskSpec(type="regression"))


def test_split_column_must_be_all_or_nothing(tmp_path):
    rows = [{"path": f"{i}.wav", "label": "ab"[i % 2], "split": "train" if i else ""} for i in range(5)]
    m = _write_manifest(tmp_path / "s.csv", rows, ("path", "label", "split"))
    with pytest.raises(ValueError, match="1 of 5 manifest rows have no split"):
        ProbeDataset.from_manifest(m, TaskSpec(type="multiclass"))


def test_classes_the_probe_cannot_learn_or_score_are_warned(tmp_path, caplog):
    """A label only in test (given splits) became a class silently; a one-example class was split silently."""
    rows = [{"path": f"{i}.wav", "label": "ab"[i % 2], "split": ("train", "valid", "test")[i % 3]} for i in range(12)]
    rows.append({"path": "x.wav", "label": "zither", "split": "test"})
    m = _write_manifest(tmp_path / "given.csv", rows, ("path", "label", "split"))
    with caplog.at_level(logging.WARNING, logger="mert"):
        ds = ProbeDataset.from_manifest(m, TaskSpec(type="multiclass"))
    assert "zither" in ds.classes
    assert "class 'zither' has no training example (valid 0, test 1): the probe can never predict it" in caplog.text
    caplog.clear()
    rows = [{"path": f"{i}.wav", "label": "ab"[i % 2]} for i in range(20)] + [{"path": "solo.wav", "label": "solo"}]
    with caplog.at_level(logging.WARNING, logger="mert"):
        ProbeDataset.from_manifest(_write_manifest(tmp_path / "seeded.csv", rows), TaskSpec(type="multiclass"))
    assert "class 'solo' has only 1 example(s): the seeded split put them in train, so valid and test never" in (
        caplog.text
    )
    assert "'a'" not in caplog.text  # well-populated classes are not mentioned


def test_seeded_split_is_stratified_and_deterministic():
    strata = np.repeat(np.arange(4), 50)
    a, b, c = seeded_split(strata, 0), seeded_split(strata, 0), seeded_split(strata, 1)
    assert (a == b).all() and not (a == c).all()
    for k in range(4):
        got = a[strata == k]
        assert [(got == s).sum() for s in ("train", "valid", "test")] == [40, 5, 5]


def test_segments_of_one_file_share_a_split(tmp_path):
    rows = [
        {"path": f"{f}.wav", "label": "ab"[f % 2], "start": str(k), "end": str(k + 1)}
        for f in range(20)
        for k in range(4)
    ]
    m = _write_manifest(tmp_path / "seg.csv", rows, ("path", "label", "start", "end"))
    ds = ProbeDataset.from_manifest(m, TaskSpec(type="multiclass"))
    by_file = {}
    for e, sp in zip(ds.examples, ds.splits):
        by_file.setdefault(e.path, set()).add(sp)
    assert all(len(v) == 1 for v in by_file.values()) and len(by_file) == 20
    assert sorted(ds.splits.tolist()).count("test") == 8  # 2 files x 4 segments (10 % of 10 files per class)


def test_non_utf8_manifest_is_named(tmp_path):
    m = tmp_path / "latin1.csv"
    m.write_bytes("path,label\nfl\xfbte.wav,fl\xfbte\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.csv' is not UTF-8"):
        read_manifest(m)


def test_frame_targets_for_beats_and_segments(corpus):
    beat = ProbeDataset.from_manifest(corpus["manifests"]["beat"], TaskSpec(type="beat", frame_rate=25.0))
    y = beat.frame_targets(1, 50)  # 150 BPM: a beat every 0.4 s = 10 frames
    assert np.flatnonzero(y).tolist() == [0, 10, 20, 30, 40]
    seg = ProbeDataset.from_manifest(corpus["manifests"]["frame_multiclass"], TaskSpec(type="frame_multiclass"))
    t = seg.frame_targets(0, 50)
    assert seg.classes[0] == "none" and seg.classes[t[0]] == "sine" and seg.classes[t[-1]] == "saw"
    assert (t[:25] == t[0]).all() and (t[25:] == t[-1]).all()


# --- metrics ---------------------------------------------------------------------------------------------------


def test_metrics_match_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = (rng.random((200, 6)) < 0.3).astype(np.float32)
    s = y * 0.5 + rng.random((200, 6))
    s[:40, 0] = np.round(s[:40, 0], 1)  # ties
    assert M.roc_auc(y, s) == pytest.approx(sk.roc_auc_score(y, s, average="macro"), abs=1e-9)
    assert M.average_precision(y, s) == pytest.approx(sk.average_precision_score(y, s, average="macro"), abs=1e-9)
    t, p = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    assert M.macro_f1(t, p) == pytest.approx(sk.f1_score(t, p, average="macro"), abs=1e-9)
    r, q = rng.normal(size=(100, 2)), rng.normal(size=(100, 2))
    assert M.r2(r, r + 0.3 * q) == pytest.approx(sk.r2_score(r, r + 0.3 * q), abs=1e-9)


def test_beat_f_measure_matches_mir_eval_and_peak_picking():
    rng = np.random.default_rng(1)
    ref = np.arange(0.5, 20, 0.5)
    keep = ref[rng.random(len(ref)) < 0.7]
    est = np.sort(np.r_[keep + rng.normal(0, 0.04, len(keep)), rng.uniform(0, 20, 8)])
    expected = M._beat_f_measure(ref, est, 0.07)
    mir_eval = pytest.importorskip("mir_eval")
    assert expected == pytest.approx(mir_eval.beat.f_measure(ref, est), abs=1e-9)
    assert M.beat_f_measure(ref, ref) == 1.0 and M.beat_f_measure(ref, []) == 0.0
    onsets = np.sort(np.r_[ref, ref + 0.03])  # close pairs: maximum matching matters
    guess = np.sort(onsets + rng.normal(0, 0.02, len(onsets)))
    assert M.onset_f_measure(onsets, guess) == pytest.approx(mir_eval.onset.f_measure(onsets, guess)[0], abs=1e-9)
    act = np.zeros(100)
    act[[10, 11, 30, 31, 32, 70]] = [0.9, 0.7, 0.6, 0.95, 0.6, 0.4]
    assert M.pick_peaks(act, 25.0).tolist() == [10 / 25, 31 / 25]


# --- probes on features the test makes ---------------------------------------------------------------------------


def _features(n=300, layers=4, d=16, informative=2, classes=4, seed=0):
    """Features where only one layer carries the class: the probe must find it, and beat chance only there."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, layers, d, generator=g)
    centres = torch.randn(classes, d, generator=g) * 1.5
    x[:, informative] += centres[y]
    return x, y


def _data(x, y, kind="multiclass", metrics=("accuracy",)):
    n = len(y)
    idx = {"train": slice(0, int(0.6 * n)), "valid": slice(int(0.6 * n), int(0.8 * n)), "test": slice(int(0.8 * n), n)}
    ys = {s: y[i] for s, i in idx.items()}
    outputs = int(y.max()) + 1 if kind == "multiclass" else y.shape[1]
    return ProbeData(
        {s: x[i] for s, i in idx.items()},
        ys,
        kind,
        outputs,
        tuple(metrics),
        scorer(kind, {s: v.numpy() for s, v in ys.items()}, metrics),
    )


QUICK = ProbeConfig(head="linear", lrs=(1e-2,), seeds=(0, 1), max_epochs=30, patience=5)


def test_probe_finds_the_informative_layer_and_shuffled_labels_stay_at_chance():
    x, y = _features()
    res = run_probes(_data(x, y), 4, QUICK)
    assert res.best == 2
    acc = res.candidates[2].test_mean_std("accuracy")[0]
    assert acc > 0.9, acc  # chance is 0.25
    assert max(res.candidates[c].test_mean_std("accuracy")[0] for c in (0, 1, 3)) < 0.45
    assert np.argmax(np.mean(res.candidates[WEIGHTED].layer_weights, 0)) == 1  # layer 2 among mixed layers 1..3
    # Labels shuffled independently of the features: nothing to learn, so no split leaks a score above chance.
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(5))]
    res = run_probes(_data(x, shuffled), 4, QUICK)
    assert all(r.test_mean_std("accuracy")[0] < 0.42 for r in res.candidates.values())


def test_heads_trained_side_by_side_equal_heads_trained_alone(monkeypatch):
    import mert.probe.probes as P

    shed, compact = [], P._compact
    monkeypatch.setattr(P, "_compact", lambda h, o, keep, lr: shed.append(int(keep.sum())) or compact(h, o, keep, lr))
    x, y = _features(n=200)
    data = _data(x, y, metrics=("accuracy",))
    # Short patiences: heads stop at different epochs (the group sheds them) and LRs get cut on plateaus.
    cfg = ProbeConfig(
        head="linear",
        layers=[0, 1, 2, WEIGHTED],
        lrs=(1e-3, 3e-2),
        seeds=(0,),
        max_epochs=25,
        patience=3,
        plateau_patience=1,
        plateau_factor=0.5,
    )
    together = run_probes(data, 4, cfg)
    assert shed, "no head stopped early: the test no longer covers shedding stopped heads"
    alone = run_probes(data, 4, ProbeConfig(**{**cfg.__dict__, "max_parallel": 1}))
    for c in (0, 1, 2, WEIGHTED):
        assert together.candidates[c].val == pytest.approx(alone.candidates[c].val, abs=1e-6)
        assert together.candidates[c].test[0]["accuracy"] == pytest.approx(alone.candidates[c].test[0]["accuracy"])
    assert np.allclose(together.candidates[WEIGHTED].layer_weights, alone.candidates[WEIGHTED].layer_weights, atol=1e-5)
    # MLP heads with dropout: masks come from per-head generators, not torch's global RNG.
    mlp = ProbeConfig(**{**cfg.__dict__, "head": "mlp", "hidden": 16, "dropout": 0.3, "max_epochs": 6})
    torch.manual_seed(1)
    a = run_probes(data, 4, mlp)
    torch.manual_seed(2)
    b = run_probes(data, 4, ProbeConfig(**{**mlp.__dict__, "max_parallel": 3}))
    for c in (0, 1, 2, WEIGHTED):
        assert a.candidates[c].val == pytest.approx(b.candidates[c].val, abs=1e-6)
        assert a.candidates[c].test[0]["accuracy"] == pytest.approx(b.candidates[c].test[0]["accuracy"])


def test_mlp_regression_and_multilabel_probes_learn():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 2, 8, generator=g)
    y = torch.stack([x[:, 1, 0] * 2 + 1, x[:, 1, 1] - x[:, 1, 2]], 1)
    cfg = ProbeConfig(head="mlp", hidden=32, layers="sweep", lrs=(1e-2,), seeds=(0,), max_epochs=40)
    res = run_probes(_data(x, y, "regression", ("r2",)), 2, cfg)
    assert res.best == 1 and res.candidates[1].test[0]["r2"] > 0.8 and res.candidates[0].test[0]["r2"] < 0.2
    tags = (x[:, 1, :3] > 0).float()
    res = run_probes(_data(x, tags, "multilabel", ("roc_auc", "average_precision")), 2, cfg)
    assert res.candidates[1].test[0]["roc_auc"] > 0.9 and res.candidates[0].test[0]["roc_auc"] < 0.65


def test_layer_ids_name_candidates_and_shape_the_weighted_sum():
    x, y = _features(layers=3, informative=1)  # feature position 1 holds the class
    cfg = ProbeConfig(head="linear", lrs=(1e-2,), seeds=(0,), max_epochs=20)
    res = run_probes(_data(x, y), 3, cfg, layer_ids=[0, 7, 9])  # e.g. features.layers=0,7,9
    assert set(res.candidates) == {0, 7, 9, WEIGHTED} and res.best == 7
    assert len(res.candidates[WEIGHTED].layer_weights[0]) == 2  # hidden state 0 left out of the mix
    res = run_probes(_data(x, y), 3, cfg, layer_ids=[6, 7, 8])
    assert len(res.candidates[WEIGHTED].layer_weights[0]) == 3  # no hidden state 0 cached: all are mixed
    res = run_probes(_data(x, y), 3, ProbeConfig(**{**cfg.__dict__, "layers": [WEIGHTED, 8, 8]}), layer_ids=[6, 7, 8])
    assert list(res.candidates) == [8, WEIGHTED] and len(res.candidates[8].test) == 1


def test_probe_config_errors():
    with pytest.raises(ValueError, match="'mlp' or 'linear'"):
        ProbeConfig(head="svm")
    x, y = _features(n=50)
    with pytest.raises(ValueError, match="not among the cached hidden states"):
        run_probes(_data(x, y), 4, ProbeConfig(layers=[7], lrs=(1e-2,), seeds=(0,)))


# --- feature cache -------------------------------------------------------------------------------------------


def test_cache_matches_direct_encoding_and_resumes(corpus, tmp_path, monkeypatch):
    enc = Encoder.from_pretrained(corpus["encoder"])
    ds = ProbeDataset.from_manifest(corpus["manifests"]["multiclass"], TaskSpec(type="multiclass"))
    spec = FeatureSpec(window_seconds=0.75, min_window_seconds=0.4)
    cache = FeatureCache(tmp_path, enc, spec, batch_size=4)
    # Interrupted after two batches: what was finished stays, the rest is computed on the next run.
    calls = {"n": 0}
    original = FeatureCache._encode_windows

    def flaky(self, windows):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return original(self, windows)

    monkeypatch.setattr(FeatureCache, "_encode_windows", flaky)
    with pytest.raises(KeyboardInterrupt):
        cache.extract(ds, progress=False)
    done = len(list((cache.folder / "items").glob("*.npy")))
    assert 0 < done < 60 and not list((cache.folder / "items").glob(".*tmp"))
    monkeypatch.setattr(FeatureCache, "_encode_windows", original)
    report = FeatureCache(tmp_path, enc, spec, batch_size=4).extract(ds, progress=False)
    assert (report.cached, report.computed, report.skipped) == (done, 60 - done, {})
    again = FeatureCache(tmp_path, enc, spec, batch_size=4).extract(ds, progress=False)
    assert (again.cached, again.computed) == (60, 0)
    # A clip's cached feature = the mean over its windows (each encoded alone) of each layer's mean over frames.
    feats, ok = cache.load(ds)
    assert ok.all() and feats[0].shape == (enc.num_layers + 1, enc.hidden_size)
    from mert.audio import resample

    wav = resample(torch.from_numpy(sf.read(ds.examples[0].path, dtype="float32")[0]), SR, enc.sample_rate)
    assert wav.shape[0] == 48000  # windows of 18000, 18000 and a kept remainder of 12000 samples (0.5 s >= 0.4 s)
    with torch.inference_mode():
        wins = [torch.stack(enc(wav[a : a + 18000]).hidden_states, 1)[0].mean(1) for a in (0, 18000, 36000)]
    assert np.abs(torch.stack(wins).mean(0).numpy() - feats[0]).max() < 1e-4


def test_unreadable_and_missing_files_are_skipped_and_reported(corpus, tmp_path):
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF\x00\x00not really audio")
    rows = [{"path": str(corpus["root"] / r["path"]), "label": r["timbre"]} for r in corpus["rows"][:12]]
    rows += [{"path": str(bad), "label": "sine"}, {"path": str(tmp_path / "gone.wav"), "label": "saw"}]
    m = _write_manifest(tmp_path / "m.csv", rows)
    enc = Encoder.from_pretrained(corpus["encoder"])
    cache = FeatureCache(tmp_path / "cache", enc, FeatureSpec())
    report = cache.extract(
        ProbeDataset.from_manifest(m, TaskSpec(type="multiclass"), split_fractions=(0.5, 0.25, 0.25)), progress=False
    )
    assert report.computed == 12 and set(report.skipped) == {str(bad), str(tmp_path / "gone.wav")}
    assert (
        "could not read audio file" in report.skipped[str(bad)]
        and "does not exist" in report.skipped[str(tmp_path / "gone.wav")]
    )
    assert set(json.loads((cache.folder / "skipped.json").read_text())) == set(report.skipped)


# --- `mert probe` end to end -----------------------------------------------------------------------------------

QUICK_ARGS = [
    "protocol=quick",
    "probe.max_epochs=15",
    "progress=false",
    "features.window_seconds=1.0",
    "data.split_fractions=[0.5,0.25,0.25]",
]


def _probe(corpus, tmp_path, manifest, *extra, encoder=None) -> dict:
    run_dir = tmp_path / "runs" / Path(manifest).stem / (encoder or "pre").replace(":", "_").replace("/", "_")[-20:]
    code = cli(
        [
            "probe",
            f"encoder={encoder or corpus['encoder']}",
            f"data.manifest={manifest}",
            f"features.cache_dir={tmp_path / 'cache'}",
            f"run_dir={run_dir}",
            *QUICK_ARGS,
            *extra,
        ]
    )
    assert code == 0
    assert (run_dir / "results.md").is_file()
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.parametrize(
    ("task", "extra", "metric", "floor"),
    [
        ("multiclass", [], "accuracy", 0.6),  # 3 timbres: chance 0.33
        ("multilabel", [], "roc_auc", 0.6),
        ("regression", [], "r2", 0.5),
        ("beat", ["task=beat"], "beat_f1", 0.3),
        ("onset", ["task=onset"], "onset_f1", 0.3),  # the beat times read as onsets (50 ms window)
        ("frame_multiclass", ["task=frame_multiclass"], "frame_accuracy", 0.42),  # chance 0.33; ~0.47 measured
    ],
)
def test_mert_probe_each_task_type_end_to_end(corpus, tmp_path, task, extra, metric, floor):
    res = _probe(corpus, tmp_path, corpus["manifests"]["beat" if task == "onset" else task], *extra)
    assert res["task"]["type"] == task
    assert res["data"]["splits"] == {"train": 30, "valid": 15, "test": 15}
    best = res["results"]["candidates"][res["results"]["best_candidate"]]
    assert best["test"][metric]["mean"] > floor, res["headline"]
    assert set(res["results"]["candidates"]) == {"0", "1", "2", "weighted"}
    weighted = res["results"]["candidates"]["weighted"]
    assert len(weighted["layer_weights_mean"]) == 2 and weighted["layer_weights_layers"] == [1, 2]  # no input


def test_named_task_config_and_compare_table(corpus, tmp_path, capsys):
    pre = _probe(corpus, tmp_path, corpus["manifests"]["multiclass"], "task=gtzan_genre")
    rnd = _probe(
        corpus,
        tmp_path,
        corpus["manifests"]["multiclass"],
        "task=gtzan_genre",
        "random_seed=3",
        encoder=f"random:{corpus['encoder']}",
    )
    assert pre["task"]["name"] == "gtzan_genre" and pre["task"]["metrics"] == ["accuracy", "macro_f1"]
    assert pre["encoder"]["fingerprint"] != rnd["encoder"]["fingerprint"]
    assert pre["encoder"]["config"] == rnd["encoder"]["config"]
    capsys.readouterr()
    runs = sorted(str(p.parent) for p in (tmp_path / "runs").rglob("results.json"))
    assert cli(["probe", "compare", *runs, "--out", str(tmp_path / "cmp.md")]) == 0
    table = capsys.readouterr().out
    assert f"random:{corpus['encoder']}" in table and "| multiclass.csv: gtzan_genre | accuracy (best layer) |" in table
    assert (tmp_path / "cmp.md").read_text() == table


def test_results_name_the_skipped_files_and_why(corpus, tmp_path):
    bad = corpus["root"] / "audio" / "broken.wav"
    bad.write_bytes(b"RIFF....WAVEfmt garbage")
    rows = [{"path": r["path"], "label": r["timbre"]} for r in corpus["rows"]] + [
        {"path": "audio/broken.wav", "label": "saw"}
    ]
    m = _write_manifest(corpus["root"] / "with_broken.csv", rows)
    res = _probe(corpus, tmp_path, m)
    assert res["features"]["skipped"] == 1
    ((name, why),) = res["features"]["skipped_files"].items()
    assert name == str(bad) and "could not read audio file" in why
    run_dir = tmp_path / "runs" / "with_broken" / "pre"
    assert json.loads((run_dir / "skipped.json").read_text()) == {name: why}


def test_second_run_reuses_the_feature_cache(corpus, tmp_path):
    first = _probe(corpus, tmp_path, corpus["manifests"]["multiclass"])
    second = _probe(corpus, tmp_path, corpus["manifests"]["multiclass"])
    assert (first["features"]["computed"], second["features"]["computed"], second["features"]["from_cache"]) == (
        60,
        0,
        60,
    )
    assert first["results"] == second["results"]  # seeded: the same scores from the same features


def test_probe_cli_errors(corpus, tmp_path, capsys):
    assert cli(["probe", "encoder=random:tiny", f"data.manifest={tmp_path / 'none.csv'}", "progress=false"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert cli(["probe", "compare", str(tmp_path)]) == 1
    assert "has no results.json" in capsys.readouterr().err
    # Config mistakes are usage errors (exit 2) in one message, with the valid choices, not a traceback.
    assert cli(["probe", "encoder=random:tiny", "data.manifest=x.csv", "task=instrument"]) == 2
    err = capsys.readouterr().err
    assert "mert probe: error:" in err and "task/instrument" in err and "gtzan_genre" in err
    assert "Traceback" not in err and "Config search path" not in err
    assert cli(["probe", "encoder=random:tiny", "data.manifst=x.csv"]) == 2
    assert "data.manifst" in capsys.readouterr().err


def test_odd_sample_rates_resample_quickly_to_the_promised_length():
    from mert.audio import resample, resampled_length

    # 47999 Hz reduces to 47999/24000: torchaudio's exact kernel needed 19 GB; snapped to 48 kHz it is instant.
    x = torch.randn(47999)
    y = resample(x, 47999, 24000)
    assert y.shape[-1] == resampled_length(47999, 47999, 24000) == 24000
    assert torch.allclose(y, resample(x, 48000, 24000)[..., :24000], atol=1e-6)

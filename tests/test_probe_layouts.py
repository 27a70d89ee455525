"""`mert.probe.layouts`: data-set folders as users have them -> labelled manifests, and `mert probe manifest`.

Each test builds a tiny fake tree in tmp_path in the real on-disk layout (short audio files written with
soundfile, annotation files in the data sets' own formats) and checks labels, splits, counts and skip reports.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mert.cli.probe import manifest_cli
from mert.probe.layouts import (
    LAYOUTS,
    MARBLE_VOCALSET_TECHNIQUES,
    ManifestRow,
    emo,
    giantsteps,
    gtzan,
    gtzan_beat,
    mtt,
    normalize_key,
    nsynth,
    read_manifest,
    vocalset,
    write_manifest,
)

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "probe"
TASKS = {
    "multiclass",
    "gtzan_genre",
    "gtzan_beat",
    "nsynth_instrument",
    "nsynth_pitch",
    "giantsteps_key",
    "mtt_tagging",
    "emo_regression",
    "vocalset_technique",
    "vocalset_singer",
}


def _audio(path: Path, seconds: float = 0.05, sr: int = 22050, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * sr)).astype(np.float32)
    sf.write(str(path), x, sr)
    return path


def _by_name(rows: list[ManifestRow]) -> dict[str, ManifestRow]:
    return {Path(r.path).name: r for r in rows}


def _reasons(result) -> dict[str, int]:
    return {k: len(v) for k, v in result.skipped_by_reason().items()}


# ---------------------------------------------------------------------------------------------- GTZAN
def _gtzan_tree(root: Path, sub: str = "genres", ext: str = ".wav", n: int = 10) -> Path:
    for g in ("blues", "jazz", "rock"):
        for i in range(n):
            _audio(root / sub / g / f"{g}.{i:05d}{ext}", seed=i)
    return root


def test_gtzan_seeded_split_is_stratified_and_reproducible(tmp_path):
    root = _gtzan_tree(tmp_path / "gtzan")
    _audio(root / "genres" / "blues" / "take2.wav")  # not <genre>.000NN
    res = gtzan(root, seed=0)
    assert len(res.rows) == 30
    assert Counter(r.label for r in res.rows) == {"blues": 10, "jazz": 10, "rock": 10}
    per = Counter((r.label, r.split) for r in res.rows)
    assert all(per[(g, "train")] == 8 and per[(g, "valid")] == 1 and per[(g, "test")] == 1 for g in ("blues", "jazz"))
    assert _reasons(res) == {"not named <genre>/<genre>.000NN": 1}
    assert [r.split for r in gtzan(root, seed=0).rows] == [r.split for r in res.rows]
    assert [r.split for r in gtzan(root, seed=1).rows] != [r.split for r in res.rows]
    assert all(Path(r.path).is_absolute() and Path(r.path).is_file() for r in res.rows)


@pytest.mark.parametrize("sub, ext", [("genres", ".au"), ("Data/genres_original", ".wav")])
def test_gtzan_filtered_split_files(tmp_path, sub, ext):
    root = _gtzan_tree(tmp_path / "gtzan", sub=sub, ext=ext, n=3)
    _audio(root / sub / "jazz" / f"jazz.00054{ext}")  # the known corrupt clip: listed all the same
    (root / "train_filtered.txt").write_text("blues/blues.00000.wav\nblues/blues.00001.wav\njazz/jazz.00054.wav\n")
    (root / "valid_filtered.txt").write_text("jazz/jazz.00000.wav\n\n")
    (root / "test_filtered.txt").write_text("rock/rock.00002.wav\nrock/rock.00099.wav\n")
    res = gtzan(root)
    got = {Path(r.path).stem: (r.label, r.split) for r in res.rows}
    assert got == {
        "blues.00000": ("blues", "train"),
        "blues.00001": ("blues", "train"),
        "jazz.00054": ("jazz", "train"),
        "jazz.00000": ("jazz", "valid"),
        "rock.00002": ("rock", "test"),
    }
    assert _reasons(res) == {
        "listed in a *_filtered.txt file but no audio file": 1,
        "not in the fault-filtered split lists": 5,  # 10 files - 5 listed
    }
    assert any("fault-filtered" in n for n in res.notes)


def test_gtzan_partial_split_files_and_wrong_folder(tmp_path):
    root = _gtzan_tree(tmp_path / "gtzan", n=1)
    (root / "train_filtered.txt").write_text("blues/blues.00000.wav\n")
    with pytest.raises(FileNotFoundError, match=r"missing \['test_filtered.txt', 'valid_filtered.txt'\]"):
        gtzan(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no genre folders.*empty.*genres/<genre>/<genre>\.000NN"):
        gtzan(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"gtzan: folder .*nowhere.* does not exist; expected ROOT/genres"):
        gtzan(tmp_path / "nowhere")


def test_gtzan_beat(tmp_path):
    root = _gtzan_tree(tmp_path / "gtzan", n=2)
    beats = root / "gtzan_tempo_beat-main" / "beats"
    beats.mkdir(parents=True)
    (beats / "gtzan_blues_00000.beats").write_text("0.51\t1\n1.02\t2\n1.535\t3\n")
    (beats / "gtzan_blues_00001.beats").write_text("0.25\n0.75\n")  # one column: times only
    (beats / "gtzan_jazz_00000.beats").write_text("")  # no beats
    (beats / "gtzan_jazz_00001.beats").write_text("0.4 1\nnot-a-number 2\n")
    (beats / "gtzan_pop_00000.beats").write_text("0.5 1\n")  # no audio
    res = gtzan_beat(root)
    got = {Path(r.path).stem: r.label for r in res.rows}
    assert got == {"blues.00000": "0.51;1.02;1.535", "blues.00001": "0.25;0.75"}
    assert res.task == "gtzan_beat"
    reasons = _reasons(res)
    assert reasons["no beat annotation"] == 2  # rock.00000, rock.00001
    assert reasons["beat annotation has no beats"] == 1
    assert reasons["beat annotation without audio file"] == 1
    assert sum(v for k, v in reasons.items() if k.startswith("unreadable beat annotation")) == 1
    with pytest.raises(FileNotFoundError, match=r"no \*\.beats files.*beats/gtzan_<genre>_000NN\.beats"):
        gtzan_beat(_gtzan_tree(tmp_path / "nobeats", n=1))


# ---------------------------------------------------------------------------------------------- NSynth
def _nsynth_tree(root: Path, per_class: int = 6) -> Path:
    families = ["bass", "guitar", "vocal"]
    for split, n in (("train", per_class), ("valid", 2), ("test", 2)):
        meta = {}
        for f_idx, fam in enumerate(families):
            for i in range(n):
                note = f"{fam}_acoustic_{f_idx:03d}-{40 + i:03d}-100"
                meta[note] = {"instrument_family_str": fam, "pitch": 40 + i, "note_str": note}
                if not (split == "test" and fam == "vocal" and i == 1):  # one listed clip without audio
                    _audio(root / f"nsynth-{split}" / "audio" / f"{note}.wav", sr=16000, seed=i)
        (root / f"nsynth-{split}").mkdir(parents=True, exist_ok=True)
        (root / f"nsynth-{split}" / "examples.json").write_text(json.dumps(meta))
    return root


def test_nsynth_instrument_and_pitch(tmp_path):
    root = _nsynth_tree(tmp_path / "nsynth")
    inst = nsynth(root, task="instrument")
    assert inst.task == "nsynth_instrument"
    assert Counter(r.split for r in inst.rows) == {"train": 18, "valid": 6, "test": 5}
    assert {r.label for r in inst.rows} == {"bass", "guitar", "vocal"}
    assert _reasons(inst) == {"in examples.json but no audio file": 1}
    row = _by_name(inst.rows)["guitar_acoustic_001-042-100.wav"]  # pitch 42: in train only
    assert (row.label, row.split, Path(row.path).parent.parent.name) == ("guitar", "train", "nsynth-train")
    pitch = nsynth(root, task="pitch")
    assert pitch.task == "nsynth_pitch"
    assert {r.label for r in pitch.rows if r.split == "train"} == {str(p) for p in range(40, 46)}


def test_nsynth_max_per_class_subsamples_train_only(tmp_path):
    root = _nsynth_tree(tmp_path / "nsynth")
    res = nsynth(root, max_per_class=2, seed=3)
    train = [r for r in res.rows if r.split == "train"]
    assert Counter(r.label for r in train) == {"bass": 2, "guitar": 2, "vocal": 2}
    assert Counter(r.split for r in res.rows)["valid"] == 6  # valid/test untouched
    assert [r.path for r in nsynth(root, max_per_class=2, seed=3).rows] == [r.path for r in res.rows]
    assert any("kept 6 of 18" in n for n in res.notes)
    with pytest.raises(ValueError, match="task must be one of"):
        nsynth(root, task="timbre")
    with pytest.raises(FileNotFoundError, match=r"none of nsynth-train/valid/test.*examples\.json"):
        nsynth(tmp_path)


# ---------------------------------------------------------------------------------------------- GiantSteps
@pytest.mark.parametrize(
    "text, key",
    [
        ("Db major", "C# major"),
        ("c# Major\n", "C# major"),
        ("eb minor", "D# minor"),
        ("Gb min", "F# minor"),
        ("A minor", "A minor"),
        ("Bb major", "A# major"),
        ("Cb major", "B major"),
        ("E# minor", "F minor"),
        ("f minor -", "F minor"),
    ],
)
def test_normalize_key(text, key):
    assert normalize_key(text) == key


@pytest.mark.parametrize("text", ["", "-", "C dorian", "H minor", "F minor / Ab major", "Cx major"])
def test_normalize_key_refuses(text):
    with pytest.raises(ValueError):
        normalize_key(text)


def _gs_checkout(root: Path, keys: dict[str, str], with_audio: set[str] | None = None) -> Path:
    for tid, key in keys.items():
        ann = root / "annotations" / "key" / f"{tid}.LOFI.key"
        ann.parent.mkdir(parents=True, exist_ok=True)
        ann.write_text(key)
        if with_audio is None or tid in with_audio:
            _audio(root / "audio" / f"{tid}.LOFI.mp3", seed=int(tid) % 97)
    return root


def test_giantsteps_single_checkout(tmp_path):
    keys = {"101": "Db major", "102": "C# major", "103": "eb minor", "104": "F minor / Ab major", "105": "A minor"}
    root = _gs_checkout(tmp_path / "giantsteps-key-dataset", keys, with_audio={"101", "102", "103", "104"})
    _audio(root / "audio" / "999.LOFI.mp3")  # audio without annotation
    res = giantsteps(root, split="test")
    got = {Path(r.path).name.split(".")[0]: (r.label, r.split) for r in res.rows}
    assert got == {"101": ("C# major", "test"), "102": ("C# major", "test"), "103": ("D# minor", "test")}
    reasons = _reasons(res)
    assert reasons["key annotation without audio file"] == 1
    assert reasons["audio without key annotation"] == 1
    assert sum(v for k, v in reasons.items() if "more than one key" in k) == 1
    train = giantsteps(root, split="train", seed=0)
    assert {r.split for r in train.rows} <= {"train", "valid"}
    with pytest.raises(ValueError, match="split must be"):
        giantsteps(root, split="valid")


def test_giantsteps_marble_arrangement_with_confidence_filter(tmp_path):
    test_keys = {str(i): k for i, k in enumerate(["C major", "Db major", "A minor", "e minor"], start=1)}
    _gs_checkout(tmp_path / "giantsteps-key-dataset-master", test_keys)
    train_keys = {str(100 + i): ["G major", "Ab major", "f# minor"][i % 3] for i in range(30)}
    mtg = _gs_checkout(tmp_path / "giantsteps-mtg-key-dataset-master", train_keys)
    lines = ["ID\tMANUAL KEY\tC\tGENRE"]
    lines += [f"{tid}\t{k}\t{1 if tid in ('100', '101') else 2}\ttechno" for tid, k in train_keys.items()]
    (mtg / "annotations" / "annotations.txt").write_text("\n".join(lines) + "\n")
    res = giantsteps(tmp_path)
    splits = Counter(r.split for r in res.rows)
    assert splits["test"] == 4 and splits["train"] + splits["valid"] == 28
    assert splits["valid"] > 0
    assert {r.label for r in res.rows if r.split != "test"} == {"G major", "G# major", "F# minor"}
    assert _reasons(res) == {"key confidence C != 2 (or not listed) in annotations.txt": 2}
    with pytest.raises(ValueError, match="leave out --split"):
        giantsteps(tmp_path, split="test")


def test_giantsteps_nothing_usable(tmp_path):
    root = _gs_checkout(tmp_path / "gs", {"1": "-", "2": "F minor / Ab major"})
    with pytest.raises(ValueError, match=r"giantsteps: no usable clips under .*unusable key annotation"):
        giantsteps(root)
    (tmp_path / "bare").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \*\.key annotation files.*annotations/key/<id>\.LOFI\.key"):
        giantsteps(tmp_path / "bare")


# ---------------------------------------------------------------------------------------------- MagnaTagATune
MTT_TAGS = ["guitar", "classical", "slow", "techno", "piano"]
MTT_CLIPS = [  # mp3_path, tags set
    ("0/a-1-0-29.mp3", {"guitar", "slow"}),
    ("0/a-2-0-29.mp3", {"guitar"}),
    ("b/b-1-0-29.mp3", {"classical", "guitar"}),
    ("c/c-1-0-29.mp3", {"classical", "slow"}),
    ("d/d-1-0-29.mp3", {"piano"}),  # piano is not in the top 3: no top-3 tag
    ("f/f-1-0-29.mp3", {"slow", "techno"}),
    ("f/f-2-0-29.mp3", {"guitar"}),  # no audio file
]


def _mtt_tree(root: Path) -> Path:
    lines = ["\t".join(f'"{c}"' for c in ["clip_id", *MTT_TAGS, "mp3_path"])]
    for i, (rel, tags) in enumerate(MTT_CLIPS):
        flags = [str(int(t in tags)) for t in MTT_TAGS]
        lines.append("\t".join(f'"{c}"' for c in [str(i + 2), *flags, rel]))
        if rel != "f/f-2-0-29.mp3":
            _audio(root / "mp3" / rel, seed=i)
    root.mkdir(parents=True, exist_ok=True)
    (root / "annotations_final.csv").write_text("\n".join(lines) + "\n")
    return root


def test_mtt_top_k_and_folder_split(tmp_path):
    root = _mtt_tree(tmp_path / "mtt")
    res = mtt(root, top_k=3)
    # counts: guitar 4, classical 2, slow 3, techno 1, piano 1 -> top 3 = guitar, slow, classical
    got = {r.path.as_posix().split("/mp3/")[1]: (r.label, r.split) for r in res.rows}
    assert got == {
        "0/a-1-0-29.mp3": ("guitar;slow", "train"),
        "0/a-2-0-29.mp3": ("guitar", "train"),
        "b/b-1-0-29.mp3": ("guitar;classical", "train"),
        "c/c-1-0-29.mp3": ("slow;classical", "valid"),
        "f/f-1-0-29.mp3": ("slow", "test"),
    }
    assert _reasons(res) == {"no top-3 tag": 1, "in annotations_final.csv but no audio file": 1}
    assert res.task == "mtt_tagging"


def test_mtt_won_split_files(tmp_path):
    root = _mtt_tree(tmp_path / "mtt")
    split = root / "split" / "mtat"
    split.mkdir(parents=True)
    np.save(split / "train.npy", np.array(["0\tc/c-1-0-29.mp3", "1\t0/a-1-0-29.mp3"]))
    np.save(split / "valid.npy", np.array(["2\tf/f-1-0-29.mp3"]))
    np.save(split / "test.npy", np.array(["3\tb/b-1-0-29.mp3"]))
    res = mtt(root, top_k=3)
    got = {r.path.as_posix().split("/mp3/")[1]: r.split for r in res.rows}
    assert got == {
        "c/c-1-0-29.mp3": "train",
        "0/a-1-0-29.mp3": "train",
        "f/f-1-0-29.mp3": "valid",
        "b/b-1-0-29.mp3": "test",
    }
    assert _reasons(res)["not in Won et al.'s split lists"] == 1  # 0/a-2
    assert any("Won et al." in n for n in res.notes)


def test_mtt_errors(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no annotations_final\.csv.*mp3/0\.\.f"):
        mtt(tmp_path / "x")
    (tmp_path / "x" / "annotations_final.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match="clip_id ... mp3_path"):
        mtt(tmp_path / "x")


# ---------------------------------------------------------------------------------------------- EMO
def _emo_tree(root: Path, n: int = 20, official: bool = True) -> Path:
    ann = root / "annotations"
    ann.mkdir(parents=True)
    rows = ["song_id,mean_arousal,std_arousal,mean_valence,std_valence"]
    info = ["song_id,file_name,Artist,Song title,Mediaeval 2013 set"]
    for sid in range(2, 2 + n):
        rows.append(f"{sid}, {3 + sid / 10:.1f}, 0.5, {5 - sid / 20:.2f}, 0.7")
        info.append(f"{sid},{sid}.mp3,artist {sid},song,{'evaluation' if sid % 5 == 0 else 'development'}")
        _audio(root / "clips_45seconds" / f"{sid}.mp3", seed=sid)
    _audio(root / "clips_45seconds" / "999.mp3")  # a clip without annotation
    (ann / "static_annotations.csv").write_text("\n".join(rows) + "\n")
    if official:
        (ann / "songs_info.csv").write_text("\n".join(info) + "\n")
    return root


def test_emo_labels_and_official_split(tmp_path):
    res = emo(_emo_tree(tmp_path / "emo"))
    rows = _by_name(res.rows)
    assert len(rows) == 20
    assert rows["2.mp3"].label == "4.9;3.2"  # valence;arousal
    values = rows["7.mp3"].label.split(";")
    assert [float(v) for v in values] == [4.65, 3.7]
    assert {n for n, r in rows.items() if r.split == "test"} == {f"{s}.mp3" for s in (5, 10, 15, 20)}
    assert Counter(r.split for r in res.rows) == {"train": 14, "valid": 2, "test": 4}
    assert _reasons(res) == {"no static annotation": 1}
    assert res.task == "emo_regression"


def test_emo_seeded_split_without_songs_info(tmp_path):
    res = emo(_emo_tree(tmp_path / "emo", official=False), seed=0)
    assert Counter(r.split for r in res.rows) == {"train": 16, "valid": 2, "test": 2}
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no static_annotations\.csv.*clips_45seconds"):
        emo(tmp_path / "empty")
    (tmp_path / "emo" / "clips_45seconds" / "3.mp3").unlink()  # annotated, but its audio is gone
    assert _reasons(emo(tmp_path / "emo"))["annotated but no audio file"] == 1


# ---------------------------------------------------------------------------------------------- VocalSet
SINGERS = ["f1", "f2", "m3", "m4"]
TECHNIQUES = [("arpeggios", "belt"), ("arpeggios", "vibrato"), ("long_tones", "messa"), ("scales", "vibrato")]


def _vocalset_tree(root: Path) -> Path:
    for s in SINGERS:
        for context, tech in TECHNIQUES:
            for vowel in "aeiou":
                _audio(root / "FULL" / s / context / tech / f"{s}_{context}_{tech}_{vowel}.wav", seed=len(vowel))
    _audio(root / "FULL" / "f1" / "stray.wav")
    (root / "FULL" / "f1" / "arpeggios" / "belt" / "._f1_arpeggios_belt_a.wav").write_bytes(b"\0" * 10)
    return root


def test_vocalset_technique_holds_out_marble_singers(tmp_path):
    root = _vocalset_tree(tmp_path / "VocalSet")
    res = vocalset(root, task="technique")
    assert res.task == "vocalset_technique"
    assert {r.label for r in res.rows} == {"belt", "vibrato", "messa"}
    test_singers = {Path(r.path).relative_to(root / "FULL").parts[0] for r in res.rows if r.split == "test"}
    assert test_singers == {"f2", "m3"}
    other = [r for r in res.rows if r.split != "test"]
    assert len(other) == 40 and {r.split for r in other} == {"train", "valid"}
    assert Counter(r.split for r in other)["valid"] == 4  # 10% of each technique: belt 1, messa 1, vibrato 2
    assert _reasons(res) == {"not at <singer>/<context>/<technique>/<file>": 1}  # the ._ fork is ignored
    marble = vocalset(root, techniques=MARBLE_VOCALSET_TECHNIQUES)
    assert {r.label for r in marble.rows} == {"belt", "vibrato"}
    assert _reasons(marble)["technique not selected"] == 20


def test_vocalset_singer(tmp_path):
    res = vocalset(_vocalset_tree(tmp_path / "VocalSet"), task="singer", seed=0)
    assert Counter(r.label for r in res.rows) == dict.fromkeys(SINGERS, 20)
    per = Counter((r.label, r.split) for r in res.rows)
    assert all(per[(s, "train")] == 16 and per[(s, "valid")] == 2 and per[(s, "test")] == 2 for s in SINGERS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no singer folders.*FULL/<singer>/<context>/<technique>"):
        vocalset(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------- writing, CLI
def test_write_manifest_relative_paths_and_quoting(tmp_path):
    inside = _audio(tmp_path / "data" / "a, b.wav")
    outside = _audio(tmp_path / "elsewhere" / "c.wav")
    rows = [ManifestRow(str(inside), "C# major", "train"), ManifestRow(str(outside), "x;y", None, 1.5, 4.0)]
    out = write_manifest(tmp_path / "data" / "m.csv", rows)
    with open(out, newline="", encoding="utf-8") as f:
        back = list(csv.DictReader(f))
    assert list(back[0]) == ["path", "label", "split", "start", "end"]
    assert back[0] == {"path": "a, b.wav", "label": "C# major", "split": "train", "start": "", "end": ""}
    assert back[1]["path"] == str(outside) and back[1]["label"] == "x;y"
    assert (back[1]["split"], back[1]["start"], back[1]["end"]) == ("", "1.5", "4")
    tsv = write_manifest(tmp_path / "data" / "m.tsv", rows[:1])
    assert tsv.read_text(encoding="utf-8").splitlines() == ["path\tlabel\tsplit", "a, b.wav\tC# major\ttrain"]
    with pytest.raises(ValueError, match=r"\.csv \(comma\) or \.tsv"):
        write_manifest(tmp_path / "m.json", rows)
    with pytest.raises(ValueError, match="no rows"):
        write_manifest(tmp_path / "m.csv", [])


def test_cli_writes_a_manifest_that_reads_back(tmp_path, capsys):
    root = _nsynth_tree(tmp_path / "nsynth", per_class=3)
    out = root / "manifests" / "pitch.csv"
    report = tmp_path / "r.tsv"
    argv = ["nsynth", str(root), "--out", str(out), "--task", "nsynth_pitch", "--report", str(report)]
    assert manifest_cli(argv) == 0
    text = capsys.readouterr().out
    assert "nsynth -> nsynth_pitch: 20 rows (train 9, valid 6, test 5)" in text
    assert "1 x in examples.json but no audio file" in text
    assert "next: mert probe task=nsynth_pitch" in text
    with open(out, newline="", encoding="utf-8") as f:
        back = list(csv.DictReader(f))
    assert len(back) == 20 and set(back[0]) == {"path", "label", "split"}
    assert all((out.parent / r["path"]).resolve().is_file() for r in back)  # absolute: outside manifests/
    assert {r["label"] for r in back} == {"40", "41", "42"}
    assert report.read_text().splitlines()[0] == "item\treason"

    out2 = root / "inst.tsv"
    assert manifest_cli(["nsynth", str(root), "--out", str(out2), "--max-per-class", "1"]) == 0
    with open(out2, newline="", encoding="utf-8") as f:
        back = list(csv.DictReader(f, delimiter="\t"))
    assert Counter(r["split"] for r in back)["train"] == 3
    assert all(r["path"].startswith("nsynth-") for r in back)  # under the manifest's folder: relative


def test_cli_errors(tmp_path, capsys):
    assert manifest_cli(["gtzan", str(tmp_path / "missing"), "--out", str(tmp_path / "m.csv")]) == 1
    err = capsys.readouterr().err
    assert "missing" in err and "genres/<genre>/<genre>.000NN" in err
    assert not (tmp_path / "m.csv").exists()
    with pytest.raises(SystemExit):
        manifest_cli(["gtzan", str(tmp_path), "--out", "m.csv", "--max-per-class", "3"])
    assert "does not apply to the gtzan layout" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        manifest_cli(["vocalset", str(tmp_path), "--out", "m.csv", "--task", "pitch"])
    with pytest.raises(SystemExit):
        manifest_cli(["vocalset", str(tmp_path), "--out", "m.csv", "--task", "singer", "--techniques", "marble"])
    with pytest.raises(SystemExit):
        manifest_cli(["wav2vec", str(tmp_path), "--out", "m.csv"])


def test_layout_task_names_are_the_probe_tasks():
    assert {name for _, tasks, _ in LAYOUTS.values() for name in tasks.values()} == TASKS


# ---------------------------------------------------------------------------------------------- recipes, run
# A stand-in `mert` on PATH: `probe manifest` runs the real manifest_cli of this checkout (and logs the layout and
# the file it writes), every other subcommand is only logged, since probing itself is tested elsewhere.
STUB = """#!{python}
import sys
sys.path.insert(0, {repo!r})
args = sys.argv[1:]
if args[:2] == ["probe", "manifest"]:
    out = args[args.index("--out") + 1]
    with open({manifests!r}, "a") as f:
        f.write(args[2] + " " + out + "\\n")
    from mert.cli.probe import manifest_cli
    sys.exit(manifest_cli(args[2:]))
with open({log!r}, "a") as f:
    f.write(" ".join(args) + "\\n")
"""


def _giantsteps_root(root: Path) -> Path:
    _gs_checkout(root / "giantsteps-key-dataset", {"1": "C major", "2": "Db major"})
    _gs_checkout(root / "giantsteps-mtg-key-dataset", {str(10 + i): "A minor" for i in range(10)})
    return root


def _gtzan_beat_root(root: Path) -> Path:
    _gtzan_tree(root, n=2)
    (root / "beats").mkdir()
    for g in ("blues", "jazz", "rock"):
        for i in range(2):
            (root / "beats" / f"gtzan_{g}_{i:05d}.beats").write_text("0.5\t1\n1.0\t2\n")
    return root


def _folders_root(root: Path) -> Path:
    for label in ("cello", "flute"):
        for i in range(10):
            _audio(root / label / f"{label}{i}.wav", seed=i)
    return root


# script -> (fake data set, {manifest written: (layout, probe task, rows per split)}), with the recipes' defaults
# (MAX_PER_CLASS=2: nsynth keeps 2 train clips per class; vocalset keeps MARBLE's techniques, two of the fake's
# three, and holds out singers f2 and m3 as test).
RECIPES_RUN = {
    "emo.sh": (_emo_tree, {"emo_regression.csv": ("emo", "emo_regression", {"train": 14, "valid": 2, "test": 4})}),
    "folders.sh": (
        _folders_root,
        {"multiclass.csv": ("folders", "multiclass", {"train": 16, "valid": 2, "test": 2})},
    ),
    "giantsteps.sh": (
        _giantsteps_root,
        {"giantsteps_key.csv": ("giantsteps", "giantsteps_key", {"train": 9, "valid": 1, "test": 2})},
    ),
    "gtzan.sh": (
        lambda r: _gtzan_tree(r, n=10),
        {"gtzan_genre.csv": ("gtzan", "gtzan_genre", {"train": 24, "valid": 3, "test": 3})},
    ),
    "gtzan_beat.sh": (_gtzan_beat_root, {"gtzan_beat.csv": ("gtzan-beat", "gtzan_beat", {"train": 6})}),
    "mtt.sh": (_mtt_tree, {"mtt_tagging.csv": ("mtt", "mtt_tagging", {"train": 3, "valid": 1, "test": 2})}),
    "nsynth.sh": (
        lambda r: _nsynth_tree(r, per_class=3),
        {
            "nsynth_instrument.csv": ("nsynth", "nsynth_instrument", {"train": 6, "valid": 6, "test": 5}),
            "nsynth_pitch.csv": ("nsynth", "nsynth_pitch", {"train": 6, "valid": 6, "test": 5}),
        },
    ),
    "vocalset.sh": (
        _vocalset_tree,
        {
            "vocalset_technique.csv": ("vocalset", "vocalset_technique", {"train": 27, "valid": 3, "test": 30}),
            "vocalset_singer.csv": ("vocalset", "vocalset_singer", {"train": 64, "valid": 8, "test": 8}),
        },
    ),
}


def test_recipes_cover_every_layout_and_task():
    """Every recipe script is run below, and between them they run every layout and probe every task."""
    assert set(RECIPES_RUN) == {p.name for p in RECIPES.glob("*.sh")} - {"common.sh"}  # common.sh: sourced by all
    expected = [m for _, manifests in RECIPES_RUN.values() for m in manifests.values()]
    assert {layout for layout, _, _ in expected} == set(LAYOUTS)
    assert {task for _, task, _ in expected} == TASKS


@pytest.mark.parametrize("script", sorted(RECIPES_RUN))
def test_recipe_scripts_write_manifests(tmp_path, script):
    """The recipe, run on a fake data set, writes the manifests it probes, with the expected rows per split."""
    import sys

    make_tree, expected = RECIPES_RUN[script]
    root = make_tree(tmp_path / "data")
    bin_dir, log, made, out = tmp_path / "bin", tmp_path / "calls.log", tmp_path / "manifests.log", tmp_path / "out"
    bin_dir.mkdir()
    stub = bin_dir / "mert"
    repo = str(Path(__file__).resolve().parents[1])
    stub.write_text(STUB.format(python=sys.executable, repo=repo, log=str(log), manifests=str(made)))
    stub.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "ROOT": str(root), "OUT": str(out), "MAX_PER_CLASS": "2"}
    proc = subprocess.run(["bash", str(RECIPES / script)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    written = {Path(m).name: layout for layout, m in (line.split(" ", 1) for line in made.read_text().splitlines())}
    assert written == {name: layout for name, (layout, _, _) in expected.items()}
    probed = {}
    for call in log.read_text().splitlines():
        if call.startswith("probe task="):
            assert re.search(r" encoder=(random:)?MERT-v1-95M( |$)", call), call
            probed.setdefault(Path(call.split("data.manifest=")[1].split()[0]).name, set()).add(call.split()[1][5:])
    assert probed == {name: {task} for name, (_, task, _) in expected.items()}
    for name, (_, _, splits) in expected.items():
        rows = read_manifest(out / name)
        assert Counter(r.split for r in rows) == splits, name
        assert all(r.path.is_file() and r.path.is_relative_to(root) for r in rows)


# --- folders (any class-per-folder collection) ------------------------------------------------------------------


def test_folders_seeded_split_and_fixed_split(tmp_path):
    from mert.probe.layouts import folders

    root = tmp_path / "instruments"
    for label in ("cello", "flute"):
        for i in range(10):
            _audio(root / label / ("take1" if i % 2 else "") / f"{label}{i}.flac", seed=i)
    _audio(root / "stray.wav")
    res = folders(root, seed=3)
    assert len(res.rows) == 20 and {r.label for r in res.rows} == {"cello", "flute"}
    assert res.split_counts() == {"train": 16, "valid": 2, "test": 2}
    assert _reasons(res) == {"directly in ROOT (no label folder)": 1}
    assert [r.split for r in folders(root, seed=3).rows] == [r.split for r in res.rows]

    fixed = tmp_path / "fixed"
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        for i in range(n):
            _audio(fixed / split / "oboe" / f"o{i}.wav")
    res = folders(fixed)
    assert res.split_counts() == {"train": 3, "valid": 1, "test": 2} and {r.label for r in res.rows} == {"oboe"}
    with pytest.raises(ValueError, match="no usable clips"):
        folders(tmp_path / "instruments" / "cello" / "take1")

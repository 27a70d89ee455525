"""Data pipeline: scanning and manifests, crop datasets, collate, synthetic data, tar shards, `mert data` CLI.

Every test works on real audio files written into tmp_path (soundfile), including broken ones: a corrupt file,
an empty file, a too-short file, a NaN-containing float WAV and a 44.1 kHz stereo file.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from mert.audio import find_audio, load_audio, read_audio
from mert.cli.data import manifest_cli, shard_cli
from mert.data.datasets import CropDataset, SyntheticDataset, collate_audio
from mert.data.manifest import ManifestEntry, hold_out, read_manifest, scan_audio, write_manifest
from mert.data.shards import ShardDataset, write_shards
from mert.data.synthetic import clip_kind, render_clip, write_synthetic_corpus
from mert.models.config import frame_lengths

SR = 24000
GOOD = ["long.wav", "medium.wav", "nan.wav", "stereo44.flac", "sub/stereo24.flac"]  # sorted scan order


def _write(path: Path, seconds: float, sr: int = SR, seed: int = 0, channels: int = 1, **kw) -> None:
    wav, _ = render_clip(seconds, sr, seed=seed)
    if channels == 2:
        wav = np.stack([wav, 0.5 * wav[::-1]], axis=1)  # (l, 2), channels differ so mixing down matters
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav, sr, **kw)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A folder with usable and broken audio files (see GOOD and the three bad ones)."""
    root = tmp_path_factory.mktemp("corpus")
    _write(root / "long.wav", 13.5, seed=1)  # 5 s + 5 s + 3.5 s segments
    _write(root / "medium.wav", 4.0, seed=2)  # between min (3 s) and crop (5 s)
    _write(root / "short.wav", 1.0, seed=3)  # below min_seconds
    _write(root / "stereo44.flac", 7.0, sr=44100, seed=4, channels=2)
    _write(root / "sub" / "stereo24.flac", 6.0, seed=5, channels=2)
    nan = render_clip(6.0, SR, seed=6)[0]
    nan[::1000] = np.nan  # in every crop
    sf.write(str(root / "nan.wav"), nan, SR, subtype="FLOAT")
    (root / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(5000))
    (root / "empty.wav").write_bytes(b"")
    (root / "notes.txt").write_text("not audio")
    return root


@pytest.fixture(scope="module")
def entries(corpus) -> list[ManifestEntry]:
    return scan_audio(corpus, min_seconds=3.0, progress=False).entries


def _entry(entries: list[ManifestEntry], name: str) -> ManifestEntry:
    return next(e for e in entries if e.path.endswith(name))


def energy_teacher(wav: torch.Tensor) -> torch.Tensor:
    """A deterministic code teacher: ``(b, l) -> (b, t, 2)`` int64 with ``t = frame_lengths(l)``."""
    frames = wav.double().unfold(-1, 400, 320)  # (b, t, 400)
    energy = (frames.pow(2).mean(-1) * 1000).floor().clamp(0, 1023)
    peak = (frames.abs().amax(-1) * 100).floor()
    return torch.stack([energy, peak], dim=-1).long()


# ---------------------------------------------------------------------------------------------- manifests
def test_find_audio_one_list_for_every_reader(tmp_path):
    """One extension list (with GTZAN's .au), sorted, recursive, no macOS resource forks, no folders."""
    for name in ("b/x.WAV", "a/y.au", "a/z.flac", "a/._z.flac", "a/notes.txt", "c.mp3/inner.ogg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in find_audio(tmp_path)]
    assert found == ["a/y.au", "a/z.flac", "b/x.WAV", "c.mp3/inner.ogg"]
    assert [p.name for p in find_audio(tmp_path, extensions=["flac"])] == ["z.flac"]
    assert find_audio(tmp_path / "a" / "y.au") == [tmp_path / "a" / "y.au"]
    with pytest.raises(FileNotFoundError, match="nope"):
        find_audio(tmp_path / "nope")


def test_read_audio_segments_are_slices_of_the_whole_file(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.uniform(-0.5, 0.5, size=(8000, 2)).astype(np.float32)
    path = tmp_path / "s.wav"
    sf.write(path, data, 8000, subtype="FLOAT")
    whole, sr = read_audio(path, mono=False)
    assert sr == 8000 and whole.shape == (2, 8000)
    torch.testing.assert_close(whole, torch.from_numpy(data.T.copy()))
    seg, _ = read_audio(path, 1000 / 8000, 3000 / 8000)  # sample-exact bounds, mono = channel mean
    torch.testing.assert_close(seg, whole[:, 1000:3000].mean(0))
    tail, _ = read_audio(path, 0.5, 99.0)  # a stop past the end is clipped
    assert tail.shape == (4000,)
    up, sr = read_audio(path, 0.25, 0.5, sample_rate=16000)
    assert sr == 16000 and up.shape == (4000,)
    torch.testing.assert_close(load_audio(path)[0], whole.mean(0))
    with pytest.raises(ValueError, match=r"s\.wav.*past the end"):
        read_audio(path, 1.0)
    with pytest.raises(ValueError, match="negative"):
        read_audio(path, -0.1)


def test_scan_skips_unusable_files_with_reasons(corpus, entries):
    assert [Path(e.path).relative_to(corpus).as_posix() for e in entries] == GOOD
    skipped = {Path(p).name: reason for p, reason in scan_audio(corpus, min_seconds=3.0, progress=False).skipped}
    assert set(skipped) == {"corrupt.wav", "empty.wav", "short.wav"}
    assert "unreadable" in skipped["corrupt.wav"]
    assert "empty" in skipped["empty.wav"]
    assert "too short" in skipped["short.wav"]
    e = _entry(entries, "stereo44.flac")
    assert (e.sample_rate, e.channels, e.num_samples, e.seconds) == (44100, 2, 7 * 44100, 7.0)
    assert len(scan_audio(corpus, progress=False).entries) == 6  # min_seconds=0 keeps short.wav
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_audio(corpus / "nowhere", progress=False)


def test_manifest_round_trip_relative_paths_and_moving(tmp_path, corpus, entries):
    folder = tmp_path / "data"
    shutil.copytree(corpus, folder / "audio")
    local = scan_audio(folder / "audio", min_seconds=3.0, progress=False).entries
    outside = _entry(entries, "long.wav")  # not under the manifest's folder: stored absolute
    manifest = write_manifest(folder / "train.tsv", [*local, outside])
    lines = manifest.read_text().splitlines()
    assert lines[0] == "path\tnum_samples\tsample_rate\tchannels"
    assert lines[1] == f"audio/long.wav\t{int(13.5 * SR)}\t{SR}\t1"
    assert lines[-1].split("\t")[0] == outside.path
    assert read_manifest(manifest) == [*local, outside]

    shutil.move(folder, tmp_path / "moved")  # the folder moves as a whole
    moved = read_manifest(tmp_path / "moved" / "train.tsv")
    assert [e.path for e in moved[:-1]] == [str(tmp_path / "moved" / "audio" / g) for g in GOOD]
    assert all(Path(e.path).is_file() for e in moved)


def test_hold_out_is_seeded_keeps_order_and_leaves_one_to_train():
    entries = [ManifestEntry(f"/a/{i}.wav", 48000, 24000, 1) for i in range(10)]
    train, valid = hold_out(entries, 30, seed=0)
    assert len(valid) == 3 and len(train) == 7 and not {e.path for e in train} & {e.path for e in valid}
    assert train == sorted(train, key=entries.index) and valid == sorted(valid, key=entries.index)
    assert hold_out(entries, 30, seed=0) == (train, valid)
    assert {e.path for e in hold_out(entries, 30, seed=1)[1]} != {e.path for e in valid}
    assert [len(x) for x in hold_out(entries[:3], 99, seed=0)] == [1, 2]  # never everything held out
    assert hold_out(entries, 0, seed=0) == (entries, [])
    with pytest.raises(ValueError, match="100"):
        hold_out(entries, 100)


def test_malformed_manifest_lines_name_file_and_line(tmp_path):
    path = tmp_path / "bad.tsv"
    header = "path\tnum_samples\tsample_rate\tchannels\n"
    for body, line in [("a.wav\t100\t24000\n", 2), ("a.wav\t1\t24000\t1\nb.wav\tmany\t24000\t1\n", 3)]:
        path.write_text(header + body)
        with pytest.raises(ValueError, match=rf"bad\.tsv:{line}:"):
            read_manifest(path)
    path.write_text("a.wav\t100\t24000\t1\n")  # no header
    with pytest.raises(ValueError, match=r"bad\.tsv:1: expected the header"):
        read_manifest(path)
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        read_manifest(tmp_path / "missing.tsv")


# ---------------------------------------------------------------------------------------------- crops
def test_crop_lengths_resampling_and_exact_samples(entries):
    ds = CropDataset(entries, sample_rate=SR, crop_seconds=5.0, min_seconds=3.0, seed=0)
    by_name = {Path(e.path).name: i for i, e in enumerate(ds.entries)}
    for name, expected in [("long.wav", 5 * SR), ("medium.wav", 4 * SR), ("stereo44.flac", 5 * SR)]:
        i = by_name[name]
        item = ds[i]
        assert item["wav"].dtype == torch.float32 and item["wav"].shape == (expected,)
        assert item["length"] == expected and item["index"] == i
        # The crop equals decoding (mono mix-down, resampling) the whole file and slicing at the crop offset;
        # long.wav takes the seek-and-read-only-the-crop path, stereo44.flac the decode-and-resample path.
        full, sr = load_audio(ds.entries[i].path, sample_rate=SR)
        start = ds.crop_offset(i, full.shape[0])
        assert torch.equal(item["wav"], full[start : start + expected])
    # Stereo FLAC at the model rate: partial read with the same mix-down as load_audio.
    i = by_name["stereo24.flac"]
    full, _ = load_audio(ds.entries[i].path, sample_rate=SR)
    start = ds.crop_offset(i, full.shape[0])
    assert start > 0 and torch.equal(ds[i]["wav"], full[start : start + 5 * SR])


def test_crops_are_deterministic_and_change_with_epoch_and_seed(entries):
    a, b = CropDataset(entries, seed=3), CropDataset(entries, seed=3)
    i = [Path(e.path).name for e in a.entries].index("long.wav")
    torch.manual_seed(0)
    first = a[i]["wav"]
    torch.manual_seed(1)  # the global RNG plays no part
    assert torch.equal(first, b[i]["wav"])
    a.set_epoch(1)
    assert not torch.equal(first, a[i]["wav"])
    a.set_epoch(0)
    assert torch.equal(first, a[i]["wav"])
    assert not torch.equal(first, CropDataset(entries, seed=4)[i]["wav"])


def test_bad_files_return_none_are_counted_warned_once_and_dropped_by_collate(tmp_path, corpus, entries, caplog):
    victim = tmp_path / "deleted.wav"
    shutil.copy(corpus / "medium.wav", victim)
    manifest = [
        _entry(entries, "long.wav"),
        ManifestEntry(str(corpus / "corrupt.wav"), 10 * SR, SR, 1),  # a header the manifest believed
        ManifestEntry(str(victim), 4 * SR, SR, 1),
        _entry(entries, "nan.wav"),
    ]
    write_manifest(tmp_path / "train.tsv", manifest)
    victim.unlink()  # deleted after the manifest was written
    ds = CropDataset(tmp_path / "train.tsv", seed=0)
    with caplog.at_level(logging.WARNING, logger="mert.data"):
        items = [ds[i] for i in range(4)] + [ds[i] for i in range(4)]
    assert items[0] is not None and items[1:4] == [None, None, None]
    assert ds.skipped == 6
    warnings = [r.getMessage() for r in caplog.records if r.name == "mert.data"]
    assert len(warnings) == 3  # once per file, not once per read
    assert any("corrupt.wav" in w and "unreadable" in w for w in warnings)
    assert any("deleted.wav" in w and "does not exist" in w for w in warnings)
    assert any("nan.wav" in w and "NaN" in w for w in warnings)

    batch = collate_audio(items[:4])
    assert batch["wav"].shape == (1, 5 * SR) and batch["n_skipped"] == 3
    assert batch["index"].tolist() == [0]
    empty = collate_audio(items[1:4])
    assert empty["wav"].shape == (0, 0) and empty["lengths"].shape == (0,) and empty["n_skipped"] == 3


def test_short_entries_are_filtered_at_construction(corpus):
    all_entries = scan_audio(corpus, progress=False).entries  # includes short.wav (1 s)
    ds = CropDataset(all_entries, min_seconds=3.0)
    assert ds.num_filtered == 1 and len(ds) == 5
    with pytest.raises(ValueError, match="none at least min_seconds=20"):
        CropDataset(all_entries, crop_seconds=30.0, min_seconds=20.0)


def test_dataloader_with_workers_gives_the_same_items(entries):
    ds = CropDataset(entries, seed=1)
    ds.set_epoch(2)

    def batches(workers: int) -> list[dict]:
        loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate_audio)
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 3
    for x, y in zip(serial, parallel):
        assert torch.equal(x["wav"], y["wav"]) and torch.equal(x["lengths"], y["lengths"])
        assert torch.equal(x["index"], y["index"]) and x["n_skipped"] == y["n_skipped"]
    assert sum(b["n_skipped"] for b in serial) == 1  # nan.wav


# ---------------------------------------------------------------------------------------------- synthetic
def test_synthetic_dataset_is_deterministic_with_labels():
    a, b = SyntheticDataset(4, seconds=1.0, seed=7), SyntheticDataset(4, seconds=1.0, seed=7)
    item = a[2]
    assert torch.equal(item["wav"], b[2]["wav"]) and item["wav"].shape == (SR,) and item["length"] == SR
    wav, labels = render_clip(1.0, SR, seed=7 * 1_000_003 + 2, kind=clip_kind(2))
    assert np.array_equal(item["wav"].numpy(), wav) and item["labels"] == labels.to_dict()
    assert not torch.equal(item["wav"], a[3]["wav"])
    batch = collate_audio([a[0], a[1]])
    assert [lab["seed"] for lab in batch["labels"]] == [7 * 1_000_003, 7 * 1_000_003 + 1]
    assert {SyntheticDataset(3, seconds=0.5, mix={"chord": 1})[i]["labels"]["kind"] for i in range(3)} == {"chord"}
    with pytest.raises(IndexError):
        a[4]
    with pytest.raises(ValueError, match="mix must map kinds"):
        SyntheticDataset(2, mix={"song": 1.0})


def test_write_synthetic_corpus(tmp_path):
    """The writer's own tests are in test_synthetic.py; here: its files are what the data pipeline reads."""
    out = write_synthetic_corpus(tmp_path / "a", 3, seconds=1.0, seed=5)
    with open(out / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    labels = SyntheticDataset(3, seconds=1.0, seed=5)[1]["labels"]  # same clip seeds as the dataset
    assert rows[1]["path"] == "clip_00001.wav" and rows[1]["instrument"] == labels["instrument"]
    assert int(rows[1]["seed"]) == labels["seed"] and rows[1]["kind"] == labels["kind"]
    info = sf.info(str(out / "clip_00000.wav"))
    assert (info.samplerate, info.frames, info.subtype) == (SR, SR, "PCM_16")
    entries = scan_audio(out, progress=False).entries
    assert sorted(Path(e.path).name for e in entries) == ["clip_00000.wav", "clip_00001.wav", "clip_00002.wav"]


def test_collate_pads_audio_and_targets():
    def item(n: int, index: int, targets: bool = True) -> dict:
        t = frame_lengths(n)
        out = {"wav": torch.ones(n), "length": n, "index": index}
        if targets:
            out["targets"] = {"codes": torch.full((t, 2), 7), "features": torch.ones(t, 3)}
        return out

    batch = collate_audio([item(1000, 0), None, item(2000, 5)])
    assert batch["wav"].shape == (2, 2000) and batch["lengths"].tolist() == [1000, 2000]
    assert batch["index"].tolist() == [0, 5] and batch["n_skipped"] == 1
    assert batch["wav"][0, 1000:].abs().sum() == 0 and batch["wav"][0, :1000].eq(1).all()
    codes, feats = batch["targets"]["codes"], batch["targets"]["features"]
    t0, t1 = frame_lengths(1000), frame_lengths(2000)
    assert codes.shape == (2, t1, 2) and codes.dtype == torch.int64 and feats.shape == (2, t1, 3)
    assert codes[0, :t0].eq(7).all() and codes[0, t0:].eq(0).all() and feats[1].eq(1).all()
    assert "targets" not in collate_audio([item(1000, 0), item(1000, 1, targets=False)])
    assert "labels" not in batch


# ---------------------------------------------------------------------------------------------- shards
@pytest.fixture(scope="module")
def shards(tmp_path_factory, corpus, entries):
    """Shards of the corpus (plus the corrupt file, to be skipped) with the energy teacher, 2 samples per shard."""
    calls: list[tuple[int, ...]] = []

    def teacher(wav: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(wav.shape))
        return energy_teacher(wav)

    manifest = [*entries, ManifestEntry(str(corpus / "corrupt.wav"), 10 * SR, SR, 1)]
    out = tmp_path_factory.mktemp("shards")
    result = write_shards(manifest, out, shard_size=2, teachers={"codes": teacher}, batch_size=4, progress=False)
    return out, result, calls


def test_write_shards_counts_index_and_skips(shards, corpus):
    out, result, calls = shards
    # long 13.5 s -> 5 + 5 + 3.5; medium 4 -> 4; stereo44 7 -> 5 (2 s rest dropped); stereo24 6 -> 5; nan skipped
    assert result.num_samples_written == 6 and result.num_files == 4 and result.num_shards == 3
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert {Path(p).name for p, _ in result.skipped} == {"nan.wav", "corrupt.wav"}
    # Every segment went through the teacher once, in batches of up to batch_size equal-length segments.
    assert sum(b for b, _ in calls) == 6 and max(b for b, _ in calls) > 1 and all(b <= 4 for b, _ in calls)
    index = json.loads((out / "index.json").read_text())
    assert index["roles"] == ["codes"] and index["sample_rate"] == SR and index["num_samples"] == 6
    assert index["shards"] == [{"name": f"shard-00000{i}.tar", "num_samples": 2} for i in range(3)]
    assert {Path(s["path"]).name for s in index["skipped"]} == {"nan.wav", "corrupt.wav"}
    with pytest.raises(FileExistsError, match="overwrite"):
        write_shards([_entry(scan_audio(corpus, progress=False).entries, "medium.wav")], out, progress=False)


def test_cached_targets_equal_on_the_fly_targets(shards):
    out, _, _ = shards
    ds = ShardDataset(out, sample_rate=SR)
    assert len(ds) == 6 and ds.roles == ["codes"]
    seen = []
    for i in range(len(ds)):
        item, meta = ds[i], ds.metadata(i)
        n = item["length"]
        source, _ = load_audio(meta["source"], sample_rate=SR)
        # Audio is exactly the segment of the decoded (mono, resampled) source file...
        assert torch.equal(item["wav"], source[meta["start"] : meta["start"] + n])
        # ...and the stored targets are exactly what the teacher gives on that audio, on the encoder's grid.
        codes = item["targets"]["codes"]
        assert codes.shape == (frame_lengths(n), 2)
        assert torch.equal(codes, energy_teacher(item["wav"][None])[0])
        seen.append((Path(meta["source"]).name, meta["start"], n, ds.key(i)))
    assert seen[:3] == [
        ("long.wav", 0, 5 * SR, "00000000_0000"),
        ("long.wav", 5 * SR, 5 * SR, "00000000_0001"),
        ("long.wav", 10 * SR, int(3.5 * SR), "00000000_0002"),
    ]
    batch = collate_audio([ds[2], ds[0]])
    assert batch["targets"]["codes"].shape == (2, frame_lengths(5 * SR), 2)
    # A single tar or a list of tars work as well as the folder.
    assert len(ShardDataset(out / "shard-000001.tar")) == 2
    assert len(ShardDataset([out / "shard-000000.tar", out / "shard-000002.tar"])) == 4
    with pytest.raises(ValueError, match="16000"):
        ShardDataset(out, sample_rate=16000)


def test_shard_dataset_in_dataloader_workers(shards):
    out, _, _ = shards
    ds = ShardDataset(out)
    ds[0]  # a handle opened before fork must not be shared by the workers

    def load(workers: int) -> list[dict]:
        return list(DataLoader(ds, batch_size=3, num_workers=workers, collate_fn=collate_audio))

    serial, parallel = load(0), load(2)
    assert len(serial) == len(parallel) == 2
    for x, y in zip(serial, parallel):
        assert torch.equal(x["wav"], y["wav"]) and torch.equal(x["targets"]["codes"], y["targets"]["codes"])


def test_corrupt_and_truncated_shards(tmp_path, shards, caplog):
    out, _, _ = shards
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    ds = ShardDataset(bad)
    offset = int(ds._offsets[1, 0, 0])  # audio member of sample 1
    with open(bad / "shard-000000.tar", "r+b") as f:
        f.seek(offset)
        f.write(b"garbage!" * 8)  # destroys the .npy header
    with caplog.at_level(logging.WARNING, logger="mert.data"):
        assert ds[1] is None and ds[1] is None
        assert ds[0] is not None
    assert ds.skipped == 2
    assert sum("00000000_0001" in r.getMessage() for r in caplog.records) == 1
    # A shard cut short (an interrupted copy) keeps the samples before the cut...
    data = (bad / "shard-000002.tar").read_bytes()
    targets_header = int(ds._offsets[5, 2, 0]) - 512  # last sample: audio and json complete, targets cut off
    (bad / "shard-000002.tar").write_bytes(data[:targets_header])
    cut = ShardDataset(bad)
    assert len(cut) == 6 and cut[4] is not None
    assert cut[5] is None  # ...and a sample whose targets were cut off is skipped, never returned without them
    (bad / "shard-000002.tar").write_bytes(data[: len(data) // 4])
    assert len(ShardDataset(bad)) == 4


def test_write_shards_without_teachers_and_overwrite(tmp_path, entries):
    out = tmp_path / "plain"
    (out).mkdir()
    (out / "shard-000009.tar").write_bytes(b"stale")
    result = write_shards([_entry(entries, "medium.wav")], out, overwrite=True, progress=False)
    assert result.num_samples_written == 1 and result.roles == []
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "shard-000000.tar"]
    first = (out / "shard-000000.tar").read_bytes()
    write_shards([_entry(entries, "medium.wav")], out, overwrite=True, progress=False)
    assert (out / "shard-000000.tar").read_bytes() == first  # reproducible bytes
    item = ShardDataset(out)[0]
    assert "targets" not in item and item["wav"].shape == (4 * SR,)
    with pytest.raises(ValueError, match="frame grid"):
        write_shards([_entry(entries, "medium.wav")], tmp_path / "x", teachers={"codes": lambda w: w}, progress=False)


# ---------------------------------------------------------------------------------------------- CLI
def test_manifest_cli(tmp_path, corpus, capsys):
    from mert.cli import main

    out, report = tmp_path / "train.tsv", tmp_path / "skipped.tsv"
    assert main(["data", "manifest", str(corpus), "--out", str(out), "--report", str(report), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "5 files" in captured.out and str(out) in captured.out
    for name in ["corrupt.wav", "empty.wav", "short.wav"]:
        assert name in captured.err
    assert len(read_manifest(out)) == 5
    rows = report.read_text().splitlines()
    assert rows[0] == "path\treason" and len(rows) == 4

    valid = tmp_path / "valid.tsv"
    args = [str(corpus), "--out", str(out), "--valid-percent", "40", "--valid-out", str(valid), "--quiet"]
    assert manifest_cli(args) == 0
    train_paths, valid_paths = {e.path for e in read_manifest(out)}, {e.path for e in read_manifest(valid)}
    assert len(valid_paths) == 2 and len(train_paths) == 3 and not train_paths & valid_paths

    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(corpus / "corrupt.wav", broken / "x.wav")
    assert manifest_cli([str(broken), "--out", str(tmp_path / "none.tsv"), "--quiet"]) == 1
    assert not (tmp_path / "none.tsv").exists()
    assert manifest_cli([str(tmp_path / "missing"), "--out", str(tmp_path / "m.tsv"), "--quiet"]) == 1


def test_shard_cli(tmp_path, corpus, entries, capsys):
    manifest = write_manifest(
        tmp_path / "train.tsv", [*entries, ManifestEntry(str(corpus / "corrupt.wav"), 10 * SR, SR, 1)]
    )
    out = tmp_path / "shards"
    args = [str(manifest), "--out", str(out), "--shard-size", "4", "--quiet", "--code-teacher", "random_projection"]
    assert shard_cli([*args, "--teacher-arg", "num_codebooks=2", "--teacher-arg", "codes.seed=3"]) == 0
    captured = capsys.readouterr()
    assert "6 segments from 4 files" in captured.out and "2 shard(s)" in captured.out
    assert "corrupt.wav" in captured.err and "nan.wav" in captured.err
    ds = ShardDataset(out)
    from mert.targets import build_teacher

    teacher = build_teacher("random_projection", num_codebooks=2, seed=3)
    item = ds[3]
    assert torch.equal(item["targets"]["codes"], teacher(item["wav"][None])[0])
    assert json.loads((out / "index.json").read_text())["teachers"]["codes"]["seed"] == 3

    assert shard_cli(args) == 1  # out exists: refuses without --overwrite
    assert "overwrite" in capsys.readouterr().err
    assert shard_cli([str(manifest), "--out", str(tmp_path / "t"), "--code-teacher", "nonsense", "--quiet"]) == 1
    assert "nonsense" in capsys.readouterr().err
    bad = write_manifest(tmp_path / "bad.tsv", [ManifestEntry(str(corpus / "corrupt.wav"), 10 * SR, SR, 1)])
    assert shard_cli([str(bad), "--out", str(tmp_path / "b"), "--quiet"]) == 1


class _MemoryTeacher(torch.nn.Module):
    """A teacher with memory, as EnCodec's LSTM: frame f = a leaky running sum of frame energies up to f (decay
    0.9 per frame: 20 s of context leave 0.9^1500 of what came before, far below float precision)."""

    whole_file = True
    sample_rate = SR
    conv_kernel, conv_stride = (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        e = energy_teacher(wav)[..., 0].double()  # (b, t)
        out = torch.zeros_like(e)
        acc = torch.zeros(e.shape[0], dtype=torch.float64)
        for f in range(e.shape[1]):
            acc = 0.9 * acc + e[:, f]
            out[:, f] = acc
        return out[..., None].float()  # (b, t, 1)


def test_teachers_with_memory_run_over_whole_files_in_shards(tmp_path, corpus, entries, monkeypatch):
    """The original encodes each file once and crops the codes (a crop encoded alone restarts the LSTM): cached
    targets of such a teacher are the whole file's, cut at each segment; long files go through bounded windows."""
    import mert.data.shards as shards_mod

    teacher = _MemoryTeacher()
    long = _entry(entries, "long.wav")
    out = tmp_path / "s"
    write_shards([long], out, teachers={"codes": teacher}, progress=False)
    ds = ShardDataset(out, sample_rate=SR)
    source, _ = load_audio(long.path, sample_rate=SR)
    whole = teacher(source[None])[0]
    for i in range(len(ds)):
        item, meta = ds[i], ds.metadata(i)
        first = meta["start"] // 320
        t = frame_lengths(item["length"])
        torch.testing.assert_close(item["targets"]["codes"], whole[first : first + t])
        if meta["start"]:  # not what the segment alone gives: the memory of the audio before it is kept
            assert not torch.allclose(item["targets"]["codes"], teacher(item["wav"][None])[0])
    assert json.loads((out / "index.json").read_text())["whole_file_roles"] == ["codes"]
    # Bounded windows (3 s with 2 s of context here) give the same targets as one pass over the file.
    monkeypatch.setattr(shards_mod, "WHOLE_FILE_WINDOW_SECONDS", 3.0)
    monkeypatch.setattr(shards_mod, "WHOLE_FILE_CONTEXT_SECONDS", 2.0)
    windowed = shards_mod._whole_file_targets("codes", teacher, source, "cpu")
    torch.testing.assert_close(torch.from_numpy(windowed), whole, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 320"):
        write_shards([long], tmp_path / "odd", teachers={"codes": teacher}, segment_seconds=3.001, progress=False)

"""The learned RVQ teacher: fitting, codebook health, persistence, resume, shards, the CLI and a training run.

Everything is offline and tiny: three synthetic 2 s clips (plus a corrupt file), 2 codebooks of 16 codes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mert.cli.targets import fit_rvq_cli
from mert.data.manifest import scan_audio, write_manifest
from mert.data.shards import ShardDataset, write_shards
from mert.data.synthetic import render_clip
from mert.models.config import frame_lengths
from mert.targets import RVQConfig, RVQTargets, build_teacher, fit_rvq, teacher_from_settings

SR = 24000
TINY = RVQConfig(n_mels=32, n_fft=1024, dim=8, num_codebooks=2, codebook_size=16)
FIT = dict(steps=30, batch_frames=256, seed=0, progress=False)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rvq_audio")
    for seed in range(3):
        sf.write(folder / f"clip{seed}.wav", render_clip(2.0, SR, seed)[0], SR)
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    return folder


@pytest.fixture(scope="module")
def fitted(audio_dir) -> RVQTargets:
    with pytest.warns(UserWarning, match="skipped 1"):
        return fit_rvq(sorted(audio_dir.iterdir()), TINY, **FIT)


@pytest.fixture(scope="module")
def rvq_file(fitted, tmp_path_factory) -> Path:
    return fitted.save(tmp_path_factory.mktemp("rvq") / "rvq.pt")


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


def test_fit_reports_usage_reconstruction_and_skips(fitted, audio_dir):
    info = fitted.fit_info
    assert info["num_files"] == 3 and len(fitted.skipped_files) == 1
    assert fitted.skipped_files[0][0] == str(audio_dir / "corrupt.wav")
    assert len(info["perplexity"]) == 2 and all(2 <= p <= 16 for p in info["perplexity"])
    # Standardised frames have unit variance: a fitted teacher explains most of it with 2 x 16 codes.
    assert 0 < info["held_out_mse"] < 0.8
    recon = [h["recon"] for h in info["history"]]
    assert recon[-1] < recon[0]
    assert fitted.kind == "codes" and fitted.num_codebooks == 2 and fitted.codebook_size == 16
    assert not any(p.requires_grad for p in fitted.parameters()) and len(fitted.state_dict()) == 0


def test_codes_deterministic_and_persistent(fitted, rvq_file, audio_dir):
    loaded = RVQTargets.load(rvq_file)
    wav = torch.from_numpy(sf.read(audio_dir / "clip1.wav", dtype="float32")[0])[None]
    first = fitted(wav)
    assert torch.equal(first, fitted(wav)) and torch.equal(first, loaded(wav))
    assert len(set(first[0, :, 0].tolist())) > 2  # not one code for the whole clip
    settings = json.loads(json.dumps(loaded.settings()))
    assert settings["class"] == "RVQTargets" and len(settings["sha256"]) == 64
    assert torch.equal(teacher_from_settings(settings)(wav), first)
    assert torch.equal(build_teacher("rvq", path=rvq_file)(wav), first)
    # The same inputs and seed fit the same teacher.
    again = fit_rvq([audio_dir / f"clip{i}.wav" for i in range(3)], TINY, **FIT)
    assert torch.equal(again(wav), first)


@pytest.mark.parametrize("front_end", ["mert", "small"])
def test_frame_counts_follow_the_encoder(rvq_file, front_end):
    kernel, stride = (
        ((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)) if front_end == "mert" else ((1024, 3, 3, 2), (40, 2, 2, 2))
    )
    teacher = RVQTargets.load(rvq_file, conv_kernel=kernel, conv_stride=stride)
    gen = torch.Generator().manual_seed(0)
    for length in (400, 401, 719, 720, 1424, 1425, 24000, 3 * SR + 17, 5 * SR):
        codes = teacher(0.3 * torch.randn(2, length, generator=gen))
        t = int(frame_lengths(length, kernel, stride))
        assert codes.shape == (2, t, 2) and codes.dtype == torch.int64, (front_end, length)
        assert t == 0 or (int(codes.min()) >= 0 and int(codes.max()) < 16)
    assert teacher(torch.zeros(1, 399)).shape == (1, 0, 2)
    with pytest.raises(ValueError, match="hop"):
        RVQTargets.load(rvq_file, conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2))


def test_collapsed_teacher_is_refused(tmp_path):
    """Digital silence: every frame is the same, every codebook uses one code, and nothing is saved."""
    with pytest.raises(ValueError, match=r"collapsed: codebook\(s\) \[0, 1\] have perplexity 1"):
        fit_rvq([_silence(10.0)], TINY, **FIT)
    folder = tmp_path / "silence"
    folder.mkdir()
    sf.write(folder / "silence.wav", _silence(10.0), SR)
    out = tmp_path / "rvq.pt"
    assert fit_rvq_cli([str(folder), "--out", str(out), "--n-mels", "32", "--dim", "8", "--codebooks", "2",
                        "--codebook-size", "16", "--steps", "20", "--batch-frames", "256", "--quiet"]) == 1  # fmt: skip
    assert not out.exists()


def test_damaged_replaced_and_foreign_files_are_refused(rvq_file, tmp_path):
    state = torch.load(rvq_file, weights_only=True)
    state["weights"]["rvq.codebooks"][0, 0, 0] += 1.0
    torch.save(state, tmp_path / "damaged.pt")
    with pytest.raises(ValueError, match="damaged"):
        RVQTargets.load(tmp_path / "damaged.pt")
    with pytest.raises(ValueError, match="refitted or replaced"):
        RVQTargets.load(rvq_file, sha256="0" * 64)
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an RVQ teacher file"):
        RVQTargets.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="fit-rvq"):
        RVQTargets.load(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="16000 Hz"):
        RVQTargets.load(rvq_file, sample_rate=16000)
    with pytest.raises(ValueError, match="input must be one of"):
        RVQConfig(input="stft")


def test_interrupted_fit_resumes_to_the_same_teacher(audio_dir, tmp_path):
    files = [audio_dir / f"clip{i}.wav" for i in range(3)]
    whole = fit_rvq(files, TINY, **FIT)
    ckpt = tmp_path / "rvq.pt.partial"
    seen: list[int] = []

    def crash_at_17(step: int, metrics: dict) -> None:
        seen.append(step)
        if step == 17:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_rvq(files, TINY, **FIT, checkpoint=ckpt, checkpoint_every=10, callback=crash_at_17)
    assert ckpt.is_file() and torch.load(ckpt, weights_only=True)["step"] == 10
    seen.clear()
    resumed = fit_rvq(files, TINY, **FIT, checkpoint=ckpt, checkpoint_every=10, callback=lambda s, m: seen.append(s))
    assert seen[0] == 11 and seen[-1] == 30  # steps 11-30 only
    assert not ckpt.exists()  # removed once the teacher is complete
    a, b = whole.weights(), resumed.weights()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cached_targets_equal_on_the_fly(rvq_file, audio_dir, tmp_path):
    kernel, stride = (1024, 3, 3, 2), (40, 2, 2, 2)  # the demo's front end: targets start 2 frames later
    teacher = RVQTargets.load(rvq_file, conv_kernel=kernel, conv_stride=stride)
    entries = [e for e in scan_audio(audio_dir, progress=False).entries]
    out = tmp_path / "shards"
    result = write_shards(
        entries, out, segment_seconds=1.5, min_seconds=0.5, teachers={"codes": teacher}, progress=False
    )
    assert result.num_samples_written == 6
    index = json.loads((out / "index.json").read_text())
    assert "codes" in index["roles"]
    ds = ShardDataset(out, sample_rate=SR)
    for i in range(len(ds)):
        item = ds[i]
        assert torch.equal(item["targets"]["codes"], teacher(item["wav"][None])[0])
        assert item["targets"]["codes"].shape == (frame_lengths(item["length"], kernel, stride), 2)


def test_fit_rvq_cli_on_a_folder_and_a_manifest(audio_dir, tmp_path, capsys):
    common = ["--n-mels", "32", "--dim", "8", "--codebooks", "2", "--codebook-size", "16", "--steps", "20",
              "--batch-frames", "256", "--quiet"]  # fmt: skip
    out = tmp_path / "from_dir.pt"
    assert fit_rvq_cli([str(audio_dir), "--out", str(out), *common]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 unreadable file(s)" in captured.err and "corrupt.wav" in captured.err
    assert "3 file(s)" in captured.out and "perplexity per codebook" in captured.out
    teacher = RVQTargets.load(out)
    assert teacher.config.n_mels == 32 and teacher.fit_info["num_files"] == 3
    manifest = tmp_path / "train.tsv"
    write_manifest(manifest, [e for e in scan_audio(audio_dir, progress=False).entries if "clip" in e.path])
    assert fit_rvq_cli([str(manifest), "--out", str(tmp_path / "from_manifest.pt"), *common]) == 0
    assert RVQTargets.load(tmp_path / "from_manifest.pt").fit_info["num_files"] == 3
    assert fit_rvq_cli([str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert not (tmp_path / "from_dir.pt.partial").exists()


def test_tiny_cpu_pretrains_with_rvq_codes(rvq_file, tmp_path):
    pytest.importorskip("lightning")
    pytest.importorskip("hydra")
    from mert.cli import main as cli

    run_dir = tmp_path / "run"
    overrides = [
        "experiment=tiny_cpu", "targets=rvq_cqt", f"targets.code_teacher.path={rvq_file}", "~callbacks.probe_monitor",
        "logger=csv", "data.dataset.num_clips=8", "data.dataset.seconds=1.0", "data.global_batch_size=4",
        "data.micro_batch_size=4", "trainer.max_steps=3", "trainer.log_every_n_steps=1", f"run_dir={run_dir}",
    ]  # fmt: skip
    assert cli(["pretrain", *overrides]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 3 and math.isfinite(summary["final_loss"])
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    codes = ckpt["mert"]["teachers"]["codes"]
    assert codes["class"] == "RVQTargets" and codes["sha256"] == RVQTargets.load(rvq_file).sha256


def test_shards_of_another_rvq_teacher_are_refused(rvq_file):
    pytest.importorskip("lightning")
    from types import SimpleNamespace

    from mert.lightning.train import check_cached_targets

    mine = {"codes": RVQTargets.load(rvq_file).settings()}
    moved = {"codes": {**mine["codes"], "path": "/elsewhere/rvq.pt"}}
    check_cached_targets(SimpleNamespace(info={"teachers": moved}), mine)  # the same teacher, moved: accepted
    refitted = {"codes": {**mine["codes"], "sha256": "f" * 64}}
    with pytest.raises(ValueError, match="cached 'codes' targets were made by"):
        check_cached_targets(SimpleNamespace(info={"teachers": refitted}), mine)


def test_concat_targets_put_codebooks_side_by_side(fitted, rvq_file, audio_dir, tmp_path):
    from mert.targets import ConcatTargets, CQTTargets, KMeansTargets

    files = [audio_dir / f"clip{i}.wav" for i in range(3)]
    km = KMeansTargets.fit(files, num_clusters=16, progress=False)
    km.save(tmp_path / "km.pt")
    both = ConcatTargets([km, RVQTargets.load(rvq_file)])
    assert both.kind == "codes" and both.num_codebooks == 4 and both.codebook_size == 16
    wav = torch.from_numpy(sf.read(files[0], dtype="float32")[0])[None]
    codes = both(wav)
    assert torch.equal(codes, torch.cat([km(wav), fitted(wav)], dim=-1))
    rebuilt = teacher_from_settings(json.loads(json.dumps(both.settings())))
    assert isinstance(rebuilt, ConcatTargets) and torch.equal(rebuilt(wav), codes)
    assert len(both.state_dict()) == 0 and not any(p.requires_grad for p in both.parameters())
    with pytest.raises(ValueError, match="same codebook_size"):
        ConcatTargets([KMeansTargets.fit(files, num_clusters=8, progress=False), fitted])
    with pytest.raises(ValueError, match="joins code teachers"):
        ConcatTargets([fitted, CQTTargets()])
    with pytest.raises(ValueError, match="same conv_kernel"):
        ConcatTargets([fitted, RVQTargets.load(rvq_file, conv_kernel=(1024, 3, 3, 2), conv_stride=(40, 2, 2, 2))])


def test_cached_concat_targets_ignore_moved_files_but_not_refits(rvq_file, audio_dir, tmp_path):
    pytest.importorskip("lightning")
    from types import SimpleNamespace

    from mert.lightning.train import check_cached_targets
    from mert.targets import ConcatTargets, KMeansTargets

    km = KMeansTargets.fit([audio_dir / "clip0.wav", audio_dir / "clip1.wav"], num_clusters=16, progress=False)
    km.save(tmp_path / "km.pt")
    mine = {"codes": ConcatTargets([km, RVQTargets.load(rvq_file)]).settings()}
    moved = json.loads(json.dumps(mine).replace(str(tmp_path), "/elsewhere"))
    check_cached_targets(SimpleNamespace(info={"teachers": moved}), mine)
    refit = json.loads(json.dumps(mine))
    refit["codes"]["teachers"][1]["sha256"] = "f" * 64
    with pytest.raises(ValueError, match="cached 'codes' targets"):
        check_cached_targets(SimpleNamespace(info={"teachers": refit}), mine)

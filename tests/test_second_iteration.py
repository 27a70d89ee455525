"""The second-iteration teacher: k-means of an encoder's own layer features, fitted from a run, trained on, and
refused on another frame grid; and `fit-kmeans --hop-length` for the 25 Hz grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
import torch

pytest.importorskip("lightning")
pytest.importorskip("hydra")

from mert import Encoder, EncoderConfig  # noqa: E402
from mert.cli import main as cli  # noqa: E402
from mert.targets import EncoderKMeansTargets, KMeansTargets, build_teacher, teacher_from_settings  # noqa: E402
from mert.targets.kmeans import _nearest  # noqa: E402
from tests.helpers import music_like  # noqa: E402

FAST = ["trainer.log_every_n_steps=1", "logger=csv", "data.dataset.num_clips=16", "data.dataset.seconds=1.0"]
FAST += ["callbacks=default", "data.global_batch_size=4", "data.micro_batch_size=4"]


def _audio_dir(root: Path) -> Path:
    root.mkdir()
    for i in range(3):
        sf.write(root / f"clip{i}.wav", music_like(24000, seed=i)[0].numpy(), 24000)
    return root


@pytest.mark.slow
def test_fit_from_a_run_train_on_it_and_refuse_another_grid(tmp_path, capsys):
    run = tmp_path / "first"
    assert cli(["pretrain", "experiment=tiny_cpu", *FAST, "trainer.max_steps=2", f"run_dir={run}"]) == 0
    audio = _audio_dir(tmp_path / "audio")
    km2 = tmp_path / "km2.pt"
    args = ["targets", "fit-kmeans", str(audio), "--out", str(km2), "--clusters", "6", "--quiet"]
    assert cli([*args, "--from-encoder", str(run), "--layer", "1"]) == 0
    assert "layer 1 of tiny" in capsys.readouterr().out

    teacher = EncoderKMeansTargets.load(km2)
    state = torch.load(km2, map_location="cpu", weights_only=True)
    assert state["layer"] == 1 and state["encoder"]["global_step"] == 2
    assert state["grid"] == {
        "sample_rate": 24000,
        "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
        "conv_stride": [5, 2, 2, 2, 2, 2, 2],
        "hop_length": 320,
        "frame_rate": 75.0,
    }
    # The codes are the nearest centroids of the run's own (standardised) layer-1 features.
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    enc = Encoder(EncoderConfig.from_dict(ckpt["mert"]["encoder_config"]))
    enc.load_state_dict({k[len("objective.encoder.") :]: v for k, v in ckpt["state_dict"].items() if "encoder." in k})
    wav = music_like(24000, seed=7)
    codes = teacher(wav)
    assert codes.shape == (1, 74, 1) and codes.dtype == torch.int64
    with torch.no_grad():
        f = (enc.eval()(wav).hidden_states[1] - state["mean"]) / state["std"]
    assert torch.equal(codes[0, :, 0], _nearest(f[0], state["centroids"])[0])
    assert codes.unique().numel() > 1
    settings = teacher.settings()
    assert settings["layer"] == 1 and settings["encoder_sha256"] == state["encoder_sha256"]
    assert torch.equal(teacher_from_settings(settings)(wav), codes)
    with pytest.raises(ValueError, match="layer 1, not the layer 3"):
        build_teacher("encoder_kmeans", path=str(km2), layer=3)

    # The next run trains on it.
    second = tmp_path / "second"
    over = ["targets=encoder_kmeans_cqt", f"targets.code_teacher.path={km2}", "trainer.max_steps=3"]
    assert cli(["pretrain", "experiment=tiny_cpu", *FAST, *over, f"run_dir={second}"]) == 0
    summary = json.loads((second / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["final_loss"] is not None

    # Another front end (the `small` model's 40x2x2x2 strides): refused, naming both grids.
    with pytest.raises(ValueError, match="frame grid of the encoder it was fitted from"):
        EncoderKMeansTargets.load(km2, conv_kernel=[1024, 3, 3, 2], conv_stride=[40, 2, 2, 2])
    third = tmp_path / "third"
    code = cli(["pretrain", "experiment=tiny_cpu", *FAST, *over, "model=small", f"run_dir={third}"])
    assert code != 0
    assert "frame grid of the encoder it was fitted from" in capsys.readouterr().err


def test_cli_usage_errors(tmp_path, capsys):
    audio = _audio_dir(tmp_path / "audio")
    base = ["targets", "fit-kmeans", str(audio), "--out", str(tmp_path / "k.pt")]
    with pytest.raises(SystemExit) as e:
        cli([*base, "--from-encoder", str(tmp_path)])
    assert e.value.code == 2 and "--from-encoder and --layer go together" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli([*base, "--from-encoder", "x", "--layer", "1", "--features", "mfcc"])
    assert e.value.code == 2
    torch.manual_seed(0)
    Encoder(EncoderConfig.preset("tiny")).save_pretrained(tmp_path / "release")
    assert cli([*base, "--from-encoder", str(tmp_path / "release"), "--layer", "9", "--quiet"]) == 1
    assert "layer must be in [0, 2]" in capsys.readouterr().err


def test_fit_from_a_mel_family_encoder_keeps_its_25_hz_grid(tmp_path):
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig.preset("conformer_tiny"))
    wavs = [music_like(24000 * 2, seed=i)[0] for i in range(2)]
    teacher = EncoderKMeansTargets.fit(enc, wavs, layer=2, num_clusters=4, max_frames=60, progress=False)
    assert teacher.grid["frame_rate"] == 25.0 and teacher.grid["conv_stride"] == [240, 2, 2]
    path = teacher.save(tmp_path / "km2.pt")
    codes = EncoderKMeansTargets.load(path, conv_kernel=[240, 2, 2], conv_stride=[240, 2, 2])(wavs[0][None])
    assert codes.shape == (1, 50, 1)  # N // 960 frames
    with pytest.raises(ValueError, match="25 Hz.*75 Hz"):
        EncoderKMeansTargets.load(path, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2])
    # The next model of the same family trains on it: two steps of the objective, the loss falls.
    from mert.pretrain import MERTObjective

    torch.manual_seed(1)
    student = Encoder(EncoderConfig.preset("conformer_tiny"))
    teacher = EncoderKMeansTargets.load(path)
    objective = MERTObjective(student, teacher, final_dim=8, mix_prob=0.0, mask_span_seconds=0.4)
    opt = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=3e-3)
    batch = torch.stack(wavs)
    losses = []
    for _ in range(4):
        out = objective(batch, sample_seeds=[0, 1])
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(out.loss.detach()))
    assert objective.code_head.codebook_size == 4 and losses[-1] < losses[0], losses


def test_fit_kmeans_on_the_25_hz_hop(tmp_path):
    audio = _audio_dir(tmp_path / "audio")
    out = tmp_path / "km25.pt"
    argv = ["targets", "fit-kmeans", str(audio), "--out", str(out), "--clusters", "4", "--hop-length", "960"]
    assert cli([*argv, "--quiet"]) == 0
    teacher = KMeansTargets.load(out, conv_kernel=[240, 2, 2], conv_stride=[240, 2, 2])
    assert teacher(music_like(48000)).shape == (1, 50, 2)  # 25 Hz: N // 960 frames, MFCC and chroma codes
    with pytest.raises(ValueError, match="960-sample hop"):
        KMeansTargets.load(out, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2])

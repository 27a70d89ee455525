"""The pretraining recipes of the mel + Conformer family: each experiment trains 3 steps on a tiny override
(conformer_tiny, a few short clips), its teachers on the 25 Hz grid (composition: tests/test_train.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
import torch

pytest.importorskip("lightning")
pytest.importorskip("hydra")

from mert.cli import main as cli  # noqa: E402
from mert.targets import EncodecTargets, KMeansTargets, RVQConfig, fit_rvq  # noqa: E402
from tests.helpers import filled_encodec, music_like  # noqa: E402

HOP = 960  # the conformer family's frame grid: 25 Hz at 24 kHz
TINY = ["model=conformer_tiny", "trainer.max_steps=3", "trainer.log_every_n_steps=1", "scheduler.warmup_steps=1"]
TINY += ["logger=csv", "data.global_batch_size=4", "data.micro_batch_size=4", "data.num_workers=0"]
SYNTH = ["data=synthetic", "data.dataset.num_clips=8", "data.dataset.seconds=1.5"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("recipes")
    wavs = [music_like(24000 * 2, seed=i)[0] for i in range(3)]
    grid = {"conv_kernel": (HOP,), "conv_stride": (HOP,)}
    km = KMeansTargets.fit(wavs, num_clusters=8, max_frames=100, progress=False, **grid).save(root / "km.pt")
    config = RVQConfig(num_codebooks=2, codebook_size=8, dim=8, n_mels=32, hop_length=HOP)
    rvq = fit_rvq(wavs, config, steps=5, batch_frames=32, max_frames=150, progress=False, **grid).save(root / "rvq.pt")
    encodec = root / "encodec_24khz.th"
    torch.save(filled_encodec().state_dict(), encodec)
    (root / "audio").mkdir()
    for i, w in enumerate(wavs):
        sf.write(root / "audio" / f"{i}.wav", w.numpy(), 24000)
    manifest = ["data", "manifest", str(root / "audio"), "--out", str(root / "train.tsv"), "--min-seconds", "1"]
    assert cli([*manifest, "--quiet"]) == 0
    return {"km": km, "rvq": rvq, "encodec": encodec, "manifest": root / "train.tsv"}


def _extra(experiment: str, files: dict[str, Path]) -> list[str]:
    if experiment.startswith("gpu_"):
        # gpu_muq_300m: conformer_tiny in MuQ's layout (2-D conv subsampler: frame grid [240, 1, 1] / [240, 2, 2]).
        muq = ["model.subsampler=conv2d", "model.subsampler_channels=[8]", "model.subsampler_strides=[2,2]"]
        muq += ["model.conv_module_norm=batch", "model.activation=swish", "model.rope_on=input"]
        data = [f"data.manifest={files['manifest']}", "data.dataset.crop_seconds=1.5", "data.dataset.min_seconds=1.0"]
        return [
            *(muq if "muq" in experiment else []), *data, f"targets.code_teacher.weights={files['encodec']}",
            "trainer=cpu", "trainer.precision=32-true",
        ]  # fmt: skip
    path = {"conformer_melrvq": files["rvq"], "conformer_rp": None}.get(experiment, files["km"])
    # The CPU recipes' probe monitor is tested on its own (tests/test_probe_monitor.py).
    return [*SYNTH, "~callbacks.probe_monitor", *([f"targets.code_teacher.path={path}"] if path else [])]


SLOW = pytest.mark.slow  # each a few seconds on an idle machine; one stays in the fast tier


@pytest.mark.parametrize(
    "experiment",
    [
        "conformer_kmeans",
        *(pytest.param(e, marks=SLOW) for e in ("conformer_melrvq", "conformer_rp", "conformer_cpu_hour")),
        *(pytest.param(e, marks=SLOW) for e in ("gpu_mert_v2_632m", "gpu_muq_300m")),
    ],
)
def test_recipe_trains_three_steps_on_a_tiny_override(experiment, files, tmp_path):
    run = tmp_path / "run"
    assert cli(["pretrain", f"experiment={experiment}", *TINY, *_extra(experiment, files), f"run_dir={run}"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["final_loss"] is not None
    config = (run / "config.yaml").read_text()
    assert f"name: {experiment}" in config and "mask_span_seconds: 0.4" in config


def test_encodec_every_third_frame_on_the_25_hz_grid(files):
    wav = music_like(24000 * 2, seed=5)
    fine = EncodecTargets(weights=files["encodec"], check_codes=False)
    grid = {"conv_kernel": (240, 2, 2), "conv_stride": (240, 2, 2)}
    coarse = EncodecTargets(weights=files["encodec"], check_codes=False, **grid)
    assert coarse.frame_step == 3 and fine.frame_step == 1
    codes = coarse(wav)
    assert codes.shape == (1, 2 * 25, 8)  # N // 960 frames
    # EnCodec's own 75 Hz codes, every third from the first (the 75 Hz teacher drops none at the start either).
    ((full, _),) = fine.codec.encode(wav[:, None])
    assert torch.equal(codes[0], full[0].T[::3][:50].long())
    with pytest.raises(ValueError, match="hop"):
        EncodecTargets(weights=files["encodec"], conv_kernel=(400,), conv_stride=(400,))

"""Teachers: exact frame counts, frozen behaviour, what each computes, persistence and the registry.

Everything runs offline: EnCodec weights are state dicts the tests write themselves; audio is synthetic.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from mert.cli.targets import fit_kmeans_cli
from mert.data.synthetic import render_clip
from mert.models.config import frame_lengths
from mert.targets import (
    CQTTargets,
    EncodecTargets,
    FrameFeatures,
    KMeansTargets,
    RandomProjectionTargets,
    RVQConfig,
    RVQTargets,
    Teacher,
    build_teacher,
    fit_rvq,
    teacher_from_settings,
)
from tests.helpers import filled_encodec

SR = 24000
LENGTHS = (400, 401, 719, 720, 24000, 24000 * 3 + 17, 120000)


def clips(seconds: float, seeds: tuple[int, ...] = (0, 1)) -> torch.Tensor:
    """Synthetic music ``(len(seeds), l)``."""
    return torch.stack([torch.from_numpy(render_clip(seconds, SR, seed)[0]) for seed in seeds])


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def encodec_model():
    return filled_encodec()


@pytest.fixture(scope="module")
def encodec_file(encodec_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("encodec") / "encodec_24khz.th"
    torch.save(encodec_model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def encodec_teacher(encodec_file) -> EncodecTargets:
    return EncodecTargets(weights=encodec_file)


@pytest.fixture(scope="module")
def cqt_teacher() -> CQTTargets:
    return CQTTargets()


@pytest.fixture(scope="module")
def rp_teacher() -> RandomProjectionTargets:
    return RandomProjectionTargets()


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    """Three synthetic clips and one corrupt file."""
    folder = tmp_path_factory.mktemp("audio")
    for seed in range(3):
        sf.write(folder / f"clip{seed}.wav", render_clip(1.5, SR, seed)[0], SR)
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    return folder


@pytest.fixture(scope="module")
def kmeans_fitted(audio_dir) -> KMeansTargets:
    with pytest.warns(UserWarning, match="skipped 1"):
        return KMeansTargets.fit(sorted(audio_dir.iterdir()), num_clusters=8, progress=False)


@pytest.fixture(scope="module")
def kmeans_file(kmeans_fitted, tmp_path_factory) -> Path:
    return kmeans_fitted.save(tmp_path_factory.mktemp("km") / "km.pt")


@pytest.fixture(scope="module")
def rvq_teacher(audio_dir, tmp_path_factory) -> RVQTargets:
    """A tiny learned RVQ teacher (tests/test_rvq.py tests the fit itself), saved so it has settings."""
    config = RVQConfig(n_mels=32, n_fft=1024, dim=8, num_codebooks=2, codebook_size=16)
    files = sorted(audio_dir.glob("clip*.wav"))
    teacher = fit_rvq(files, config, steps=20, batch_frames=256, progress=False)
    teacher.save(tmp_path_factory.mktemp("rvq") / "rvq.pt")
    return teacher


@pytest.fixture(scope="module")
def teachers(encodec_teacher, cqt_teacher, rp_teacher, kmeans_fitted, rvq_teacher) -> dict[str, Teacher]:
    return {
        "encodec": encodec_teacher,
        "cqt": cqt_teacher,
        "random_projection": rp_teacher,
        "kmeans": kmeans_fitted,
        "rvq": rvq_teacher,
    }


NAMES = ("encodec", "cqt", "random_projection", "kmeans", "rvq")


# ---------------------------------------------------------------------------------------------- all teachers
def test_import_is_light():
    code = (
        "import sys, mert.targets; "
        "print(','.join(m for m in ('nnAudio', 'encodec', 'torchaudio', 'soundfile', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("name", NAMES)
def test_frame_counts_shapes_dtypes(teachers, name):
    teacher = teachers[name]
    gen = torch.Generator().manual_seed(0)
    for length in LENGTHS:
        wav = 0.3 * torch.randn(2, length, generator=gen)
        out = teacher(wav)
        t = frame_lengths(length)
        if teacher.kind == "codes":
            assert out.shape == (2, t, teacher.num_codebooks), (name, length)
            assert out.dtype == torch.int64
            assert int(out.min()) >= 0 and int(out.max()) < teacher.codebook_size
        else:
            assert out.shape == (2, t, teacher.dim), (name, length)
            assert out.dtype == torch.float32
            assert bool(torch.isfinite(out).all())
    # Shorter than the receptive field: no encoder frame, no target.
    assert teacher(torch.zeros(1, 399)).shape[:2] == (1, 0)


@pytest.mark.parametrize("name", NAMES)
def test_frozen(teachers, name):
    teacher = teachers[name]
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    parent = nn.ModuleDict({"teacher": teacher, "head": nn.Linear(2, 2)})
    parent.train()
    assert parent["head"].training and not teacher.training
    wav = clips(1.0).requires_grad_(True)
    out = teacher(wav)
    assert out.grad_fn is None and not out.requires_grad
    assert not out.is_inference()  # usable as a target by autograd-tracked losses


@pytest.mark.parametrize("name", NAMES)
def test_settings_json_and_rebuild(teachers, kmeans_file, name):
    teacher = teachers[name] if name != "kmeans" else KMeansTargets.load(kmeans_file)
    settings = json.loads(json.dumps(teacher.settings()))
    rebuilt = teacher_from_settings(settings)
    assert type(rebuilt) is type(teacher)
    wav = clips(1.0)
    assert torch.equal(rebuilt(wav), teacher(wav))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_holds_no_fixed_kernels(teachers, name):
    teacher = teachers[name]
    keys = teacher.state_dict().keys()
    if name == "encodec":
        assert all(k.startswith("codec.") for k in keys)  # the network's own weights only
    else:
        assert len(keys) == 0
    assert len(list(teacher.buffers())) > 0  # still buffers: they follow .to(device)


def test_build_teacher(encodec_file, kmeans_file):
    assert isinstance(build_teacher("cqt", n_bins=96, fmin=261.6), CQTTargets)
    assert isinstance(build_teacher("random_projection", num_codebooks=2), RandomProjectionTargets)
    assert isinstance(build_teacher("random-projection"), RandomProjectionTargets)
    assert isinstance(build_teacher("encodec", weights=encodec_file), EncodecTargets)
    assert isinstance(build_teacher("kmeans", path=kmeans_file), KMeansTargets)
    assert isinstance(build_teacher("CQTTargets", n_bins=96, fmin=261.6), CQTTargets)
    with pytest.raises(ValueError, match="unknown teacher 'hubert'.*available"):
        build_teacher("hubert")


def test_hop_must_match_encoder():
    with pytest.raises(ValueError, match="hop"):
        CQTTargets(hop_length=512)
    with pytest.raises(ValueError, match="24 kHz"):
        EncodecTargets(weights="unused.th", sample_rate=16000)


def test_targets_follow_a_wider_front_end(kmeans_file):
    """Teachers built for another front end (the demo's 1424-sample receptive field) give exactly its frame
    count, starting where its frames are centred: 2 teacher frames later than for MERT-v1's front end."""
    kernel, stride = (1024, 3, 3, 2), (40, 2, 2, 2)
    wav = 0.3 * torch.randn(2, 3 * SR, generator=torch.Generator().manual_seed(0))
    mert_grid, wide = CQTTargets(), CQTTargets(conv_kernel=kernel, conv_stride=stride)
    assert mert_grid.frame_offset == 0 and wide.frame_offset == 2  # (1424 - 400) / 2 / 320 = 1.6
    t = int(frame_lengths(wav.shape[1], kernel, stride))
    out, full = wide(wav), mert_grid.compute(wav)
    assert out.shape == (2, t, 336)
    torch.testing.assert_close(out, full[:, 2 : 2 + t])
    km = KMeansTargets.load(kmeans_file, conv_kernel=kernel, conv_stride=stride)
    assert km.conv_kernel == kernel and km(wav).shape == (2, t, km.num_codebooks)
    torch.testing.assert_close(km(wav), KMeansTargets.load(kmeans_file)(wav)[:, 2 : 2 + t])
    with pytest.raises(ValueError, match="hop"):
        KMeansTargets.load(kmeans_file, conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2))


# ---------------------------------------------------------------------------------------------- CQT
def test_cqt_sine_peak_and_linear_magnitude(cqt_teacher):
    t = torch.arange(2 * SR) / SR
    sine = 0.3 * torch.sin(2 * math.pi * 440.0 * t)[None]
    expected = round(48 * math.log2(440 / 32.7))
    for wav in (sine, sine[:, : SR // 2]):  # reflect padding (> 1.37 s) and zero padding (shorter)
        out = cqt_teacher(wav)  # (1, t, 336)
        peak = int(out[0, 10:-10].mean(0).argmax())
        assert abs(peak - expected) <= 1, (peak, expected)
    double = cqt_teacher(2 * sine)
    torch.testing.assert_close(double, 2 * cqt_teacher(sine), rtol=1e-4, atol=1e-5)


def test_cqt_log_compression(cqt_teacher):
    """compression="log" is log(linear magnitude + floor), described in settings (cached shards are checked
    against them), and refuses unknown modes."""
    t = torch.arange(2 * SR) / SR
    wav = 0.3 * torch.sin(2 * math.pi * 220.0 * t)[None]
    log_teacher = CQTTargets(compression="log", log_floor=0.01)
    torch.testing.assert_close(log_teacher(wav), torch.log(cqt_teacher(wav) + 0.01), rtol=1e-5, atol=1e-5)
    assert log_teacher.settings()["compression"] == "log" and "compression" not in cqt_teacher.settings()
    with pytest.raises(ValueError, match="compression"):
        CQTTargets(compression="db")


def test_cqt_matches_nnaudio_center_true():
    """Zeros at the edges by default, as MERT's teacher (nnAudio center=True, pad_mode="constant", MERT-v1 targets and
    loss); pad_mode="reflect" is nnAudio's default, and differs over the first and last half-kernel of frames."""
    from nnAudio.features.cqt import CQT1992v2

    kw = dict(sr=SR, hop_length=320, fmin=261.6, n_bins=96, bins_per_octave=24, window="hann")
    ours = {
        mode: CQTTargets(fmin=261.6, n_bins=96, bins_per_octave=24, pad_mode=mode) for mode in ("constant", "reflect")
    }
    default = CQTTargets(fmin=261.6, n_bins=96, bins_per_octave=24)
    wav = clips(1.0)
    assert default.pad_mode == "constant" and default.settings()["pad_mode"] == "constant"
    for pad_mode in ("constant", "reflect"):
        ref = CQT1992v2(**kw, center=True, pad_mode=pad_mode, output_format="Magnitude", verbose=False)
        expected = ref(wav).transpose(1, 2)[:, : frame_lengths(SR)]
        torch.testing.assert_close(ours[pad_mode](wav), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(default(wav), ours["constant"](wav))
    edge = (ours["reflect"](wav) - default(wav)).abs().amax(dim=(0, 2))
    assert edge[0] > 1e-3 and edge[len(edge) // 2] < 1e-6  # the padding reaches the edges, not the middle
    # Too short to mirror: zeros either way.
    short = wav[:, : ours["reflect"].pad]
    torch.testing.assert_close(ours["reflect"](short), default(short))
    with pytest.raises(ValueError, match="pad_mode"):
        CQTTargets(pad_mode="edge")


# ---------------------------------------------------------------------------------------------- random projection
def test_random_projection_deterministic_and_seeded(rp_teacher):
    wav = clips(2.0)
    codes = rp_teacher(wav)
    assert torch.equal(RandomProjectionTargets(seed=0)(wav), codes)
    other = RandomProjectionTargets(seed=1)(wav)
    assert (other != codes).float().mean() > 0.5
    state = torch.random.get_rng_state()
    RandomProjectionTargets(seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # a private generator, global RNG untouched


def test_random_projection_not_collapsed_and_batch_consistent(rp_teacher):
    wav = clips(2.0)
    codes = rp_teacher(wav)  # (2, 149, 8)
    for k in range(codes.shape[-1]):
        assert codes[..., k].unique().numel() >= 20, k
    twice = rp_teacher(torch.stack([wav[0], wav[0]]))
    assert torch.equal(twice[0], twice[1])
    assert torch.equal(twice[0], codes[0])


def test_random_projection_padding_invariant_with_lengths(rp_teacher):
    short = clips(1.0, (3,))
    padded = torch.cat([torch.cat([short, torch.zeros(1, SR)], dim=1), clips(2.0, (4,))])
    alone = rp_teacher(short)
    batched = rp_teacher(padded, lengths=torch.tensor([SR, 2 * SR]))
    assert torch.equal(batched[:1, : alone.shape[1]], alone)


# ---------------------------------------------------------------------------------------------- k-means
def test_frame_features_chroma_and_dims():
    ff = FrameFeatures()
    t = torch.arange(SR) / SR
    out = ff(0.5 * torch.sin(2 * math.pi * 440.0 * t)[None])
    assert out["chroma"].shape == (1, SR // 320 + 1, 12)
    assert int(out["chroma"][0, 5:-5].mean(0).argmax()) == 9  # A
    assert out["mfcc"].shape[-1] == ff.dim("mfcc") == 60 and out["logmel"].shape[-1] == 80


def test_kmeans_fit_skips_and_uses_clusters(kmeans_fitted, audio_dir):
    assert kmeans_fitted.num_codebooks == 2 and kmeans_fitted.codebook_size == 8
    assert kmeans_fitted.feature_sets == ("mfcc", "chroma")
    assert len(kmeans_fitted.skipped_files) == 1
    assert kmeans_fitted.skipped_files[0][0] == str(audio_dir / "corrupt.wav")
    assert kmeans_fitted.fit_info["num_files"] == 3
    codes = kmeans_fitted(clips(1.5, (0, 1)))
    for k in range(2):
        assert codes[..., k].unique().numel() > 1


def test_kmeans_save_load_roundtrip(kmeans_fitted, kmeans_file):
    with pytest.raises(RuntimeError, match="save"):
        KMeansTargets.fit([clips(1.0, (5,))[0]], num_clusters=4, progress=False).settings()
    raw = torch.load(kmeans_file, weights_only=True)
    assert raw["feature_sets"] == ["mfcc", "chroma"] and raw["centroids"]["mfcc"].shape == (8, 60)
    loaded = KMeansTargets.load(kmeans_file)
    wav = clips(1.0, (7, 8))
    assert torch.equal(loaded(wav), kmeans_fitted(wav))
    assert loaded.skipped_files == kmeans_fitted.skipped_files
    with pytest.raises(ValueError, match="fitted at 24000 Hz"):
        KMeansTargets.load(kmeans_file, sample_rate=16000)


def test_kmeans_fit_on_waveforms_is_seeded():
    wavs = [clips(1.0, (s,))[0] for s in range(3)]
    a = KMeansTargets.fit(wavs, feature_sets=("chroma",), num_clusters=4, seed=1, progress=False)
    b = KMeansTargets.fit(wavs, feature_sets=("chroma",), num_clusters=4, seed=1, progress=False)
    assert torch.equal(a.centroids_chroma, b.centroids_chroma) and a.num_codebooks == 1
    with pytest.raises(ValueError, match="no usable audio"):
        KMeansTargets.fit([np.full(1000, np.nan, dtype=np.float32)], num_clusters=4, progress=False)
    with pytest.raises(ValueError, match="at least as many frames as clusters"):
        KMeansTargets.fit(wavs[:1], num_clusters=100, progress=False)


def test_kmeans_fit_on_a_folder_samples_frames(audio_dir):
    with pytest.warns(UserWarning, match="skipped 1"):
        km = KMeansTargets.fit(audio_dir, feature_sets=("logmel",), num_clusters=4, max_frames=50, progress=False)
    assert km.fit_info["num_files"] == 3 and km.fit_info["num_frames_used"] == 50
    assert km.fit_info["num_frames"] == 3 * frame_lengths(int(1.5 * SR))


def test_fit_kmeans_cli(audio_dir, tmp_path, capsys):
    out = tmp_path / "km.pt"
    rc = fit_kmeans_cli([str(audio_dir), "--out", str(out), "--clusters", "4", "--features", "mfcc,chroma", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0 and out.is_file()
    assert "corrupt.wav" in captured.err and "skipped 1" in captured.err
    assert KMeansTargets.load(out).codebook_size == 4

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.wav").write_bytes(b"garbage")
    (bad / "b.flac").write_bytes(b"")
    rc = fit_kmeans_cli([str(bad), "--out", str(tmp_path / "none.pt"), "--quiet"])
    assert rc != 0 and not (tmp_path / "none.pt").exists()
    assert "a.wav" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- EnCodec
def test_encodec_local_weights_match_encodec(encodec_teacher, encodec_model):
    wav = clips(1.0)
    codes = encodec_teacher(wav)
    assert codes.shape == (2, frame_lengths(SR), 8) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < 1024
    for k in range(8):
        assert codes[..., k].unique().numel() > 1
    with torch.no_grad():
        ((ref, _),) = encodec_model.encode(wav[:, None])  # (b, k, ceil(l / 320))
    assert ref.shape[-1] == math.ceil(SR / 320)
    assert torch.equal(codes, ref.transpose(1, 2)[:, : frame_lengths(SR)])


def test_encodec_hash_prefix(encodec_model, encodec_file, tmp_path):
    digest = hashlib.sha256(encodec_file.read_bytes()).hexdigest()
    good = tmp_path / f"encodec_24khz-{digest[:8]}.th"
    good.write_bytes(encodec_file.read_bytes())
    assert EncodecTargets(weights=good).num_codebooks == 8
    bad = tmp_path / "encodec_24khz-deadbeef.th"
    bad.write_bytes(encodec_file.read_bytes())
    with pytest.raises(ValueError, match=rf"encodec_24khz-deadbeef\.th.*'deadbeef'.*'{digest[:8]}'"):
        EncodecTargets(weights=bad)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "encodec_24khz-d7cc33bc.th").write_bytes(encodec_file.read_bytes())  # a folder: its standard file
    with pytest.raises(ValueError, match="d7cc33bc"):
        EncodecTargets(weights=folder)


def test_encodec_refuses_empty_codebooks(tmp_path):
    from encodec import EncodecModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        fresh = EncodecModel.encodec_model_24khz(pretrained=False)
    path = tmp_path / "encodec_24khz.th"
    torch.save(fresh.state_dict(), path)
    with pytest.raises(ValueError, match=r"codebook\(s\) \[0, 1, 2, 3, 4, 5, 6, 7\] are empty.*constant"):
        EncodecTargets(weights=path)


def test_encodec_runtime_guard_against_constant_codes(encodec_file):
    teacher = EncodecTargets(weights=encodec_file)
    teacher.codec.quantizer.vq.layers[3]._codebook.embed.zero_()  # corrupted after load
    with pytest.raises(ValueError, match=r"codebook\(s\) \[3\] gave one constant code"):
        teacher(clips(1.0))
    teacher(torch.zeros(2, SR))  # silence may legitimately give constant codes


def test_encodec_offline_error_names_the_fix(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(OSError, match=r"weights=.*encodec_24khz-d7cc33bc\.th"):
        EncodecTargets()


def test_encodec_missing_or_foreign_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="do not exist"):
        EncodecTargets(weights=tmp_path / "nope.th")
    foreign = tmp_path / "other.th"
    torch.save({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="not an EnCodec 24 kHz state dict"):
        EncodecTargets(weights=foreign)


def test_padded_batch_targets_equal_each_clip_alone(rvq_teacher):
    """With lengths, every teacher computes each clip on its own samples: padding never changes targets."""
    from mert.data.synthetic import render_clip
    from mert.targets import CQTTargets, RandomProjectionTargets

    a = torch.from_numpy(render_clip(2.0, 24000, seed=1)[0])
    b = torch.from_numpy(render_clip(1.2, 24000, seed=2)[0])
    batch = torch.zeros(2, len(a))
    batch[0], batch[1, : len(b)] = a, b
    lengths = torch.tensor([len(a), len(b)])
    for teacher in (CQTTargets(), RandomProjectionTargets(), rvq_teacher):
        together = teacher(batch, lengths)
        alone = teacher(b[None])
        t = alone.shape[1]
        assert torch.equal(together[1, :t], alone[0]), type(teacher).__name__
        assert torch.equal(together[0], teacher(a[None])[0])
        assert (together[1, t:] == 0).all()


def test_constant_q_equals_nnaudio_at_the_spec_size_with_trimmed_kernels():
    """ConstantQ (nnAudio's kernels cut to their support) gives nnAudio's CQT1992v2 at MERT's full size."""
    from nnAudio.features.cqt import CQT1992v2

    from mert.targets.cqt import ConstantQ

    kw = dict(sr=SR, hop_length=320, fmin=32.7, n_bins=336, bins_per_octave=48)
    ref = CQT1992v2(**kw, window="hann", center=False, output_format="Magnitude", verbose=False)
    ours = ConstantQ(**kw)
    assert ours.kernel_width == ref.kernel_width == 65536
    taps = sum(getattr(ours, f"kernel_{g}").numel() for g in range(len(ours.groups))) // 2
    assert taps < 0.2 * 336 * 65536  # the point: a sixth of nnAudio's multiply-adds
    x = torch.nn.functional.pad(clips(1.5), (32768, 32768))[:, None]  # (b, 1, l) as CQTTargets pads it
    expected, got = ref(x), ours(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-6 * expected.abs().max()
    assert not list(ours.state_dict())  # fixed kernels are rebuilt, never saved
    with pytest.raises(ValueError, match="needs at least 65536 samples"):
        ours(x[..., :1000])

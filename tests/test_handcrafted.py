"""Hand-crafted feature baselines (`features:<kind>`): frame grid, padding invariance, content, `mert probe`."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mert import Encoder
from mert.audio import resampled_length
from mert.cli import main as cli
from mert.probe.cache import FeatureCache, FeatureSpec, encoder_fingerprint
from mert.probe.handcrafted import KINDS, HandcraftedEncoder, parse_kinds
from mert.probe.run import load_encoder
from mert.probe.tasks import ProbeDataset, TaskSpec

SR = 24000
DIMS = {"mfcc": 60, "chroma": 12, "cqt": 84, "mel": 128}


@pytest.fixture(scope="module")
def enc_all() -> HandcraftedEncoder:
    return HandcraftedEncoder("all")


def _tone(freq: float, seconds: float = 1.0, square: bool = False) -> torch.Tensor:
    x = torch.sin(2 * math.pi * freq * torch.arange(int(seconds * SR), dtype=torch.float64) / SR)
    return (0.5 * (torch.sign(x) if square else x)).float()


# --- shapes and the frame grid -------------------------------------------------------------------------------


def test_kinds_dimensions_and_encoder_attributes(enc_all):
    for kind, d in DIMS.items():
        enc = HandcraftedEncoder(kind)
        out = enc(torch.randn(4000) * 0.1, sample_rate=SR)  # (l,) -> batch axis kept
        assert len(out.hidden_states) == 1 and out.hidden_states[0] is out.last_hidden_state
        assert out.last_hidden_state.shape == (1, 12, d) and out.last_hidden_state.dtype == torch.float32
        assert out.pooled().shape == (1, 1, d) and out.frame_rate == 75.0 and enc.hidden_size == d
    assert enc_all.config.kinds == ("mfcc", "chroma", "cqt", "mel") and enc_all.hidden_size == sum(DIMS.values())
    assert HandcraftedEncoder("mfcc+chroma+cqt").hidden_size == 60 + 12 + 84
    assert parse_kinds(" MFCC+chroma+mfcc ") == ("mfcc", "chroma")
    # What the feature cache and `mert probe` read from an Encoder.
    assert (enc_all.num_layers, enc_all.config.num_hidden_states, enc_all.sample_rate) == (0, 1, SR)
    assert enc_all.strict_mert_compat is False and not any(p.requires_grad for p in enc_all.parameters())
    assert json.loads(json.dumps(enc_all.config.to_dict()))["kind"] == "mfcc+chroma+cqt+mel"
    assert list(enc_all.state_dict()) == ["device_anchor"]  # fixed kernels are rebuilt, never fingerprinted
    assert enc_all.fingerprint() == encoder_fingerprint(HandcraftedEncoder("all"))
    assert len({HandcraftedEncoder(k).fingerprint() for k in (*KINDS, "all", "chroma+mfcc")}) == 6


def test_all_is_the_kinds_concatenated_in_order(enc_all):
    wav = torch.randn(2, 6000) * 0.1
    full = enc_all(wav, sample_rate=SR).last_hidden_state
    parts = [HandcraftedEncoder(k)(wav, sample_rate=SR).last_hidden_state for k in KINDS]
    assert torch.allclose(full, torch.cat(parts, dim=-1), atol=1e-5)


@pytest.mark.parametrize("rate", [SR, 16000, 44100])
def test_frame_counts_equal_the_real_encoders(enc_all, rate):
    real = Encoder("tiny").eval()
    shortest = math.ceil(400 * rate / SR)  # one encoder frame (400 samples) after resampling
    for n in sorted({shortest, shortest + 1, 719, 720, 4321} - set(range(shortest))):
        wav = torch.randn(n) * 0.1
        ours = enc_all(wav, sample_rate=rate)
        with torch.inference_mode():
            theirs = real(wav, sample_rate=rate)
        t = real.frame_lengths(resampled_length(n, rate, SR))
        assert ours.last_hidden_state.shape[1] == theirs.last_hidden_state.shape[1] == t, (rate, n)
        assert ours.lengths.tolist() == theirs.lengths.tolist() == [t]


def test_too_short_bad_input_and_bad_sample_rate():
    enc = HandcraftedEncoder("mel")
    with pytest.raises(ValueError, match="at least 400"):
        enc(torch.zeros(399), sample_rate=SR)
    with pytest.raises(ValueError, match="floating point"):
        enc(torch.zeros(800, dtype=torch.int16), sample_rate=SR)
    with pytest.raises(ValueError, match="NaN"):
        enc(torch.full((800,), float("nan")), sample_rate=SR)
    with pytest.raises(ValueError, match="multiple of 300"):
        HandcraftedEncoder("mel", sample_rate=16000)
    with pytest.warns(UserWarning, match="no sample_rate given"):
        HandcraftedEncoder("mel")(torch.zeros(800))


# --- padding and chunking ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [SR, 16000])
def test_padding_does_not_change_a_clips_features(enc_all, rate):
    g = torch.Generator().manual_seed(0)
    lens = [rate, 7000, 700]
    wav = torch.randn(3, rate, generator=g) * 0.2
    wav[1, 7000:] = 5.0  # garbage in the padding must not matter
    batch = enc_all(wav, torch.tensor(lens), sample_rate=rate)
    for i, n in enumerate(lens):
        alone = enc_all(wav[i, :n], sample_rate=rate)
        t = int(alone.lengths[0])
        assert int(batch.lengths[i]) == t
        assert torch.allclose(batch.pooled()[i], alone.pooled()[0], atol=1e-5)
        assert torch.allclose(batch.last_hidden_state[i, :t], alone.last_hidden_state[0], atol=1e-5)
        assert (batch.last_hidden_state[i, t:] == 0).all()


def test_chunked_equals_one_pass(enc_all):
    wav = torch.randn(2, 3 * SR) * 0.2
    one = enc_all(wav, torch.tensor([3 * SR, 2 * SR]), sample_rate=SR).last_hidden_state
    chunked = enc_all(wav, torch.tensor([3 * SR, 2 * SR]), sample_rate=SR, chunk_seconds=0.4).last_hidden_state
    assert torch.allclose(one, chunked, atol=1e-4)


# --- each kind carries what it should ------------------------------------------------------------------------


def test_chroma_and_cqt_find_the_pitch():
    chroma, cqt = HandcraftedEncoder("chroma"), HandcraftedEncoder("cqt")
    for freq, pitch_class in [(440.0, 9), (261.63, 0), (392.0, 7)]:  # A4, C4, G4 (0 = C)
        profile = chroma(_tone(freq), sample_rate=SR).pooled()[0, 0]
        assert int(profile.argmax()) == pitch_class and profile.max() == pytest.approx(1.0, abs=1e-3)
        assert float(profile.sort().values[-2]) < 0.5  # one pitch class, not a smear
        peak = int(cqt(_tone(freq), sample_rate=SR).pooled()[0, 0].argmax())
        assert abs(12 * math.log2(cqt.cqt.frequencies[peak] / freq)) < 0.5  # within a semitone of the tone
    assert int(cqt(_tone(440.0), sample_rate=SR).pooled()[0, 0].argmax()) == 45  # 32.7 Hz * 2^(45/12) = 440 Hz


def test_mfcc_and_mel_hear_timbre():
    for kind in ("mfcc", "mel"):
        enc = HandcraftedEncoder(kind)
        sine, other_pitch, square = (
            enc(w, sample_rate=SR).pooled()[0, 0] for w in (_tone(220.0), _tone(247.0), _tone(220.0, square=True))
        )
        # A square wave's odd harmonics change the spectral envelope far more than a whole tone's pitch change.
        assert (sine - square).norm() > 5 * (sine - other_pitch).norm(), kind
    mel = HandcraftedEncoder("mel")
    band = int((mel.frames.mel_fb.argmax(0).float() * SR / 2048 - 660.0).abs().argmin())  # around 3 x 220 Hz
    sine, square = (mel(w, sample_rate=SR).pooled()[0, 0, band] for w in (_tone(220.0), _tone(220.0, square=True)))
    assert square - sine > math.log(100.0)  # the 3rd harmonic: > 20 dB more power in that band


# --- the probe pipeline --------------------------------------------------------------------------------------


def _manifest(root: Path, n: int = 90, split_column: bool = False) -> Path:
    """``n`` half-second clips at 16 kHz labelled by waveform (sine, saw, square; chance 1/3), each at a random
    pitch (220..440 Hz) and level plus a little noise, so only the timbre tells the classes apart."""
    (root / "audio").mkdir(parents=True)
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    with open(root / "timbre.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"] if split_column else ["path", "label"])
        for i in range(n):
            timbre = ("sine", "saw", "square")[i % 3]
            phase = (220.0 * 2 ** rng.uniform(0, 1) * t) % 1.0
            wave = {"sine": np.sin(2 * np.pi * phase), "saw": 2 * phase - 1, "square": np.sign(phase - 0.5)}[timbre]
            wav = rng.uniform(0.1, 0.8) * wave + 0.003 * rng.standard_normal(len(t))
            sf.write(root / f"audio/{i:02d}.wav", wav.astype(np.float32), 16000)
            w.writerow([f"audio/{i:02d}.wav", timbre, *[("train", "valid", "test")[i % 3]] * split_column])
    return root / "timbre.csv"


def test_frame_level_cache_lines_up_with_the_real_encoder(tmp_path):
    manifest = _manifest(tmp_path / "data", n=3, split_column=True)
    ds = ProbeDataset.from_manifest(manifest, TaskSpec(type="multiclass"))
    spec = FeatureSpec(window_seconds=0.2, frame_rate=25.0)  # longer than a window: chunked extraction
    shapes = []
    for enc in (HandcraftedEncoder("chroma"), Encoder("tiny")):
        cache = FeatureCache(tmp_path / "cache", enc, spec)
        assert cache.extract(ds, progress=False).computed == 3
        feats, ok = cache.load(ds)
        assert ok.all()
        shapes.append([f.shape for f in feats])  # (t, n, d) per clip
    # 0.5 s = 12000 samples -> 37 frames at 75 Hz -> 13 label frames at 25 Hz, for both encoders.
    assert [s[0] for s in shapes[0]] == [s[0] for s in shapes[1]] == [13, 13, 13]
    assert shapes[0][0][1:] == (1, 12) and shapes[1][0][1] == 3  # one feature set vs 3 hidden states


def test_mert_probe_features_beats_chance_and_compares_with_an_encoder(tmp_path, capsys):
    manifest = _manifest(tmp_path / "data")
    common = [
        f"data.manifest={manifest}",
        f"features.cache_dir={tmp_path / 'cache'}",
        "protocol=quick",
        "probe.max_epochs=30",
        "probe.lrs=[0.01,0.1]",  # 54 training clips: the plateau schedule leaves smaller LRs underfit
        "progress=false",
        "features.window_seconds=0.5",
        "data.split_fractions=[0.6,0.2,0.2]",
    ]
    runs = {}
    for source in ("features:mfcc", "random:tiny"):
        runs[source] = tmp_path / "runs" / source.replace(":", "_")
        assert cli(["probe", f"encoder={source}", f"run_dir={runs[source]}", *common]) == 0
    res = json.loads((runs["features:mfcc"] / "results.json").read_text())
    assert res["encoder"]["config"]["type"] == "handcrafted" and res["encoder"]["num_hidden_states"] == 1
    assert set(res["results"]["candidates"]) == {"0"}  # one feature set: no weighted sum to learn
    assert res["headline"]["accuracy"]["mean"] > 0.8, res["headline"]  # 3 waveforms: chance 1/3
    table = (runs["features:mfcc"] / "results.md").read_text()
    assert "| features | valid accuracy |" in table and "| mfcc **(best)** |" in table
    capsys.readouterr()
    assert cli(["probe", "compare", str(runs["features:mfcc"]), str(runs["random:tiny"])]) == 0
    out = capsys.readouterr().out
    assert "| data: task | metric | features:mfcc | random:tiny |" in out
    assert "| timbre.csv: auto | accuracy (best layer) |" in out


def test_unknown_kind_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown hand-crafted feature kind 'mfcc\\+pitch'.*mfcc, chroma, cqt, mel"):
        load_encoder("features:mfcc+pitch")
    with pytest.raises(ValueError, match="unknown hand-crafted feature kind ''"):
        HandcraftedEncoder("")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.wav,x\nb.wav,y\n")
    assert cli(["probe", "encoder=features:spectrum", f"data.manifest={manifest}", "progress=false"]) == 1
    err = capsys.readouterr().err
    assert "mert probe: error: unknown hand-crafted feature kind 'spectrum'" in err and "Traceback" not in err
    assert "mfcc, chroma, cqt, mel" in err and "'all'" in err


def test_silence_gives_finite_features(enc_all):
    assert torch.isfinite(enc_all(torch.zeros(2, 2000), sample_rate=SR).last_hidden_state).all()

"""`mert.hear`: the HEAR 2021 common API over a tiny random encoder saved to a folder by the test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mert import Encoder, EncoderConfig, frame_lengths
from mert.hear import HearModel, get_scene_embeddings, get_timestamp_embeddings, load_model
from tests.helpers import music_like

SR = 24000
# Most tests feed audio at the encoder's own rate: HEAR's default input rate is 48 kHz for it (tested below).
pytestmark = pytest.mark.filterwarnings("ignore:HEAR sample_rate 24000 Hz:UserWarning")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig.preset("tiny")).eval()
    return enc.save_pretrained(tmp_path_factory.mktemp("hear") / "tiny")


@pytest.fixture(scope="module")
def model(folder) -> HearModel:
    return load_model(str(folder), sample_rate=SR)


def test_attributes_are_the_hear_ints(model):
    assert isinstance(model, torch.nn.Module)
    for name in ("sample_rate", "scene_embedding_size", "timestamp_embedding_size"):
        assert type(getattr(model, name)) is int, name
    assert model.sample_rate == SR
    assert model.scene_embedding_size == model.timestamp_embedding_size == 32  # tiny width, mean of layers
    assert model.layers == [1, 2]  # transformer layers, hidden_states[0] left out
    assert not model.training


@pytest.mark.parametrize("n", [400, 719, 720, 24000, 12345])
def test_shapes_dtypes_and_timestamps(model, n):
    audio = music_like(n, batch=2)
    emb, ts = get_timestamp_embeddings(audio, model)
    t = frame_lengths(n)
    assert emb.shape == (2, t, 32) and emb.dtype == torch.float32
    assert ts.shape == (2, t) and ts.dtype == torch.float32
    assert model.num_timestamps(n) == t
    # Frame i covers samples [320 i, 320 i + 400): centre (320 i + 200) / 24000 s.
    expected = (320 * torch.arange(t, dtype=torch.float64) + 200) / SR * 1000
    torch.testing.assert_close(ts[0].double(), expected, rtol=0, atol=1e-4)
    assert ts[0, 0].item() == pytest.approx(1000 * 200 / SR)  # 8.333 ms
    if t > 1:
        assert torch.all(ts[:, 1:] > ts[:, :-1])
        torch.testing.assert_close(ts[0].diff().double(), torch.full((t - 1,), 1000 / 75).double(), rtol=0, atol=1e-4)
    torch.testing.assert_close(ts[0], ts[1])
    assert torch.isfinite(emb).all()


def test_scene_is_mean_of_timestamp_embeddings(model):
    audio = music_like(36000, batch=3, seed=1)
    emb, _ = get_timestamp_embeddings(audio, model)
    scene = get_scene_embeddings(audio, model)
    assert scene.shape == (3, 32) and scene.dtype == torch.float32
    torch.testing.assert_close(scene, emb.mean(dim=1), rtol=0, atol=1e-6)


def test_embeddings_equal_mean_of_encoder_layers(folder, model):
    """The definition: mean over hidden_states[1..L] of the encoder's own (windowed) output."""
    enc = Encoder.from_pretrained(folder)
    audio = music_like(SR * 7, seed=2)  # longer than the 5 s window: exercises the chunked path
    with torch.inference_mode():  # the adapter's own mode: the same kernels, so the same rounding
        ref = enc(audio, sample_rate=SR, chunk_seconds=5.0)
    expected = (ref.hidden_states[1] + ref.hidden_states[2]) / 2
    emb, _ = get_timestamp_embeddings(audio, model)
    torch.testing.assert_close(emb, expected, rtol=0, atol=1e-6)


def test_clip_alone_equals_clip_in_batch(folder):
    model = load_model(str(folder), sample_rate=SR, batch_size=2)  # 5 sounds -> 3 encoder calls
    audio = music_like(SR, batch=5, seed=3)
    emb, _ = get_timestamp_embeddings(audio, model)
    scene = get_scene_embeddings(audio, model)
    for i in (0, 3, 4):
        alone, _ = get_timestamp_embeddings(audio[i : i + 1], model)
        torch.testing.assert_close(alone[0], emb[i], rtol=0, atol=1e-5)
        torch.testing.assert_close(get_scene_embeddings(audio[i : i + 1], model)[0], scene[i], rtol=0, atol=1e-5)


def test_long_sound_chunked_keeps_single_pass_length(folder):
    model = load_model(str(folder), sample_rate=SR, chunk_seconds=1.0, overlap_seconds=0.25)
    n = int(SR * 3.3)
    emb, ts = get_timestamp_embeddings(music_like(n, seed=4), model)
    assert emb.shape == (1, frame_lengths(n), 32)
    assert ts[0, -1].item() == pytest.approx((320 * (frame_lengths(n) - 1) + 200) / SR * 1000, abs=1e-3)
    one_pass, _ = get_timestamp_embeddings(
        music_like(n, seed=4), load_model(str(folder), sample_rate=SR, chunk_seconds=None)
    )
    assert one_pass.shape == emb.shape
    # Stitched windows are not one pass: each 1 s window attends over itself only, and the front end's GroupNorm
    # takes each window's statistics. Each frame comes from the window where it sits most centrally, so it stays
    # close to its one-pass value: measured at most 0.7 % (relative L2 per frame) for this encoder and sound,
    # hence 2 %; a frame stitched one position off, or from another sound, is more than 100 % away.
    assert not torch.equal(emb, one_pass)  # chunk_seconds reached the encoder: two different computations
    per_frame = (emb - one_pass).norm(dim=-1) / one_pass.norm(dim=-1)  # (1, t)
    assert per_frame.max() < 2e-2, per_frame.max()


def test_sound_shorter_than_receptive_field_gives_one_embedding(model):
    emb, ts = get_timestamp_embeddings(music_like(100, batch=2), model)
    assert emb.shape == (2, 1, 32) and ts.shape == (2, 1)
    assert ts[0, 0].item() == pytest.approx(1000 * 200 / SR)


def test_layer_options(folder):
    enc = Encoder.from_pretrained(folder)
    audio = music_like(SR, seed=5)
    with torch.inference_mode():  # the adapter's own mode: the same kernels, so the same rounding
        ref = enc(audio, sample_rate=SR)
    last = load_model(str(folder), sample_rate=SR, layers="last")
    torch.testing.assert_close(get_timestamp_embeddings(audio, last)[0], ref.last_hidden_state, rtol=0, atol=1e-6)
    cat = load_model(str(folder), sample_rate=SR, layers=[0, 2], combine="concat")
    assert cat.timestamp_embedding_size == cat.scene_embedding_size == 64
    emb, _ = get_timestamp_embeddings(audio, cat)
    torch.testing.assert_close(emb, torch.cat([ref.hidden_states[0], ref.hidden_states[2]], dim=-1), rtol=0, atol=1e-6)


def test_default_rate_and_outputs_pass_hear_validator_rules(folder):
    """hear-validator's checks (hearvalidator 2021.0.2, validate.py): ``sample_rate`` in (16000, 22050, 44100,
    48000); int embedding sizes; 16 sounds of 2 s white noise in [-1, 1] give float32 ``(16, t, e)`` embeddings
    with ``(16, t)`` timestamps spaced regularly (within 1 ms, at most 50 ms apart) and ``(16, e)`` scenes. The
    default rate for a 24 kHz encoder is 48000, resampled 2:1 inside; an encoder at an accepted rate keeps it."""
    from mert.hear import HEAR_SAMPLE_RATES, default_sample_rate

    model = load_model(str(folder))
    assert model.sample_rate == 48000 and model.sample_rate in HEAR_SAMPLE_RATES
    assert type(model.scene_embedding_size) is int and type(model.timestamp_embedding_size) is int
    torch.manual_seed(0)
    audio = torch.rand(16, int(2.0 * model.sample_rate)) * 2 - 1
    emb, ts = get_timestamp_embeddings(audio, model)
    assert emb.dtype == torch.float32 and emb.shape == (16, frame_lengths(2 * SR), model.timestamp_embedding_size)
    assert ts.shape == emb.shape[:2]
    diff = ts[:, 1:] - ts[:, :-1]
    assert diff.mean() <= 50.0 and torch.all((diff - diff.mean()).abs() < 1e-3)
    scene = get_scene_embeddings(audio, model)
    assert scene.dtype == torch.float32 and scene.shape == (16, model.scene_embedding_size)
    assert [default_sample_rate(r) for r in (24000, 16000, 22050, 32000, 8000, 96000)] == [
        48000,
        16000,
        22050,
        44100,
        16000,
        48000,
    ]
    with pytest.warns(UserWarning, match="not one hear-validator accepts"):
        assert load_model(str(folder), sample_rate=32000).sample_rate == 32000


def test_input_sample_rate_option(folder):
    model = load_model(str(folder), sample_rate=48000)
    assert model.sample_rate == 48000
    emb, ts = get_timestamp_embeddings(music_like(48000, sr=48000, seed=6), model)
    assert emb.shape == (1, frame_lengths(24000), 32)  # 1 s -> 74 frames on the encoder's 75 Hz grid
    assert ts[0, 0].item() == pytest.approx(1000 * 200 / SR)
    assert model.num_timestamps(300) == 1  # 300 samples at 48 kHz < 400 at 24 kHz: padded to one frame


def test_timestamps_follow_the_config_front_end(tmp_path):
    """A front end with hop 16 and receptive field 20 samples: centres at (16 i + 10) / sr, not a fixed 320/400."""
    cfg = EncoderConfig.preset("tiny", conv_dim=(32, 32), conv_kernel=(8, 4), conv_stride=(4, 4))
    assert (cfg.hop_length, cfg.receptive_field) == (16, 20)
    torch.manual_seed(0)
    folder = Encoder(cfg).eval().save_pretrained(tmp_path / "odd")
    model = load_model(str(folder), sample_rate=SR)
    emb, ts = get_timestamp_embeddings(music_like(1000), model)
    assert emb.shape[1] == cfg.frame_lengths(1000) == 62
    expected = (16 * torch.arange(62, dtype=torch.float64) + 10) / SR * 1000
    torch.testing.assert_close(ts[0].double(), expected, rtol=0, atol=1e-4)


def test_numpy_input_is_accepted(model):
    audio = music_like(SR // 2, seed=7)
    torch.testing.assert_close(get_scene_embeddings(audio.numpy(), model), get_scene_embeddings(audio, model))


@pytest.mark.parametrize(
    "audio, match",
    [
        (torch.zeros(SR), r"\(n_sounds, n_samples\).*audio\[None\]"),
        (torch.zeros(1, 1, SR), r"\(n_sounds, n_samples\)"),
        (torch.zeros(2, SR, dtype=torch.int16), "floating point"),
        (torch.zeros(0, SR), "empty"),
        (torch.zeros(2, 0), "empty"),
        ([0.0] * 10, "torch.Tensor"),
    ],
)
def test_bad_audio_is_refused(model, audio, match):
    with pytest.raises(ValueError, match=match):
        get_timestamp_embeddings(audio, model)
    with pytest.raises(ValueError, match=match):
        get_scene_embeddings(audio, model)


def test_nan_sound_is_named(model):
    audio = torch.zeros(3, SR)
    audio[2, 5] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf.*\[2\]"):
        get_scene_embeddings(audio, model)


def test_wrong_model_and_options_are_refused(folder):
    with pytest.raises(ValueError, match="HearModel"):
        get_scene_embeddings(torch.zeros(1, SR), Encoder.from_pretrained(folder))
    with pytest.raises(ValueError, match="combine"):
        load_model(str(folder), combine="max")
    with pytest.raises(ValueError, match="out of range"):
        load_model(str(folder), layers=7)
    with pytest.raises(ValueError, match="dtype"):
        load_model(str(folder), dtype="float64")
    with pytest.raises(ValueError, match="batch_size"):
        load_model(str(folder), batch_size=0)
    with pytest.raises(ValueError, match="receptive field"):
        load_model(str(folder), chunk_seconds=0.001)


def test_bfloat16_model_returns_float32(folder):
    model = load_model(str(folder), sample_rate=SR, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    emb, ts = get_timestamp_embeddings(music_like(SR // 2, seed=8), model)
    assert emb.dtype == torch.float32 and ts.dtype == torch.float32
    assert np.isfinite(emb.numpy()).all()


def test_unknown_setting_fails_before_loading(tmp_path):
    """load_model forwards its settings to HearModel; a misspelt one fails before any checkpoint is looked up."""
    with pytest.raises(TypeError, match="chunk_second"):
        load_model(str(tmp_path / "missing"), chunk_second=1.0)

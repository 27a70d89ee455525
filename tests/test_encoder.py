"""Encoder behaviour: shapes, padding invariance, long-audio windows, sample rates, errors, round trips."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from mert import Encoder, EncoderConfig, frame_lengths
from tests.helpers import music_like

LAYOUTS = {
    "post_ln_group": EncoderConfig.preset("tiny"),
    "pre_ln_layer": EncoderConfig.preset("tiny", frontend_norm="layer", pre_ln=True),
}


def _encoder(name: str, seed: int = 0, **kw) -> Encoder:
    torch.manual_seed(seed)
    enc = Encoder(LAYOUTS[name], **kw).eval()
    # Perturb LayerNorm/GroupNorm affines so they are not the identity.
    with torch.no_grad():
        for p in enc.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return enc


def test_frame_lengths_match_spec():
    assert frame_lengths(120000) == 374
    assert frame_lengths(720000) == 2249
    assert frame_lengths(399) == 0 and frame_lengths(400) == 1
    n = torch.arange(400, 5000, 37)
    assert torch.equal(frame_lengths(n), (n - 400) // 320 + 1)
    cfg = EncoderConfig.preset("95m")
    assert (cfg.hop_length, cfg.receptive_field, cfg.frame_rate) == (320, 400, 75.0)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_output_shapes_and_batch_axis(name):
    enc = _encoder(name)
    with torch.no_grad():
        out = enc(music_like(24000)[0], sample_rate=24000)  # 1-D input keeps a batch axis of 1
    t = frame_lengths(24000)
    assert out.last_hidden_state.shape == (1, t, 32)
    assert len(out.hidden_states) == enc.num_layers + 1
    assert out.lengths.tolist() == [t]
    assert out.frame_rate == 75.0 and enc.frame_rate == 75.0 and enc.sample_rate == 24000
    assert out.features.shape == (1, t, 32)
    assert out.pooled("last").shape == (1, 1, 32)
    assert out.stacked([0, -1]).shape == (1, 2, t, 32)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_padding_invariance(name):
    enc = _encoder(name)
    clips = [music_like(n, seed=i)[0] for i, n in enumerate([72000, 48017, 30000])]
    batch = torch.zeros(3, 72000)
    for i, c in enumerate(clips):
        batch[i, : len(c)] = c
        batch[i, len(c) :] = 0.5  # loud padding: any leak would show
    lengths = torch.tensor([len(c) for c in clips])
    with torch.no_grad():
        out = enc(batch, lengths)
        for i, c in enumerate(clips):
            alone = enc(c)
            t = alone.last_hidden_state.shape[1]
            assert int(out.lengths[i]) == t
            for j, (a, b) in enumerate(zip(alone.hidden_states, out.hidden_states)):
                diff = (a[0] - b[i, :t]).abs().max()
                assert diff <= 1e-5, f"item {i} state {j}: {diff:.2e}"
                assert (b[i, t:] == 0).all()  # padded frames are zeroed
    assert out.padding_mask.sum().item() == sum(out.last_hidden_state.shape[1] - int(n) for n in out.lengths)


def test_strict_compat_is_padding_sensitive_and_default_is_not():
    """The original numerics change with padding (known problems of the original, no. 3); ours do not. Guards the
    invariance test itself."""
    enc = _encoder("post_ln_group")
    clip = music_like(30000, seed=1)[0]
    batch = torch.zeros(2, 72000)
    batch[0] = music_like(72000, seed=2)[0]
    batch[1, :30000] = clip
    lengths = torch.tensor([72000, 30000])
    t = frame_lengths(30000)
    with torch.no_grad():
        alone = enc(clip).last_hidden_state[0]
        default = enc(batch, lengths).last_hidden_state[1, :t]
        enc.strict_mert_compat = True
        strict = enc(batch, lengths).last_hidden_state[1, :t]
        strict_alone = enc(clip).last_hidden_state[0]
    assert (alone - default).abs().max() <= 1e-5
    assert (alone - strict).abs().max() > 1e-3
    assert torch.allclose(alone, strict_alone, atol=1e-6)  # unpadded input: both modes agree


def _spy_passes(monkeypatch, enc: Encoder) -> list[torch.Tensor]:
    """Record the waveform batch of every single pass (``Encoder._encode``) ``enc`` runs from now on."""
    seen: list[torch.Tensor] = []
    real = enc._encode

    def spy(wav, *args, **kwargs):
        seen.append(wav.detach().clone())
        return real(wav, *args, **kwargs)

    monkeypatch.setattr(enc, "_encode", spy)
    return seen


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_chunked_equals_single_pass_when_clip_fits(name, monkeypatch):
    """A batch that fits in one window is ONE pass of the whole (padded) batch: bit-identical to no windowing,
    also with padding in strict mode, whose numerics depend on the padding (encoding the items one by one, as
    the windowed path does, would not reproduce them)."""
    enc = _encoder(name)
    wav = music_like(48000, batch=2)
    lengths = torch.tensor([48000, 30000])
    seen = _spy_passes(monkeypatch, enc)
    for strict in (False, True):
        enc.strict_mert_compat = strict
        for lens in (None, lengths):
            seen.clear()
            with torch.no_grad():
                one = enc(wav, lens)
                chunked = enc(wav, lens, chunk_seconds=2.5)  # 60000-sample window > 48000 samples
            assert [tuple(w.shape) for w in seen] == [(2, 48000), (2, 48000)], (strict, lens)
            assert torch.equal(one.lengths, chunked.lengths) and torch.equal(one.features, chunked.features)
            for a, b in zip(one.hidden_states, chunked.hidden_states):
                assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_chunked_frames_come_from_the_window_where_they_sit_most_centrally(name, monkeypatch):
    """The windowed path on a clip 3.5 windows long: whole windows on the 320-sample grid, the last one ending
    at the clip's end, and every output frame (each hidden state and the features) is exactly that frame of one
    window encoded alone, the window in which it has the most context; the overlap gives every frame at least
    half of it on each side that is not the clip's edge.

    The transformer attends over a whole window, so no frame equals the single pass over the whole clip (see
    the closeness test below); equality holds against each window encoded on its own, which is what the
    windowed path promises."""
    enc = _encoder(name)
    assert not enc.config.normalize_input  # otherwise a window alone would be normalised with its own statistics
    hop, window, overlap = 320, 48000, 12000
    n = 24000 * 7 + 123
    wav = music_like(n, seed=5)
    seen = _spy_passes(monkeypatch, enc)
    with torch.no_grad():
        out = enc(wav, chunk_seconds=window / 24000, overlap_seconds=overlap / 24000, chunk_batch_size=1)
    monkeypatch.undo()
    t = frame_lengths(n)
    assert out.lengths.tolist() == [t] and out.last_hidden_state.shape == (1, t, 32) and out.features.shape[1] == t

    # Where each window lies in the clip: found by content, on the hop grid only.
    spans = []
    for w in (row for batch in seen for row in batch):
        found = [s for s in range(0, n - len(w) + 1, hop) if torch.equal(wav[0, s : s + len(w)], w)]
        assert len(found) == 1, f"a window of {len(w)} samples does not start on the {hop}-sample frame grid"
        spans.append((found[0], found[0] + len(w)))
    spans.sort()
    assert len(spans) >= 4 and spans[0][0] == 0 and spans[-1][1] == n
    assert all(e - s == window for s, e in spans[:-1]) and window <= spans[-1][1] - spans[-1][0] < window + hop
    assert all(s2 < e1 for (_, e1), (s2, _) in zip(spans, spans[1:]))  # consecutive windows overlap

    got = [*out.hidden_states, out.features]
    inside, context, matches = [], [], []  # per window: its frames, their context, whether they are the output's
    for s, e in spans:
        first, count = s // hop, frame_lengths(e - s)
        with torch.no_grad():
            alone = enc(wav[:, s:e])
        frames = torch.arange(first, first + count)
        left = frames - first if s > 0 else torch.full_like(frames, n)  # the clip's edges limit no context
        right = first + count - 1 - frames if e < n else torch.full_like(frames, n)
        same = torch.ones(count, dtype=torch.bool)
        for g, a in zip(got, [*alone.hidden_states, alone.features]):
            same &= (g[0, first : first + count] == a[0]).all(-1)
        inside.append(frames)
        context.append(torch.minimum(left, right))
        matches.append(same)
    min_context = (overlap // hop) // 2 - 1
    for f in range(t):
        ctx = {j: int(c[f - fr[0]]) for j, (fr, c) in enumerate(zip(inside, context)) if fr[0] <= f <= fr[-1]}
        source = [j for j in ctx if matches[j][f - inside[j][0]]]
        # Exactly one window gives this frame (overlapping windows disagree: the test can tell them apart) ...
        assert len(source) == 1, f"frame {f}: equal to the frame of windows {source} of {sorted(ctx)}"
        # ... the one where it has the most context, at least half the overlap on each side.
        assert ctx[source[0]] == max(ctx.values()) >= min_context, f"frame {f} from window {source}, context {ctx}"


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_chunked_long_audio_shape_determinism_and_closeness(name):
    enc = _encoder(name)
    n = 24000 * 7 + 123
    wav = music_like(n, seed=5)
    with torch.no_grad():
        full = enc(wav)
        a = enc(wav, chunk_seconds=2.0, overlap_seconds=0.5, chunk_batch_size=2)
        b = enc(wav, chunk_seconds=2.0, overlap_seconds=0.5, chunk_batch_size=5)
        again = enc(wav, chunk_seconds=2.0, overlap_seconds=0.5, chunk_batch_size=2)
    assert a.last_hidden_state.shape == full.last_hidden_state.shape
    assert a.lengths.tolist() == [frame_lengths(n)]
    for x, y, z in zip(a.hidden_states, b.hidden_states, again.hidden_states):
        assert torch.equal(x, z)  # deterministic
        # Batching windows differently changes only GEMM blocking, i.e. float rounding (~1e-6 on values ~3).
        assert torch.allclose(x, y, rtol=0, atol=1e-5)
    # Frames near the window middles see (almost) the same context as in one pass.
    last_full, last_chunk = full.last_hidden_state[0], a.last_hidden_state[0]
    assert torch.nn.functional.cosine_similarity(last_full, last_chunk, dim=-1).mean() > 0.9
    # The front end has a 400-sample receptive field, far below the overlap, but its first GroupNorm normalises
    # each window with that window's statistics: features agree to ~0.1 % of their scale, not exactly.
    err = (full.features - a.features).abs().max() / full.features.abs().max()
    assert err < 1e-2, float(err)


def test_chunked_batch_with_lengths_matches_items_alone():
    enc = _encoder("post_ln_group")
    long, short = music_like(24000 * 5, seed=1)[0], music_like(24000 * 2, seed=2)[0]
    batch = torch.zeros(2, len(long))
    batch[0], batch[1, : len(short)] = long, short
    with torch.no_grad():
        out = enc(batch, torch.tensor([len(long), len(short)]), chunk_seconds=1.5)
        a = enc(long, chunk_seconds=1.5)
        b = enc(short, chunk_seconds=1.5)
    assert torch.equal(out.last_hidden_state[0], a.last_hidden_state[0])
    t = int(out.lengths[1])
    assert torch.allclose(out.last_hidden_state[1, :t], b.last_hidden_state[0], atol=1e-5)


def test_resampling_with_sample_rate():
    enc = _encoder("post_ln_group")
    wav44 = music_like(44100 * 2, sr=44100)
    with torch.no_grad():
        out = enc(wav44, sample_rate=44100)
        from mert.audio import resample

        ref = enc(resample(wav44, 44100, 24000), sample_rate=24000)
    assert out.last_hidden_state.shape[1] == frame_lengths(48000)
    assert torch.equal(out.last_hidden_state, ref.last_hidden_state)
    # A padded batch at another rate: items are resampled separately, so padding stays invariant.
    batch = torch.zeros(2, 44100 * 2)
    batch[0] = wav44[0]
    batch[1, :44100] = wav44[0, :44100]
    with torch.no_grad():
        out2 = enc(batch, torch.tensor([88200, 44100]), sample_rate=44100)
        alone = enc(wav44[0, :44100], sample_rate=44100)
    t = alone.last_hidden_state.shape[1]
    assert int(out2.lengths[1]) == t
    assert (out2.last_hidden_state[1, :t] - alone.last_hidden_state[0]).abs().max() <= 1e-5


def test_missing_sample_rate_warns_once():
    enc = _encoder("post_ln_group")
    wav = music_like(8000)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        with torch.no_grad():
            enc(wav)
            enc(wav)
            enc(wav, sample_rate=24000)
    msgs = [str(w.message) for w in rec if "sample_rate" in str(w.message)]
    assert len(msgs) == 1 and "24000 Hz" in msgs[0]


@pytest.mark.parametrize(
    "wav,kwargs,match",
    [
        (torch.zeros(2, 3, 8000), {}, r"shape \(batch, samples\).*\(2, 3, 8000\).*mix down"),
        (torch.zeros(0), {}, "empty"),
        (torch.zeros(1, 399), {}, "399 samples.*at least 400"),
        (torch.zeros(1, 8000, dtype=torch.int16), {}, "int16.*32768"),
        (torch.full((2, 8000), float("nan")), {}, r"NaN or inf.*\[0, 1\]"),
        (torch.zeros(2, 8000), {"lengths": [8000]}, r"lengths must have shape \(2,\)"),
        (torch.zeros(2, 8000), {"lengths": [8000, 9000]}, r"lengths must be in \[1, 8000\]"),
        (torch.zeros(2, 8000), {"lengths": [8000, 300]}, "batch item 1 has 300 samples"),
        (torch.zeros(1, 8000), {"sample_rate": 8000}, "at least 400"),  # 8000 samples at 8 kHz -> 24000
        (torch.zeros(1, 240), {"sample_rate": 16000}, "360 samples"),
        (torch.zeros(1, 8000), {"chunk_seconds": 0.001}, "receptive field"),
        (torch.zeros(1, 8000), {"pred_mask": torch.zeros(1, 3, dtype=torch.bool)}, "pred_mask must have shape"),
        ("not audio", {}, "torch.Tensor or numpy"),
    ],
)
def test_bad_input_errors(tiny_encoder, wav, kwargs, match):
    if kwargs.get("sample_rate") == 8000:
        wav = torch.zeros(1, 100)  # 100 samples at 8 kHz = 300 at 24 kHz
        match = "300 samples"
    with pytest.raises(ValueError, match=match):
        tiny_encoder(wav, **kwargs)


def test_nan_in_padding_is_allowed(tiny_encoder):
    wav = torch.zeros(2, 8000)
    wav[1, 4000:] = float("nan")
    with torch.no_grad():
        out = tiny_encoder(wav, [8000, 4000])
    assert torch.isfinite(out.last_hidden_state).all()


def test_numpy_input_and_dtype(tiny_encoder):
    x = music_like(8000)[0].numpy()
    with torch.no_grad():
        a = tiny_encoder(x)
        b = tiny_encoder(torch.from_numpy(x).double())
    assert torch.allclose(a.last_hidden_state, b.last_hidden_state, atol=1e-6)
    assert isinstance(np.asarray(a.last_hidden_state), np.ndarray)


def test_save_and_load_round_trip(tmp_path):
    enc = _encoder("pre_ln_layer")
    enc.save_pretrained(tmp_path / "rel", meta={"note": "round trip"})
    assert {p.name for p in (tmp_path / "rel").iterdir()} == {"config.json", "model.safetensors", "meta.json"}
    back = Encoder.from_pretrained(tmp_path / "rel")
    assert back.config == enc.config and back.meta["note"] == "round trip" and "mert_version" in back.meta
    # The safetensors file alone is self-describing (config in its metadata).
    alone = Encoder.from_pretrained(tmp_path / "rel" / "model.safetensors")
    wav = music_like(12000)
    with torch.no_grad():
        ref = enc(wav).last_hidden_state
        for m in (back, alone):
            assert torch.equal(m(wav).last_hidden_state, ref)


def test_from_pretrained_dtype_and_strict_flag(tmp_path, tiny_encoder):
    tiny_encoder.save_pretrained(tmp_path / "x")
    enc = Encoder.from_pretrained(tmp_path / "x", dtype=torch.bfloat16, strict_mert_compat=True)
    assert enc.strict_mert_compat and next(enc.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        out = enc(music_like(8000))  # float32 input is cast to the weights' dtype
    assert out.last_hidden_state.dtype == torch.bfloat16


def test_loading_errors(tmp_path, tiny_encoder):
    with pytest.raises(FileNotFoundError, match="neither|does not exist|not an existing"):
        Encoder.from_pretrained(tmp_path / "nope" / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no weights file.*model.safetensors"):
        Encoder.from_pretrained(tmp_path / "empty")
    tiny_encoder.save_pretrained(tmp_path / "w2v")
    (tmp_path / "w2v" / "model.safetensors").unlink()
    torch.save(tiny_encoder.state_dict(), tmp_path / "w2v" / "pytorch_model.bin")
    (tmp_path / "w2v" / "config.json").write_text('{"model_type": "wav2vec2"}')
    with pytest.raises(ValueError, match="model_type 'wav2vec2'.*mert_model"):
        Encoder.from_pretrained(tmp_path / "w2v")
    (tmp_path / "w2v" / "config.json").write_text(EncoderConfig.preset("tiny", num_layers=3).to_json())
    with pytest.raises(ValueError, match=r"missing \['transformer.layers.2"):
        Encoder.from_pretrained(tmp_path / "w2v")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="bad.safetensors"):
        Encoder.from_pretrained(tmp_path / "bad.safetensors")


def test_damaged_weights_and_a_contradicting_config_json_are_reported(tmp_path, tiny_encoder):
    """NaN weights are refused by name (they gave NaN embeddings silently); a config.json beside our safetensors
    that describes another model draws a warning saying the file's own config wins."""
    from safetensors.torch import save_file

    folder = tiny_encoder.save_pretrained(tmp_path / "nan")
    state = {k: v.clone().contiguous() for k, v in tiny_encoder.state_dict().items()}
    state["transformer.layers.1.ffn.fc1.weight"][3, 4] = float("nan")
    meta = {"mert_config": tiny_encoder.config.to_json(), "format": "pt"}
    save_file(state, str(folder / "model.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=r"non-finite weights.*transformer\.layers\.1\.ffn\.fc1\.weight.*damaged"):
        Encoder.from_pretrained(folder)

    other = tiny_encoder.save_pretrained(tmp_path / "other")
    (other / "config.json").write_text('{"model_type": "hubert", "hidden_size": 768}')
    with pytest.warns(
        UserWarning, match=r"does not describe the model.*'hubert'.*config stored inside model.safetensors"
    ):
        assert Encoder.from_pretrained(other).config == tiny_encoder.config
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an agreeing config.json is silent
        Encoder.from_pretrained(tiny_encoder.save_pretrained(tmp_path / "same"))


def test_pickle_with_code_is_refused(tmp_path, tiny_encoder):
    """Loading never executes code: a pickle carrying an object is rejected by weights_only."""
    tiny_encoder.save_pretrained(tmp_path / "p")
    (tmp_path / "p" / "model.safetensors").unlink()
    (tmp_path / "p" / "config.json").write_text(EncoderConfig.preset("tiny").to_json())
    torch.save(
        {"state_dict": tiny_encoder.state_dict(), "obj": warnings.WarningMessage}, tmp_path / "p" / "pytorch_model.bin"
    )
    with pytest.raises(ValueError, match="nor a plain PyTorch state dict.*WarningMessage was not an allowed") as e:
        Encoder.from_pretrained(tmp_path / "p")
    assert "weights_only" not in str(e.value) and "safe_globals" not in str(e.value)


def test_pred_mask_replaces_frames_and_training_features():
    enc = _encoder("post_ln_group")
    wav = music_like(16000, batch=2)
    t = frame_lengths(16000)
    mask = torch.zeros(2, t, dtype=torch.bool)
    mask[:, 5:15] = True
    with torch.no_grad():
        a = enc(wav, pred_mask=mask)
        b = enc(wav)
    assert not torch.allclose(a.last_hidden_state, b.last_hidden_state)
    assert torch.equal(a.features, b.features)  # masking happens after the front end


def test_frontend_grad_mult_scales_only_gradients():
    cfg = EncoderConfig.preset("tiny", frontend_grad_mult=0.1)
    torch.manual_seed(0)
    enc = Encoder(cfg).train()
    wav = music_like(16000)
    grads = {}
    for mult in (1.0, 0.1):
        enc.config.frontend_grad_mult = mult
        enc.zero_grad()
        torch.manual_seed(1)
        out = enc(wav)
        out.last_hidden_state.pow(2).mean().backward()
        grads[mult] = enc.frontend.convs[0].conv.weight.grad.clone(), enc.proj.linear.weight.grad.clone()
    assert torch.allclose(grads[0.1][0], 0.1 * grads[1.0][0], rtol=1e-4, atol=1e-9)
    assert torch.allclose(grads[0.1][1], grads[1.0][1], rtol=1e-4, atol=1e-9)


def test_presets_and_config_validation():
    # MERT-v1 architecture: parameters and tensors. The tensor count tells a GroupNorm front end (one norm after conv 0)
    # from a LayerNorm after every conv, which the parameter count (6144 apart at 330M) does not. MERT-v1 counts
    # the HF layout, with q, k and v apart: our fused qkv holds 2 tensors per layer where HF has 6.
    for name, params, tensors, grad_mult in (("95m", 94.37, 211, 0.1), ("330m", 315.43, 403, 1.0)):
        with torch.device("meta"):
            enc = Encoder(name)
        assert abs(sum(p.numel() for p in enc.parameters()) / 1e6 - params) < 0.01
        assert len(enc.state_dict()) + 4 * enc.config.num_layers == tensors, name
        assert enc.config.frontend_norm == "group" and enc.config.frontend_grad_mult == grad_mult
        assert len(enc.transformer.layers) == {"95m": 12, "330m": 24}[name]
    assert EncoderConfig.preset("MERT-v1-330M").pre_ln
    assert EncoderConfig.from_dict(EncoderConfig.preset("tiny").to_dict()) == EncoderConfig.preset("tiny")
    with pytest.raises(ValueError, match="unknown preset"):
        EncoderConfig.preset("1b")
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        EncoderConfig(hidden_size=100, num_heads=12)
    with pytest.raises(ValueError, match=r"unknown EncoderConfig field\(s\) \['hiden_size'\]"):
        EncoderConfig.from_dict({"hiden_size": 3})


def test_masked_group_norm_statistics_in_float32():
    from mert.models.modules import masked_group_norm

    torch.manual_seed(0)
    x = torch.randn(2, 8, 70000) * 3 + 1  # longer than fp16 can count
    lengths = torch.tensor([70000, 23999])
    w, b = torch.rand(8) + 0.5, torch.randn(8)
    ref = masked_group_norm(x, lengths, 8, w, b, 1e-5)
    for dtype, tol in ((torch.float16, 2e-2), (torch.bfloat16, 6e-2)):
        got = masked_group_norm(x.to(dtype), lengths, 8, w.to(dtype), b.to(dtype), 1e-5)
        assert got.dtype == dtype and torch.isfinite(got).all()
        assert (got.float() - ref)[1, :, :23999].abs().max() < tol


def test_embed_file_keeps_only_chosen_layers_and_pools_window_by_window(tmp_path):
    import soundfile as sf

    enc = _encoder("post_ln_group")
    wav = music_like(24000 * 7 + 123, seed=6)[0]
    path = tmp_path / "long.wav"
    sf.write(path, wav.numpy(), 24000, subtype="FLOAT")
    with torch.no_grad():
        ref = enc(wav, sample_rate=24000, chunk_seconds=2.0)
    frames = enc.embed_file(path, layers=[0, 2], chunk_seconds=2.0)
    pooled = enc.embed_file(path, layers=[0, 2], pool="mean", chunk_seconds=2.0, chunk_batch_size=3)
    assert frames.shape == (2, int(ref.lengths[0]), 32)
    # inference_mode vs no_grad may pick other GEMM kernels (AVX2 CPUs): equal to float rounding.
    assert torch.allclose(frames, ref.stacked([0, 2])[0], rtol=0, atol=1e-5)
    assert torch.allclose(pooled, ref.stacked([0, 2])[0].mean(dim=1), atol=1e-5)
    with pytest.raises(ValueError, match="pool must be None or 'mean'"):
        enc.embed_file(path, pool="max")


def test_initialisation_matches_the_original_recipe():
    """fairseq / transformers' HuBERT initialisation: a fresh front end is as loud as HubertModel's (PyTorch's
    default conv init left it ~600x quieter), Linears are N(0, 0.02) with zero bias, norms start at 1 / 0."""
    from transformers import HubertConfig, HubertModel

    from mert.models.encoder import INITIALIZER_RANGE

    torch.manual_seed(0)
    x = 0.1 * torch.randn(2, 48000)
    enc = Encoder("95m").eval()
    hf = HubertModel(HubertConfig(conv_bias=False, feat_extract_norm="group")).eval()
    with torch.no_grad():
        ours = enc(x, sample_rate=24000).features.pow(2).mean().sqrt().item()
        ref = hf.feature_extractor(x).pow(2).mean().sqrt().item()
    assert 0.5 < ours / ref < 2.0, (ours, ref)
    linears = [m for m in enc.modules() if isinstance(m, torch.nn.Linear)]
    w = torch.cat([m.weight.flatten() for m in linears])
    assert abs(w.std().item() - INITIALIZER_RANGE) < 1e-3
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in linears)
    norms = [m for m in enc.modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm))]
    assert all(bool((m.weight == 1).all()) and bool((m.bias == 0).all()) for m in norms)
    # Every preset's front end starts well above the feature LayerNorm's eps (1e-5 on the variance).
    tiny = Encoder("tiny").eval()
    with torch.no_grad():
        assert tiny(x, sample_rate=24000).features.pow(2).mean().sqrt().item() > 0.1


def test_gabor_frontend_init_is_a_constant_q_filterbank():
    """``frontend_init="gabor"``: each first-conv channel passes a band around its own log-spaced centre (the
    channel answering a sine most is the one centred nearest it), rows keep Kaiming's scale, a fresh encoder's
    first conv is that bank, and loaded weights replace it."""
    from mert.models.modules import gabor_filterbank

    bank = gabor_filterbank(64, 1024, 24000)
    assert bank.shape == (64, 1024)
    torch.testing.assert_close(bank.norm(dim=1), torch.full((64,), 2**0.5))
    ratio = (10_000 / 32.7) ** (1 / 63)
    t = torch.arange(1024) / 24000
    for f in (55.0, 220.0, 440.0, 1000.0, 3520.0):
        response = (bank @ torch.sin(2 * math.pi * f * t)).abs()
        centre = 32.7 * ratio ** int(response.argmax())
        assert abs(math.log(centre / f, ratio)) <= 1.0, (f, centre)  # the nearest channel or its neighbour
    with pytest.raises(ValueError, match="frontend_init"):
        EncoderConfig.preset("tiny", frontend_init="sinc")

    def config(init: str) -> EncoderConfig:
        return EncoderConfig.preset(
            "tiny", conv_dim=(64,) * 4, conv_kernel=(1024, 3, 3, 2), conv_stride=(40, 2, 2, 2),
            frontend_norm="layer", frontend_init=init,
        )  # fmt: skip

    # Loading weights replaces the init entirely (it only decides where a fresh model starts).
    enc = Encoder(config("gabor"))
    torch.testing.assert_close(enc.frontend.convs[0].conv.weight[:, 0], gabor_filterbank(64, 1024, 24000))
    other = Encoder(config("kaiming"))
    enc.load_state_dict(other.state_dict())
    assert torch.equal(enc.frontend.convs[0].conv.weight, other.frontend.convs[0].conv.weight)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layers_argument_stops_after_the_deepest_requested_layer(name):
    enc = _encoder(name)
    L = enc.num_layers
    assert L >= 2
    calls = []
    hooks = [layer.register_forward_hook(lambda m, i, o: calls.append(m)) for layer in enc.transformer.layers]
    wav = music_like(24000, batch=2)
    lengths = torch.tensor([24000, 17000])
    with torch.no_grad():
        full = enc(wav, lengths, sample_rate=24000)
        assert len(calls) == L
        for spec, depth in (([1], 1), ("0,1", 1), (0, 0), ("last", L), ([L - 1, 1], L - 1)):
            calls.clear()
            part = enc(wav, lengths, sample_rate=24000, layers=spec)
            assert len(calls) == depth  # only the layers up to the deepest one asked for ran
            assert len(part.hidden_states) == L + 1
            for i, s in enumerate(part.hidden_states):
                if i <= depth:
                    assert torch.equal(s, full.hidden_states[i]), (spec, i)
                else:
                    assert s is None
            assert torch.equal(part.last_hidden_state, full.hidden_states[depth])
            assert torch.equal(part.lengths, full.lengths)
    for h in hooks:
        h.remove()
    # The 330M layout's final LayerNorm is part of the last state only: an early stop must not apply it.
    if enc.config.pre_ln:
        assert not torch.equal(part.hidden_states[L - 1], enc.transformer.norm(part.hidden_states[L - 1]))
    with pytest.raises(ValueError, match=r"hidden state\(s\) \[" + str(L) + r"\] were not computed"):
        part.stacked([L])
    with pytest.raises(ValueError, match="out of range"):
        enc(wav, layers=[L + 1], sample_rate=24000)


def test_layers_argument_with_windows_and_embed_equals_the_full_pass():
    enc = _encoder("post_ln_group")
    wav = music_like(24000 * 5 + 77, seed=3)  # longer than the 2 s window: several windows are stitched
    calls = []
    hook = enc.transformer.layers[1].register_forward_hook(lambda m, i, o: calls.append(m))  # the second layer
    with torch.no_grad():
        full = enc(wav, sample_rate=24000, chunk_seconds=2.0)
        assert len(calls) > 1
        calls.clear()
        part = enc(wav, sample_rate=24000, chunk_seconds=2.0, layers=[0, 1])
        assert torch.equal(part.stacked([0, 1]), full.stacked([0, 1]))
        assert all(part.hidden_states[i] is None for i in range(2, enc.num_layers + 1))
        emb = enc.embed(wav[0], sample_rate=24000, layers=[1], chunk_seconds=2.0)
        emb_short = enc.embed(wav[0, :24000], sample_rate=24000, layers=[0], chunk_seconds=None)
        # hidden state 1 is the first layer's output: the second layer never ran in these three calls
        assert calls == []
    assert torch.allclose(emb, full.stacked([1])[0], rtol=0, atol=1e-5)
    with torch.no_grad():
        ref_short = enc(wav[:, :24000], sample_rate=24000)
    assert torch.allclose(emb_short, ref_short.stacked([0])[0], rtol=0, atol=1e-5)
    hook.remove()


@pytest.mark.parametrize("native", [False, True])
def test_fast_picks_bf16_only_where_the_cpu_has_it_and_emulated_bf16_warns(monkeypatch, native):
    import mert.models.encoder as encoder_module

    monkeypatch.setattr(encoder_module, "cpu_has_native_bf16", lambda: native)
    enc = _encoder("post_ln_group").train()
    assert enc.fast() is enc and not enc.training
    assert enc.mask_emb.dtype == (torch.bfloat16 if native else torch.float32)
    enc = _encoder("post_ln_group").to(torch.bfloat16)
    wav = music_like(8000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.inference_mode():
            enc(wav, sample_rate=24000)
            enc(wav, sample_rate=24000)
    bf16 = [w for w in caught if "no bf16 instructions" in str(w.message)]
    assert len(bf16) == (0 if native else 1)  # once per encoder, only where bf16 is emulated

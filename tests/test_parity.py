"""Numerical parity with transformers' HubertModel (the reference implementation of MERT-v1's encoder)."""

from __future__ import annotations

import pytest
import torch

from mert import Encoder
from tests.helpers import (
    hf_config,
    music_like,
    perturb_vectors_,
    perturbed_encoder,
    perturbed_hf_model,
    save_hf_folder,
)

pytest.importorskip("transformers")


def _hf_states(model, wav, attention_mask=None):
    """HF hidden states with MERT-v1's semantics (MERT-v1 architecture): the last entry is ``last_hidden_state``.

    transformers >= 5 returns the pre-LayerNorm output of the last layer as ``hidden_states[-1]`` for pre-LN
    (330M-style) models; transformers 4.x, which MERT was released with, returned the normalised one.
    """
    with torch.no_grad():
        out = model(wav, attention_mask=attention_mask, output_hidden_states=True)
    return (*out.hidden_states[:-1], out.last_hidden_state)


@pytest.mark.parametrize("layout", ["95m", "330m", "hubert_layer"])
@pytest.mark.parametrize(
    "fmt,naming,model_type",
    [("safetensors", "new", "hubert"), ("bin", "old", "mert_model"), ("bin", "new", "hubert")],
)
def test_hidden_states_match_hf(tmp_path, layout, fmt, naming, model_type):
    hf = perturbed_hf_model(hf_config(layout))
    folder = save_hf_folder(hf, tmp_path / "ckpt", fmt=fmt, naming=naming, model_type=model_type)
    enc = Encoder.from_pretrained(folder)
    assert not enc.training
    assert enc.config.pre_ln == (layout != "95m")
    assert enc.config.frontend_norm == ("layer" if layout == "hubert_layer" else "group")
    # Spec 4: the front-end gradient multiplier follows the recipe (95M 0.1, 330M 1.0), not the norm type.
    assert enc.config.frontend_grad_mult == (0.1 if layout == "95m" else 1.0)
    wav = music_like(36000, batch=2)
    ref = _hf_states(hf, wav)
    with torch.no_grad():
        out = enc(wav, sample_rate=24000)
    assert len(out.hidden_states) == len(ref) == hf.config.num_hidden_layers + 1
    for i, (a, b) in enumerate(zip(out.hidden_states, ref)):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 1e-4, f"hidden state {i}: max diff {(a - b).abs().max():.2e}"
    assert torch.equal(out.last_hidden_state, out.hidden_states[-1])
    assert out.lengths.tolist() == [enc.frame_lengths(36000)] * 2


@pytest.mark.parametrize("layout", ["95m", "330m"])
def test_strict_compat_reproduces_hf_on_padded_batches(tmp_path, layout):
    hf = perturbed_hf_model(hf_config(layout))
    enc = Encoder.from_pretrained(save_hf_folder(hf, tmp_path / "ckpt"), strict_mert_compat=True)
    wav = music_like(48000, batch=2, seed=3)
    lengths = torch.tensor([48000, 30000])
    wav[1, 30000:] = 0.0
    attn = (torch.arange(48000)[None] < lengths[:, None]).long()
    ref = _hf_states(hf, wav, attn)
    with torch.no_grad():
        out = enc(wav, lengths)
    t1 = int(enc.frame_lengths(30000))
    for a, b in zip(out.hidden_states, ref):
        assert (a[0] - b[0]).abs().max() <= 1e-4
        assert (a[1, :t1] - b[1, :t1]).abs().max() <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["95m", "330m"])
def test_full_size_parity(tmp_path, layout):
    hf = perturbed_hf_model(hf_config(layout, size="full"))
    enc = Encoder.from_pretrained(save_hf_folder(hf, tmp_path / "ckpt", naming="old", model_type="mert_model"))
    n_params = sum(p.numel() for p in enc.parameters())
    assert abs(n_params / 1e6 - {"95m": 94.37, "330m": 315.43}[layout]) < 0.01
    wav = music_like(5 * 24000)
    ref = _hf_states(hf, wav)
    with torch.no_grad():
        out = enc(wav, sample_rate=24000)
    assert out.last_hidden_state.shape[1] == 374
    for i, (a, b) in enumerate(zip(out.hidden_states, ref)):
        assert (a - b).abs().max() <= 1e-4, f"hidden state {i}: max diff {(a - b).abs().max():.2e}"


@pytest.mark.parametrize(
    "preset,kw",
    [
        ("tiny", {}),  # MERT-v1-95M layout: post-LN, GroupNorm on conv 0
        ("tiny", {"frontend_norm": "layer", "pre_ln": True}),  # 330M / HuBERT-large layout
        (  # the demo's `small` front end (1024-tap Gabor first conv, LayerNorm), with input normalisation
            "tiny",
            dict(
                conv_dim=(64,) * 4,
                conv_kernel=(1024, 3, 3, 2),
                conv_stride=(40, 2, 2, 2),
                frontend_norm="layer",
                frontend_init="gabor",
                normalize_input=True,
            ),
        ),
    ],
)
def test_hf_export_loads_in_transformers_and_back(tmp_path, preset, kw):
    from transformers import AutoModel, HubertModel

    enc = perturbed_encoder(_preset(preset, **kw))  # norms and biases perturbed: none is the identity
    folder = enc.save_pretrained(tmp_path / "hf", format="hf")
    hf = HubertModel.from_pretrained(folder).eval()
    auto = AutoModel.from_pretrained(folder).eval()
    assert type(auto).__name__ == "HubertModel"
    wav = music_like(30000, batch=2)
    if enc.config.normalize_input:  # the HF model gets what Wav2Vec2FeatureExtractor(do_normalize) gives it
        hf_in = (wav - wav.mean(1, keepdim=True)) / torch.sqrt(wav.var(1, unbiased=False, keepdim=True) + 1e-7)
    else:
        hf_in = wav
    with torch.no_grad():
        ours = enc(wav, sample_rate=enc.sample_rate).hidden_states
        hf_out = hf(hf_in, output_hidden_states=True)
        auto_out = auto(hf_in, output_hidden_states=True)
    ref = (*hf_out.hidden_states[:-1], hf_out.last_hidden_state)  # MERT-v1 architecture semantics, see _hf_states
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert (a - b).abs().max() <= 1e-4, f"hidden state {i}: {(a - b).abs().max():.2e}"
    assert torch.equal(auto_out.last_hidden_state, hf_out.last_hidden_state)
    # ... and back: the same config (our full one travels in config.json) and bit-identical weights.
    back = Encoder.from_pretrained(folder)
    assert back.config == enc.config
    for k, v in enc.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    pre = __import__("json").loads((folder / "preprocessor_config.json").read_text())
    assert pre["sampling_rate"] == enc.sample_rate and pre["do_normalize"] == enc.config.normalize_input


def _preset(name, **kw):
    from mert import EncoderConfig

    return EncoderConfig.preset(name, **kw)


def test_hf_export_key_mapping_is_the_inverse_of_the_import(tmp_path):
    from mert.models.checkpoint import convert_hf_state_dict, to_hf_state_dict

    torch.manual_seed(1)
    enc = Encoder(_preset("tiny", frontend_norm="layer", pre_ln=True))
    state = enc.state_dict()
    hf_state = to_hf_state_dict(state)
    assert "encoder.layers.0.attention.q_proj.weight" in hf_state and "masked_spec_embed" in hf_state
    back = convert_hf_state_dict(hf_state, enc.config)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    with pytest.raises(ValueError, match="no transformers HubertModel counterpart"):
        to_hf_state_dict({**state, "head.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="format must be"):
        enc.save_pretrained(tmp_path / "x", format="onnx")


def test_mert_v0_layout_16khz_hubert_loads_with_its_rates(tmp_path):
    """MERT-v0 / MERT-v0-public: HuBERT's layout at 16 kHz, 50 Hz frames."""
    hf = perturbed_hf_model(hf_config("95m"))
    folder = save_hf_folder(hf, tmp_path / "v0", sample_rate=16000)
    enc = Encoder.from_pretrained(folder)
    assert enc.sample_rate == 16000 and enc.frame_rate == 50.0
    wav = music_like(16000, batch=2, sr=16000)
    with torch.no_grad():
        out = enc(wav, sample_rate=16000)
    ref = _hf_states(hf, wav)
    for a, b in zip(out.hidden_states, ref):
        assert (a - b).abs().max() <= 1e-4
    assert out.frame_rate == 50.0 and out.lengths.tolist() == [49, 49]  # floor((16000 - 400) / 320) + 1
    with torch.no_grad():  # 24 kHz audio is resampled to the model's 16 kHz: the same frame count per second
        assert enc(music_like(24000, sr=24000), sample_rate=24000).lengths.tolist() == [49]


def _data2vec_model(seed: int = 0):
    from transformers import Data2VecAudioConfig, Data2VecAudioModel

    config = Data2VecAudioConfig(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128, conv_dim=[48] * 7,
        conv_bias=True, num_conv_pos_embeddings=5, conv_pos_kernel_size=19, num_conv_pos_embedding_groups=4,
    )  # fmt: skip
    torch.manual_seed(seed)
    return perturb_vectors_(Data2VecAudioModel(config).eval())


def test_music2vec_layout_data2vec_audio_parity_and_padding(tmp_path):
    """music2vec-v1: data2vec-audio (a stack of positional convs with LayerNorm), 16 kHz, normalised input,
    published without a preprocessor_config.json and with a path string as `vocab_size`."""
    import json

    hf = _data2vec_model()
    folder = save_hf_folder(hf, tmp_path / "m2v", model_type="data2vec-audio", sample_rate=16000)
    (folder / "preprocessor_config.json").unlink()
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("sample_rate")
    cfg["vocab_size"] = "/home/someone/dict.km.txt"  # as in the published music2vec-v1 config.json
    (folder / "config.json").write_text(json.dumps(cfg))
    enc = Encoder.from_pretrained(folder)
    c = enc.config
    assert (c.pos_conv, c.pos_conv_layers, c.pos_conv_kernel, c.frontend_norm, c.pre_ln) == (
        "stack",
        5,
        19,
        "layer",
        False,
    )
    assert c.sample_rate == 16000 and c.normalize_input and enc.frame_rate == 50.0
    wav = music_like(20000, batch=2, sr=16000)
    normed = (wav - wav.mean(1, keepdim=True)) / torch.sqrt(wav.var(1, unbiased=False, keepdim=True) + 1e-7)
    ref = _hf_states(hf, normed)  # what Wav2Vec2FeatureExtractor(do_normalize=True) feeds it
    with torch.no_grad():
        out = enc(wav, sample_rate=16000)
    assert len(out.hidden_states) == len(ref) == 4
    for i, (a, b) in enumerate(zip(out.hidden_states, ref)):
        assert (a - b).abs().max() <= 1e-4, f"hidden state {i}: {(a - b).abs().max():.2e}"
    # A clip alone and right-padded in a batch give the same states (padding is zeroed before every conv).
    with torch.no_grad():
        alone = enc(wav[1, :15000], sample_rate=16000)
        batch = enc(wav, torch.tensor([20000, 15000]), sample_rate=16000)
    n = int(alone.lengths[0])
    for a, b in zip(alone.hidden_states, batch.hidden_states):
        assert (a[0] - b[1, :n]).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="data2vec layout"):
        enc.save_pretrained(tmp_path / "hf", format="hf")
    enc.save_pretrained(tmp_path / "ours")  # our own format holds it exactly
    back = Encoder.from_pretrained(tmp_path / "ours")
    assert back.config == enc.config

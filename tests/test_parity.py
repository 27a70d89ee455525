"""Numerical parity with transformers' HubertModel (the reference implementation of MERT-v1's encoder)."""

from __future__ import annotations

import pytest
import torch

from mert import Encoder
from tests.conftest import hf_config, music_like, perturbed_hf_model, save_hf_folder

pytest.importorskip("transformers")


def _hf_states(model, wav, attention_mask=None):
    """HF hidden states with MERT-v1's semantics (spec 1): the last entry is ``last_hidden_state``.

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

    torch.manual_seed(0)
    enc = Encoder(_preset(preset, **kw))
    with torch.no_grad():  # perturb norms and biases so none of them is the identity
        for p in enc.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    enc.eval()
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
    ref = (*hf_out.hidden_states[:-1], hf_out.last_hidden_state)  # spec 1 semantics, see _hf_states
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

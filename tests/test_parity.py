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

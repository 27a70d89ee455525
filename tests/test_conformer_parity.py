"""Parity of the spectrogram + Conformer family: MuQ against the `muq` package, MERT-v2's published layout.

MuQ: the `muq` package's own modules (its mel front end and 2-D conv subsampler) and transformers'
Wav2Vec2ConformerEncoder (the Conformer MuQ builds), random weights, saved under MuQ's key names and loaded with
``Encoder.from_pretrained``: every hidden state within 1e-4 in float32. The package's glue (``MuQ.forward``)
needs transformers 4, so the test composes the modules as ``MuQModel.get_predictions`` does.

MERT-v2: the published key names and shapes (``shared/mert-spec.md`` section 7) written out here independently
of the loader, their count and the parameter count exact, and the GRN, RoPE and conv module checked against
their equations.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from mert import Encoder, EncoderConfig
from mert.models.checkpoint import check_keys, convert_mert_v2_state_dict, to_mert_v2_state_dict
from mert.models.conformer import ConvModule, GlobalResponseNorm, RotarySelfAttention
from tests.helpers import music_like

SR = 24000
MUQ_STAT = {"melspec_2048_mean": 6.768444971712967, "melspec_2048_std": 18.417922652295623}


# ----------------------------------------------------------------------------------------------------- MuQ
def _muq_module(name: str):
    """A module file of the installed `muq` package, loaded without its package __init__ (which imports the
    MuQ-MuLan text tower and its dependencies)."""
    spec = importlib.util.find_spec("muq")
    if spec is None or not spec.submodule_search_locations:
        if os.environ.get("CI"):  # the dev extra installs muq: in CI a missing reference is a failure, not a skip
            pytest.fail("the muq package is not installed, so the MuQ parity test cannot run")
        pytest.skip("the muq package is not installed (pip install --no-deps muq)")
    path = Path(next(iter(spec.submodule_search_locations))) / "muq" / "modules" / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(f"_muq_reference_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _w2v2_config(width: int, layers: int, heads: int, ffn: int, kernel: int) -> dict:
    return {
        "hidden_size": width, "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": ffn,
        "conv_depthwise_kernel_size": kernel, "hidden_act": "swish", "position_embeddings_type": "rotary",
        "rotary_embedding_base": 10000, "layer_norm_eps": 1e-5, "hidden_dropout": 0.0, "attention_dropout": 0.0,
        "activation_dropout": 0.0, "conformer_conv_dropout": 0.0, "feat_proj_dropout": 0.0, "layerdrop": 0.0,
        "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4, "max_source_positions": 5000,
    }  # fmt: skip


def _randomise(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1) + (1.0 if "norm" in name and
                    name.endswith("weight") and p.dim() == 1 else 0.0))  # fmt: skip
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.fixture(scope="module")
def muq_reference(tmp_path_factory):
    """(folder in MuQ's published layout, reference forward) for a width-32, 2-block MuQ."""
    conv_mod, feat_mod = _muq_module("conv"), _muq_module("features")
    from transformers import Wav2Vec2ConformerConfig
    from transformers.models.wav2vec2_conformer.modeling_wav2vec2_conformer import Wav2Vec2ConformerEncoder

    torch.manual_seed(0)
    w2v2 = _w2v2_config(32, 2, 4, 64, 7)
    mel = feat_mod.MelSTFT(n_fft=2048, hop_length=240, is_db=True)
    conv = conv_mod.Conv2dSubsampling(1, 8, 32, strides=[2, 2], n_bands=128).eval()
    w2v2_config = Wav2Vec2ConformerConfig(**w2v2)
    w2v2_config._attn_implementation = "eager"  # the reference formulation (MuQ's default)
    conformer = Wav2Vec2ConformerEncoder(w2v2_config).eval()
    _randomise(conv, 1)
    _randomise(conformer, 2)

    @torch.no_grad()
    def forward(wav: torch.Tensor) -> list[torch.Tensor]:
        # MuQModel.get_predictions: mel in dB, last frame dropped, normalised, subsampled, Conformer states.
        x = mel(wav.float())[..., :-1]
        x = (x - MUQ_STAT["melspec_2048_mean"]) / MUQ_STAT["melspec_2048_std"]
        x = conv(x)
        outs = []
        hooks = [layer.register_forward_hook(lambda m, a, o: outs.append(o)) for layer in conformer.layers]
        last = conformer(x).last_hidden_state
        for h in hooks:
            h.remove()
        # transformers 4's hidden_states: the input, each block's output, the last one through layer_norm.
        return [x, *outs[:-1], last]

    state = {f"model.conv.{k}": v for k, v in conv.state_dict().items()}
    state |= {f"model.conformer.{k}": v for k, v in conformer.state_dict().items()}
    state |= {"model.linear.weight": torch.randn(4096, 32), "model.linear.bias": torch.zeros(4096),
              "model.cls_token": torch.randn(32)}  # fmt: skip
    folder = tmp_path_factory.mktemp("muq")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    config = {"label_rate": 25, "num_codebooks": 1, "codebook_dim": 16, "codebook_size": 4096,
              "features": ["melspec_2048"], "hop_length": 240, "n_mels": 128, "conv_dim": 8, "encoder_dim": 32,
              "encoder_depth": 2, "mask_hop": 0.4, "mask_prob": 0.6, "is_flash": False, "stat": MUQ_STAT,
              "w2v2_config": w2v2, "use_rvq_target": True, "rvq_n_codebooks": 8}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    return folder, forward


def test_muq_layout_matches_the_muq_package(muq_reference):
    folder, reference = muq_reference
    enc = Encoder.from_pretrained(folder)
    assert enc.config.subsampler == "conv2d" and enc.config.rope_on == "input" and enc.frame_rate == 25.0
    for n in (2 * SR, 2 * SR + 500):  # an even and an odd number of mel frames
        wav = music_like(n, batch=2, seed=n)
        with torch.no_grad():
            ours = enc(wav, sample_rate=SR).hidden_states
        theirs = reference(wav)
        assert len(ours) == len(theirs) == 3
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert a.shape == b.shape, (i, a.shape, b.shape)
            err = (a - b).abs().max().item()
            assert err <= 1e-4, f"hidden state {i}: max abs error {err:.2e}"


def test_muq_layout_refuses_what_it_cannot_build(muq_reference, tmp_path):
    folder, _ = muq_reference
    config = json.loads((folder / "config.json").read_text())
    config["w2v2_config"] = {**config["w2v2_config"], "position_embeddings_type": "relative"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").symlink_to(folder / "model.safetensors")
    with pytest.raises(ValueError, match="only 'rotary'"):
        Encoder.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------------------------------- MERT-v2
def mert_v2_published_shapes(
    width: int = 1024,
    layers: int = 24,
    ffn: int = 4096,
    channels=(128, 512, 1024),
    depths=(3, 4, 5),
    strides=(1, 2, 2),
    n_mels: int = 128,
    n_fft: int = 2048,
    kernel: int = 31,
) -> dict[str, tuple[int, ...]]:
    """Every key of MERT-v2's model.safetensors with its shape, written from the spec's description."""
    shapes: dict[str, tuple[int, ...]] = {
        "feature_extractor.spectrogram.window": (n_fft,),
        "feature_extractor.mel_scale.fb": (n_fft // 2 + 1, n_mels),
        "feature_extractor.mel_mean": (n_mels,),
        "feature_extractor.mel_std": (n_mels,),
    }
    c_in = n_mels
    for i, (c, depth, s) in enumerate(zip(channels, depths, strides)):
        pre = f"subsampling_module.{i}"
        if c != c_in or s != 1:
            shapes |= {
                f"{pre}.resampling_layer.0.weight": (c_in,),
                f"{pre}.resampling_layer.0.bias": (c_in,),
                f"{pre}.resampling_layer.2.weight": (c, c_in, 2),
                f"{pre}.resampling_layer.2.bias": (c,),
            }
        for j in range(depth):
            p = f"{pre}.convnext_layers.{j}"
            shapes |= {
                f"{p}.depthwise_block.1.weight": (c, 1, 7),
                f"{p}.depthwise_block.1.bias": (c,),
                f"{p}.pointwise_block.0.weight": (c,),
                f"{p}.pointwise_block.0.bias": (c,),
                f"{p}.pointwise_block.1.weight": (4 * c, c),
                f"{p}.pointwise_block.1.bias": (4 * c,),
                f"{p}.pointwise_block.3.weight": (1, 1, 4 * c),
                f"{p}.pointwise_block.3.bias": (1, 1, 4 * c),
                f"{p}.pointwise_block.4.weight": (c, 4 * c),
                f"{p}.pointwise_block.4.bias": (c,),
            }
        c_in = c
    for i in range(layers):
        p = f"layers.{i}"
        for norm in (
            "ffn1_layer_norm",
            "attn_layer_norm",
            "conv_module.layer_norm",
            "conv_module.conv_block.4.1",
            "ffn2_layer_norm",
            "final_layer_norm",
        ):
            shapes |= {f"{p}.{norm}.weight": (width,), f"{p}.{norm}.bias": (width,)}
        for f in ("ffn1", "ffn2"):
            shapes |= {
                f"{p}.{f}.w_1.weight": (ffn, width),
                f"{p}.{f}.w_1.bias": (ffn,),
                f"{p}.{f}.w_2.weight": (width, ffn),
                f"{p}.{f}.w_2.bias": (width,),
            }
        for proj in ("query_proj", "key_proj", "value_proj", "out_proj"):
            shapes |= {f"{p}.attn.{proj}.weight": (width, width), f"{p}.attn.{proj}.bias": (width,)}
        shapes |= {
            f"{p}.conv_module.conv_block.1.weight": (2 * width, width, 1),
            f"{p}.conv_module.conv_block.3.weight": (width, 1, kernel),
            f"{p}.conv_module.conv_block.6.weight": (width, width, 1),
        }
    return shapes  # fmt: skip


def test_mert_v2_preset_has_the_published_tensors_and_parameter_count():
    shapes = mert_v2_published_shapes()
    assert len(shapes) == 876
    buffers = [k for k in shapes if k.startswith("feature_extractor.")]
    assert sum(math.prod(s) for k, s in shapes.items() if k not in buffers) == 632_295_808
    with torch.device("meta"):
        enc = Encoder("mert_v2")
    assert sum(p.numel() for p in enc.parameters()) == 632_295_808
    ours = to_mert_v2_state_dict(enc.state_dict())
    assert {k: tuple(v.shape) for k, v in ours.items()} == shapes  # the same 876 names and shapes
    # A state dict with every published key (meta tensors: shapes only) loads with nothing missing or unexpected.
    published = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    converted = check_keys(convert_mert_v2_state_dict(published), enc.config, Path("model.safetensors"))
    assert set(converted) == set(enc.state_dict())


def test_mert_v2_folder_loads_through_from_pretrained(tmp_path):
    """A scaled-down MERT-v2 folder (its config.json keys, published key names) loads and runs."""
    from safetensors.torch import save_file

    sizes = dict(width=32, layers=2, ffn=64, channels=(128, 64, 32), depths=(1, 1, 1), kernel=7)
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) * 0.1 for k, s in mert_v2_published_shapes(**sizes).items()}
    state["feature_extractor.spectrogram.window"] = torch.hann_window(2048)
    state["feature_extractor.mel_scale.fb"] = torch.rand(1025, 128, generator=g) * 0.01
    state["feature_extractor.mel_std"] = torch.rand(128, generator=g) + 10
    save_file(state, str(tmp_path / "model.safetensors"))
    config = {"model_type": "mert_v2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 64, "conv_depthwise_kernel_size": 7, "subsampling_channels": [128, 64, 32],
              "subsampling_depths": [1, 1, 1], "subsampling_layer_norm_eps": 1e-6, "layer_norm_eps": 1e-5}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    enc = Encoder.from_pretrained(tmp_path)
    assert enc.config.subsampler_strides == (1, 2, 2) and enc.config.mask_embedding is False
    torch.testing.assert_close(enc.frontend.mel_std, state["feature_extractor.mel_std"])
    with torch.no_grad():
        out = enc(music_like(SR), sample_rate=SR)
    assert out.last_hidden_state.shape == (1, 25, 32) and len(out.hidden_states) == 3
    # Our own export round-trips exactly.
    enc.save_pretrained(tmp_path / "ours")
    again = Encoder.from_pretrained(tmp_path / "ours")
    with torch.no_grad():
        out2 = again(music_like(SR), sample_rate=SR)
    torch.testing.assert_close(out2.last_hidden_state, out.last_hidden_state, atol=0, rtol=0)
    with pytest.raises(ValueError, match="HubertModel layout"):
        enc.save_pretrained(tmp_path / "hf", format="hf")


def test_global_response_norm_matches_its_equation():
    g = torch.Generator().manual_seed(0)
    grn = GlobalResponseNorm(6)
    with torch.no_grad():
        grn.weight.copy_(torch.randn(1, 1, 6, generator=g))
        grn.bias.copy_(torch.randn(1, 1, 6, generator=g))
    x = torch.randn(2, 9, 6, generator=g, dtype=torch.float64).float()
    expected = torch.empty_like(x)
    for b in range(2):
        norms = [math.sqrt(sum(float(x[b, t, c]) ** 2 for t in range(9))) for c in range(6)]
        mean = sum(norms) / 6
        for t in range(9):
            for c in range(6):
                n = norms[c] / (mean + 1e-6)
                expected[b, t, c] = x[b, t, c] + grn.weight[0, 0, c] * x[b, t, c] * n + grn.bias[0, 0, c]
    torch.testing.assert_close(grn(x), expected, atol=1e-5, rtol=1e-5)
    # With padding: the norm runs over the valid frames only, so the first 5 frames equal the clip alone.
    valid = torch.arange(9)[None] < torch.tensor([[5], [9]])
    torch.testing.assert_close(grn(x, valid)[0, :5], grn(x[:1, :5])[0])


def test_rotary_attention_matches_rotation_by_position():
    """RoPE on q/k: each pair (i, i + e/2) of a head turns by p * base^(-2i/e); scores depend on offsets only."""
    torch.manual_seed(0)
    d, h, t = 8, 2, 5
    attn = RotarySelfAttention(d, h, 0.0, "qk").eval()
    from mert.models.conformer import rotary_tables

    cos, sin = rotary_tables(t, d // h, 10000.0)
    e = d // h
    for p in range(t):
        for i in range(e // 2):
            angle = p / 10000.0 ** (2 * i / e)
            assert cos[p, i] == pytest.approx(math.cos(angle), abs=1e-6)
            assert sin[p, i + e // 2] == pytest.approx(math.sin(angle), abs=1e-6)
    x = torch.randn(1, t, d)
    with torch.no_grad():
        y = attn(x, cos, sin, None)
        # Independent formulation: rotate each (x_i, x_{i+e/2}) pair of q and k as a complex number.
        q, k, v = attn.qkv(x).reshape(1, t, 3, h, e).unbind(2)

        def rotate(z):
            c = torch.complex(z[..., : e // 2], z[..., e // 2 :])
            angles = torch.arange(t)[:, None, None] / 10000.0 ** (2 * torch.arange(e // 2) / e)
            c = c * torch.polar(torch.ones_like(angles), angles.float())
            return torch.cat([c.real, c.imag], dim=-1)

        scores = torch.einsum("bqhe,bkhe->bhqk", rotate(q), rotate(k)) / math.sqrt(e)
        ref = torch.einsum("bhqk,bkhe->bqhe", scores.softmax(-1), v).reshape(1, t, d)
        torch.testing.assert_close(y, attn.out(ref), atol=1e-5, rtol=1e-5)


def test_conv_module_matches_its_equation():
    torch.manual_seed(0)
    d, t, k = 4, 12, 5
    conv = ConvModule(d, k, "layer", "gelu", 1e-5, 0.0).eval()
    for p in conv.parameters():
        nn.init.normal_(p, std=0.5)
    x = torch.randn(1, t, d)
    with torch.no_grad():
        y = conv(x, None)
        # LN -> pointwise -> GLU -> depthwise (zero padding k//2) -> LN -> GELU -> pointwise, step by step.
        h = nn.functional.layer_norm(x, (d,), conv.norm.weight, conv.norm.bias, 1e-5) @ conv.pw1.weight[:, :, 0].T
        h = h[..., :d] * torch.sigmoid(h[..., d:])
        padded = torch.cat([torch.zeros(1, k // 2, d), h, torch.zeros(1, k // 2, d)], dim=1)
        w = conv.dw.weight[:, 0, :]  # (d, k)
        h = torch.stack([(padded[:, s : s + k, :] * w.T).sum(1) for s in range(t)], dim=1)
        h = nn.functional.layer_norm(h, (d,), conv.mid_norm.weight, conv.mid_norm.bias, 1e-5)
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        ref = h @ conv.pw2.weight[:, :, 0].T
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


def test_mel_front_end_matches_torchaudio():
    import torchaudio

    enc = Encoder("conformer_tiny").eval()
    wav = music_like(30000, batch=2)
    ref = torchaudio.transforms.MelSpectrogram(SR, n_fft=2048, hop_length=240, n_mels=128)(wav)
    ref = torchaudio.transforms.AmplitudeToDB()(ref)[..., :-1]
    ref = (ref - enc.frontend.mel_mean[:, None]) / enc.frontend.mel_std[:, None]
    torch.testing.assert_close(enc.frontend(wav), ref.transpose(1, 2), atol=1e-4, rtol=0)
    assert EncoderConfig.preset("muq_large").frame_lengths(30000) == 32


def test_mert_v2_hub_id_resolves_through_the_registry(tmp_path, monkeypatch, isolated_hub_env):
    """``Encoder.from_pretrained("m-a-p/MERT-v2-30s")`` fetches the repo's config.json and weights from the Hub
    (a loopback stand-in here) and reads MERT-v2's layout."""
    from safetensors.torch import save_file

    from tests.helpers import MAIN_COMMIT, PinnedHub, serving

    monkeypatch.setenv("MERT_REGISTRY", str(tmp_path / "config" / "registry.json"))
    sizes = dict(width=32, layers=2, ffn=64, channels=(128, 64, 32), depths=(1, 1, 1), kernel=7)
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) * 0.1 for k, s in mert_v2_published_shapes(**sizes).items()}
    state["feature_extractor.mel_std"] = torch.full((128,), 20.0)
    save_file(state, str(tmp_path / "model.safetensors"))
    config = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "conv_depthwise_kernel_size": 7,
        "subsampling_channels": [128, 64, 32],
        "subsampling_depths": [1, 1, 1],
    }
    weights = (tmp_path / "model.safetensors").read_bytes()
    files = {"config.json": json.dumps(config).encode(), "model.safetensors": weights}
    hub = PinnedHub({"m-a-p/MERT-v2-30s": files})
    with serving(hub.handler()) as url:
        hub.url = url
        monkeypatch.setenv("HF_ENDPOINT", url)
        enc = Encoder.from_pretrained("m-a-p/MERT-v2-30s")
    assert hub.revisions() == {"main", MAIN_COMMIT}  # not pinned: main, then the commit it names
    assert enc.frame_rate == 25.0 and enc.config.num_layers == 2

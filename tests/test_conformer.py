"""The spectrogram + Conformer family (MERT-v2, MuQ/MusicFM layouts): frame grid, padding, early exit, masking."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mert import Encoder, EncoderConfig
from mert.pretrain import MERTObjective
from mert.targets.base import Teacher

SR = 24000


def muq_small() -> EncoderConfig:
    """The MuQ layout (2-D conv subsampler, BatchNorm conv module, swish, rotary on the input) at width 32."""
    return EncoderConfig.preset(
        "muq_large", hidden_size=32, num_heads=4, ffn_size=64, num_layers=2, subsampler_channels=(8,),
        conv_module_kernel=7,
    )  # fmt: skip


def _randomise_norms(enc: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine norms, so eval-mode norms are not identities."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))


@pytest.mark.parametrize("name", ["conformer_tiny", "muq"])
def test_frame_count_matches_the_frame_grid_for_every_length(name):
    cfg = muq_small() if name == "muq" else EncoderConfig.preset(name)
    enc = Encoder(cfg).eval()
    assert (cfg.hop_length, cfg.frame_rate, cfg.min_samples) == (960, 25.0, 1025)
    for n in (1025, 1919, 1920, 2160, 24959):
        with torch.no_grad():
            out = enc(torch.randn(n) * 0.1, sample_rate=SR)
        t = out.last_hidden_state.shape[1]
        assert t == cfg.frame_lengths(n) == int(cfg.frame_lengths(torch.tensor(n)))
        # MERT-v2's layout: N // 960; MuQ's: ceil((N // 240) / 4).
        assert t == (n // 960 if name != "muq" else -(-(n // 240) // 4)), n
        assert out.frame_rate == 25.0 and len(out.hidden_states) == cfg.num_layers + 1
    with pytest.raises(ValueError, match="at least 1025 samples"):
        enc(torch.randn(1024), sample_rate=SR)


@pytest.mark.parametrize("name", ["conformer_tiny", "muq"])
def test_clip_alone_and_in_a_padded_batch_agree(name):
    torch.manual_seed(0)
    enc = Encoder(muq_small() if name == "muq" else "conformer_tiny").eval()
    _randomise_norms(enc)
    a, b = torch.randn(30000) * 0.1, torch.randn(50000) * 0.1
    wav = torch.zeros(2, 50000)
    wav[0, :30000], wav[1] = a, b
    wav[0, 30000:] = 0.7  # whatever sits in the padding must not matter
    with torch.no_grad():
        batch = enc(wav, lengths=[30000, 50000], sample_rate=SR)
        alone = enc(a, sample_rate=SR)
    t = alone.last_hidden_state.shape[1]
    assert int(batch.lengths[0]) == t
    for s_batch, s_alone in zip(batch.hidden_states, alone.hidden_states):
        # Exact up to float32 rounding: the STFT reflects each clip at its own end, convs see zeros past it.
        torch.testing.assert_close(s_batch[0, :t], s_alone[0], atol=2e-5, rtol=0)
        assert s_batch[0, t:].abs().max() == 0


def test_layers_early_exit_runs_only_the_blocks_asked_for():
    torch.manual_seed(0)
    enc = Encoder("conformer_tiny").eval()
    wav = torch.randn(48000) * 0.1
    calls = []
    hook = enc.transformer.layers[1].register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        full = enc(wav, sample_rate=SR)
        part = enc(wav, sample_rate=SR, layers=1)
    hook.remove()
    assert len(calls) == 1, "layers=1 skips block 2"
    assert part.hidden_states[2] is None
    torch.testing.assert_close(part.hidden_states[1], full.hidden_states[1], atol=0, rtol=0)


def test_chunked_long_audio_is_stitched_on_the_25_hz_grid():
    torch.manual_seed(0)
    enc = Encoder("conformer_tiny").eval()
    wav = torch.randn(SR * 6) * 0.1
    with torch.no_grad():
        one = enc(wav, sample_rate=SR)
        chunked = enc(wav, sample_rate=SR, chunk_seconds=2.0)
    assert chunked.last_hidden_state.shape == one.last_hidden_state.shape == (1, 150, 32)
    # Each frame comes from the window where it sits most centrally: away from the clip's ends the context
    # differs only beyond the window and the GRN's clip-level statistic, so frames stay close to one pass.
    cos = nn.functional.cosine_similarity(chunked.last_hidden_state, one.last_hidden_state, dim=-1)
    assert cos.mean() > 0.98, cos.mean()


def test_mask_embedding_and_features_for_pretraining():
    torch.manual_seed(0)
    enc = Encoder("conformer_tiny").train()
    wav = torch.randn(2, 48000) * 0.1
    mask = torch.zeros(2, 50, dtype=torch.bool)
    mask[:, 10:20] = True
    out = enc(wav, sample_rate=SR, pred_mask=mask)
    assert out.features.shape == (2, 50, 32)
    # The first block's input holds the mask embedding exactly at the masked frames.
    torch.testing.assert_close(out.hidden_states[0][mask], enc.mask_emb.expand(20, 32), atol=0, rtol=0)
    out.last_hidden_state.sum().backward()
    assert enc.mask_emb.grad.abs().sum() > 0
    assert enc.subsampler.stages[0].resample.weight.grad.abs().sum() > 0
    published = EncoderConfig.preset("conformer_tiny", mask_embedding=False)  # as the published files
    with pytest.raises(ValueError, match="mask embedding"):
        Encoder(published)(wav, sample_rate=SR, pred_mask=mask)


class _MelBandCodes(Teacher):
    """Codes on the encoder's 25 Hz grid: quantised log energy of each 960-sample frame."""

    kind = "codes"
    num_codebooks = 1
    codebook_size = 8

    def compute(self, wav):
        t = self.num_frames(wav.shape[-1])
        e = wav[..., : t * 960].unfold(-1, 960, 960).pow(2).mean(-1).add(1e-8).log10()
        return ((e + 8).clamp(0, 7)).long()[..., None]


def test_mert_objective_runs_on_the_conformer_family():
    torch.manual_seed(0)
    enc = Encoder("conformer_tiny")
    cfg = enc.config
    teacher = _MelBandCodes(SR, cfg.frame_kernel, cfg.frame_stride)
    obj = MERTObjective(enc, teacher, final_dim=8).train()
    wav = torch.randn(2, 48000) * 0.1
    out = obj(wav, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert enc.transformer.layers[0].attn.qkv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="frame grid"):
        MERTObjective(enc, _MelBandCodes(SR))  # MERT-v1's grid: 75 Hz targets for a 25 Hz encoder


# ----------------------------------------------------------------------------------------------------- entry points
def _write_clips(folder, n: int, seconds: float = 1.5) -> list[tuple[str, str]]:
    """``n`` clips alternating a low sine and a bright square wave: (path, label)."""
    import numpy as np
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    t = np.arange(int(seconds * SR)) / SR
    for i in range(n):
        label = ("low", "bright")[i % 2]
        f = 110.0 * (1 + i % 5) if label == "low" else 1760.0 + 50 * (i % 5)
        wav = 0.3 * np.sin(2 * np.pi * f * t) if label == "low" else 0.3 * np.sign(np.sin(2 * np.pi * f * t))
        path = folder / f"c{i:02d}.wav"
        sf.write(path, wav.astype(np.float32), SR)
        rows.append((str(path), label))
    return rows


def test_mert_embed_on_the_conformer_family_matches_the_python_api(tmp_path):
    from safetensors.numpy import load_file

    from mert.cli import main

    torch.manual_seed(0)
    enc = Encoder("conformer_tiny").eval()
    enc.save_pretrained(tmp_path / "model")
    ((path, _),) = _write_clips(tmp_path / "audio", 1, seconds=3.0)
    args = ["embed", path, "--model", str(tmp_path / "model"), "--pool", "none", "--layers", "last", "--format",
            "safetensors", "--out", str(tmp_path / "o"), "--quiet"]  # fmt: skip
    assert main(args) == 0
    got = load_file(str(tmp_path / "o" / "c00.safetensors"))["embeddings"]
    with torch.no_grad():
        ref = enc.embed_file(path, layers="last")
    assert got.shape == (1, 75, 32)  # 3 s at 25 Hz
    assert abs(got - ref.numpy()).max() < 1e-5


def test_mert_probe_runs_on_a_random_conformer(tmp_path):
    import csv
    import json

    from mert.cli import main

    rows = _write_clips(tmp_path / "audio", 24)
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)
    run_dir = tmp_path / "run"
    args = ["probe", "encoder=random:conformer_tiny", f"data.manifest={manifest}", f"run_dir={run_dir}",
            f"features.cache_dir={tmp_path / 'cache'}", "protocol=quick", "probe.max_epochs=10", "progress=false",
            "data.split_fractions=[0.5,0.25,0.25]"]  # fmt: skip
    assert main(args) == 0
    res = json.loads((run_dir / "results.json").read_text())
    best = res["results"]["candidates"][res["results"]["best_candidate"]]
    assert best["test"]["accuracy"]["mean"] > 0.6  # a low sine against a bright square: chance 0.5
    assert set(res["results"]["candidates"]) == {"0", "1", "2", "weighted"}


def test_hear_adapter_and_export_formats_on_the_conformer_family(tmp_path):
    from mert.hear import get_scene_embeddings, get_timestamp_embeddings, load_model
    from mert.pretrain.export import export_run

    torch.manual_seed(0)
    Encoder("conformer_tiny").save_pretrained(tmp_path / "model")
    model = load_model(str(tmp_path / "model"), sample_rate=48000)
    audio = torch.randn(2, 48000) * 0.1  # 1 s at 48 kHz
    emb, ts = get_timestamp_embeddings(audio, model)
    assert emb.shape == (2, 25, 32) and ts.shape == (2, 25)
    assert torch.allclose(ts[0, 1] - ts[0, 0], torch.tensor(40.0))  # 25 Hz
    assert get_scene_embeddings(torch.randn(1, 100) * 0.1, model).shape == (1, 32)  # shorter than one frame
    out = export_run(tmp_path / "model", tmp_path / "again")
    assert Encoder.from_pretrained(out).config == Encoder.from_pretrained(tmp_path / "model").config
    with pytest.raises(ValueError, match="HubertModel layout"):
        export_run(tmp_path / "model", tmp_path / "hf", format="hf")
    pytest.importorskip("onnxscript")
    with pytest.raises(ValueError, match="frontend='mel'"):
        export_run(tmp_path / "model", tmp_path / "onnx", format="onnx")


@pytest.mark.parametrize("name", ["conformer_tiny", "conformer_small"])
def test_hydra_model_files_are_the_presets(name):
    import yaml

    path = __import__("pathlib").Path(__file__).resolve().parents[1] / "conf" / "model" / f"{name}.yaml"
    assert EncoderConfig.from_dict(yaml.safe_load(path.read_text())) == EncoderConfig.preset(name)


def test_embed_preset_choices_are_the_presets():
    """`mert embed --preset` offers every preset (its list is spelled out to keep `mert --help` free of torch)."""
    import argparse

    from mert.cli import embed
    from mert.models.config import PRESETS

    parser = argparse.ArgumentParser()
    embed.add_parser(parser.add_subparsers())
    action = next(a for a in parser._subparsers._group_actions[0].choices["embed"]._actions if a.dest == "preset")
    assert sorted(action.choices) == sorted(PRESETS)


def test_bf16_model_keeps_the_spectrogram_in_float32():
    torch.manual_seed(0)
    enc = Encoder("conformer_tiny").eval()
    wav = torch.randn(24000) * 0.1
    with torch.no_grad():
        ref = enc(wav, sample_rate=SR).last_hidden_state
        enc.to(torch.bfloat16)
        assert enc.frontend.fb.dtype == torch.float32
        assert enc.subsampler.stages[0].resample.weight.dtype == torch.bfloat16
        out = enc(wav, sample_rate=SR).last_hidden_state
    assert out.dtype == torch.bfloat16
    cos = nn.functional.cosine_similarity(out.float(), ref, dim=-1)
    assert cos.mean() > 0.99, cos.mean()

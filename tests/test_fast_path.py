"""The fast inference paths give the plain formulation's numbers: oneDNN linear, GEMM convs, folded GroupNorm,
the cached positional-conv weight, and bf16 weights (per-layer cosine similarity >= 0.999 to float32)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mert import Encoder, EncoderConfig
from mert.models.fast_path import (
    _INFERENCE_CACHE,
    conv1d,
    folded_group_norm_conv,
    linear,
    onednn_bf16_conv_ok,
    shifted_attention,
    strided_conv,
)
from mert.models.modules import masked_group_norm
from tests.helpers import music_like, perturbed_encoder


def _perturbed(config: EncoderConfig, seed: int = 0) -> Encoder:
    return perturbed_encoder(config, seed)


def _layout_encoder(layout: str) -> Encoder:
    """A tiny perturbed encoder with the 95M (post-LN, GroupNorm front end) or 330M (pre-LN, LayerNorm) layout."""
    pre_ln = layout == "330m"
    cfg = EncoderConfig.preset("tiny", frontend_norm="layer", pre_ln=True) if pre_ln else EncoderConfig.preset("tiny")
    return _perturbed(cfg)


@pytest.mark.parametrize("mode", ["plain", "gelu", "add"])
def test_linear_matches_f_linear(mode):
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 37, 24), torch.randn(40, 24), torch.randn(40)
    add = torch.randn(2, 37, 40)
    ref = F.linear(x, w, b)
    ref = F.gelu(ref) if mode == "gelu" else ref + add if mode == "add" else ref
    kw = {"gelu": True} if mode == "gelu" else {"add": add} if mode == "add" else {}
    with torch.inference_mode():
        fast = linear(x, w, b, **kw)
    slow = linear(x.requires_grad_(), w, b, **kw)  # autograd: the plain F.linear path
    assert slow.requires_grad
    assert (fast - ref).abs().max() <= 1e-5
    assert (slow.detach() - ref).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="gelu or add"):
        linear(x, w, b, gelu=True, add=add)


@pytest.mark.parametrize("c,kernel,stride", [(1, 10, 5), (16, 3, 2), (16, 2, 2), (8, 5, 2), (12, 4, 4)])
@pytest.mark.parametrize("length", [97, 100])
def test_strided_conv_matches_conv1d(c, kernel, stride, length):
    torch.manual_seed(0)
    x = torch.randn(2, length, c)
    w, b = torch.randn(6, c, kernel), torch.randn(6)
    ref = F.conv1d(x.transpose(1, 2), w, b, stride=stride).transpose(1, 2)
    with torch.inference_mode():
        got = strided_conv(x, w, b, stride)
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= 1e-5
    # Gradients through the views equal the convolution's.
    w1, w2 = w.clone().requires_grad_(), w.clone().requires_grad_()
    (strided_conv(x, w1, b, stride) ** 2).sum().backward()
    (F.conv1d(x.transpose(1, 2), w2, b, stride=stride) ** 2).sum().backward()
    assert torch.allclose(w1.grad, w2.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("offset", [0.0, 0.5])  # a DC offset: the fold must not lose digits to cancellation
def test_folded_group_norm_matches_group_norm(with_lengths, offset):
    torch.manual_seed(0)
    conv = nn.Conv1d(1, 16, 10, stride=5, bias=False)
    norm = nn.GroupNorm(16, 16)
    with torch.no_grad():
        norm.weight.add_(torch.rand(16))
        norm.bias.add_(torch.randn(16))
    wav = music_like(24000, batch=2) + offset  # (2, l)
    n_out = (24000 - 10) // 5 + 1
    lengths = torch.tensor([n_out, 2000]) if with_lengths else None
    y = conv(wav[:, None])  # (b, o, t)
    if lengths is None:
        ref = F.gelu(norm(y))
    else:
        ref = F.gelu(masked_group_norm(y, lengths, 16, norm.weight, norm.bias, norm.eps))
    with torch.inference_mode():
        got = folded_group_norm_conv(wav[..., None], conv, norm, lengths)
    ref = ref.transpose(1, 2)
    if lengths is not None:
        got, ref = got[1, :2000], ref[1, :2000]
    assert (got - ref).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="one channel per group"):
        folded_group_norm_conv(wav[..., None], conv, nn.GroupNorm(4, 16), None)


def test_positional_conv_weight_cache_follows_parameter_changes():
    enc = _perturbed(EncoderConfig.preset("tiny"))
    pos = enc.transformer.pos_conv
    x = torch.randn(1, 50, 32)
    with torch.inference_mode():
        a = pos(x)
        assert "weight" in _INFERENCE_CACHE[pos]
        assert torch.equal(pos(x), a)
    with torch.no_grad():
        pos.weight_g.mul_(2.0)  # an optimiser step or a load changes the version counter
    with torch.inference_mode():
        b = pos(x)
    assert not torch.allclose(a, b)
    # With autograd the weight is recomputed every time, so gradients reach g and v.
    pos(x).sum().backward()
    assert pos.weight_g.grad is not None and pos.weight_v.grad is not None


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref).norm() / ref.norm())


# (channels, groups, taps): the tiny presets' positional conv (8 channels per group, an even kernel: oneDNN's
# bf16 kernel gets it wrong on AVX512-BF16/AMX CPUs), odd taps, 2 channels per group, depthwise, a dense conv.
_CONV_LAYOUTS = [(32, 4, 16), (32, 4, 15), (32, 16, 128), (32, 32, 16), (24, 1, 4)]


@pytest.mark.parametrize("channels,groups,kernel", _CONV_LAYOUTS)
@pytest.mark.parametrize("autocast", [False, True])
def test_bf16_conv1d_matches_float32_on_this_cpu(channels, groups, kernel, autocast):
    """bf16 convs (bf16 tensors, or CPU autocast) give float32's numbers up to bf16 rounding whatever kernel
    this CPU's torch picks, and the probe says exactly when torch's own bf16 conv does not."""
    torch.manual_seed(0)
    x, w = torch.randn(2, channels, 150), torch.randn(channels, channels // groups, kernel) * 0.1
    b = torch.randn(channels)
    xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
    ref = F.conv1d(xb.float(), wb.float(), bb.float(), padding=kernel // 2, groups=groups)
    with torch.inference_mode():
        if autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = conv1d(xb.float(), wb.float(), bb.float(), padding=kernel // 2, groups=groups)
        else:
            got = conv1d(xb, wb, bb, padding=kernel // 2, groups=groups)
        plain = F.conv1d(xb, wb, bb, padding=kernel // 2, groups=groups)
    assert got.dtype == torch.bfloat16 and got.shape == ref.shape
    assert _rel_err(got, ref) <= 1e-2  # bf16 rounding of the output is ~2e-3
    torch_is_right = _rel_err(plain, ref) <= 1e-2
    import mert.models.fast_path as fast_path

    if fast_path._ONEDNN_BF16 and torch.backends.mkldnn.enabled:
        assert onednn_bf16_conv_ok(channels, w.shape, 1, kernel // 2, 1, groups) == torch_is_right
    else:  # torch's own kernel (im2col + GEMM) runs bf16 convs here
        assert torch_is_right


def test_conv1d_runs_float32_exactly_where_the_probe_failed(monkeypatch):
    """The dispatch, on any CPU: a layout the probe rejected runs in float32 (rounded to bf16 once at the end),
    a layout it accepted is ``F.conv1d`` itself; float32 convs are never touched."""
    import mert.models.fast_path as fast_path

    torch.manual_seed(0)
    x, w, b = torch.randn(2, 32, 60).bfloat16(), (torch.randn(32, 8, 16) * 0.1).bfloat16(), torch.randn(32).bfloat16()
    key = (32, 32, 8, 16, 1, 8, 1, 4)
    monkeypatch.setattr(fast_path, "_ONEDNN_BF16", True)
    monkeypatch.setitem(fast_path._BF16_CONV_OK, key, False)
    with torch.inference_mode():
        got = conv1d(x, w, b, padding=8, groups=4)
        assert torch.equal(got, F.conv1d(x.float(), w.float(), b.float(), padding=8, groups=4).bfloat16())
        monkeypatch.setitem(fast_path._BF16_CONV_OK, key, True)
        assert torch.equal(conv1d(x, w, b, padding=8, groups=4), F.conv1d(x, w, b, padding=8, groups=4))
        monkeypatch.setitem(fast_path._BF16_CONV_OK, key, False)  # float32 input: no bf16 kernel to avoid
        xf, wf, bf = x.float(), w.float(), b.float()
        assert torch.equal(conv1d(xf, wf, bf, padding=8, groups=4), F.conv1d(xf, wf, bf, padding=8, groups=4))


@pytest.mark.parametrize("layout", ["95m", "330m"])
def test_fast_inference_equals_autograd_path(layout):
    enc = _layout_encoder(layout)
    wav = music_like(30000, batch=2, seed=1)
    lengths = torch.tensor([30000, 21000])
    with torch.inference_mode():
        fast = enc(wav, lengths, sample_rate=24000)
    slow = enc(wav, lengths, sample_rate=24000)  # grad enabled: F.linear, conv via matmul, uncached weights
    for a, b in zip(fast.hidden_states, slow.hidden_states):
        assert (a - b.detach()).abs().max() <= 1e-5


@pytest.mark.parametrize("peak", [1.0, 6.0])
def test_shifted_attention_is_as_accurate_as_flash_attention_in_bf16(peak):
    """bf16 attention with the row maximum subtracted inside the score GEMM: as close to float64 as torch's
    flash kernel in bf16, for flat and for peaked attention (where rounding plain bf16 scores would not be),
    with prefix key masks, scattered key masks and row blocks."""
    torch.manual_seed(0)
    b, h, t, e = 3, 4, 300, 16
    q, k, v = peak * torch.randn(b, h, t, e), torch.randn(b, h, t, e), torch.randn(b, h, t, e)
    valid = torch.ones(b, t, dtype=torch.bool)
    valid[1, 170:] = False  # right padding
    valid[2, ::3] = False  # any other mask
    mask = valid[:, None, None]
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask).float()
    ref = ref.transpose(1, 2)  # (b, t, h, e)
    qb, kb, vb = (x.bfloat16() for x in (q, k, v))
    flash = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask).transpose(1, 2).float()
    ours = shifted_attention(qb, kb, vb, valid)
    blocked = shifted_attention(qb, kb, vb, valid, block=7 * t)  # 43 row blocks of 7 queries
    assert ours.shape == (b, t, h, e) and ours.dtype == torch.bfloat16 and ours.is_contiguous()
    assert torch.equal(ours, blocked)
    err_flash, err_ours = (flash - ref).abs().max().item(), (ours.float() - ref).abs().max().item()
    assert err_ours <= 2.0 * err_flash, (err_ours, err_flash)  # 1.65x and 0.99x measured (flat, peaked)
    cos_flash = F.cosine_similarity(flash, ref, dim=-1).min().item()
    cos = F.cosine_similarity(ours.float(), ref, dim=-1).min().item()
    assert cos >= min(0.999, cos_flash - 5e-4), (cos, cos_flash)
    # The plain bf16 alternative (scores rounded before the shift) is measurably worse on peaked attention,
    # which is what the shift is for.
    if peak > 1:
        s = (qb @ (kb * e**-0.5).transpose(-1, -2)).masked_fill(~mask, float("-inf"))
        plain = (torch.softmax(s, dim=-1) @ vb).transpose(1, 2).float()
        assert (plain - ref).abs().max().item() > 1.3 * err_ours


def test_shifted_attention_edge_cases(monkeypatch):
    import mert.models.fast_path as fast_path

    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 2, 40, 8).bfloat16() for _ in range(3))
    valid = torch.ones(2, 40, dtype=torch.bool)
    valid[1] = False  # no key at all: zeros, not an error
    out = shifted_attention(q, k, v, valid)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert shifted_attention(q[:, :, :0], k[:, :, :0], v[:, :, :0]).shape == (2, 0, 2, 8)
    # Scores in the tens of thousands: half a bf16 ulp of the shift would overflow exp, so those rows take the
    # flash kernel and stay finite and equal to it.
    big = shifted_attention(q * 30000, k, v)
    ref = F.scaled_dot_product_attention(q * 30000, k, v).transpose(1, 2)
    assert torch.isfinite(big).all()
    assert (big.float() - ref.float()).abs().max() <= 0.05  # keys scaled before vs inside the kernel
    monkeypatch.setattr(fast_path, "_SHIFT_LIMIT", float("inf"))  # without the fallback these rows overflow
    assert not torch.isfinite(shifted_attention(q * 30000, k, v)).all()


@pytest.mark.parametrize("wins", [False, True])
def test_bf16_attention_dispatch_follows_the_cpu_probe(monkeypatch, wins):
    """bf16 inference takes shifted_attention only where it is the faster kernel (no AMX), else torch's own."""
    import mert.models.fast_path as fast_path
    from mert.models.fast_path import attention

    monkeypatch.setattr(fast_path, "_SHIFTED_ATTENTION_WINS", wins)
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 2, 30, 8).bfloat16() for _ in range(3))
    mask = torch.ones(2, 1, 1, 30, dtype=torch.bool)
    mask[1, ..., 20:] = False
    with torch.inference_mode():
        got = attention(q, k, v, mask, 0.0)
        shifted = shifted_attention(q, k, v, mask[:, 0, 0]).flatten(2)
        flash = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).flatten(2)
    assert not torch.equal(shifted, flash)  # the two kernels round differently: the check below can tell them apart
    assert torch.equal(got, shifted if wins else flash)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.float().flatten(0, 1), b.float().flatten(0, 1), dim=-1).min().item()


@pytest.mark.parametrize("layout", ["95m", "330m"])
def test_bf16_weights_track_float32_per_layer(layout):
    """The documented fast path: weights cast once to bf16 (``from_pretrained(..., dtype=torch.bfloat16)``)."""
    enc = _layout_encoder(layout)
    wav = music_like(48000, batch=2, seed=2)
    lengths = torch.tensor([48000, 30000])
    with torch.inference_mode():
        ref = enc(wav, lengths, sample_rate=24000)
        out = enc.to(torch.bfloat16)(wav, lengths, sample_rate=24000)
    assert out.last_hidden_state.dtype == torch.bfloat16
    t1 = int(out.lengths[1])
    for i, (a, b) in enumerate(zip(out.hidden_states, ref.hidden_states)):
        cos = min(_cosine(a[:1], b[:1]), _cosine(a[1:, :t1], b[1:, :t1]))
        assert cos >= 0.999, f"hidden state {i}: worst frame cosine {cos:.5f}"


@pytest.mark.parametrize("layout", ["95m", "330m"])
def test_front_end_tiles_do_not_change_frames(layout):
    enc = _layout_encoder(layout)
    wav = music_like(40000, batch=2, seed=3)
    lengths = torch.tensor([40000, 17001])
    with torch.inference_mode():
        whole = enc.frontend(wav, lengths)
        enc.frontend.tile_frames = 7  # 124 frames in 18 tiles, the last one short
        tiled = enc.frontend(wav, lengths)
    assert tiled.shape == whole.shape == (2, 124, 32)
    assert (tiled - whole).abs().max() <= 1e-5  # GEMM blocking differs with the row count: rounding only


@pytest.mark.parametrize("layout", ["95m", "330m"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_reference_front_end_matches_the_gemm_form(layout, with_lengths):
    """``ConvFrontEnd.reference`` (F.conv1d over the whole clip, masked_group_norm) is what the dispatched GEMM
    form computes, and a layer the GEMM form does not fit falls back to it."""
    enc = _layout_encoder(layout)
    wav = music_like(40000, batch=2, seed=3)
    lengths = torch.tensor([40000, 17001]) if with_lengths else None
    with torch.inference_mode():
        gemm = enc.frontend(wav, lengths)
        ref = enc.frontend.reference(wav, lengths)
    assert ref.shape == gemm.shape == (2, 124, 32)
    assert (gemm - ref).abs().max() <= 1e-4
    enc.frontend.convs[1].conv.padding = (1,)  # a padded conv: not an unpadded GEMM on views
    with torch.inference_mode():
        assert torch.equal(enc.frontend(wav, lengths), enc.frontend.reference(wav, lengths))


@pytest.mark.parametrize("pack", [False, True])
def test_packed_weights_follow_updates_and_stay_out_of_pickles(tmp_path, monkeypatch, pack):
    import mert.models.fast_path as fast_path

    monkeypatch.setattr(fast_path, "PACK_WEIGHTS", pack)

    def packed_entries(model: nn.Module) -> list[str]:
        caches = [_INFERENCE_CACHE.get(m, {}) for m in model.modules()]
        return [n for c in caches for n, (_, t) in c.items() if t.is_mkldnn]

    torch.manual_seed(0)
    layer = nn.Linear(24, 40)
    x = torch.randn(3, 24)
    with torch.inference_mode():
        a = linear(x, layer.weight, layer.bias, owner=layer)
    with torch.no_grad():
        layer.weight.mul_(-1.0)
    with torch.inference_mode():
        b = linear(x, layer.weight, layer.bias, owner=layer)
    assert (a - F.linear(x, -layer.weight, layer.bias)).abs().max() <= 1e-5
    assert (b - F.linear(x, layer.weight, layer.bias)).abs().max() <= 1e-5
    # A whole encoder used for inference (caches filled) still deep-copies and pickles.
    enc = _perturbed(EncoderConfig.preset("tiny"))
    with torch.inference_mode():
        ref = enc(music_like(8000), sample_rate=24000).last_hidden_state
    torch.save(enc, tmp_path / "enc.pt")
    again = torch.load(tmp_path / "enc.pt", weights_only=False)
    import copy

    with torch.inference_mode():
        assert torch.equal(copy.deepcopy(enc)(music_like(8000), sample_rate=24000).last_hidden_state, ref)
        assert torch.equal(again(music_like(8000), sample_rate=24000).last_hidden_state, ref)
    # Packed copies exist only while the flag is on: switching it off frees them at the next call.
    assert bool(packed_entries(enc)) == pack
    monkeypatch.setattr(fast_path, "PACK_WEIGHTS", False)
    with torch.inference_mode():
        assert (enc(music_like(8000), sample_rate=24000).last_hidden_state - ref).abs().max() <= 1e-5
    assert not packed_entries(enc)


@pytest.mark.parametrize("layout", ["95m", "330m"])
def test_int8_inference_keeps_every_layer_close_and_is_opt_in(layout):
    from mert.models.fast_path import int8_supported

    if int8_supported() is not None:
        pytest.skip(int8_supported())
    cfg = (
        EncoderConfig.preset("tiny", frontend_norm="layer", pre_ln=True)
        if layout == "330m"
        else EncoderConfig.preset("tiny")
    )
    torch.manual_seed(0)
    enc = Encoder(cfg).eval()
    wav = music_like(48000, batch=2)
    lengths = torch.tensor([48000, 30000])
    with torch.inference_mode():
        ref = enc(wav, lengths, sample_rate=24000)
        enc.quantize_int8()
        q = enc(wav, lengths, sample_rate=24000)
    assert len(q.hidden_states) == len(ref.hidden_states)
    for i, (a, b) in enumerate(zip(q.hidden_states, ref.hidden_states)):
        valid = ref.padding_mask.logical_not()
        cos = torch.nn.functional.cosine_similarity(a[valid], b[valid], dim=-1)
        assert cos.mean() >= 0.99, (i, float(cos.mean()))
        if i > 0:
            assert not torch.equal(a, b)  # the transformer's layers really ran in int8
    assert torch.equal(q.features, ref.features)  # the front end stays float32
    assert torch.equal(q.lengths, ref.lengths)
    # With autograd (training) the flag is ignored: float32 numbers, gradients flow.
    out = enc(wav, lengths, sample_rate=24000)
    assert out.last_hidden_state.requires_grad
    for a, b in zip(out.hidden_states, ref.hidden_states):
        assert torch.allclose(a.detach(), b, atol=1e-4)
    # Turning it off restores the float32 path exactly.
    with torch.inference_mode():
        back = enc.eval().quantize_int8(False)(wav, lengths, sample_rate=24000)
    assert all(torch.equal(a, b) for a, b in zip(back.hidden_states, ref.hidden_states))


def test_int8_refuses_clearly_where_there_are_no_kernels(monkeypatch):
    import mert.models.fast_path as fast_path

    monkeypatch.setattr(fast_path, "int8_supported", lambda: "this CPU reports DEFAULT")
    with pytest.raises(RuntimeError, match="int8 inference is not available: this CPU reports DEFAULT"):
        Encoder("tiny").quantize_int8()

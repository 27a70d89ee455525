"""The spectrogram + Conformer family in plain PyTorch: MERT-v2, MuQ/MusicFM (``docs/architecture.md``).

Shape legend:
    b  batch
    l  samples (24 kHz)
    f  STFT bins (n_fft / 2 + 1)
    m  mel bins (128)
    s  mel frames (100 Hz)
    c  subsampler channels
    t  output frames (25 Hz)
    d  model width (hidden_size)
    h  attention heads
    e  width of one head (d / h)

Read top to bottom this is the whole network of the family, as :mod:`mert.models.modules` is for MERT-v1:
:class:`MelFrontEnd` (waveform -> normalised dB mel spectrogram), a subsampler to the width at 25 Hz
(:class:`ConvNeXtSubsampler`, MERT-v2; :class:`Conv2dSubsampler`, MuQ/MusicFM) and :class:`Conformer` (a stack of
:class:`ConformerBlock`). :class:`mert.models.modules.EncoderNetwork` picks these parts from
:class:`~mert.models.config.EncoderConfig` (``frontend="mel"``, ``subsampler``, ``block="conformer"``).

Padding: every module takes per-item valid lengths, and a clip gives the same numbers alone and inside a
right-padded batch (in eval mode): the STFT reflects each item at its own end, padded frames are zeroed before
every conv over time (a clip alone sees zeros past its end), the GlobalResponseNorm's statistic runs over valid
frames only, and attention masks padded keys. In training mode the BatchNorms of the MuQ layout use batch
statistics, which padding changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mert.models.config import MUQ_MEL_MEAN, MUQ_MEL_STD, EncoderConfig
from mert.models.fast_path import attention, inference_cached, linear
from mert.models.pooling import valid_mask

__all__ = [
    "MelFrontEnd",
    "GlobalResponseNorm",
    "ConvNeXtLayer",
    "ConvNeXtStage",
    "ConvNeXtSubsampler",
    "ResidualConv2d",
    "Conv2dSubsampler",
    "rotate_half",
    "rotary_tables",
    "ConformerFeedForward",
    "RotarySelfAttention",
    "ConvModule",
    "ConformerBlock",
    "Conformer",
]


def _zero_padding(x: Tensor, valid: Tensor | None) -> Tensor:
    """``x (b, t, ...)`` with frames where ``valid (b, t)`` is False set to zero (no-op for None)."""
    if valid is None:
        return x
    return x.masked_fill(~valid.reshape(*valid.shape, *([1] * (x.dim() - 2))), 0.0)


def _conv_lengths(lengths: Tensor | None, kernel: int, stride: int, padding: int = 0) -> Tensor | None:
    """Output frames of a conv over ``lengths`` valid input frames."""
    if lengths is None:
        return None
    return torch.div(lengths + 2 * padding - kernel, stride, rounding_mode="floor") + 1


# --------------------------------------------------------------------------------------------- front end
class MelFrontEnd(nn.Module):
    """Waveform -> normalised dB mel spectrogram at ``sample_rate / mel_hop`` frames per second.

    Centred STFT (Hann window of ``n_fft``, reflect padding), power 2, stored mel filterbank ``fb (f, m)``,
    ``10 * log10(max(x, 1e-10))`` (no top_db), the last frame dropped, then per bin
    ``(x - mel_mean) / max(mel_std, 1e-5)``. The window, filterbank and statistics are buffers (they travel in
    the checkpoint, as MERT-v2 stores them); it always runs in float32.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.n_fft, self.hop, self.sample_rate = config.n_fft, config.mel_hop, config.sample_rate
        bins = config.n_fft // 2 + 1
        self.register_buffer("window", torch.empty(config.n_fft))
        self.register_buffer("fb", torch.empty(bins, config.n_mels))
        self.register_buffer("mel_mean", torch.empty(config.n_mels))
        self.register_buffer("mel_std", torch.empty(config.n_mels))

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """A fresh model's buffers: periodic Hann window, torchaudio's HTK mel filterbank from 0 Hz to Nyquist
        (what ``torchaudio.transforms.MelSpectrogram`` uses), and MuQ's published dB statistics."""
        from torchaudio.functional import melscale_fbanks

        self.window.copy_(torch.hann_window(self.n_fft))
        n_mels = self.fb.shape[1]
        fb = melscale_fbanks(self.fb.shape[0], 0.0, self.sample_rate / 2, n_mels, self.sample_rate, None, "htk")
        self.fb.copy_(fb)
        self.mel_mean.fill_(MUQ_MEL_MEAN)
        self.mel_std.fill_(MUQ_MEL_STD)

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 - nn.Module's signature
        """Moves follow ``model.to(device)``, but the buffers stay float32 under ``model.to(torch.bfloat16)``:
        a bf16 filterbank and statistics would shift every dB value."""
        super()._apply(fn, recurse)
        for name, buf in self._buffers.items():
            if buf is not None and buf.is_floating_point() and buf.dtype != torch.float32:
                self._buffers[name] = buf.float()
        return self

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        """Mel frames for ``lengths (b,)`` samples: ``1 + l // hop`` STFT frames less the dropped last one."""
        return torch.div(lengths, self.hop, rounding_mode="floor")

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``wav (b, l)``, ``lengths (b,)`` valid samples or None -> ``(b, s, m)`` float32, ``s = l // mel_hop``.

        With ``lengths`` each item is reflected at its own end, so its frames equal those of the clip alone;
        frames past an item's ``lengths // mel_hop`` are padding.
        """
        wav = wav.float()
        pad = self.n_fft // 2
        if lengths is None:
            x = F.pad(rearrange(wav, "b l -> b 1 l"), (pad, pad), mode="reflect")[:, 0]
        else:
            x = _reflect_pad_each(wav, lengths.to(wav.device), pad)
        spec = torch.stft(x, self.n_fft, self.hop, window=self.window.float(), center=False, return_complex=True)
        # |X|^2 as re^2 + im^2: torchaudio's abs().pow(2) up to rounding, at a fraction of the complex abs's cost.
        power = torch.view_as_real(spec).pow(2).sum(-1)  # (b, f, s + 1)
        mel = torch.matmul(rearrange(power, "b f s -> b s f"), self.fb.float())[:, :-1]  # (b, s, m)
        db = 10.0 * torch.log10(mel.clamp(min=1e-10))
        return (db - self.mel_mean.float()) / self.mel_std.float().clamp(min=1e-5)


def _reflect_pad_each(wav: Tensor, lengths: Tensor, pad: int) -> Tensor:
    """``wav (b, l)``, ``lengths (b,)`` -> ``(b, l + 2 pad)``: item ``i`` is ``F.pad(wav[i, :n], (pad, pad),
    "reflect")`` followed by zeros. One gather instead of a loop over items, so the lengths stay tensors (a
    compiled graph neither breaks on them nor recompiles for every new length)."""
    b, l = wav.shape
    j = torch.arange(l + 2 * pad, device=wav.device) - pad  # (l + 2 pad,) position in the clip before reflecting
    n = rearrange(lengths, "b -> b 1")
    src = torch.where(j < 0, -j, torch.where(j >= n, 2 * (n - 1) - j, j))  # (b, l + 2 pad)
    inside = (j < n + pad) & (src >= 0)
    x = torch.gather(wav, 1, src.clamp(0, l - 1))
    return x.masked_fill(~inside, 0.0)


# --------------------------------------------------------------------------------------------- ConvNeXt-V2 (MERT-v2)
class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2's GRN over time: ``N = ||x||_t / (mean_c ||x||_t + 1e-6)``, ``x + gamma * (x * N) + beta``.

    ``weight``/``bias`` are ``(1, 1, c)`` (the published shapes); the L2 norm runs over valid frames only.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, 1, channels))
        self.bias = nn.Parameter(torch.zeros(1, 1, channels))

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """``(b, t, c) -> (b, t, c)``; ``valid (b, t)`` or None."""
        g = _zero_padding(x, valid).norm(dim=1, keepdim=True)  # (b, 1, c)
        n = g / (g.mean(dim=-1, keepdim=True) + 1e-6)
        return x + self.weight * (x * n) + self.bias


class ConvNeXtLayer(nn.Module):
    """Depthwise Conv1d k7 -> LayerNorm -> Linear c->4c -> GELU -> GRN -> Linear 4c->c, plus the input."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.dwconv = nn.Conv1d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=eps)
        self.fc1 = nn.Linear(channels, 4 * channels)
        self.grn = GlobalResponseNorm(4 * channels)
        self.fc2 = nn.Linear(4 * channels, channels)

    def forward(self, x: Tensor, valid: Tensor | None) -> Tensor:
        """``(b, t, c) -> (b, t, c)``."""
        y = self.dwconv(rearrange(_zero_padding(x, valid), "b t c -> b c t"))
        y = self.norm(rearrange(y, "b c t -> b t c"))
        y = self.grn(linear(y, self.fc1.weight, self.fc1.bias, gelu=True, owner=self.fc1), valid)
        return linear(y, self.fc2.weight, self.fc2.bias, add=x, owner=self.fc2)


class ConvNeXtStage(nn.Module):
    """Optional resampling (LayerNorm -> Conv1d kernel 2, stride s, when channels or rate change), then layers."""

    def __init__(self, c_in: int, c_out: int, depth: int, stride: int, eps: float):
        super().__init__()
        self.stride = stride
        if c_in != c_out or stride != 1:
            self.resample_norm: nn.LayerNorm | None = nn.LayerNorm(c_in, eps=eps)
            self.resample: nn.Conv1d | None = nn.Conv1d(c_in, c_out, 2, stride=stride)
        else:
            self.resample_norm = self.resample = None
        self.layers = nn.ModuleList(ConvNeXtLayer(c_out, eps) for _ in range(depth))

    def forward(self, x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``x (b, t, c_in)``, ``lengths (b,)`` or None -> ``(b, t', c_out)`` and its lengths."""
        if self.resample is not None:
            # Kernel 2 without padding: a valid output frame reads valid input frames only.
            x = self.resample(rearrange(self.resample_norm(x), "b t c -> b c t"))
            x = rearrange(x, "b c t -> b t c")
            lengths = _conv_lengths(lengths, 2, self.stride)
        valid = None if lengths is None else valid_mask(lengths, x.shape[1])
        for layer in self.layers:
            x = layer(x, valid)
        return x, lengths


class ConvNeXtSubsampler(nn.Module):
    """MERT-v2's subsampler: ConvNeXt-V2 1-D stages over the mel frames, ``(b, s, m) -> (b, t, d)``."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        stages, c_in = [], config.n_mels
        for c, depth, s in zip(config.subsampler_channels, config.subsampler_depths, config.subsampler_strides):
            stages.append(ConvNeXtStage(c_in, c, depth, s, config.subsampler_eps))
            c_in = c
        self.stages = nn.ModuleList(stages)

    def forward(self, mel: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``mel (b, s, m)``, ``lengths (b,)`` valid mel frames or None -> ``(b, t, d)``."""
        x = mel
        for stage in self.stages:
            x, lengths = stage(x, lengths)
        return x


# --------------------------------------------------------------------------------------------- 2-D conv (MuQ)
class ResidualConv2d(nn.Module):
    """MuQ's ``Res2dModule``: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + skip(x))``, 3x3 convs, stride (2, s) over
    (frequency, time); ``skip`` is a strided 3x3 conv + BatchNorm when the shape changes."""

    def __init__(self, c_in: int, c_out: int, time_stride: int):
        super().__init__()
        self.time_stride = time_stride
        stride = (2, time_stride)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, stride=stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c_out)
        if c_in != c_out or stride[0] > 1:
            self.conv3: nn.Conv2d | None = nn.Conv2d(c_in, c_out, 3, padding=1, stride=stride)
            self.bn3: nn.BatchNorm2d | None = nn.BatchNorm2d(c_out)
        else:
            self.conv3 = self.bn3 = None

    def conv_bn(self, x: Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Tensor:
        """``bn(conv(x))``; at inference in eval mode as one conv with the BatchNorm folded into its weights
        (cached until a weight or statistic changes), which saves a pass over the largest activations."""
        if self.training or torch.is_grad_enabled():
            return bn(conv(x))

        def fold() -> Tensor:
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = bn.bias - bn.running_mean * scale + (0 if conv.bias is None else conv.bias * scale)
            return torch.cat([(conv.weight * scale[:, None, None, None]).flatten(), bias])

        params = (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        if conv.bias is not None:
            params += (conv.bias,)
        name = "fold" + str([c is conv for c in (self.conv1, self.conv2, self.conv3)].index(True))
        packed = inference_cached(self, name, params, fold)
        w, b = packed[: conv.weight.numel()].view_as(conv.weight), packed[conv.weight.numel() :]
        return F.conv2d(x, w, b, conv.stride, conv.padding)

    def forward(self, x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``x (b, c, m, s)``, ``lengths (b,)`` valid frames or None -> ``(b, c', m / 2, s')`` and its lengths."""

        def zero(y: Tensor, n: Tensor | None) -> Tensor:
            return y if n is None else y.masked_fill(~valid_mask(n, y.shape[-1])[:, None, None, :], 0.0)

        x = zero(x, lengths)
        out_lengths = _conv_lengths(lengths, 3, self.time_stride, padding=1)
        y = F.relu(self.conv_bn(x, self.conv1, self.bn1))
        y = self.conv_bn(zero(y, out_lengths), self.conv2, self.bn2)
        skip = x if self.conv3 is None else self.conv_bn(x, self.conv3, self.bn3)
        return F.relu(skip + y), out_lengths


class Conv2dSubsampler(nn.Module):
    """MuQ/MusicFM's ``Conv2dSubsampling``: two :class:`ResidualConv2d` blocks (1 -> c -> c channels, mel bins
    halved twice, time by the strides) -> Linear(c * m / 4 -> d), ``(b, s, m) -> (b, t, d)``."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        c = config.subsampler_channels[0]
        s0, s1 = config.subsampler_strides
        self.blocks = nn.ModuleList([ResidualConv2d(1, c, s0), ResidualConv2d(c, c, s1)])
        self.linear = nn.Linear(c * (config.n_mels // 4), config.hidden_size)

    def forward(self, mel: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``mel (b, s, m)``, ``lengths (b,)`` valid mel frames or None -> ``(b, t, d)``."""
        x = rearrange(mel, "b s m -> b 1 m s")
        for block in self.blocks:
            x, lengths = block(x, lengths)
        x = rearrange(x, "b c m t -> b t (c m)")  # channel-major, as MuQ flattens
        return linear(x, self.linear.weight, self.linear.bias, owner=self.linear)


# --------------------------------------------------------------------------------------------- Conformer
def rotate_half(x: Tensor) -> Tensor:
    """``(..., e) -> (..., e)``: ``[x1, x2] -> [-x2, x1]`` on the two halves of the last axis."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary_tables(t: int, e: int, base: float, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """``cos, sin (t, e)`` of rotate-half RoPE: angle ``p / base^(2i/e)`` at position ``p``, frequency ``i``,
    repeated over both halves; the inverse frequencies and angles in float32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, e, 2, dtype=torch.int64, device=device).float() / e))
    angles = torch.arange(t, device=device).float()[:, None] * inv_freq  # (t, e / 2)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def _activation(name: str) -> nn.Module:
    return nn.GELU() if name == "gelu" else nn.SiLU()


class ConformerFeedForward(nn.Module):
    """Linear d->ffn -> activation -> Linear ffn->d (each block has two, each added at half weight)."""

    def __init__(self, width: int, ffn: int, activation: str, activation_dropout: float, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(width, ffn)
        self.fc2 = nn.Linear(ffn, width)
        self.gelu = activation == "gelu"
        self.act_dropout = nn.Dropout(activation_dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``(b, t, d) -> (b, t, d)``."""
        h = linear(x, self.fc1.weight, self.fc1.bias, gelu=self.gelu, owner=self.fc1)
        if not self.gelu:
            h = F.silu(h)
        h = self.act_dropout(h)
        return self.dropout(linear(h, self.fc2.weight, self.fc2.bias, owner=self.fc2))


class RotarySelfAttention(nn.Module):
    """Multi-head attention with rotate-half RoPE, one fused q/k/v projection, through SDPA.

    ``rope_on="qk"`` rotates each head's query and key after the projection (MERT-v2); ``"input"`` rotates the
    block input, split into heads, before the query and key projections (transformers' Wav2Vec2Conformer, MuQ).
    """

    def __init__(self, width: int, heads: int, dropout: float, rope_on: str):
        super().__init__()
        self.heads, self.dropout, self.rope_on = heads, dropout, rope_on
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, attn_mask: Tensor | None) -> Tensor:
        """``x (b, t, d)``, ``cos, sin (t, e)``, ``attn_mask (b, 1, 1, t)`` True = may attend, or None ->
        ``(b, t, d)``."""
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        w, bias = self.qkv.weight, self.qkv.bias
        if self.rope_on == "input":
            xh = rearrange(x, "b t (h e) -> b t h e", h=self.heads)
            xr = rearrange(xh * cos[:, None] + rotate_half(xh) * sin[:, None], "b t h e -> b t (h e)")
            d = x.shape[-1]
            qk = linear(xr, w[: 2 * d], bias[: 2 * d])
            v = linear(x, w[2 * d :], bias[2 * d :])
            q, k = rearrange(qk, "b t (two h e) -> two b h t e", two=2, h=self.heads)
            v = rearrange(v, "b t (h e) -> b h t e", h=self.heads)
        else:
            qkv = linear(x, w, bias, owner=self.qkv)
            q, k, v = rearrange(qkv, "b t (three h e) -> three b h t e", three=3, h=self.heads)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        y = attention(q, k, v, attn_mask, self.dropout if self.training else 0.0)  # (b, t, d)
        return linear(y, self.out.weight, self.out.bias, owner=self.out)


class ConvModule(nn.Module):
    """LayerNorm -> pointwise d->2d -> GLU -> depthwise k -> LayerNorm or BatchNorm -> activation -> pointwise.

    The pointwise convs keep their published ``(out, in, 1)`` shapes and run as matrix products; none has a bias.
    """

    def __init__(self, width: int, kernel: int, norm: str, activation: str, eps: float, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=eps)
        self.pw1 = nn.Conv1d(width, 2 * width, 1, bias=False)
        self.dw = nn.Conv1d(width, width, kernel, padding=(kernel - 1) // 2, groups=width, bias=False)
        self.mid_norm: nn.Module = nn.LayerNorm(width, eps=eps) if norm == "layer" else nn.BatchNorm1d(width)
        self.act = _activation(activation)
        self.pw2 = nn.Conv1d(width, width, 1, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, valid: Tensor | None) -> Tensor:
        """``(b, t, d) -> (b, t, d)``; padded frames are zeroed before the depthwise conv."""
        h = linear(self.norm(x), self.pw1.weight[..., 0], owner=self.pw1)
        a, gate = h.chunk(2, dim=-1)
        h = _zero_padding(a * torch.sigmoid(gate), valid)  # GLU
        h = self.dw(rearrange(h, "b t d -> b d t"))
        if isinstance(self.mid_norm, nn.LayerNorm):
            h = self.mid_norm(rearrange(h, "b d t -> b t d"))
        else:
            h = rearrange(self.mid_norm(h), "b d t -> b t d")
        h = self.act(h)
        return self.dropout(linear(h, self.pw2.weight[..., 0], owner=self.pw2))


class ConformerBlock(nn.Module):
    """Pre-norm macaron block: ``x + ffn1/2``, ``+ attn``, ``+ conv``, ``+ ffn2/2``, then a LayerNorm."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        d, eps = config.hidden_size, config.layer_norm_eps
        ffn = (d, config.ffn_size, config.activation, config.activation_dropout, config.hidden_dropout)
        self.ffn1_norm = nn.LayerNorm(d, eps=eps)
        self.ffn1 = ConformerFeedForward(*ffn)
        self.attn_norm = nn.LayerNorm(d, eps=eps)
        self.attn = RotarySelfAttention(d, config.num_heads, config.attention_dropout, config.rope_on)
        self.conv = ConvModule(
            d, config.conv_module_kernel, config.conv_module_norm, config.activation, eps, config.hidden_dropout
        )
        self.ffn2_norm = nn.LayerNorm(d, eps=eps)
        self.ffn2 = ConformerFeedForward(*ffn)
        self.final_norm = nn.LayerNorm(d, eps=eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, attn_mask: Tensor | None, valid: Tensor | None) -> Tensor:
        """``(b, t, d) -> (b, t, d)``."""
        x = x + 0.5 * self.ffn1(self.ffn1_norm(x))
        x = x + self.dropout(self.attn(self.attn_norm(x), cos, sin, attn_mask))
        x = x + self.conv(x, valid)
        x = x + 0.5 * self.ffn2(self.ffn2_norm(x))
        return self.final_norm(x)


class Conformer(nn.Module):
    """The block stack; hidden states ``[x, block_1, ..., block_L]`` (with ``final_norm``, the last one passes
    through one more LayerNorm, as transformers' Wav2Vec2Conformer reports it)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.head_dim, self.rope_base = config.head_dim, config.rope_base
        self.layerdrop = config.layerdrop
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(ConformerBlock(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.final_norm else None

    def forward(self, x: Tensor, valid: Tensor | None, depth: int | None = None) -> list[Tensor]:
        """``x (b, t, d)``, ``valid (b, t)`` True = real frame, or None -> list of ``depth + 1`` ``(b, t, d)``;
        ``depth`` (default all) stops after that many blocks."""
        depth = len(self.layers) if depth is None else depth
        if not 0 <= depth <= len(self.layers):
            raise ValueError(f"depth must be in [0, {len(self.layers)}], got {depth}")
        attn_mask = None
        if valid is not None:
            x = x.masked_fill(~valid[..., None], 0.0)
            attn_mask = rearrange(valid, "b t -> b 1 1 t")
        x = self.dropout(x)
        cos, sin = rotary_tables(x.shape[1], self.head_dim, self.rope_base, x.device)
        states = [x]
        for layer in self.layers[:depth]:
            if not (self.training and self.layerdrop > 0 and torch.rand(()) < self.layerdrop):
                x = layer(x, cos, sin, attn_mask, valid)
            states.append(x)
        if self.norm is not None and depth == len(self.layers):
            states[-1] = self.norm(x)
        return states

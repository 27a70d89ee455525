"""The MERT-v1 network in plain PyTorch: conv front end, feature projection, positional conv, transformer.

Shape legend:
    b  batch
    l  samples (24 kHz for MERT-v1)
    c  front-end channels (512)
    t  frames (75 Hz)
    d  model width (hidden_size)
    h  attention heads
    n  hidden-state layers (num_layers + 1)

Everything aligned in time is ``(b, t, ...)``. The conv stack is the one exception: Conv1d wants
``(b, c, t)``, so the front end works channel-first internally and hands ``(b, t, c)`` out.

Padding: every module takes per-item valid lengths so that a clip gives the same numbers alone and inside a
right-padded batch. Three places would otherwise leak padding into valid frames (spec 6.3): the first
GroupNorm's statistics, the positional conv's receptive field, and attention. ``strict`` reproduces the
original's GroupNorm over the padded length for bit-for-bit compatibility with transformers' HubertModel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mert.models.config import EncoderConfig

__all__ = ["ConvFrontEnd", "FeatureProjection", "PositionalConv", "TransformerLayer", "Transformer"]


def _valid_mask(lengths: Tensor, max_len: int) -> Tensor:
    """``(b,) -> (b, t)`` boolean, True where the frame index is inside the item's length."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def masked_group_norm(x: Tensor, lengths: Tensor, num_groups: int, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """GroupNorm whose statistics ignore frames at or beyond ``lengths``.

    Args:
        x: ``(b, c, t)`` conv output.
        lengths: ``(b,)`` valid frames per item (>= 1).
    Returns:
        ``(b, c, t)``; values at padded frames are normalised with the valid statistics (and ignored later).
    """
    dtype = x.dtype
    # Statistics in float32 whatever the input dtype, as nn.GroupNorm does: frame counts and sums over long
    # clips overflow fp16 and lose digits in bf16.
    x = x.float()
    valid = _valid_mask(lengths, x.shape[-1])[:, None, None, :].float()  # (b, 1, 1, t)
    xg = rearrange(x, "b (g c) t -> b g c t", g=num_groups)
    count = (lengths.float() * xg.shape[2])[:, None, None, None]  # valid elements per group
    mean = (xg * valid).sum(dim=(2, 3), keepdim=True) / count
    # Two-pass variance: the one-pass E[x^2]-E[x]^2 loses digits on long, loud clips.
    var = (((xg - mean) * valid) ** 2).sum(dim=(2, 3), keepdim=True) / count
    y = rearrange((xg - mean) * torch.rsqrt(var + eps), "b g c t -> b (g c) t")
    return (y * weight.float()[None, :, None] + bias.float()[None, :, None]).to(dtype)


class ConvLayer(nn.Module):
    """Conv1d -> optional norm -> GELU. ``norm`` is "group" (GroupNorm, one group per channel), "layer"
    (LayerNorm over channels at each frame) or None."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, bias: bool, norm: str | None, eps: float):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, bias=bias)
        self.norm_kind = norm
        if norm == "group":
            self.norm = nn.GroupNorm(c_out, c_out, eps=eps, affine=True)
        elif norm == "layer":
            self.norm = nn.LayerNorm(c_out, eps=eps, elementwise_affine=True)
        else:
            self.norm = None

    def forward(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        """``(b, c_in, t_in) -> (b, c_out, t_out)``; ``lengths`` are this layer's OUTPUT frames, or None."""
        x = self.conv(x)
        if self.norm_kind == "group":
            assert isinstance(self.norm, nn.GroupNorm)
            if lengths is None:
                x = self.norm(x)
            else:
                x = masked_group_norm(x, lengths, self.norm.num_groups, self.norm.weight, self.norm.bias, self.norm.eps)
        elif self.norm_kind == "layer":
            x = rearrange(self.norm(rearrange(x, "b c t -> b t c")), "b t c -> b c t")
        return F.gelu(x)


class ConvFrontEnd(nn.Module):
    """Waveform -> 75 Hz features: seven strided convs (spec 1)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.kernels = config.conv_kernel
        self.strides = config.conv_stride
        layers = []
        c_in = 1
        for i, (c, k, s) in enumerate(zip(config.conv_dim, config.conv_kernel, config.conv_stride)):
            if config.frontend_norm == "layer":
                norm = "layer"
            else:
                norm = "group" if i == 0 else None
            layers.append(ConvLayer(c_in, c, k, s, config.conv_bias, norm, config.layer_norm_eps))
            c_in = c
        self.convs = nn.ModuleList(layers)

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``wav (b, l)`` float, ``lengths (b,)`` valid samples or None -> features ``(b, t, c)``.

        With ``lengths`` the first GroupNorm uses valid frames only. Later convs need no care: a valid output
        frame only reads valid input frames, by the same length formula that defines validity.
        """
        x = rearrange(wav, "b l -> b 1 l")
        frame_lens = lengths
        for layer, k, s in zip(self.convs, self.kernels, self.strides):
            if frame_lens is not None:
                frame_lens = torch.div(frame_lens - k, s, rounding_mode="floor") + 1
            x = layer(x, frame_lens if layer.norm_kind == "group" else None)
        return rearrange(x, "b c t -> b t c")


class FeatureProjection(nn.Module):
    """LayerNorm(c) -> Linear(c -> d) -> dropout (spec 1)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        c = config.conv_dim[-1]
        self.norm = nn.LayerNorm(c, eps=config.layer_norm_eps) if config.feat_proj_layer_norm else None
        self.linear = nn.Linear(c, config.hidden_size)
        self.dropout = nn.Dropout(config.feat_proj_dropout)

    def forward(self, feats: Tensor) -> Tensor:
        """``(b, t, c) -> (b, t, d)``."""
        if self.norm is not None:
            feats = self.norm(feats)
        return self.dropout(self.linear(feats))


class PositionalConv(nn.Module):
    """Grouped, weight-normalised Conv1d over time; the model's only position signal (spec 1).

    The weight is ``g * v / ||v||`` with the norm taken over (out, in) for each of the K taps, exactly as
    ``torch.nn.utils.weight_norm(conv, dim=2)``; ``g`` and ``v`` are stored as in the HF checkpoints.
    """

    def __init__(self, width: int, kernel: int, groups: int):
        super().__init__()
        self.kernel, self.groups = kernel, groups
        # fairseq's initialisation: N(0, sqrt(4 / (K * d))), then g = ||v|| so the initial weight is v.
        v = torch.randn(width, width // groups, kernel) * math.sqrt(4.0 / (kernel * width))
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.norm(dim=(0, 1), keepdim=True))
        self.bias = nn.Parameter(torch.zeros(width))

    def weight(self) -> Tensor:
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=(0, 1), keepdim=True))

    def forward(self, x: Tensor) -> Tensor:
        """``(b, t, d) -> (b, t, d)``; the caller zeroes padded frames first, as zero padding is what a clip
        alone sees past its end."""
        y = F.conv1d(
            rearrange(x, "b t d -> b d t"), self.weight(), self.bias, padding=self.kernel // 2, groups=self.groups
        )
        if self.kernel % 2 == 0:
            y = y[..., :-1]  # an even kernel with padding K/2 yields one extra frame
        return rearrange(F.gelu(y), "b d t -> b t d")


class SelfAttention(nn.Module):
    """Multi-head attention through ``scaled_dot_product_attention`` with one fused q/k/v projection."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        """``x (b, t, d)``, ``attn_mask (b, 1, 1, t)`` True = may attend, or None -> ``(b, t, d)``."""
        q, k, v = rearrange(self.qkv(x), "b t (three h e) -> three b h t e", three=3, h=self.heads)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(rearrange(y, "b h t e -> b t (h e)"))


class FeedForward(nn.Module):
    def __init__(self, width: int, ffn: int, activation_dropout: float, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(width, ffn)
        self.fc2 = nn.Linear(ffn, width)
        self.act_dropout = nn.Dropout(activation_dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``(b, t, d) -> (b, t, d)``."""
        return self.dropout(self.fc2(self.act_dropout(F.gelu(self.fc1(x)))))


class TransformerLayer(nn.Module):
    """One encoder layer; ``pre_ln`` picks the 330M (pre-LN) or 95M (post-LN) residual layout."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        d = config.hidden_size
        self.pre_ln = config.pre_ln
        self.attn = SelfAttention(d, config.num_heads, config.attention_dropout)
        self.attn_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.ffn = FeedForward(d, config.ffn_size, config.activation_dropout, config.hidden_dropout)
        self.ffn_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        """``(b, t, d) -> (b, t, d)``."""
        if self.pre_ln:
            x = x + self.dropout(self.attn(self.attn_norm(x), attn_mask))
            return x + self.ffn(self.ffn_norm(x))
        x = self.attn_norm(x + self.dropout(self.attn(x, attn_mask)))
        return self.ffn_norm(x + self.ffn(x))


class Transformer(nn.Module):
    """Positional conv + layer stack; returns every hidden state with the spec's semantics (spec 1):

    post-LN (95M): ``[LN(x + pos(x)), layer_1, ..., layer_L]``;
    pre-LN (330M): ``[x + pos(x), layer_1, ..., layer_{L-1}, LN(layer_L)]``.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.pre_ln = config.pre_ln
        self.layerdrop = config.layerdrop
        self.pos_conv = PositionalConv(config.hidden_size, config.pos_conv_kernel, config.pos_conv_groups)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(TransformerLayer(config) for _ in range(config.num_layers))

    def forward(self, x: Tensor, valid: Tensor | None) -> list[Tensor]:
        """``x (b, t, d)``, ``valid (b, t)`` True = real frame, or None -> list of n ``(b, t, d)``."""
        attn_mask = None
        if valid is not None:
            x = x.masked_fill(~valid[..., None], 0.0)
            attn_mask = rearrange(valid, "b t -> b 1 1 t")
        x = x + self.pos_conv(x)
        if not self.pre_ln:
            x = self.norm(x)
        x = self.dropout(x)
        states = [x]
        for layer in self.layers:
            # LayerDrop skips whole layers in training; the skipped layer's output is its input.
            if not (self.training and self.layerdrop > 0 and torch.rand(()) < self.layerdrop):
                x = layer(x, attn_mask)
            states.append(x)
        if self.pre_ln:
            states[-1] = self.norm(x)
        return states

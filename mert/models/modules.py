"""The MERT-v1 network in plain PyTorch: conv front end, feature projection, positional conv, transformer.

Shape legend:
    b  batch
    l  samples (24 kHz for MERT-v1)
    c  front-end channels (512)
    t  frames (75 Hz)
    d  model width (hidden_size)
    h  attention heads
    e  width of one head (d / h)
    n  hidden-state layers (num_layers + 1)

This file is the reference: read top to bottom it is the whole network, as a model card would show it
(:class:`EncoderNetwork` at the end puts the parts together; :class:`mert.Encoder` adds the input contract,
long-audio windows and loading). Three ops reach their fast formulations through one dispatch point each in
:mod:`mert.models.fast_path`, which falls back to the plain PyTorch written here: ``linear`` (every Linear),
``conv_frontend`` (:meth:`ConvFrontEnd.forward`; the reference is :meth:`ConvFrontEnd.reference`) and
``attention``; the other convs call ``conv1d``, ``F.conv1d`` unless this CPU's oneDNN bf16 kernel is wrong for
their layout. Everything aligned in time is ``(b, t, ...)``; the reference front end works channels-first,
as ``nn.Conv1d`` does.

Padding: every module takes per-item valid lengths so that a clip gives the same numbers alone and inside a
right-padded batch. Three places would otherwise leak padding into valid frames (known problems of the
original, no. 3): the first GroupNorm's statistics (:func:`masked_group_norm`), the positional conv's receptive
field, and attention.
``strict`` reproduces the original's GroupNorm over the padded length for bit-for-bit compatibility with
transformers' HubertModel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mert.models.config import EncoderConfig
from mert.models.conformer import Conformer, Conv2dSubsampler, ConvNeXtSubsampler, MelFrontEnd
from mert.models.fast_path import attention, conv1d, conv_frontend, inference_cached, linear
from mert.models.pooling import valid_mask

__all__ = [
    "INITIALIZER_RANGE",
    "gabor_filterbank",
    "masked_group_norm",
    "ConvLayer",
    "ConvFrontEnd",
    "FeatureProjection",
    "PositionalConv",
    "StackedPositionalConv",
    "SelfAttention",
    "FeedForward",
    "TransformerLayer",
    "Transformer",
    "EncoderNetwork",
]

# Standard deviation of every Linear weight at initialisation (BERT / fairseq / transformers' initializer_range).
INITIALIZER_RANGE = 0.02


def gabor_filterbank(channels: int, kernel: int, sample_rate: int, fmin_hz: float = 32.7) -> Tensor:
    """Constant-Q cosine filters for the first conv: ``(channels, kernel)``, one per log-spaced centre frequency.

    Centre frequencies run from ``fmin_hz`` (C1, the CQT teacher's lowest bin) to ``min(10 kHz, 0.42 sr)``,
    geometrically; each filter is a cosine under a Hann window of ``Q * sr / f`` samples (at most ``kernel``),
    with ``Q`` set by the channel spacing so neighbouring pass bands meet. Each row has L2 norm sqrt(2), the
    expected norm of a Kaiming-normal row, so the scale the rest of the network sees is unchanged.

    Why: a small model pretrained for minutes cannot learn a filterbank from a random 10-tap first layer: pooled
    features of such a fresh front end tell a note's pitch class 23-25 % of the time, of this bank's (with
    LayerNorm) 50 % (``benchmarks/frontend_cqt.py``; ``docs/notes/2026-12-01-small-cpu-recipe.md``, "Why the small
    model learnt almost nothing").
    """
    if channels < 2 or kernel < 3:
        raise ValueError(f"a Gabor filterbank needs at least 2 channels and 3 taps, got {channels} and {kernel}")
    fmax = min(10_000.0, 0.42 * sample_rate)
    if fmax <= fmin_hz:
        raise ValueError(f"sample_rate {sample_rate} Hz leaves no band above fmin {fmin_hz} Hz for a filterbank")
    ratio = (fmax / fmin_hz) ** (1.0 / (channels - 1))
    q = 1.0 / (ratio - 1.0)
    centres = fmin_hz * ratio ** torch.arange(channels, dtype=torch.float64)
    t = torch.arange(kernel, dtype=torch.float64) - (kernel - 1) / 2
    bank = torch.zeros(channels, kernel, dtype=torch.float64)
    for i, fc in enumerate(centres.tolist()):
        width = max(3, min(kernel, int(round(q * sample_rate / fc))))
        lo = (kernel - width) // 2
        window = torch.zeros(kernel, dtype=torch.float64)
        window[lo : lo + width] = torch.hann_window(width, periodic=False, dtype=torch.float64)
        row = window * torch.cos(2 * math.pi * fc * t / sample_rate)
        bank[i] = row / row.norm() * math.sqrt(2.0)
    return bank.float()


def masked_group_norm(x: Tensor, lengths: Tensor, num_groups: int, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """GroupNorm whose statistics ignore frames at or beyond ``lengths``.

    The reference formulation of the front end's first norm on a padded batch; the GEMM front end computes the
    same thing folded into conv 0 (:func:`mert.models.fast_path.fold_group_norm`).

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
    valid = valid_mask(lengths, x.shape[-1])[:, None, None, :].float()  # (b, 1, 1, t)
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

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``(b, c_in, t_in) -> (b, c_out, t_out)``, in ``x``'s dtype (the parameters are cast if they differ:
        the first layer of a bf16 model). ``lengths (b,)``: valid output frames, for the GroupNorm's statistics;
        None uses every frame."""
        conv = self.conv
        weight, bias = conv.weight.to(x.dtype), None if conv.bias is None else conv.bias.to(x.dtype)
        x = conv1d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        if self.norm_kind == "group":
            weight, bias = self.norm.weight.to(x.dtype), self.norm.bias.to(x.dtype)
            if lengths is None:
                x = F.group_norm(x, self.norm.num_groups, weight, bias, self.norm.eps)
            else:
                x = masked_group_norm(x, lengths, self.norm.num_groups, weight, bias, self.norm.eps)
        elif self.norm_kind == "layer":
            norm = self.norm
            x = rearrange(x, "b c t -> b t c")
            x = F.layer_norm(x, norm.normalized_shape, norm.weight.to(x.dtype), norm.bias.to(x.dtype), norm.eps)
            x = rearrange(x, "b t c -> b c t")
        return F.gelu(x)


class ConvFrontEnd(nn.Module):
    """Waveform -> 75 Hz features: seven strided convs (MERT-v1 architecture), the first followed by a GroupNorm (or
    each by a LayerNorm, ``frontend_norm="layer"``), each by a GELU.

    :meth:`forward` runs the GEMM form (:func:`mert.models.fast_path.conv_frontend`: tiles of ``tile_frames``
    output frames, the first GroupNorm folded into conv 0); :meth:`reference` is the same network as plain
    convolutions over the whole clip.
    """

    tile_frames = 256  # output frames per tile of the GEMM form (3.4 s at 75 Hz)

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.kernels = config.conv_kernel
        self.strides = config.conv_stride
        self.hop, self.receptive_field = config.hop_length, config.receptive_field
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
        """``wav (b, l)`` float, ``lengths (b,)`` valid samples or None -> features ``(b, t, c)``; see
        :meth:`reference` for what it computes."""
        return conv_frontend(self, wav, lengths)

    def reference(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        """The front end as plain convolutions: ``wav (b, l)``, ``lengths (b,)`` valid samples or None ->
        ``(b, t, c)``.

        With ``lengths`` the first GroupNorm uses valid frames only. Later convs need no care: a valid output
        frame only reads valid input frames, by the same length formula that defines validity. The first conv
        runs in the waveform's precision (float32 for a bf16 model: it is cheap, and bf16 samples would lose
        the quiet parts of the signal); the others in the weights' dtype.
        """
        frames = None
        if lengths is not None:
            frames = torch.div(lengths - self.kernels[0], self.strides[0], rounding_mode="floor") + 1
        x = rearrange(wav, "b l -> b 1 l")
        for i, layer in enumerate(self.convs):
            if i > 0:
                x = x.to(layer.conv.weight.dtype)
            x = layer(x, frames if i == 0 else None)
        return rearrange(x, "b c t -> b t c")


class FeatureProjection(nn.Module):
    """LayerNorm(c) -> Linear(c -> d) -> dropout (MERT-v1 architecture)."""

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
        return self.dropout(linear(feats, self.linear.weight, self.linear.bias, owner=self.linear))


class PositionalConv(nn.Module):
    """Grouped, weight-normalised Conv1d over time; the model's only position signal (MERT-v1 architecture).

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
        """``(d, d / groups, K)`` effective conv weight; cached while ``g`` and ``v`` do not change and no
        gradient is needed (recomputing it costs a pass over its 4.7M values per forward at inference)."""
        v, g = self.weight_v, self.weight_g
        if torch.is_grad_enabled() and (v.requires_grad or g.requires_grad):
            return v * (g / v.norm(dim=(0, 1), keepdim=True))
        return inference_cached(self, "weight", (v, g), lambda: v * (g / v.norm(dim=(0, 1), keepdim=True)))

    def forward(self, x: Tensor) -> Tensor:
        """``(b, t, d) -> (b, t, d)``; the caller zeroes padded frames first, as zero padding is what a clip
        alone sees past its end."""
        y = conv1d(
            rearrange(x, "b t d -> b d t"), self.weight(), self.bias, padding=self.kernel // 2, groups=self.groups
        )
        if self.kernel % 2 == 0:
            y = y[..., :-1]  # an even kernel with padding K/2 yields one extra frame
        return rearrange(F.gelu(y), "b d t -> b t d")


class StackedPositionalConv(nn.Module):
    """data2vec-audio's positional embedding: ``layers`` x (grouped Conv1d over time -> LayerNorm without affine
    -> GELU), the music2vec / data2vec layout (``EncoderConfig.pos_conv="stack"``)."""

    def __init__(self, width: int, kernel: int, groups: int, layers: int, eps: float = 1e-5):
        super().__init__()
        self.kernel, self.eps = kernel, eps
        self.convs = nn.ModuleList(
            nn.Conv1d(width, width, kernel, padding=kernel // 2, groups=groups) for _ in range(layers)
        )

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """``(b, t, d) -> (b, t, d)``; with ``valid (b, t)`` padded frames are zeroed before every conv, so a
        clip gives the same output alone and in a padded batch (transformers zeroes them before the first only)."""
        y = rearrange(x, "b t d -> b d t")
        keep = None if valid is None else rearrange(valid, "b t -> b 1 t")
        for i, conv in enumerate(self.convs):
            if keep is not None and i > 0:
                y = y.masked_fill(~keep, 0.0)
            y = conv1d(y, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
            if self.kernel % 2 == 0:
                y = y[..., :-1]  # an even kernel with padding K/2 yields one extra frame
            y = F.gelu(rearrange(F.layer_norm(rearrange(y, "b d t -> b t d"), (y.shape[1],), eps=self.eps),
                                 "b t d -> b d t"))  # fmt: skip
        return rearrange(y, "b d t -> b t d")


class SelfAttention(nn.Module):
    """Multi-head softmax attention with one fused q/k/v projection (``scaled_dot_product_attention``)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        """``x (b, t, d)``, ``attn_mask (b, 1, 1, t)`` True = may attend, or None -> ``(b, t, d)``."""
        qkv = linear(x, self.qkv.weight, self.qkv.bias, owner=self.qkv)
        q, k, v = rearrange(qkv, "b t (three h e) -> three b h t e", three=3, h=self.heads)
        y = attention(q, k, v, attn_mask, self.dropout if self.training else 0.0)  # (b, t, d)
        return linear(y, self.out.weight, self.out.bias, owner=self.out)


class FeedForward(nn.Module):
    def __init__(self, width: int, ffn: int, activation_dropout: float, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(width, ffn)
        self.fc2 = nn.Linear(ffn, width)
        self.act_dropout = nn.Dropout(activation_dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``(b, t, d) -> (b, t, d)``."""
        h = self.act_dropout(linear(x, self.fc1.weight, self.fc1.bias, gelu=True, owner=self.fc1))
        return self.dropout(linear(h, self.fc2.weight, self.fc2.bias, owner=self.fc2))


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
    """Positional conv + layer stack; returns every hidden state with MERT-v1's semantics (MERT-v1 architecture):

    post-LN (95M): ``[LN(x + pos(x)), layer_1, ..., layer_L]``;
    pre-LN (330M): ``[x + pos(x), layer_1, ..., layer_{L-1}, LN(layer_L)]``.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.pre_ln = config.pre_ln
        self.layerdrop = config.layerdrop
        if config.pos_conv == "stack":
            self.pos_conv: nn.Module = StackedPositionalConv(
                config.hidden_size, config.pos_conv_kernel, config.pos_conv_groups, config.pos_conv_layers
            )
        else:
            self.pos_conv = PositionalConv(config.hidden_size, config.pos_conv_kernel, config.pos_conv_groups)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(TransformerLayer(config) for _ in range(config.num_layers))

    def forward(self, x: Tensor, valid: Tensor | None, depth: int | None = None) -> list[Tensor]:
        """``x (b, t, d)``, ``valid (b, t)`` True = real frame, or None -> list of ``depth + 1`` ``(b, t, d)``.

        ``depth`` (default all layers) stops after that many layers, so asking for layer 7 of 12 costs 7 layers;
        the 330M's final LayerNorm belongs to the last layer's state and is applied only when it is computed.
        """
        depth = len(self.layers) if depth is None else depth
        if not 0 <= depth <= len(self.layers):
            raise ValueError(f"depth must be in [0, {len(self.layers)}], got {depth}")
        attn_mask = None
        if valid is not None:
            x = x.masked_fill(~valid[..., None], 0.0)
            attn_mask = rearrange(valid, "b t -> b 1 1 t")
        x = x + (self.pos_conv(x, valid) if isinstance(self.pos_conv, StackedPositionalConv) else self.pos_conv(x))
        if not self.pre_ln:
            x = self.norm(x)
        x = self.dropout(x)
        states = [x]
        for layer in self.layers[:depth]:
            # LayerDrop skips whole layers in training; the skipped layer's output is its input.
            if not (self.training and self.layerdrop > 0 and torch.rand(()) < self.layerdrop):
                x = layer(x, attn_mask)
            states.append(x)
        if self.pre_ln and depth == len(self.layers):
            states[-1] = self.norm(x)
        return states


class EncoderNetwork(nn.Module):
    """The whole network: front end, feature projection, transformer and the mask embedding; its state dict is
    the layout of every checkpoint (:mod:`mert.models.checkpoint` builds one to check weights against).

    :class:`mert.Encoder` subclasses it with the input contract (checks, resampling, padding, windows), loading
    and precision helpers, and adds no parameters.

    Args:
        config: an :class:`EncoderConfig` or a preset name (``"tiny"``, ``"95m"``, ``"330m"``).
    """

    def __init__(self, config: EncoderConfig | str = "95m"):
        super().__init__()
        if isinstance(config, str):
            config = EncoderConfig.preset(config)
        if not isinstance(config, EncoderConfig):
            raise TypeError(f"config must be an EncoderConfig or a preset name such as 'tiny', got {config!r}")
        self.config = config
        if config.frontend == "mel":  # spectrogram family (mert.models.conformer): no projection, a subsampler
            self.frontend: nn.Module = MelFrontEnd(config)
            self.subsampler: nn.Module = (
                ConvNeXtSubsampler(config) if config.subsampler == "convnext" else Conv2dSubsampler(config)
            )
        else:
            self.frontend = ConvFrontEnd(config)
            self.proj = FeatureProjection(config)
        self.transformer: nn.Module = Conformer(config) if config.block == "conformer" else Transformer(config)
        # Replaces masked frames during pretraining (HF key `masked_spec_embed`).
        if config.mask_embedding:
            self.mask_emb = nn.Parameter(torch.empty(config.hidden_size).uniform_())
        else:
            self.mask_emb = None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The original's initialisation (fairseq wav2vec 2.0 / HuBERT, = transformers' ``_init_weights``).

        Front-end convs: Kaiming-normal (fan-in, ReLU gain), so every conv + GELU keeps the signal's scale;
        PyTorch's default (Kaiming-uniform with a = sqrt(5)) shrinks it about 2.5x per layer, leaving the
        front end of a fresh 95M model ~600x quieter than the original's (RMS 4e-4 vs 0.25 on input of std
        0.1), below the feature LayerNorm's eps: pretraining then starts from a nearly silent front end.
        Linears: N(0, 0.02) with zero bias (BERT's ``init_bert_params``); norms: weight 1, bias 0. The
        positional conv keeps its own fairseq initialisation (:class:`PositionalConv`)
        and ``mask_emb`` is uniform in [0, 1) as in fairseq. With ``config.frontend_init == "gabor"`` the first
        conv then becomes a constant-Q filterbank (:func:`gabor_filterbank`).
        """
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=INITIALIZER_RANGE)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)) and module.weight is not None:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if self.config.frontend == "mel":
            if not self.frontend.window.is_meta:  # meta: weights are loaded next
                with torch.device("cpu"):
                    self.frontend.reset_buffers()
            return
        first = self.frontend.convs[0].conv
        if self.config.frontend_init == "gabor" and not first.weight.is_meta:  # meta: weights are loaded next
            with torch.no_grad(), torch.device("cpu"):
                bank = gabor_filterbank(first.out_channels, first.kernel_size[0], self.config.sample_rate)
                first.weight.copy_(bank[:, None, :].to(first.weight.dtype))

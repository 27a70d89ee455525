"""The MERT-v1 network in plain PyTorch: conv front end, feature projection, positional conv, transformer.

Shape legend:
    b  batch
    l  samples (24 kHz for MERT-v1)
    c  front-end channels (512)
    t  frames (75 Hz)
    d  model width (hidden_size)
    h  attention heads
    n  hidden-state layers (num_layers + 1)

Everything aligned in time is ``(b, t, ...)``, the conv front end included: its strided convolutions run as
GEMMs on views of ``(b, t, c)`` frames (:func:`strided_conv`), which on CPU beats oneDNN's direct convolution
and needs no transposes (``docs/benchmarks.md``).

Speed (inference on CPU): every Linear goes through :func:`linear`, which calls oneDNN's matmul with the
bias and GELU fused when no gradient is needed (on a weight packed once if :data:`PACK_WEIGHTS`); the first
conv's GroupNorm is folded into its weights (:func:`fold_group_norm`) so the front end can run in tiles; bf16
attention runs as per-head GEMMs (:func:`shifted_attention`). All give the numbers of the plain formulation up
to float rounding (``tests/test_fast_path.py``); autograd takes the plain path.

Padding: every module takes per-item valid lengths so that a clip gives the same numbers alone and inside a
right-padded batch. Three places would otherwise leak padding into valid frames (spec 6.3): the first
GroupNorm's statistics, the positional conv's receptive field, and attention. ``strict`` reproduces the
original's GroupNorm over the padded length for bit-for-bit compatibility with transformers' HubertModel.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mert.models.config import EncoderConfig

__all__ = [
    "gabor_filterbank",
    "ConvFrontEnd",
    "FeatureProjection",
    "PositionalConv",
    "TransformerLayer",
    "Transformer",
    "linear",
    "strided_conv",
    "fold_group_norm",
    "folded_group_norm_conv",
    "shifted_attention",
]


def gabor_filterbank(channels: int, kernel: int, sample_rate: int, fmin_hz: float = 32.7) -> Tensor:
    """Constant-Q cosine filters for the first conv: ``(channels, kernel)``, one per log-spaced centre frequency.

    Centre frequencies run from ``fmin_hz`` (C1, the CQT teacher's lowest bin) to ``min(10 kHz, 0.42 sr)``,
    geometrically; each filter is a cosine under a Hann window of ``Q * sr / f`` samples (at most ``kernel``),
    with ``Q`` set by the channel spacing so neighbouring pass bands meet. Each row has L2 norm sqrt(2), the
    expected norm of a Kaiming-normal row, so the scale the rest of the network sees is unchanged.

    Why: a small model pretrained for minutes cannot learn a filterbank from a random 10-tap first layer: pooled
    features of such a fresh front end tell a note's pitch class 23-25 % of the time, of this bank's (with
    LayerNorm) 50 % (``benchmarks/frontend_cqt.py``, ``docs/pretraining.md``).
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


def _valid_mask(lengths: Tensor, max_len: int) -> Tensor:
    """``(b,) -> (b, t)`` boolean, True where the frame index is inside the item's length."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def _onednn_ops():
    """oneDNN's fused linear and its weight packing (the ops inductor emits on CPU), or None, None where this
    torch build lacks them."""
    try:
        return torch.ops.mkldnn._linear_pointwise, torch.ops.mkldnn._reorder_linear_weight
    except (AttributeError, RuntimeError):
        return None, None


_ONEDNN_LINEAR, _ONEDNN_PACK = _onednn_ops()


def _onednn_bf16() -> bool:
    """Whether oneDNN has bf16 kernels on this CPU (AVX-512 BF16 / AMX or at least AVX-512 cores): on an
    AVX2-only CPU (e.g. AMD Zen 3) it cannot create a bf16 inner-product primitive at all."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


_ONEDNN_BF16 = _onednn_bf16()

#: Keep a copy of every Linear weight in oneDNN's blocked layout for inference. In float32 this is 5-16 %
#: faster on the benchmark CPU (95M: 2.71 vs 2.86 s for 30 s, 0.68 vs 0.79 s for 10 s) but costs 4 bytes per
#: parameter more resident memory (380 MB for 95M), which put a 10-minute `embed_file` over 2 GB; so it is off
#: by default (``docs/benchmarks.md``). Unpacked weights still go through oneDNN, which reorders them per call.
#: Read at every call: packed copies are made when it is on and dropped when it is off.
PACK_WEIGHTS = False


def _use_onednn(x: Tensor, weight: Tensor) -> bool:
    # The op has no autograd formula and does not autocast, so it only serves plain inference on CPU.
    return (
        _ONEDNN_LINEAR is not None
        and x.device.type == "cpu"
        and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and _ONEDNN_BF16))
        and weight.dtype == x.dtype
        # Other layouts fall to oneDNN's reference kernels (100x slower): a contiguous weight, unit-stride rows.
        and (weight.is_mkldnn or weight.is_contiguous())
        and x.stride(-1) == 1
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )


# Per module, tensors derived from its parameters for inference (oneDNN-packed weights, the positional conv's
# normalised weight). Held outside the module so that pickling and deepcopy never see them, and freed with it.
_INFERENCE_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[tuple, Tensor]]] = weakref.WeakKeyDictionary()


def inference_cached(
    owner: nn.Module, name: str, params: tuple[Tensor, ...], make: Callable[[], Tensor], variant: object = None
) -> Tensor:
    """``make()``, cached on ``owner`` under ``name`` until one of ``params`` changes (updated in place: its
    version counter moves; replaced by ``load_state_dict``; moved or cast) or ``variant`` does (a setting that
    changes what ``make`` builds, such as :data:`PACK_WEIGHTS`). The new value replaces the old one."""
    # Inference tensors (parameters made under inference_mode) have no version counter; they cannot be updated
    # in place outside inference_mode either.
    key = (variant, *((-1 if p.is_inference() else p._version, p.data_ptr(), p.dtype, p.device) for p in params))
    cache = _INFERENCE_CACHE.setdefault(owner, {})
    hit = cache.get(name)
    if hit is None or hit[0] != key:
        hit = cache[name] = (key, make())
    return hit[1]


def int8_supported() -> str | None:
    """None if dynamic int8 linear layers can run on this CPU, else the reason they cannot."""
    engines = torch.backends.quantized.supported_engines
    if not any(e in engines for e in ("x86", "fbgemm")):
        return f"this torch build has no x86/fbgemm quantized engine (engines: {engines})"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return f"fbgemm's int8 kernels need AVX2 or AVX-512; this CPU reports {torch.backends.cpu.get_cpu_capability()}"
    return None


def _int8_reduce_range() -> bool:
    # Without VNNI, fbgemm multiplies u8 x s8 pairs into saturating int16 sums (vpmaddubsw): 7-bit activations
    # keep those from overflowing. With AVX512-VNNI the full 8 bits are safe.
    try:
        return not bool(torch.cpu._is_avx512_vnni_supported())
    except AttributeError:
        return True


_INT8_REDUCE_RANGE = _int8_reduce_range()  # a CPU property: probed once, not on every linear call


def _int8_pack(weight: Tensor, bias: Tensor | None) -> Tensor:
    """Per-output-channel symmetric int8 weights, prepacked for fbgemm's dynamic linear."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    q = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
    return torch.ops.quantized.linear_prepack(q, None if bias is None else bias.detach().float())


def _use_int8(x: Tensor, owner: nn.Module | None) -> bool:
    return (
        owner is not None
        and getattr(owner, "mert_int8", False)
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not (torch.is_grad_enabled() and x.requires_grad)
    )


def linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    gelu: bool = False,
    add: Tensor | None = None,
    owner: nn.Module | None = None,
    name: str = "weight",
) -> Tensor:
    """``F.linear(x, weight, bias)``, then GELU (``gelu``) or ``+ add``, in one call where possible.

    On CPU without autograd this is oneDNN's matmul with the bias and the GELU or sum fused; with
    :data:`PACK_WEIGHTS` on a weight that oneDNN has packed once into its blocked layout (cached on ``owner``
    under ``name``). torch's own float32 ``F.linear`` calls MKL's sgemm, which on the AMD EPYC (Zen 5) benchmark
    machine runs a 2048^3 GEMM at 208 GFLOP/s against oneDNN's 476 and makes a whole 30 s pass 1.5x slower,
    and adds the bias in a separate pass (``docs/benchmarks.md``). Results agree to float rounding.

    Args:
        x: ``(..., k)``; may be a strided view with unit stride in its last axis.
        weight: ``(n, k)``.
        bias: ``(n,)`` or None.
        gelu: apply the exact (erf) GELU to the result.
        add: ``(..., n)`` tensor added to the result (not combinable with ``gelu``).
        owner, name: where to cache the packed weight; ``weight`` must not change identity between calls
            without a parameter of ``owner`` changing too (pass parameters, or tensors derived from them).
    Returns:
        ``(..., n)``.
    """
    if gelu and add is not None:
        raise ValueError("linear: pass gelu or add, not both")
    if _use_int8(x, owner):  # opt-in (Encoder.quantize_int8): dynamic int8, activations quantised per call
        assert owner is not None
        packed = inference_cached(owner, "int8", (weight, *([bias] if bias is not None else [])),
                                  lambda: _int8_pack(weight, bias))  # fmt: skip
        lead = x.shape[:-1]
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, x.shape[-1]), packed, _INT8_REDUCE_RANGE)
        y = y.reshape(*lead, y.shape[-1])
        if gelu:
            return F.gelu(y)
        return y if add is None else y + add
    if _use_onednn(x, weight) and (add is None or (add.dtype == x.dtype and add.is_contiguous())):
        if owner is not None and PACK_WEIGHTS:
            weight = inference_cached(owner, name, (weight,), lambda: _ONEDNN_PACK(weight))
        elif owner is not None:
            # Frees a packed copy made while PACK_WEIGHTS was on (holding the weight itself instead would keep
            # replaced parameters alive, e.g. float32 weights after a cast to bf16).
            _INFERENCE_CACHE.get(owner, {}).pop(name, None)
        if add is not None:
            return _ONEDNN_LINEAR.binary(x, add, weight, bias, "add")
        return _ONEDNN_LINEAR(x, weight, bias, "gelu" if gelu else "none", [], "none" if gelu else "")
    y = F.linear(x, weight, bias)
    if gelu:
        return F.gelu(y)
    return y if add is None else y + add


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    # Under autocast the ops choose their own precision; leave the tensors alone.
    if t is None or t.dtype == dtype or torch.is_autocast_enabled(t.device.type):
        return t
    return t.to(dtype)


def _gelu(x: Tensor) -> Tensor:
    # In place when autograd does not need the input: a fresh output costs page faults on large front-end maps.
    if torch.is_grad_enabled() and x.requires_grad:
        return F.gelu(x)
    return torch.ops.aten.gelu_(x)


def _conv_blocks(x: Tensor, kernel: int, stride: int) -> list[tuple[Tensor, int, int]]:
    """Views of ``x (b, t, c)`` whose rows are the input frames of each output frame, ``stride`` frames at a time.

    Output frame ``i`` reads frames ``[i * s, i * s + k)``. Block ``j`` holds frames ``i * s + j * s`` onwards,
    ``min(s, k - j * s)`` of them, flattened as ``(frame, channel)``: a strided view with row stride ``s * c``
    that BLAS/oneDNN read directly, so no im2col copy is made. Returns ``(view (b, t', w * c), tap0, w)``.
    """
    t_out = (x.shape[1] - kernel) // stride + 1
    blocks = []
    for first in range(0, kernel, stride):
        w = min(stride, kernel - first)
        view = x[:, first:].unfold(1, w, stride)[:, :t_out]  # (b, t', c, w)
        blocks.append((view.transpose(2, 3).flatten(2), first, w))  # (b, t', w * c)
    return blocks


def strided_conv(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, owner: nn.Module | None = None) -> Tensor:
    """Unpadded Conv1d on channels-last frames: ``x (b, t, c)``, ``weight (o, c, k)`` -> ``(b, t', o)``.

    ``t' = (t - k) // stride + 1``. The kernel is split into blocks of ``stride`` taps, each a GEMM on a view of
    ``x`` (see ``_conv_blocks``), summed by oneDNN's fused add; ``owner`` caches the packed blocks (see
    :func:`linear`). With few input channels (the waveform) the patches are copied instead, as one GEMM with a
    deep reduction beats several shallow ones.
    """
    kernel = weight.shape[-1]
    if weight.shape[1] * kernel <= 64:
        patches = x.unfold(1, kernel, stride).transpose(2, 3).flatten(2)  # (b, t', k * c), a copy
        return linear(patches.contiguous(), rearrange(weight, "o c k -> o (k c)").contiguous(), bias)
    y = None
    for view, first, w in reversed(_conv_blocks(x, kernel, stride)):

        def taps(first: int = first, w: int = w) -> Tensor:
            return rearrange(weight[:, :, first : first + w], "o c k -> o (k c)").contiguous()

        if owner is not None and _use_onednn(view, weight):
            make = (lambda taps=taps: _ONEDNN_PACK(taps())) if PACK_WEIGHTS else taps
            w_block = inference_cached(owner, f"taps{first}", (weight,), make, PACK_WEIGHTS)
        else:
            w_block = taps()
        y = linear(view, w_block, bias if first == 0 else None, add=y)
    return y


def masked_group_norm(x: Tensor, lengths: Tensor, num_groups: int, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """GroupNorm whose statistics ignore frames at or beyond ``lengths``.

    The reference formulation of the front end's first norm; the encoder computes the same thing folded into
    the conv (:func:`folded_group_norm_conv`).

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


def fold_group_norm(x: Tensor, conv: nn.Conv1d, norm: nn.GroupNorm, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
    """Fold ``GroupNorm(conv(x))`` (one channel per group) into a per-item conv: ``x (b, t, c)`` -> ``w (b, o, k c)``,
    ``bias (b, o)`` to apply to ``(frame, channel)``-flattened patches.

    Per channel the norm is an affine map of the conv output, and the conv is linear in its input patches ``p``:
    the output's mean is ``w . mean(p)`` and its variance ``w^T cov(p) w``. So the statistics come from the
    patches' mean and covariance (``k * c`` numbers, float64) instead of three passes over the largest
    activation of the network (``(b, 144000, 512)`` for 30 s), and the front end can then run in tiles. The
    conv bias cancels in the normalisation. ``lengths`` (output frames per item) restricts the statistics to
    valid frames; None uses all, as transformers' HubertModel does.
    """
    w, stride = conv.weight, conv.stride[0]
    if norm.num_groups != w.shape[0]:
        raise ValueError(f"fold_group_norm needs one channel per group, got {norm.num_groups} groups")
    patches = x.unfold(1, w.shape[-1], stride).transpose(2, 3).flatten(2)  # (b, t', k * c), a view
    b, t = patches.shape[:2]
    f64 = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
    p = patches.to(f64)
    if lengths is None:
        count = torch.full((b,), float(t), dtype=f64, device=x.device)
        mu = p.mean(dim=1)  # (b, kc)
        centred = p - mu[:, None]
    else:
        valid = _valid_mask(lengths, t)[..., None]  # (b, t', 1)
        count = lengths.to(f64)
        mu = (p * valid).sum(dim=1) / count[:, None]
        centred = (p - mu[:, None]) * valid
    cov = centred.transpose(1, 2) @ centred / count[:, None, None]  # (b, kc, kc)
    w2 = rearrange(w, "o c k -> o (k c)").to(f64)
    mean = mu @ w2.T  # (b, o)
    var = torch.einsum("oi,bij,oj->bo", w2, cov, w2).clamp(min=0.0)
    scale = norm.weight.to(f64) * torch.rsqrt(var + norm.eps)  # (b, o)
    w_fold = (w2 * scale[..., None]).to(x.dtype)  # (b, o, kc)
    b_fold = (norm.bias.to(f64) - mean * scale).to(x.dtype)  # (b, o)
    return w_fold, b_fold


def _folded_conv(x: Tensor, w_fold: Tensor, b_fold: Tensor, kernel: int, stride: int) -> Tensor:
    """GELU of the folded conv: ``x (b, t, c)`` -> ``(b, t', o)``; one GEMM per item with the GELU fused."""
    patches = x.unfold(1, kernel, stride).transpose(2, 3).flatten(2).contiguous()  # (b, t', k * c)
    if _use_onednn(patches, w_fold):
        ys = [linear(patches[i], w_fold[i], b_fold[i], gelu=True) for i in range(len(patches))]
        return ys[0][None] if len(ys) == 1 else torch.stack(ys)
    return _gelu(torch.baddbmm(b_fold[:, None, :], patches, w_fold.transpose(1, 2)))


def folded_group_norm_conv(x: Tensor, conv: nn.Conv1d, norm: nn.GroupNorm, lengths: Tensor | None) -> Tensor:
    """``GELU(GroupNorm(conv(x)))``, one channel per group, as one GEMM: ``x (b, t, c)`` -> ``(b, t', o)``.

    See :func:`fold_group_norm`; ``lengths`` are output frames per item, or None for all frames.
    """
    w_fold, b_fold = fold_group_norm(x, conv, norm, lengths)
    return _folded_conv(x, w_fold, b_fold, conv.kernel_size[0], conv.stride[0])


class ConvLayer(nn.Module):
    """Conv1d -> optional norm -> GELU. ``norm`` is "group" (GroupNorm, one group per channel), "layer"
    (LayerNorm over channels at each frame) or None. The ``conv`` module only holds the parameters (the
    checkpoint layout); the computation is :func:`strided_conv` on channels-last frames."""

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

    def forward(self, x: Tensor, folded: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``(b, t_in, c_in) -> (b, t_out, c_out)``. A GroupNorm layer needs ``folded``, its statistics over the
        whole clip from :func:`fold_group_norm`, as ``x`` may be a tile of it.

        Runs in ``x``'s dtype (the parameters are cast if they differ: the first layer of a bf16 model).
        """
        if self.norm_kind == "group":
            if folded is None:
                raise ValueError("a GroupNorm conv layer needs its folded statistics (fold_group_norm)")
            return _folded_conv(x, *folded, self.conv.kernel_size[0], self.conv.stride[0])
        weight, bias = _cast(self.conv.weight, x.dtype), _cast(self.conv.bias, x.dtype)
        # Cache packed taps only for the parameters themselves (not for a cast copy, new on every call).
        owner = self if weight is self.conv.weight else None
        x = strided_conv(x, weight, bias, self.conv.stride[0], owner)
        if self.norm_kind == "layer":
            assert isinstance(self.norm, nn.LayerNorm)
            norm = self.norm
            x = F.layer_norm(x, norm.normalized_shape, _cast(norm.weight, x.dtype), _cast(norm.bias, x.dtype), norm.eps)
        return _gelu(x)


class ConvFrontEnd(nn.Module):
    """Waveform -> 75 Hz features: seven strided convs (spec 1).

    The stack runs in tiles of ``tile_frames`` output frames (each reading its receptive field of samples), so
    the 512-channel maps of the first layers never exist for the whole clip at once: 30 s would need 0.3 GB
    for the first layer's output alone, and tiles that fit the allocator's reuse and the caches are faster.
    A frame's numbers do not depend on the tiling: the only clip-wide quantity, the first GroupNorm's
    statistics, is computed beforehand (:func:`fold_group_norm`).
    """

    tile_frames = 256  # output frames per tile (3.4 s at 75 Hz)

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
        """``wav (b, l)`` float, ``lengths (b,)`` valid samples or None -> features ``(b, t, c)``.

        With ``lengths`` the first GroupNorm uses valid frames only. Later convs need no care: a valid output
        frame only reads valid input frames, by the same length formula that defines validity. The first conv
        runs in the waveform's precision (float32 for a bf16 model: it is cheap, and bf16 samples would lose
        the quiet parts of the signal); the others in the weights' dtype.
        """
        x = rearrange(wav, "b l -> b l 1")
        folded = None
        first = self.convs[0]
        if first.norm_kind == "group":
            assert isinstance(first.norm, nn.GroupNorm)
            k, s = self.kernels[0], self.strides[0]
            frames0 = None if lengths is None else torch.div(lengths - k, s, rounding_mode="floor") + 1
            folded = fold_group_norm(x, first.conv, first.norm, frames0)
        t = (x.shape[1] - self.receptive_field) // self.hop + 1
        tiles = []
        for start in range(0, t, self.tile_frames):
            end = min(start + self.tile_frames, t)
            y = x[:, start * self.hop : (end - 1) * self.hop + self.receptive_field]
            for i, layer in enumerate(self.convs):
                if i > 0:
                    y = _cast(y, layer.conv.weight.dtype)
                y = layer(y, folded if i == 0 else None)
            tiles.append(y)
        return tiles[0] if len(tiles) == 1 else torch.cat(tiles, dim=1)


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
        return self.dropout(linear(feats, self.linear.weight, self.linear.bias, owner=self.linear))


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
        """``(d, d / groups, K)`` effective conv weight; cached while ``g`` and ``v`` do not change and no
        gradient is needed (recomputing it costs a pass over its 4.7M values per forward at inference)."""
        v, g = self.weight_v, self.weight_g
        if torch.is_grad_enabled() and (v.requires_grad or g.requires_grad):
            return v * (g / v.norm(dim=(0, 1), keepdim=True))
        return inference_cached(self, "weight", (v, g), lambda: v * (g / v.norm(dim=(0, 1), keepdim=True)))

    def forward(self, x: Tensor) -> Tensor:
        """``(b, t, d) -> (b, t, d)``; the caller zeroes padded frames first, as zero padding is what a clip
        alone sees past its end."""
        y = F.conv1d(
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
            y = conv(y)
            if self.kernel % 2 == 0:
                y = y[..., :-1]  # an even kernel with padding K/2 yields one extra frame
            y = F.gelu(rearrange(F.layer_norm(rearrange(y, "b d t -> b t d"), (y.shape[1],), eps=self.eps),
                                 "b t d -> b d t"))  # fmt: skip
        return rearrange(y, "b d t -> b t d")


def _use_shifted_attention(q: Tensor, dropout_p: float) -> bool:
    # bfloat16 inference on CPU only: in float32 the flash kernel is the faster one (docs/benchmarks.md).
    return (
        dropout_p == 0.0
        and q.device.type == "cpu"
        and q.dtype == torch.bfloat16
        and not torch.is_autocast_enabled("cpu")
        and not (torch.is_grad_enabled() and q.requires_grad)
    )


# Rows whose largest score exceeds this in magnitude leave shifted_attention for the flash kernel: past ~4e4 half a
# bf16 ulp of the shift is enough to overflow exp.
_SHIFT_LIMIT = 8192.0


def shifted_attention(q: Tensor, k: Tensor, v: Tensor, valid: Tensor | None = None, block: int = 1 << 22) -> Tensor:
    """Softmax attention for bfloat16 inference on CPU, one head at a time, as three bf16 GEMMs per head.

    torch's flash-attention kernel reaches ~170 GFLOP/s on the benchmark CPU in bf16 (57 % of a 30 s bf16
    pass) against ~930 for a bf16 GEMM; whole-row GEMMs per head run at ~300. A bf16 GEMM rounds its output,
    and a score rounded to bf16 carries an error of 2^-9 of its size, which for peaked attention is more
    than the inputs' own rounding (flash attention keeps scores in float32). So each row is shifted by its
    maximum *inside* the GEMM: ``[q, m] . [k, -1] = q . k - m``, accumulated in float32 and rounded only
    after the shift, so the scores that matter (near the maximum) are small and keep their precision. ``m``
    comes from a first, plain bf16 score GEMM; any value near the row maximum works, as softmax is
    shift-invariant and the shift is exact. The row sums come from a column of ones appended to ``v`` and are
    rounded to bf16 like the unnormalised output, so the kernel's own error is up to 2-3x flash attention's
    against the same bf16 inputs; against float32 inputs, whose rounding to bf16 dominates, the two are equal
    (``benchmarks/attention.py``, ``tests/test_fast_path.py``). Rows whose scores exceed 8192 in magnitude
    (where half a bf16 ulp of the shift could overflow ``exp``) go through ``scaled_dot_product_attention``.
    An item with no valid key gets zeros.

    Args:
        q, k, v: ``(b, h, t, e)`` (strided views are fine).
        valid: ``(b, t)`` True = key may be attended to, or None.
        block: score elements per GEMM (query rows x keys): bounds memory for long single passes.
    Returns:
        ``(b, t, h, e)``, contiguous (``rearrange(y, "b t h e -> b t (h e)")`` is a view).
    """
    b, h, t, e = q.shape
    out = q.new_zeros(b, t, h, e)
    if t == 0:
        return out
    ks = k * e**-0.5
    # (b, h, e + 1, t): scaled keys with a row of -1 under them, row-major so that both the first e rows
    # (the plain score GEMM) and all e + 1 rows (the shifted one) are ordinary matrices.
    kt_aug = torch.cat([ks, ks.new_full((b, h, t, 1), -1.0)], dim=-1).transpose(-1, -2).contiguous()
    rows = max(1, block // t)
    for i in range(b):
        keys: slice | Tensor = slice(None)
        if valid is not None and not bool(valid[i].all()):
            n = int(valid[i].sum())
            if n == 0:
                continue
            keys = slice(0, n) if bool(valid[i, :n].all()) else valid[i].nonzero().squeeze(1)
        for j in range(h):
            kt = kt_aug[i, j][:, keys]  # (e + 1, n)
            vh = v[i, j][keys]
            vh = torch.cat([vh, vh.new_ones(vh.shape[0], 1)], dim=-1)  # (n, e + 1): the last column sums p
            for s in range(0, t, rows):
                qh = q[i, j, s : s + rows]  # (r, e)
                m = (qh @ kt[:e]).amax(dim=-1, keepdim=True)  # (r, 1), a bf16 value: the shift is exact
                if float(m.abs().max()) > _SHIFT_LIMIT:
                    kh = rearrange(kt[:e], "e n -> n e")  # already scaled
                    y = F.scaled_dot_product_attention(qh[None], kh[None], vh[None, :, :e], scale=1.0)[0]
                    out[i, s : s + rows, j] = y
                    continue
                p = torch.cat([qh, m], dim=-1) @ kt  # (r, n) = q . k - m <= ~0
                y = p.exp_() @ vh  # (r, e + 1): unnormalised output and the row sums, accumulated in float32
                torch.div(y[:, :e], y[:, e:], out=out[i, s : s + rows, j])
    return out


class SelfAttention(nn.Module):
    """Multi-head attention with one fused q/k/v projection: ``scaled_dot_product_attention``, or
    :func:`shifted_attention` for bfloat16 inference on CPU."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        """``x (b, t, d)``, ``attn_mask (b, 1, 1, t)`` True = may attend, or None -> ``(b, t, d)``."""
        qkv = linear(x, self.qkv.weight, self.qkv.bias, owner=self.qkv)
        q, k, v = rearrange(qkv, "b t (three h e) -> three b h t e", three=3, h=self.heads)
        dropout_p = self.dropout if self.training else 0.0
        if _use_shifted_attention(q, dropout_p):
            valid = None if attn_mask is None else rearrange(attn_mask, "b 1 1 t -> b t")
            y = rearrange(shifted_attention(q, k, v, valid), "b t h e -> b t (h e)")
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
            y = rearrange(y, "b h t e -> b t (h e)")
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
    """Positional conv + layer stack; returns every hidden state with the spec's semantics (spec 1):

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

"""Fast formulations of the encoder's three heavy ops, each behind one dispatch point with the reference fallback.

Shape legend:
    b  batch
    l  samples
    c  front-end channels (input ``c``, output ``o`` of a conv)
    k  conv taps (kernel size), or the reduction width of a GEMM
    t  frames
    h  attention heads
    e  width of one head
    d  model width (``h * e``)

The reference network is :mod:`mert.models.modules`, plain PyTorch; it calls the three dispatch points below,
and every use of a private torch API (``torch.ops.mkldnn.*``, ``torch.ops.aten.gelu_``, ``Parameter._version``,
``torch.cpu._is_*_supported``) lives in this file:

* :func:`linear`: dynamic int8 (opt-in), else oneDNN's matmul with bias and GELU/add fused (inference on CPU),
  else ``F.linear``.
* :func:`conv_frontend`: the conv stack as GEMMs on channels-last views, in tiles, with the first GroupNorm
  folded into conv 0 (every device, also under autograd: this *is* the front end's formulation since the
  first release), else ``ConvFrontEnd.reference`` (plain ``F.conv1d`` over the whole clip) for a layer
  the GEMM form cannot compute.
* :func:`attention`: :func:`shifted_attention` (bf16 inference on a CPU without AMX), else
  ``F.scaled_dot_product_attention``.
* :func:`conv1d`: ``F.conv1d``, except for a bf16 conv on CPU whose oneDNN kernel gives wrong numbers on this
  CPU (checked once per layout, :func:`onednn_bf16_conv_ok`), which runs in float32 instead.

Under :func:`torch.compile` (``Encoder.compile``) every dispatch point takes the reference form, which the
compiler fuses itself, except that bf16 convs on CPU run in float32 there.

Each fast form gives the reference's numbers up to float rounding (``tests/test_fast_path.py``); the figures
that justify each are in ``docs/benchmarks.md`` and ``docs/notes/2026-12-01-cpu-speed.md`` (an Intel CPU with AMX:
``docs/notes/2026-12-07-bf16-on-amx.md``), measured with the benchmark named at the dispatch point.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mert.models.pooling import valid_mask

__all__ = [
    "PACK_WEIGHTS",
    "linear",
    "conv_frontend",
    "attention",
    "conv1d",
    "onednn_bf16_conv_ok",
    "strided_conv",
    "fold_group_norm",
    "folded_group_norm_conv",
    "shifted_attention",
    "inference_cached",
    "int8_supported",
    "cpu_has_native_bf16",
]


# --------------------------------------------------------------------------------------------- CPU features
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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 GEMM instructions (AVX512-BF16 or AMX) that oneDNN uses.

    Without them oneDNN emulates bf16: on an AVX2-only AMD EPYC the 95M model in bf16 ran 10x slower than in
    float32 (``benchmarks/encoder_vs_hf.py``, 5 s clip, one core), so bf16 is a speed-up only where this is True.
    """
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: assume the worst, float32 is always correct
        return False


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


# --------------------------------------------------------------------------------------------- inference caches
#: Keep a copy of every Linear weight in oneDNN's blocked layout for inference. In float32 this is 5-16 %
#: faster on the Zen 5 benchmark CPU (95M: 2.71 vs 2.86 s for 30 s, 0.68 vs 0.79 s for 10 s) but costs 4 bytes
#: per parameter more resident memory (380 MB for 95M), which put a 10-minute `embed_file` over 2 GB; so it is off
#: by default (``docs/benchmarks.md``). Unpacked weights still go through oneDNN, which reorders them per call.
#: Read at every call: packed copies are made when it is on and dropped when it is off.
PACK_WEIGHTS = False

# Per module, tensors derived from its parameters for inference (oneDNN-packed weights, the positional conv's
# normalised weight). Held outside the module so that pickling and deepcopy never see them, and freed with it.
_INFERENCE_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[tuple, Tensor]]] = weakref.WeakKeyDictionary()


def inference_cached(
    owner: nn.Module, name: str, params: tuple[Tensor, ...], make: Callable[[], Tensor], variant: object = None
) -> Tensor:
    """``make()``, cached on ``owner`` under ``name`` until one of ``params`` changes (updated in place: its
    version counter moves; replaced by ``load_state_dict``; moved or cast) or ``variant`` does (a setting that
    changes what ``make`` builds, such as :data:`PACK_WEIGHTS`). The new value replaces the old one."""
    if torch.compiler.is_compiling():
        return make()  # the cache is Python state dynamo cannot trace; the compiled graph computes it in place
    # Inference tensors (parameters made under inference_mode) have no version counter; they cannot be updated
    # in place outside inference_mode either.
    key = (variant, *((-1 if p.is_inference() else p._version, p.data_ptr(), p.dtype, p.device) for p in params))
    cache = _INFERENCE_CACHE.setdefault(owner, {})
    hit = cache.get(name)
    if hit is None or hit[0] != key:
        hit = cache[name] = (key, make())
    return hit[1]


# --------------------------------------------------------------------------------------------- linear
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
    """Dispatch point for every Linear: ``F.linear(x, weight, bias)``, then GELU (``gelu``) or ``+ add``.

    In order: dynamic int8 when ``owner`` opted in (``Encoder.quantize_int8``); on CPU without autograd, oneDNN's
    matmul with the bias and the GELU or sum fused, with :data:`PACK_WEIGHTS` on a weight that oneDNN has
    packed once into its blocked layout (cached on ``owner`` under ``name``); else the reference ``F.linear``.
    Why oneDNN: torch's own float32 ``F.linear`` calls MKL's sgemm, which on the AMD EPYC (Zen 5) benchmark
    machine runs a 2048^3 GEMM at 208 GFLOP/s against oneDNN's 476 (the GEMM peaks that
    ``benchmarks/encoder_vs_hf.py`` prints), and a whole 30 s fp32 pass took 4.40 s with ``F.linear`` against
    2.96 s through oneDNN (``docs/notes/2026-12-01-cpu-speed.md``). On an Intel Xeon with AMX, MKL is not slower and
    oneDNN gains 1-4 % (``docs/notes/2026-12-07-bf16-on-amx.md``). Results agree to float rounding.

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
    if torch.compiler.is_compiling():
        # Under torch.compile the reference ops: the compiler fuses them itself, and the oneDNN and int8 kernels
        # are opaque to it (their availability checks are graph breaks).
        y = F.linear(x, weight, bias)
        return F.gelu(y) if gelu else (y if add is None else y + add)
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


# --------------------------------------------------------------------------------------------- conv front end
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


def fold_group_norm(x: Tensor, conv: nn.Conv1d, norm: nn.GroupNorm, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
    """Fold ``GroupNorm(conv(x))`` (one channel per group) into a per-item conv: ``x (b, t, c)`` -> ``w (b, o, k c)``,
    ``bias (b, o)`` to apply to ``(frame, channel)``-flattened patches.

    Per channel the norm is an affine map of the conv output, and the conv is linear in its input patches ``p``:
    the output's mean is ``w . mean(p)`` and its variance ``w^T cov(p) w``. So the statistics come from the
    patches' mean and covariance (``k * c`` numbers, float64) instead of three passes over the largest
    activation of the network (``(b, 144000, 512)`` for 30 s), and the front end can then run in tiles. The
    conv bias cancels in the normalisation. ``lengths`` (output frames per item) restricts the statistics to
    valid frames; None uses all, as transformers' HubertModel does. The reference it is checked against is
    :func:`mert.models.modules.masked_group_norm`.
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
        valid = valid_mask(lengths, t)[..., None]  # (b, t', 1)
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

    The front end uses the two halves separately (statistics once per clip, the GEMM once per tile); this is
    their composition on a whole clip, what ``tests/test_fast_path.py`` checks against GroupNorm and
    :func:`~mert.models.modules.masked_group_norm`. See :func:`fold_group_norm`; ``lengths`` are output frames
    per item, or None for all frames.
    """
    w_fold, b_fold = fold_group_norm(x, conv, norm, lengths)
    return _folded_conv(x, w_fold, b_fold, conv.kernel_size[0], conv.stride[0])


def _gemm_conv_layer(layer: nn.Module, x: Tensor, folded: tuple[Tensor, Tensor] | None) -> Tensor:
    """One ``ConvLayer`` on channels-last frames: ``(b, t_in, c_in) -> (b, t_out, c_out)``, in ``x``'s dtype (the
    parameters are cast if they differ: the first layer of a bf16 model). A GroupNorm layer needs ``folded``,
    its statistics over the whole clip from :func:`fold_group_norm`, as ``x`` may be a tile of it."""
    conv = layer.conv
    if layer.norm_kind == "group":
        if folded is None:
            raise ValueError("a GroupNorm conv layer needs its folded statistics (fold_group_norm)")
        return _folded_conv(x, *folded, conv.kernel_size[0], conv.stride[0])
    weight, bias = _cast(conv.weight, x.dtype), _cast(conv.bias, x.dtype)
    # Cache packed taps only for the parameters themselves (not for a cast copy, new on every call).
    owner = layer if weight is conv.weight else None
    x = strided_conv(x, weight, bias, conv.stride[0], owner)
    if layer.norm_kind == "layer":
        norm = layer.norm
        x = F.layer_norm(x, norm.normalized_shape, _cast(norm.weight, x.dtype), _cast(norm.bias, x.dtype), norm.eps)
    return _gelu(x)


def _gemm_form_fits(convs: Sequence[nn.Module]) -> bool:
    """Whether every layer is what the GEMM form computes: an unpadded, undilated, ungrouped conv, and a
    GroupNorm (first layer only) with one channel per group. Every ``ConvFrontEnd`` is built so."""
    for i, layer in enumerate(convs):
        conv = layer.conv
        if conv.padding != (0,) or conv.dilation != (1,) or conv.groups != 1:
            return False
        if layer.norm_kind == "group" and (i > 0 or layer.norm.num_groups != conv.out_channels):
            return False
    return True


def conv_frontend(frontend: nn.Module, wav: Tensor, lengths: Tensor | None) -> Tensor:
    """Dispatch point for the conv front end: ``wav (b, l)``, ``lengths (b,)`` valid samples or None -> ``(b, t, c)``.

    The GEMM form: every strided conv is a few GEMMs on views of channels-last ``(b, t, c)`` frames
    (:func:`strided_conv`, no im2col copy, no transposes), the first GroupNorm is folded into conv 0 from
    statistics computed once over the whole clip (:func:`fold_group_norm`, valid frames only with ``lengths``),
    and the stack runs in tiles of ``frontend.tile_frames`` output frames, each reading its receptive field of
    samples, so the 512-channel maps of the first layers never exist for the whole clip (0.3 GB for 30 s).
    Measured in ``torch.profiler`` profiles of 30 s passes, the pass that ``benchmarks/encoder_vs_hf.py`` times
    (``docs/notes/2026-12-01-cpu-speed.md``, "What the speed-up is made of"; Zen 5): oneDNN's direct conv 1.63 s
    vs 1.0-1.2 s as GEMMs for the 5 strided 512-channel layers; conv 0 + GroupNorm + GELU 717 ms -> ~210 ms
    folded; the front end 1.87 -> 1.72 s in tiles. A frame's numbers do not depend on the tiling. Any layer the
    GEMM form does not fit (see ``_gemm_form_fits``) takes ``frontend.reference``.

    The first conv runs in the waveform's precision (float32 for a bf16 model: it is cheap, and bf16 samples
    would lose the quiet parts of the signal); the others in the weights' dtype.
    """
    convs = frontend.convs
    if torch.compiler.is_compiling() or not _gemm_form_fits(convs):  # the compiler lowers the plain convs itself
        return frontend.reference(wav, lengths)
    x = rearrange(wav, "b l -> b l 1")
    folded = None
    first = convs[0]
    if first.norm_kind == "group":
        k, s = first.conv.kernel_size[0], first.conv.stride[0]
        frames0 = None if lengths is None else torch.div(lengths - k, s, rounding_mode="floor") + 1
        folded = fold_group_norm(x, first.conv, first.norm, frames0)
    t = (x.shape[1] - frontend.receptive_field) // frontend.hop + 1
    tiles = []
    for start in range(0, t, frontend.tile_frames):
        end = min(start + frontend.tile_frames, t)
        y = x[:, start * frontend.hop : (end - 1) * frontend.hop + frontend.receptive_field]
        for i, layer in enumerate(convs):
            if i > 0:
                y = _cast(y, layer.conv.weight.dtype)
            y = _gemm_conv_layer(layer, y, folded if i == 0 else None)
        tiles.append(y)
    return tiles[0] if len(tiles) == 1 else torch.cat(tiles, dim=1)


# --------------------------------------------------------------------------------------------- attention
def _shifted_attention_wins() -> bool:
    """Whether :func:`shifted_attention` beats torch's bf16 flash kernel on this CPU: where oneDNN has no AMX.

    Zen 5 (AVX512-BF16, no AMX), 95M shape (12 heads, 2250 frames): 53 ms per layer against 93 ms for flash.
    Intel Sapphire Rapids (AMX), one thread, the same inputs: 169-232 ms against 71-95 ms, and a whole 10 s bf16
    pass of the 95M model 0.82 s against 0.61 s with flash. There the per-head GEMMs, whose reduction is one
    head wide (64), run at 160-270 GFLOP/s against 600-730 for a square bf16 GEMM, and the bf16 row maxima and
    ``exp`` take a third of the kernel's time.
    """
    try:
        return not bool(torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without the probe: keep the kernel measured fastest where it was measured
        return True


_SHIFTED_ATTENTION_WINS = _shifted_attention_wins()  # a CPU property: probed once


def _use_shifted_attention(q: Tensor, dropout_p: float) -> bool:
    # bfloat16 inference on CPU only: in float32 the flash kernel is the faster one
    # (docs/notes/2026-12-01-cpu-speed.md).
    return (
        _SHIFTED_ATTENTION_WINS
        and not torch.compiler.is_compiling()
        and dropout_p == 0.0
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


def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, dropout_p: float) -> Tensor:
    """Dispatch point for softmax attention: ``q, k, v (b, h, t, e)``, ``attn_mask (b, 1, 1, t)`` True = may
    attend, or None -> ``(b, t, d)``.

    bf16 inference on a CPU without AMX runs :func:`shifted_attention`: 53 ms per layer against 93 ms for torch's
    bf16 flash kernel at the 95M shape (2250 frames) on Zen 5, with the same error to a float64 reference
    (``benchmarks/attention.py``, ``docs/notes/2026-12-01-cpu-speed.md``); with AMX flash is the faster one (see
    ``_shifted_attention_wins``, ``docs/notes/2026-12-07-bf16-on-amx.md``). Everything else, float32 included
    (per-head float32 GEMMs were 1.3-2.8x slower than flash there), is the reference
    ``F.scaled_dot_product_attention``.
    """
    if _use_shifted_attention(q, dropout_p):
        valid = None if attn_mask is None else rearrange(attn_mask, "b 1 1 t -> b t")
        return rearrange(shifted_attention(q, k, v, valid), "b t h e -> b t (h e)")
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
    return rearrange(y, "b h t e -> b t (h e)")


# --------------------------------------------------------------------------------------------- other convs
# Per conv layout (input channels, weight shape, stride, padding, dilation, groups): whether oneDNN's bf16 kernel
# gives float32's numbers up to bf16 rounding on this CPU. A property of the CPU and the torch build.
_BF16_CONV_OK: dict[tuple, bool] = {}


def onednn_bf16_conv_ok(
    c_in: int, weight_shape: Sequence[int], stride: int, padding: int, dilation: int, groups: int
) -> bool:
    """Whether ``F.conv1d`` in bf16 on CPU computes this layout correctly; probed once per layout and cached.

    torch sends bf16 convs to oneDNN only where oneDNN has bf16 kernels (``_is_mkldnn_bf16_supported``: AVX-512
    cores, AVX512-BF16, AMX); elsewhere (an AVX2-only CPU) they take torch's own im2col + GEMM, which is correct.
    With torch 2.9.1 on an Intel Sapphire Rapids (AMX), oneDNN's AMX conv kernel (``brg_conv_fwd`` with AMX in
    ``ONEDNN_VERBOSE=1``) returns numbers unrelated to the convolution (relative error ~1) for grouped bf16 convs
    whose groups have 2 to 12 input channels and whose kernel width is even: the tiny presets' positional conv
    (32 channels in 4 groups, 16 taps). The published models' (48 or 64 channels per group, 128 taps) are
    correct, and so is every layout under ``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``, the kernels a CPU with
    AVX512-BF16 but no AMX (AMD Zen 4/5) runs. Which layouts fail depends on the CPU
    and the oneDNN version, so instead of a rule this runs the layout once on a short random input in bf16 and
    in float32 and compares (a correct kernel is off by bf16 rounding, ~2e-3; a failing one by ~1).

    Args:
        c_in: input channels.
        weight_shape: ``(o, c_in / groups, k)``.
        stride, padding, dilation, groups: as ``F.conv1d`` takes them.
    """
    o, cpg, k = (int(n) for n in weight_shape)
    key = (int(c_in), o, cpg, k, int(stride), int(padding), int(dilation), int(groups))
    ok = _BF16_CONV_OK.get(key)
    if ok is None:
        gen = torch.Generator().manual_seed(0)
        t = max(dilation * (k - 1) + 1 - 2 * padding, 1) + 8 * stride  # a few output frames past the borders
        x = torch.randn(1, c_in, t, generator=gen).to(torch.bfloat16)
        w = (torch.randn(o, cpg, k, generator=gen) * (cpg * k) ** -0.5).to(torch.bfloat16)
        with torch.inference_mode(), torch.autocast("cpu", enabled=False):
            got = F.conv1d(x, w, None, stride, padding, dilation, groups).float()
            ref = F.conv1d(x.float(), w.float(), None, stride, padding, dilation, groups)
        ok = bool(torch.isfinite(got).all()) and float((got - ref).norm()) <= 2e-2 * float(ref.norm())
        _BF16_CONV_OK[key] = ok
    return ok


def _int1(v: int | Sequence[int]) -> int:
    return int(v if isinstance(v, int) else v[0])


def conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> Tensor:
    """Dispatch point for a plain ``F.conv1d``: ``x (b, c, t)``, ``weight (o, c / groups, k)`` -> ``(b, o, t')``.

    A bf16 conv on CPU (bf16 tensors, or CPU autocast to bf16) that would run oneDNN's bf16 kernel, where that
    kernel is wrong for this layout on this CPU (:func:`onednn_bf16_conv_ok`), runs in float32 and returns bf16,
    as ``F.conv1d`` would have. Everything else is ``F.conv1d`` itself.
    """
    if isinstance(padding, str):
        return F.conv1d(x, weight, bias, stride, padding, dilation, groups)
    autocast_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    if torch.compiler.is_compiling():
        # The per-layout probe below is Python state the compiler cannot trace: compiled, every bf16 conv on CPU
        # runs in float32 (inductor would otherwise call the same oneDNN kernel); everything else is F.conv1d.
        if x.device.type == "cpu" and (autocast_bf16 or x.dtype == torch.bfloat16):
            with torch.autocast("cpu", enabled=False):
                y = F.conv1d(x.float(), weight.float(), None if bias is None else bias.float(), stride, padding,
                             dilation, groups)  # fmt: skip
            return y.to(torch.bfloat16)
        return F.conv1d(x, weight, bias, stride, padding, dilation, groups)
    if (
        x.device.type == "cpu"
        and _ONEDNN_BF16
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and (autocast_bf16 or (x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16))
        and not onednn_bf16_conv_ok(x.shape[1], weight.shape, _int1(stride), _int1(padding), _int1(dilation), groups)
    ):
        with torch.autocast("cpu", enabled=False):
            y = F.conv1d(x.float(), weight.float(), None if bias is None else bias.float(), stride, padding,
                         dilation, groups)  # fmt: skip
        return y.to(torch.bfloat16)
    return F.conv1d(x, weight, bias, stride, padding, dilation, groups)

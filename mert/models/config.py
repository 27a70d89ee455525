"""`EncoderConfig`: the typed description of a MERT-style encoder.

The dataclass travels inside every checkpoint we write (``config.json`` and the safetensors metadata), so a
weights file is never separated from the numbers needed to rebuild its model. The 95m and 330m presets hold
the exact figures of MERT-v1 (``docs/architecture.md``, "References"); ``tiny`` keeps the real 320-sample hop so
every code path that depends on the 75 Hz grid is exercised by the fast tests.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

__all__ = ["EncoderConfig", "PRESETS", "RUNTIME_MODEL_KEYS", "frame_lengths", "receptive_field"]

CONFIG_FORMAT = "mert"  # the `model_type` we write in config.json
# Keys a pretraining run's model section may carry besides the architecture: how to run the network, not what
# it is (``model.compile=true``). ``EncoderConfig.from_dict`` drops them, so they never reach a checkpoint's config.
RUNTIME_MODEL_KEYS = ("compile", "compile_mode", "compile_dynamic")
_INT_TUPLES = ("conv_dim", "conv_kernel", "conv_stride", "subsampler_channels", "subsampler_depths",
               "subsampler_strides")  # fmt: skip


@dataclass
class EncoderConfig:
    """Architecture and regularisation of a MERT-style encoder.

    Every field carries its unit in its name or comment. Build presets with :meth:`preset`.
    """

    # --- input ---
    sample_rate: int = 24000  # Hz; audio at any other rate is resampled to this before the front end
    normalize_input: bool = False  # zero-mean/unit-variance per clip before the front end (MERT-v1: off)

    # --- convolutional front end (MERT-v1 architecture: 7 layers, 512 channels, 320-sample hop) ---
    conv_dim: tuple[int, ...] = (512,) * 7  # channels per conv layer
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)  # samples (layer 0) / frames (others)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    frontend_norm: Literal["group", "layer"] = "group"  # "group": GroupNorm after conv 0 only (95M)
    feat_proj_layer_norm: bool = True  # LayerNorm on front-end features before the projection
    # How a fresh model's first conv starts: "kaiming" (the original's random init) or "gabor" (a bank of
    # cosine-modulated Hann windows at log-spaced centre frequencies, 32.7 Hz up, constant Q; see
    # Encoder.reset_parameters). Only the initialisation differs: loading weights overwrites it.
    frontend_init: Literal["kaiming", "gabor"] = "kaiming"
    frontend_grad_mult: float = 0.1  # gradient scale into the front end during training (1.0 = none)

    # --- transformer ---
    hidden_size: int = 768  # d
    num_layers: int = 12
    num_heads: int = 12
    ffn_size: int = 3072
    pre_ln: bool = False  # False: post-LN (95M); True: pre-LN with a final LayerNorm (330M)
    pos_conv_kernel: int = 128  # frames
    pos_conv_groups: int = 16
    # "weight_norm": one weight-normalised grouped conv + GELU (HuBERT, MERT); "stack": pos_conv_layers grouped
    # convs, each followed by a LayerNorm without affine and GELU (data2vec-audio, music2vec).
    pos_conv: Literal["weight_norm", "stack"] = "weight_norm"
    pos_conv_layers: int = 5  # convs in the "stack" layout (unused by "weight_norm")
    layer_norm_eps: float = 1e-5

    # --- spectrogram family (frontend="mel": MERT-v2, MuQ/MusicFM; docs/architecture.md) ---
    # "conv": the waveform conv stack above + feature projection (MERT-v1, HuBERT, music2vec). "mel": an STFT
    # power mel spectrogram in dB, normalised per bin with stored statistics, then a subsampler to the width.
    frontend: Literal["conv", "mel"] = "conv"
    n_fft: int = 2048  # samples; STFT window and FFT size (Hann)
    mel_hop: int = 240  # samples between mel frames (100 Hz at 24 kHz)
    n_mels: int = 128
    # "convnext": ConvNeXt-V2 1-D stages (MERT-v2); "conv2d": two residual 2-D conv blocks (MuQ/MusicFM).
    subsampler: Literal["convnext", "conv2d"] = "convnext"
    subsampler_channels: tuple[int, ...] = (128, 512, 1024)  # per stage; "conv2d": one entry, its conv channels
    subsampler_depths: tuple[int, ...] = (3, 4, 5)  # ConvNeXt layers per stage ("convnext" only)
    subsampler_strides: tuple[int, ...] = (1, 2, 2)  # time stride per stage / per 2-D block
    subsampler_eps: float = 1e-6  # LayerNorm eps inside the ConvNeXt stages

    # --- block layout ---
    # "transformer": MERT-v1's layers with a positional conv (pre_ln picks the 95M/330M layout); "conformer":
    # macaron FFN halves, rotary self-attention, GLU + depthwise conv module, LayerNorm after each block.
    block: Literal["transformer", "conformer"] = "transformer"
    conv_module_kernel: int = 31  # frames; the conformer's depthwise conv
    conv_module_norm: Literal["layer", "batch"] = "layer"  # after the depthwise conv (MERT-v2: layer, MuQ: batch)
    activation: Literal["gelu", "swish"] = "gelu"  # conformer FFN and conv module (MuQ: swish)
    rope_base: float = 10000.0
    # "qk": rotate the projected queries and keys (MERT-v2); "input": rotate the block input before the q/k
    # projections, as transformers' Wav2Vec2Conformer does (MuQ).
    rope_on: Literal["qk", "input"] = "qk"
    final_norm: bool = False  # conformer: a LayerNorm on the last hidden state (MuQ's encoder.layer_norm)
    mask_embedding: bool = True  # a learned `mask_emb` for pretraining (the published MERT-v2/MuQ files have none)

    # --- regularisation (only active in training mode) ---
    hidden_dropout: float = 0.1  # residual branches and after the positional-conv add
    attention_dropout: float = 0.1  # on attention probabilities
    activation_dropout: float = 0.0  # inside the FFN after GELU
    feat_proj_dropout: float = 0.1  # after the feature projection (fairseq's dropout_input)
    layerdrop: float = 0.05  # probability of skipping a whole transformer layer

    name: str = field(default="custom", compare=False)  # informative only

    def __post_init__(self) -> None:
        # JSON round trips give lists; keep tuples so configs compare and hash consistently.
        for name in _INT_TUPLES:
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise ValueError(f"{name} must be a list of integers, got {value!r}")
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ValueError(f"{name} must be a list of integers, got {list(value)!r}")
            setattr(self, name, tuple(int(v) for v in value))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent field."""
        for name in (
            "hidden_size",
            "num_layers",
            "num_heads",
            "ffn_size",
            "pos_conv_kernel",
            "pos_conv_groups",
            "sample_rate",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            if value > _LIMITS[name]:  # configs come from downloaded files: bound what a model may allocate
                raise ValueError(f"{name}={value} is beyond the supported maximum {_LIMITS[name]}")
        if self.sample_rate < 1000:
            raise ValueError(f"sample_rate must be at least 1000 Hz, got {self.sample_rate}")

        def number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        if not (number(self.layer_norm_eps) and 0 < self.layer_norm_eps < 1):
            raise ValueError(f"layer_norm_eps must be a number in (0, 1), got {self.layer_norm_eps!r}")
        if not (number(self.frontend_grad_mult) and self.frontend_grad_mult >= 0):  # 0: a frozen front end
            raise ValueError(f"frontend_grad_mult must be a number >= 0, got {self.frontend_grad_mult!r}")
        for name in ("normalize_input", "conv_bias", "feat_proj_layer_norm", "pre_ln"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("conv_dim", "conv_kernel", "conv_stride"):
            if any(v < 1 for v in getattr(self, name)):
                raise ValueError(f"{name} must hold positive integers, got {list(getattr(self, name))}")
            if any(v > _LIMITS[name] for v in getattr(self, name)) or len(getattr(self, name)) > 64:
                raise ValueError(
                    f"{name} is beyond the supported maximum (64 layers of at most {_LIMITS[name]}), got "
                    f"{list(getattr(self, name))[:8]}"
                )
        n = len(self.conv_dim)
        if n == 0 or len(self.conv_kernel) != n or len(self.conv_stride) != n:
            raise ValueError(
                f"conv_dim, conv_kernel and conv_stride must have the same non-zero length, got "
                f"{len(self.conv_dim)}, {len(self.conv_kernel)}, {len(self.conv_stride)}"
            )
        if self.frontend_norm not in ("group", "layer"):
            raise ValueError(f"frontend_norm must be 'group' or 'layer', got {self.frontend_norm!r}")
        if self.pos_conv not in ("weight_norm", "stack"):
            raise ValueError(f"pos_conv must be 'weight_norm' or 'stack', got {self.pos_conv!r}")
        if (
            isinstance(self.pos_conv_layers, bool)
            or not isinstance(self.pos_conv_layers, int)
            or not 1 <= self.pos_conv_layers <= 64
        ):
            raise ValueError(f"pos_conv_layers must be an integer in [1, 64], got {self.pos_conv_layers!r}")
        if self.frontend_init not in ("kaiming", "gabor"):
            raise ValueError(f"frontend_init must be 'kaiming' or 'gabor', got {self.frontend_init!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_size % self.pos_conv_groups:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by pos_conv_groups {self.pos_conv_groups}"
            )
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        for name in ("hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout", "layerdrop"):
            p = getattr(self, name)
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        self._validate_families()

    def _validate_families(self) -> None:
        """The spectrogram front end, subsampler and conformer fields (unused ones are still type-checked)."""
        choices = {
            "frontend": ("conv", "mel"),
            "subsampler": ("convnext", "conv2d"),
            "block": ("transformer", "conformer"),
            "conv_module_norm": ("layer", "batch"),
            "activation": ("gelu", "swish"),
            "rope_on": ("qk", "input"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        for name in ("n_fft", "mel_hop", "n_mels", "conv_module_kernel"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("final_norm", "mask_embedding"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("subsampler_eps", "rope_base"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.conv_module_kernel % 2 == 0:
            raise ValueError(f"conv_module_kernel must be odd (same padding), got {self.conv_module_kernel}")
        if self.block == "conformer" and self.head_dim % 2:
            raise ValueError(f"rotary attention needs an even head width, got hidden_size/num_heads = {self.head_dim}")
        for name in ("subsampler_channels", "subsampler_depths", "subsampler_strides"):
            if any(v < 1 for v in getattr(self, name)):
                raise ValueError(f"{name} must hold positive integers, got {list(getattr(self, name))}")
        if self.frontend != "mel":
            return
        if self.n_fft < 2 or self.mel_hop > self.n_fft:
            raise ValueError(f"the mel front end needs mel_hop <= n_fft, got {self.n_fft=}, {self.mel_hop=}")
        channels, strides = self.subsampler_channels, self.subsampler_strides
        if self.subsampler == "convnext":
            if not (len(channels) == len(self.subsampler_depths) == len(strides) > 0):
                raise ValueError(
                    "subsampler_channels, subsampler_depths and subsampler_strides must have the same non-zero "
                    f"length, got {list(channels)}, {list(self.subsampler_depths)}, {list(strides)}"
                )
            if channels[-1] != self.hidden_size:
                raise ValueError(
                    f"the last subsampler stage must have hidden_size channels ({self.hidden_size}), got {channels[-1]}"
                )
        else:
            if len(channels) != 1 or len(strides) != 2:
                raise ValueError(
                    "subsampler 'conv2d' takes one channel count and two time strides, got subsampler_channels="
                    f"{list(channels)}, subsampler_strides={list(strides)}"
                )
            if self.n_mels % 4:
                raise ValueError(f"subsampler 'conv2d' n_mels must divide by 4, not {self.n_mels}")

    # ------------------------------------------------------------------ derived numbers
    @property
    def frame_kernel(self) -> tuple[int, ...]:
        """Kernels of the conv stack whose length formula gives this encoder's frame count: ``conv_kernel`` for
        the waveform front end. For ``frontend="mel"``: a centred STFT with its last frame dropped gives
        ``N // mel_hop`` frames, a conv of kernel = stride = ``mel_hop``; a ConvNeXt resampling conv is
        (kernel 2, its stride); a 3x3 conv with padding 1 and stride s maps ``T -> (T - 1) // s + 1``, a
        conv of kernel 1. Teachers and the pretraining objective align targets on this grid."""
        return self._frame_grid()[0]

    @property
    def frame_stride(self) -> tuple[int, ...]:
        """Strides of the frame grid (see :attr:`frame_kernel`); ``conv_stride`` for the waveform front end."""
        return self._frame_grid()[1]

    def _frame_grid(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if self.frontend == "conv":
            return self.conv_kernel, self.conv_stride
        kernel, stride = [self.mel_hop], [self.mel_hop]
        if self.subsampler == "convnext":
            c_in = self.n_mels
            for c, s in zip(self.subsampler_channels, self.subsampler_strides):
                if c != c_in or s != 1:  # a stage that changes channels or rate starts with a resampling conv
                    kernel.append(2)
                    stride.append(s)
                c_in = c
        else:
            for s in self.subsampler_strides:
                kernel.append(1)
                stride.append(s)
        return tuple(kernel), tuple(stride)

    @property
    def hop_length(self) -> int:
        """Samples between consecutive output frames (320 for MERT-v1, 960 for MERT-v2 and MuQ)."""
        return math.prod(self.frame_stride)

    @property
    def receptive_field(self) -> int:
        """Samples spanned by one frame of the frame grid (400 for MERT-v1, 960 for MERT-v2, 240 for MuQ); for the
        waveform front end also the shortest valid input (see :attr:`min_samples`)."""
        return receptive_field(self.frame_kernel, self.frame_stride)

    @property
    def min_samples(self) -> int:
        """Shortest input that gives one frame: the receptive field, and for the mel front end also more than
        ``n_fft // 2`` samples (the centred STFT reflects that many at each edge): 1025 for MERT-v2 and MuQ."""
        if self.frontend == "conv":
            return self.receptive_field
        return max(self.receptive_field, self.n_fft // 2 + 1)

    @property
    def frame_rate(self) -> float:
        """Output frames per second (75.0 for MERT-v1, 25.0 for MERT-v2 and MuQ)."""
        return self.sample_rate / self.hop_length

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_hidden_states(self) -> int:
        """Entries of ``EncoderOutput.hidden_states``: the first block's input plus one per layer."""
        return self.num_layers + 1

    def frame_lengths(self, num_samples: torch.Tensor | int) -> torch.Tensor | int:
        """Frames produced from ``num_samples`` samples, applying each conv's length formula of the frame grid.

        For MERT-v1 this equals ``floor((N - 400) / 320) + 1`` for ``N >= 400`` (MERT-v1 architecture); for MERT-v2
        ``N // 960`` and for MuQ ``ceil((N // 240) / 4)``, for ``N >= 1025``. Shorter inputs give 0 (the grid's
        count) and are refused by the encoder below :attr:`min_samples`.
        """
        return frame_lengths(num_samples, self.frame_kernel, self.frame_stride)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in _INT_TUPLES:
            d[k] = list(d[k])
        return d

    def to_json(self) -> str:
        return json.dumps({"model_type": CONFIG_FORMAT, **self.to_dict()}, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderConfig:
        """Build from a mapping, rejecting unknown keys so typos in configs fail loudly. ``model_type`` and the
        run-time keys of :data:`RUNTIME_MODEL_KEYS` (``compile``, ...) are not architecture and are dropped.

        Raises:
            ValueError: ``d`` is not a mapping, has unknown keys, or a value of the wrong type or range.
        """
        if not isinstance(d, dict):
            raise ValueError(f"an encoder config must be a JSON object of fields, got {type(d).__name__} {d!r:.60}")
        d = {k: v for k, v in d.items() if k != "model_type" and k not in RUNTIME_MODEL_KEYS}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown EncoderConfig field(s) {unknown}; known fields: {sorted(known)}")
        try:
            return cls(**d)
        except TypeError as e:  # e.g. a number where a list belongs, or a comparison with a string
            raise ValueError(f"invalid encoder config: {e}") from None

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> EncoderConfig:
        """A named preset (``tiny``, ``95m``, ``330m``, ``mert_v2``, ``muq_large``, ``conformer_tiny``,
        ``conformer_small``) with optional field overrides."""
        key = name.lower()
        if key not in PRESETS:
            key = key.removeprefix("mert-v1-").removeprefix("mert_")
        if key not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[key], **overrides)

    def replace(self, **changes: Any) -> EncoderConfig:
        return dataclasses.replace(self, **changes)


def receptive_field(
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2), conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
) -> int:
    """Input samples one output frame of a conv stack sees (400 for the MERT-v1 front end, the defaults)."""
    rf = 1
    for k, s in zip(reversed(tuple(conv_kernel)), reversed(tuple(conv_stride))):
        rf = (rf - 1) * s + k
    return rf


def frame_lengths(
    num_samples: torch.Tensor | int,
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2),
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2),
) -> torch.Tensor | int:
    """Output frames for ``num_samples`` input samples (int or integer tensor of any shape).

    Defaults are the MERT-v1 front end: 120000 samples (5 s at 24 kHz) -> 374 frames, 720000 -> 2249.
    """
    if isinstance(num_samples, torch.Tensor):
        n = num_samples.long()
        for k, s in zip(conv_kernel, conv_stride):
            n = torch.div(n - k, s, rounding_mode="floor") + 1
        return n.clamp(min=0)
    n = int(num_samples)
    for k, s in zip(conv_kernel, conv_stride):
        n = (n - k) // s + 1
    return max(n, 0)


# Upper bounds for sizes read from checkpoints (a hostile config.json must not allocate terabytes); each is
# far beyond any published MERT-style model.
_LIMITS = {
    "hidden_size": 16384,
    "num_layers": 256,
    "num_heads": 512,
    "ffn_size": 131072,
    "pos_conv_kernel": 4096,
    "pos_conv_groups": 16384,
    "sample_rate": 768000,
    "conv_dim": 16384,
    "conv_kernel": 4096,
    "conv_stride": 4096,
}

# The 330M and tiny presets train without any dropout or LayerDrop.
_NO_DROPOUT = dict(
    hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0
)

PRESETS: dict[str, EncoderConfig] = {
    # Spec 1, MERT-v1-95M: post-LN, GroupNorm front end, dropouts on, LayerDrop 0.05, grad mult 0.1.
    "95m": EncoderConfig(name="95m"),
    # Spec 1, MERT-v1-330M: pre-LN, one GroupNorm after conv 0 like the 95M (its config.json has
    # feat_extract_norm "group"), no dropout, grad mult 1.0.
    "330m": EncoderConfig(
        name="330m",
        hidden_size=1024,
        num_layers=24,
        num_heads=16,
        ffn_size=4096,
        pre_ln=True,
        **_NO_DROPOUT,
        frontend_grad_mult=1.0,
    ),
    # Tests and CPU demos: real 320x hop (so frame arithmetic is MERT-v1's), width 32, 2 layers.
    "tiny": EncoderConfig(
        name="tiny",
        conv_dim=(32,) * 7,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        ffn_size=64,
        pos_conv_kernel=16,
        pos_conv_groups=4,
        **_NO_DROPOUT,
        frontend_grad_mult=1.0,
    ),
}

# The spectrogram + Conformer family (docs/architecture.md): 24 kHz, 2048-point STFT every 240 samples,
# 128 mel bins, subsampled 4x to 25 Hz.
_MEL_CONFORMER = dict(frontend="mel", block="conformer", frontend_grad_mult=1.0, **_NO_DROPOUT)

# MuQ's stored normalisation: one mean and standard deviation of the dB mel spectrogram over its training set
# (the `stat` entry of its config, melspec_2048_mean / melspec_2048_std); fresh models of the family start with it.
MUQ_MEL_MEAN, MUQ_MEL_STD = 6.768444971712967, 18.417922652295623

PRESETS.update({
    # MERT-v2 (m-a-p/MERT-v2-30s, -FullSong): ConvNeXt-V2 subsampler, 24 conformer blocks, RoPE on q/k, no final
    # LayerNorm beyond each block's; 876 tensors, 632,295,808 parameters (the published files hold no mask
    # embedding).
    "mert_v2": EncoderConfig(
        name="mert_v2", **_MEL_CONFORMER, subsampler="convnext", subsampler_channels=(128, 512, 1024),
        subsampler_depths=(3, 4, 5), subsampler_strides=(1, 2, 2), subsampler_eps=1e-6, hidden_size=1024,
        num_layers=24, num_heads=16, ffn_size=4096, conv_module_kernel=31, conv_module_norm="layer",
        activation="gelu", rope_on="qk", final_norm=False, mask_embedding=False,
    ),
    # MuQ (OpenMuQ/MuQ-large-msd-iter): residual 2-D conv subsampler, transformers' Wav2Vec2Conformer encoder
    # (12 blocks, swish, BatchNorm in the conv module, rotary on the block input, final LayerNorm).
    "muq_large": EncoderConfig(
        name="muq_large", **_MEL_CONFORMER, subsampler="conv2d", subsampler_channels=(512,),
        subsampler_strides=(2, 2), hidden_size=1024, num_layers=12, num_heads=16, ffn_size=4096,
        conv_module_kernel=31, conv_module_norm="batch", activation="swish", rope_on="input", final_norm=True,
        mask_embedding=False,
    ),
    # Tests: the MERT-v2 layout at width 32, 2 layers (25 Hz, N // 960 frames like MERT-v2).
    "conformer_tiny": EncoderConfig(
        name="conformer_tiny", **_MEL_CONFORMER, subsampler_channels=(32, 32), subsampler_depths=(1, 1),
        subsampler_strides=(2, 2), hidden_size=32, num_layers=2, num_heads=4, ffn_size=64, conv_module_kernel=15,
    ),
    # CPU pretraining: the MERT-v2 layout scaled down (benchmarks/conformer.py --small measures it against the
    # `small` waveform model).
    "conformer_small": EncoderConfig(
        name="conformer_small", **_MEL_CONFORMER, subsampler_channels=(64, 128), subsampler_depths=(1, 1),
        subsampler_strides=(2, 2), hidden_size=128, num_layers=4, num_heads=4, ffn_size=256, conv_module_kernel=7,
    ),
})  # fmt: skip

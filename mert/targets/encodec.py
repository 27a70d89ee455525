"""MERT-v1's acoustic teacher: EnCodec 24 kHz residual-VQ codes, MERT-v1 targets and loss.

Shape legend: ``b`` batch, ``l`` samples, ``t`` frames (75 Hz), ``k`` codebooks.

At 6 kbps EnCodec uses 8 codebooks of 1024 codes at 75 Hz (0.75 kbps each). The published weights are a
registered download (``mert download encodec-24khz``, pinned by sha256 and cached like model weights); offline,
cache them first or pass ``weights=PATH`` to a copy of ``encodec_24khz-d7cc33bc.th``. A randomly
initialised EnCodec has empty codebooks (k-means-initialised on the first training batch, which never
happens here) and gives the same code everywhere, so such weights are refused at load and constant codes are
refused at run time.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import Tensor

from mert.targets._common import check_hop, empty_targets, frontend_settings
from mert.targets.base import Teacher

__all__ = ["EncodecTargets", "ENCODEC_24KHZ_URL", "ENCODEC_24KHZ_FILE", "published_weights"]

ENCODEC_24KHZ_FILE = "encodec_24khz-d7cc33bc.th"
ENCODEC_24KHZ_URL = f"https://dl.fbaipublicfiles.com/encodec/v0/{ENCODEC_24KHZ_FILE}"
_SAMPLE_RATE = 24000
_HOP = 320  # 24000 / 75: the product of SEANet's ratios (8, 5, 4, 2)
# torch.hub names weights ``name-<first hex digits of sha256>.ext``; the digest check follows that convention.
_HASH_IN_NAME = re.compile(r"^.+-(?P<prefix>[0-9a-f]{8,64})\.[A-Za-z0-9]+$")


def _check_hash_prefix(path: Path) -> None:
    """If the file name carries a torch.hub hash prefix, the file's sha256 must start with it."""
    match = _HASH_IN_NAME.match(path.name)
    if match is None:
        return
    expected = match["prefix"]
    from mert.download import sha256_file

    actual = sha256_file(path)
    if not actual.startswith(expected):
        raise ValueError(
            f"EnCodec weights {str(path)!r} are corrupt or not the named file: the name says sha256 starts with "
            f"{expected!r}, the file's sha256 starts with {actual[: len(expected)]!r}; download it again from "
            f"{ENCODEC_24KHZ_URL}"
        )


def published_weights() -> Path:
    """The published EnCodec 24 kHz weights as a local file: from mert's download cache (``mert download
    encodec-24khz``), else torch.hub's cache, else downloaded into mert's cache (sha256-checked, resumable, locked).

    Raises:
        FileNotFoundError: offline (``MERT_OFFLINE``/``HF_HUB_OFFLINE``) and in neither cache; the message says
            how to fetch it and which config key takes a path.
        OSError: the download failed.
        ValueError: a cached or downloaded file does not match the registered digest.
    """
    from mert.download import fetch_url, offline_mode, url_cache_path
    from mert.registry import ENCODEC_24KHZ, lookup_checkpoint

    entry = lookup_checkpoint(ENCODEC_24KHZ)
    fetch = dict(cache_dir=None, sha256=entry.sha256, label=ENCODEC_24KHZ, what="the EnCodec 24 kHz weights")
    if not url_cache_path(entry.source).is_file():
        hub = Path(torch.hub.get_dir()) / "checkpoints" / ENCODEC_24KHZ_FILE
        if hub.is_file():  # fetched by the encodec package before: the name's hash prefix is checked at load
            return hub
    advice = (
        f"on a machine with internet access run `mert download {ENCODEC_24KHZ} --cache-dir DIR`, copy DIR here and "
        f"set MERT_CACHE to it; or set targets.code_teacher.weights=/path/to/{ENCODEC_24KHZ_FILE} ({entry.source})"
    )
    try:
        return fetch_url(entry.source, local_files_only=offline_mode(), **fetch)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the EnCodec 24 kHz teacher weights are not cached and this machine is offline (MERT_OFFLINE or "
            f"HF_HUB_OFFLINE): {advice}"
        ) from None
    except OSError as e:
        raise OSError(f"could not download the EnCodec 24 kHz teacher weights ({e}); {advice}") from None


class EncodecTargets(Teacher):
    """EnCodec 24 kHz codes: ``(b, l) -> (b, t, k)`` int64 in ``[0, 1024)``, ``t = frame_lengths(l)``.

    EnCodec itself gives ``ceil(l / 320)`` causal frames; the encoder gives ``floor((l - 400) / 320) + 1``,
    never more, and the surplus at the end is dropped. Both grids start at sample 0 with a 320-sample hop, so
    frame ``i`` of each describes the same stretch of audio (EnCodec is causal: its frame ``i`` has seen only
    samples before ``320 * (i + 1)``).

    Args:
        weights: ``None`` for the published checkpoint (:func:`published_weights`: mert's download cache, then
            torch.hub's, else a download), or a path to a state dict such as ``encodec_24khz-d7cc33bc.th``
            (or a folder holding that file). Loaded with ``torch.load(weights_only=True)``.
        bandwidth: kbps, one of 1.5, 3, 6, 12, 24 -> 2, 4, 8, 16, 32 codebooks. MERT uses 6 (MERT-v1 targets and loss).
        sample_rate: must be 24000 (the model's rate); resample audio before it reaches the teacher.
        check_codes: raise if a codebook gives one constant code over a batch of non-silent audio.
        conv_kernel, conv_stride: the encoder front end (its frame grid) whose frame count the targets match: a
            hop of 320, or a multiple ``m * 320`` (960 for the 25 Hz mel family), which keeps every ``m``-th
            EnCodec frame (MuQ's 25 Hz EnCodec targets).

    Attributes:
        kind: ``"codes"``.
        num_codebooks: ``k`` (8 at 6 kbps).
        codebook_size: 1024.
        codec: the ``encodec.EncodecModel`` (encoder and quantiser; the decoder is dropped).

    Raises:
        OSError: ``weights=None`` and the checkpoint cannot be downloaded (FileNotFoundError when offline).
        FileNotFoundError: ``weights`` does not exist.
        ValueError: a hash-prefixed file name that disagrees with the file's sha256, a file that is not an
            EnCodec 24 kHz state dict, or weights whose codebooks are empty.
    """

    whole_file = True  # causal with an LSTM: cached shards encode whole files and crop, as the original
    kind = "codes"

    def __init__(
        self,
        *,
        weights: str | os.PathLike | None = None,
        bandwidth: float = 6.0,
        sample_rate: int = _SAMPLE_RATE,
        check_codes: bool = True,
        conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2),
        conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2),
    ):
        super().__init__(sample_rate=sample_rate, conv_kernel=conv_kernel, conv_stride=conv_stride)
        if sample_rate != _SAMPLE_RATE:
            raise ValueError(
                f"EncodecTargets uses the 24 kHz EnCodec model and needs sample_rate={_SAMPLE_RATE}, got "
                f"{sample_rate}; resample the audio to 24 kHz"
            )
        hop = math.prod(self.conv_stride)
        # A coarser encoder grid whose hop is a multiple of 320 samples (MERT-v2 and MuQ: 960, 25 Hz) takes every
        # m-th EnCodec frame, as MuQ does (frame i of the encoder starts where EnCodec frame m*i starts).
        self.frame_step = hop // _HOP if hop % _HOP == 0 and hop >= _HOP else 1
        if self.frame_step == 1:
            check_hop(self, _HOP, "EnCodec 24 kHz")
        self.weights = None if weights is None else Path(weights).expanduser().resolve()
        if self.weights is not None and self.weights.is_dir():
            self.weights = self.weights / ENCODEC_24KHZ_FILE
        self.bandwidth = float(bandwidth)
        self.check_codes = bool(check_codes)

        codec = self._build()
        if self.bandwidth not in codec.target_bandwidths:
            raise ValueError(f"bandwidth must be one of {codec.target_bandwidths} kbps, got {bandwidth}")
        codec.set_target_bandwidth(self.bandwidth)
        self.num_codebooks = codec.quantizer.get_num_quantizers_for_bandwidth(codec.frame_rate, self.bandwidth)
        self.codebook_size = int(codec.quantizer.bins)
        # Targets only need the encoder and the quantiser; the decoder would double the memory on the GPU.
        del codec.decoder
        self.codec = codec
        self._check_codebooks()
        self.freeze()

    def _build(self):
        from encodec import EncodecModel  # lazy: `import mert.targets` stays light

        with warnings.catch_warnings():
            # encodec builds its convs with the deprecated torch.nn.utils.weight_norm; nothing to act on.
            warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
            codec = EncodecModel.encodec_model_24khz(pretrained=False)
        path = self.weights if self.weights is not None else published_weights()
        if not path.is_file():
            raise FileNotFoundError(
                f"EnCodec weights {str(path)!r} do not exist; download {ENCODEC_24KHZ_URL} and pass its path"
            )
        _check_hash_prefix(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # not a torch file, or a pickle that carries code
            from mert.models.checkpoint import load_error_reason

            raise ValueError(
                f"could not read EnCodec weights {str(path)!r} as a state dict: {load_error_reason(e)}"
            ) from None
        if not isinstance(state, dict):
            raise ValueError(f"EnCodec weights {str(path)!r} hold a {type(state).__name__}, not a state dict")
        try:
            codec.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"{str(path)!r} is not an EnCodec 24 kHz state dict: {e}") from None
        return codec.eval()

    def _source(self) -> str:
        return f"weights {str(self.weights)!r}" if self.weights is not None else "the published weights"

    def _check_codebooks(self) -> None:
        """Refuse weights whose used codebooks are empty: they would map every frame to code 0."""
        empty = []
        for i, layer in enumerate(self.codec.quantizer.vq.layers[: self.num_codebooks]):
            book = layer._codebook
            if not bool(book.inited.all()) or bool((book.embed == book.embed[:1]).all()):
                empty.append(i)
        if empty:
            raise ValueError(
                f"EnCodec {self._source()}: codebook(s) {empty} are empty (never initialised; every code vector "
                "is the same), so every frame would get the same code and the model would train on constant "
                "targets. This is the state dict of a randomly initialised EnCodec, not a trained one; use the "
                f"published {ENCODEC_24KHZ_FILE} ({ENCODEC_24KHZ_URL}), or an offline teacher "
                "(RandomProjectionTargets, KMeansTargets)"
            )

    def compute(self, wav: Tensor) -> Tensor:
        """``(b, l)`` -> ``(b, ceil(ceil(l / 320) / m), k)`` int64 codes (``m = frame_step``, 1 at 75 Hz)."""
        if self.num_frames(wav.shape[1]) == 0:
            return empty_targets(wav, self.num_codebooks, dtype=torch.int64)
        dtype = next(self.codec.parameters()).dtype  # follows the teacher if someone casts it
        x = rearrange(wav.to(dtype), "b l -> b 1 l")  # EnCodec takes (b, channels, l); the 24 kHz model is mono
        ((codes, _scale),) = self.codec.encode(x)  # one segment: the 24 kHz model does not chunk
        codes = rearrange(codes, "b k t -> b t k")[:, :: self.frame_step]
        if self.check_codes:
            self._check_not_constant(wav, codes)
        return codes.long()

    def _check_not_constant(self, wav: Tensor, codes: Tensor) -> None:
        """Raise if a codebook gives one code over a batch of non-silent, changing audio.

        Needs at least 16 frames and audio whose samples vary (not silence, not a DC offset): a trained
        codebook never gives a single code for such a batch; an empty one always does.
        """
        t = self.num_frames(wav.shape[1])
        if codes.shape[0] * t < 16 or float(wav.std(dim=1).max()) < 1e-4:
            return
        used = codes[:, :t]  # (b, t, k): the frames the objective will see
        constant = (used == used[:1, :1]).flatten(0, 1).all(dim=0)  # (k,)
        if bool(constant.any()):
            bad = constant.nonzero().flatten().tolist()
            raise ValueError(
                f"EnCodec {self._source()}: codebook(s) {bad} gave one constant code for a whole batch of "
                f"non-silent audio ({codes.shape[0]} clips x {t} frames); the weights are not a trained EnCodec "
                f"(empty codebooks). Use the published {ENCODEC_24KHZ_FILE}, or pass check_codes=False if this "
                "batch really is that uniform"
            )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, {self._source()}, bandwidth={self.bandwidth}, "
            f"num_codebooks={self.num_codebooks}, codebook_size={self.codebook_size}"
        )

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "weights": None if self.weights is None else str(self.weights),
            "bandwidth": self.bandwidth,
            "check_codes": self.check_codes,
            **frontend_settings(self),
        }

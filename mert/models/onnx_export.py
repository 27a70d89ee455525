"""Export an :class:`~mert.models.encoder.Encoder` to ONNX, for onnxruntime and other runtimes.

Shape legend: ``b`` batch, ``l`` samples at the encoder's sample rate, ``t`` frames, ``d`` width.

The graph takes ``wav (b, l)`` float32 at the encoder's sample rate (no resampling inside: resample first)
and ``lengths (b,)`` int64 valid samples per item, with batch and length dynamic, and returns the chosen hidden
states, each ``(b, t, d)`` with padded frames zeroed, named ``hidden_state_<i>``, then ``frames (b,)``, the valid
frames per item. It is the reference formulation of the encoder (plain ``F.linear``, one front-end pass
over the whole clip), traced by torch's dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``, which
needs the ``onnxscript`` package), so a clip gives the same numbers as in ``mert`` up to float rounding
(tested: <= 1e-4 with onnxruntime, for both layouts and lengths of several front-end tiles).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from mert.models.pooling import parse_layers

__all__ = ["export_onnx", "DEFAULT_OPSET", "MIN_OPSET"]

# ONNX opset written by default: 18 is what torch 2.9's dynamo exporter targets natively, and onnxruntime has
# supported it since 1.14.
DEFAULT_OPSET = 18
# The exporter cannot convert its graph down to older opsets (it says so in a log line and writes 18 anyway), so
# those are refused up front; newer ones are converted, and the written opset is checked either way.
MIN_OPSET = 18


class _OnnxEncoder(nn.Module):
    """The traced function: zero the padding, normalise if the model does, encode up to the deepest layer."""

    def __init__(self, encoder: nn.Module, layers: list[int]):
        super().__init__()
        self.encoder = encoder
        self.layers = layers

    def forward(self, wav: Tensor, lengths: Tensor) -> tuple[Tensor, ...]:
        enc = self.encoder
        valid = torch.arange(wav.shape[1], device=wav.device)[None, :] < lengths[:, None]
        wav = wav.masked_fill(~valid, 0.0)
        if enc.config.normalize_input:
            wav = enc._normalize(wav, lengths)
        out = enc._encode(wav, lengths, depth=max(self.layers))
        return (*[out.hidden_states[i] for i in self.layers], out.lengths)


def export_onnx(
    encoder: nn.Module,
    path: str | os.PathLike,
    *,
    layers: str | int | Sequence[int] | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
) -> Path:
    """Write ``encoder`` as an ONNX model to ``path``; returns the path.

    Args:
        encoder: a :class:`mert.Encoder` (not modified: a float32 CPU copy is traced).
        path: the ``.onnx`` file to write.
        layers: hidden states to output (:func:`mert.parse_layers` syntax, default all); the graph stops after
            the deepest one, so ``layers=7`` exports a 7-layer graph.
        opset: ONNX opset version, from :data:`MIN_OPSET` (18) to the newest the installed ``onnx`` knows.
        check: run the exported model with onnxruntime on a padded batch and compare with the encoder
            (raises ``RuntimeError`` if any output differs by more than 1e-4); skipped if onnxruntime is absent.
    Returns:
        ``path``. The model's metadata holds ``sample_rate``, ``frame_rate``, ``layers`` and ``mert_config``.
    Raises:
        ImportError: ``onnx``/``onnxscript`` are not installed (``pip install "mert[onnx]"``).
        ValueError: a spectrogram-family encoder (MERT-v2, MuQ), which this exporter does not trace.
        ValueError: an ``opset`` outside the range above (before any work).
        RuntimeError: the exporter wrote another opset than asked (nothing is written).
    """
    if encoder.config.frontend != "conv":
        raise ValueError(
            f"ONNX export covers the waveform front end (MERT-v1, HuBERT, music2vec); this encoder has "
            f"frontend={encoder.config.frontend!r} (the MERT-v2/MuQ family), whose per-clip STFT edge padding "
            "does not trace yet: use the mert format"
        )
    try:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter's translator)
    except ImportError as e:
        raise ImportError(f"ONNX export needs onnx and onnxscript: pip install 'mert[onnx]' ({e})") from None
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ValueError(
            f"opset {opset!r} cannot be written: this exporter writes ONNX opsets {MIN_OPSET} to {newest} (installed "
            f"onnx); onnxruntime reads opset {MIN_OPSET} since version 1.14"
        )
    idx = parse_layers(layers, encoder.config.num_hidden_states)
    enc = copy.deepcopy(encoder).to(device="cpu", dtype=torch.float32).eval().compile(False)  # traced eagerly
    # One front-end tile whatever the length: the tiling loop would otherwise be traced for the example's length.
    enc.frontend.tile_frames = 1 << 40
    for p in enc.parameters():
        p.requires_grad_(True)  # with autograd on, every op takes its plain (exportable) formulation
    module = _OnnxEncoder(enc, idx)
    sr = enc.config.sample_rate
    example = (torch.randn(2, 2 * sr) * 0.1, torch.tensor([2 * sr, 2 * sr - sr // 3]))
    dyn = torch.export.Dim.DYNAMIC
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [f"hidden_state_{i}" for i in idx] + ["frames"]
    with torch.enable_grad():
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            input_names=["wav", "lengths"],
            output_names=names,
            dynamic_shapes={"wav": {0: dyn, 1: dyn}, "lengths": {0: dyn}},
            opset_version=opset,
            verbose=False,
        )
    model = program.model_proto
    written = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:  # torch logs a failed conversion and goes on: never report success for the wrong opset
        raise RuntimeError(f"the ONNX exporter wrote opset {written}, not the requested {opset}; nothing was written")
    meta = {
        "sample_rate": str(sr),
        "frame_rate": str(enc.config.frame_rate),
        "layers": json.dumps(idx),
        "mert_config": json.dumps(enc.config.to_dict()),
        "inputs": "wav (b, l) float32 at sample_rate; lengths (b,) int64 valid samples",
    }
    for k, v in meta.items():
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, k: v})
    from mert.fileio import atomic_path

    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    if check:
        _check(path, module, names)
    return path


def _check(path: Path, module: _OnnxEncoder, names: list[str]) -> None:
    """Compare onnxruntime's outputs with the encoder's on a padded batch longer than one front-end tile."""
    try:
        import onnxruntime as ort
    except ImportError:
        return
    sr = module.encoder.config.sample_rate
    gen = torch.Generator().manual_seed(0)
    n = 5 * sr  # more than ConvFrontEnd.tile_frames frames: the export must not have fixed the tile count
    wav = torch.randn(2, n, generator=gen) * 0.1
    lengths = torch.tensor([n, n - sr])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"wav": wav.numpy(), "lengths": lengths.numpy()})
    with torch.no_grad():
        ref = module(wav, lengths)
    for name, a, b in zip(names, got, ref):
        diff = float((torch.from_numpy(a) - b.float()).abs().max()) if a.shape == tuple(b.shape) else float("inf")
        if not diff <= 1e-4:
            raise RuntimeError(f"the ONNX export of {path} disagrees with the encoder on {name}: max diff {diff:.2e}")

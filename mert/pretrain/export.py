"""`mert export`: turn a training run (or one of its checkpoints) into a release folder.

Reads the Lightning checkpoint with ``torch.load(weights_only=True)`` (it holds only tensors and plain
containers), keeps the encoder's weights (heads and teachers are training-only), and writes what
``Encoder.from_pretrained`` loads: ``config.json``, ``model.safetensors``, and ``meta.json`` with the teacher
settings and a training summary.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from mert.models.checkpoint import load_checkpoint, load_error_reason, save_checkpoint, save_hf_checkpoint
from mert.models.config import EncoderConfig

__all__ = ["export_run", "find_checkpoint"]

ENCODER_PREFIX = "objective.encoder."


def find_checkpoint(run_or_ckpt: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory's ``checkpoints/last.ckpt``."""
    p = Path(run_or_ckpt).expanduser()
    if p.is_file():
        return p
    for candidate in (p / "checkpoints" / "last.ckpt", p / "last.ckpt"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{str(p)!r} is neither a checkpoint file nor a run directory with checkpoints/last.ckpt")


def export_run(
    run_or_ckpt: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    meta: dict[str, Any] | None = None,
    format: str = "mert",
    layers: str | None = None,
    opset: int | None = None,
) -> Path:
    """Write a release folder for the encoder trained in ``run_or_ckpt``; returns the folder.

    ``run_or_ckpt`` is a run directory, a Lightning ``.ckpt``, or an existing release folder (any layout
    ``Encoder.from_pretrained`` reads), e.g. to convert an export to ``format="hf"`` (transformers' HuBERT layout)
    or ``format="onnx"`` (``OUT/model.onnx`` with the hidden states ``layers``, default all, and ``meta.json``;
    see :func:`mert.models.onnx_export.export_onnx`).
    """
    if format not in ("mert", "hf", "onnx"):
        raise ValueError(f"format must be 'mert', 'hf' or 'onnx', got {format!r}")
    if format != "onnx" and (layers is not None or opset is not None):
        raise ValueError("layers and opset apply to format='onnx' only")

    def save(folder: str | os.PathLike, config: EncoderConfig, state: dict, meta: dict) -> Path:
        if format == "mert":
            return save_checkpoint(folder, config, state, meta)
        if format == "hf":
            return save_hf_checkpoint(folder, config, state, meta)
        from mert.models.encoder import Encoder
        from mert.models.onnx_export import DEFAULT_OPSET, export_onnx

        with torch.device("meta"):
            enc = Encoder(config)
        enc.load_state_dict(state, assign=True)
        folder = Path(folder).expanduser()
        export_onnx(enc, folder / "model.onnx", layers=layers, opset=DEFAULT_OPSET if opset is None else opset)
        (folder / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
        return folder

    src = Path(run_or_ckpt).expanduser()
    if src.is_dir() and (src / "config.json").is_file() and not (src / "checkpoints").is_dir():
        config, state, old_meta = load_checkpoint(src)  # a release folder: convert it
        return save(out_dir, config, state, {**old_meta, "converted_from": str(src), **(meta or {})})
    ckpt_path = find_checkpoint(run_or_ckpt)
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, or a checkpoint that is not ours
        raise ValueError(f"cannot read checkpoint {str(ckpt_path)!r}: {load_error_reason(e)}") from None
    info = ckpt.get("mert") if isinstance(ckpt, dict) else None
    if not isinstance(info, dict) or "encoder_config" not in info or not isinstance(ckpt.get("state_dict"), dict):
        what = "no 'mert' section" if isinstance(ckpt, dict) else f"it holds a {type(ckpt).__name__}, not a dict"
        raise ValueError(f"{str(ckpt_path)!r} is not a mert pretraining checkpoint ({what})")
    try:
        config = EncoderConfig.from_dict(info["encoder_config"])
    except ValueError as e:
        raise ValueError(f"{str(ckpt_path)!r}: its 'mert.encoder_config' is invalid: {e}") from None
    state = {k[len(ENCODER_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(ENCODER_PREFIX)}
    run = (ckpt.get("hyper_parameters") or {}).get("run", {})
    summary = {
        "checkpoint": str(ckpt_path),
        "global_step": int(ckpt.get("global_step", 0)),
        "micro_batches": info.get("micro_batches_seen"),
        "audio_hours": round(float(info.get("audio_seconds", 0.0)) / 3600, 4),
        "skipped_steps": info.get("skipped_steps"),
        "skipped_files": info.get("skipped_files"),
    }
    run_dir = ckpt_path.parent.parent
    if (run_dir / "summary.json").is_file():
        summary["final_loss"] = json.loads((run_dir / "summary.json").read_text()).get("final_loss")
    full_meta = {
        "training": summary,
        "teachers": info.get("teachers", {}),
        "objective": run.get("objective"),
        "data": run.get("data"),
        "experiment": run.get("name"),
        "trained_with": info.get("version"),
        **(meta or {}),
    }
    # Validate before writing: the weights must build the model they claim to be.
    from mert.models.checkpoint import check_keys

    check_keys(state, config, ckpt_path)
    return save(out_dir, config, state, full_meta)

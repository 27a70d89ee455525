"""`mert export`: turn a training run (or one of its checkpoints) into a release folder.

Reads the Lightning checkpoint with ``torch.load(weights_only=True)`` (it holds only tensors and plain
containers), keeps the encoder's weights (heads and teachers are training-only), and writes what
``Encoder.from_pretrained`` loads: ``config.json``, ``model.safetensors``, and ``meta.json`` with the teacher
settings and a training summary, plus a model card (``README.md``) and a licence notice (``LICENSE``,
:mod:`mert.pretrain.card`).

The release folder is built in a temporary sibling and swapped in whole (:func:`mert.fileio.atomic_dir`), so a
failed export leaves the previous folder as it was, and a replaced folder keeps no stale file. An existing folder
is replaced only when it holds this same model (equal weights digest) and nothing but export files, or with
``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from mert.fileio import UnsafeOutputError, atomic_dir, check_outputs, write_json_atomic, write_text_atomic
from mert.models.checkpoint import (
    load_checkpoint,
    load_error_reason,
    save_checkpoint,
    save_hf_checkpoint,
    weights_sha256,
)
from mert.models.config import EncoderConfig

__all__ = ["EXPORT_FILES", "check_export_target", "export_run", "find_checkpoint"]

# Every file an export writes, in any format: a folder holding anything else is not ours to replace.
EXPORT_FILES = frozenset(
    {
        "config.json",
        "model.safetensors",
        "meta.json",
        "README.md",
        "LICENSE",
        "preprocessor_config.json",
        "model.onnx",
        "model.onnx.data",
    }
)


def check_export_target(out: str | os.PathLike, digest: str, *, overwrite: bool = False) -> None:
    """Refuse to replace a folder that holds another model or files an export did not write.

    Raises:
        UnsafeOutputError: ``out`` is a file; or a non-empty folder (without ``overwrite``) holding files outside
            :data:`EXPORT_FILES` or weights whose digest (``meta.json``'s ``weights_sha256``) is not ``digest``.
    """
    out = Path(out)
    if out.is_symlink():
        raise UnsafeOutputError(f"{out} is a symlink to {out.resolve()}: export to the real folder instead")
    if not out.exists():
        return
    if not out.is_dir():
        raise UnsafeOutputError(f"{out} exists and is not a folder: choose another output folder")
    names = sorted(p.name for p in out.iterdir())
    if not names or overwrite:
        return
    foreign = [n for n in names if n not in EXPORT_FILES]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UnsafeOutputError(
            f"{out} already holds files an export does not write ({shown}): refusing to replace it; "
            "pass --overwrite to replace the whole folder, or choose another output folder"
        )
    try:
        old = json.loads((out / "meta.json").read_text(encoding="utf-8")).get("weights_sha256")
    except (OSError, ValueError, AttributeError):
        old = None
    if old != digest:
        which = f"weights {old[:12]}" if old else "weights of unknown digest"
        raise UnsafeOutputError(
            f"{out} already holds another model ({which}; this export's are {digest[:12]}): refusing to replace "
            "it; pass --overwrite to replace the whole folder, or choose another output folder"
        )


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
    overwrite: bool = False,
    licence: str | None = None,
    probe_table: str | None = None,
) -> Path:
    """Write a release folder for the encoder trained in ``run_or_ckpt``; returns the folder.

    ``run_or_ckpt`` is a run directory, a Lightning ``.ckpt``, or an existing release folder (any layout
    ``Encoder.from_pretrained`` reads), e.g. to convert an export to ``format="hf"`` (transformers' HuBERT layout)
    or ``format="onnx"`` (``OUT/model.onnx`` with the hidden states ``layers``, default all, and ``meta.json``;
    see :func:`mert.models.onnx_export.export_onnx`).

    Args:
        overwrite: replace an existing folder that holds another model or other files (whole: nothing stays).
        licence: the licence of weights trained from scratch; weights continued from ``init_from`` inherit its
            licence, and a different ``licence`` is refused.
        probe_table: Markdown probe results for the model card (``mert probe compare``'s table).
    Raises:
        UnsafeOutputError: ``out_dir`` holds another model or foreign files (see :func:`check_export_target`),
            or is the input.
        ValueError: a checkpoint that is not ours, a conflicting ``licence``.
        OSError: the output folder cannot be written (read-only, no space).
    """
    from mert.pretrain.card import UNSPECIFIED, inherited_licence, licence_notice, model_card
    from mert.version import __version__

    if format not in ("mert", "hf", "onnx"):
        raise ValueError(f"format must be 'mert', 'hf' or 'onnx', got {format!r}")
    if format != "onnx" and (layers is not None or opset is not None):
        raise ValueError("layers and opset apply to format='onnx' only")
    out = Path(out_dir).expanduser()
    src = Path(run_or_ckpt).expanduser()
    check_outputs([out], [src], what="the output folder")

    def save(folder: Path, config: EncoderConfig, state: dict, meta: dict) -> None:
        if format == "mert":
            save_checkpoint(folder, config, state, meta)
        elif format == "hf":
            save_hf_checkpoint(folder, config, state, meta)
        else:
            from mert.models.encoder import Encoder
            from mert.models.onnx_export import DEFAULT_OPSET, export_onnx

            with torch.device("meta"):
                enc = Encoder(config)
            enc.load_state_dict(state, assign=True)
            export_onnx(enc, folder / "model.onnx", layers=layers, opset=DEFAULT_OPSET if opset is None else opset)
            write_json_atomic(folder / "meta.json", {"mert_version": __version__, **meta})

    if src.is_dir() and (src / "config.json").is_file() and not (src / "checkpoints").is_dir():
        config, state, old_meta = load_checkpoint(src)  # a release folder: convert it
        full_meta = {**old_meta, "converted_from": str(src), **(meta or {})}
        base = old_meta.get("base_model")
        inherited = old_meta.get("licence")
        why = f"as recorded by the release folder {src}" if inherited else f"not recorded by {src}"
        inherited = inherited or "unknown"
    else:
        config, state, full_meta = _from_checkpoint(src, meta)
        base = full_meta.get("base_model")
        inherited, why = inherited_licence(base)
    if inherited in (None, UNSPECIFIED):
        chosen, why = (licence, "chosen by the owner of the training run") if licence else (UNSPECIFIED, why)
    elif licence and licence != inherited and inherited != "unknown":
        raise ValueError(
            f"--licence {licence} conflicts with the licence these weights inherit: {inherited} ({why}); "
            "a derivative keeps its base model's licence"
        )
    else:
        chosen = licence or inherited
        if licence and inherited == "unknown":
            why = f"stated by the exporter; {why}"
    digest = weights_sha256(state)
    full_meta = {**full_meta, "licence": chosen, "weights_sha256": digest}
    check_export_target(out, digest, overwrite=overwrite)
    card = model_card(
        {"mert_version": __version__, **full_meta},
        name=out.resolve().name,
        licence=chosen,
        licence_why=why,
        base=base,
        probe_markdown=probe_table,
        format=format,
    )
    with atomic_dir(out) as tmp:
        save(tmp, config, state, full_meta)
        write_text_atomic(tmp / "README.md", card)
        write_text_atomic(tmp / "LICENSE", licence_notice(chosen, why, base))
    return out


def _from_checkpoint(src: Path, meta: dict[str, Any] | None) -> tuple[EncoderConfig, dict, dict[str, Any]]:
    """Config, encoder weights and release metadata from a run folder or a Lightning checkpoint of ours."""
    ckpt_path = find_checkpoint(src)
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
        try:
            run_summary = json.loads((run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            run_summary = {}
        summary["final_loss"] = run_summary.get("final_loss")
        summary.update({k: run_summary[k] for k in ("global_batch_size", "seconds_per_sample") if k in run_summary})
        if run_summary.get("audio_hours_seen") is not None:
            summary["audio_hours_seen"] = run_summary["audio_hours_seen"]
        if "completed" in run_summary:
            summary["completed"] = run_summary["completed"]
        if isinstance(run_summary.get("validation"), dict):  # the latest held-out evaluation (data.valid)
            summary["validation"] = run_summary["validation"]
        if run_summary.get("completed") is False:
            # A stopped or crashed run exports fine (that is what its checkpoint is for), but not silently.
            warnings.warn(
                f"{run_dir} did not finish (summary.json: completed false, {run_summary.get('status', 'stopped')}); "
                f"exporting its checkpoint at step {summary['global_step']}",
                UserWarning,
                stacklevel=2,
            )
    full_meta = {
        "training": summary,
        "teachers": info.get("teachers", {}),
        "objective": run.get("objective"),
        "data": run.get("data"),
        "experiment": run.get("name"),
        "base_model": run.get("init_from"),
        "trained_with": info.get("version"),
        **(meta or {}),
    }
    # Validate before writing: the weights must build the model they claim to be.
    from mert.models.checkpoint import check_keys

    check_keys(state, config, ckpt_path)
    return config, state, full_meta

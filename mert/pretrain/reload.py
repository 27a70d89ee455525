"""Load the encoder of a pretraining run (its folder or a ``.ckpt``) or of a release, as an :class:`~mert.Encoder`.

Used by ``mert targets fit-kmeans --from-encoder`` to re-cluster a run's own features.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_run_encoder"]


def load_run_encoder(source: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """The encoder to re-cluster: a pretraining run folder, one of its ``.ckpt`` files, or anything
    :meth:`mert.Encoder.from_pretrained` loads (an exported folder, a hub id).

    Returns:
        ``(encoder in eval mode, identity)`` with identity ``{"source", "name", "global_step"}`` (the step is
        None for a release folder).
    Raises:
        ValueError: a checkpoint that is not a mert pretraining checkpoint.
    """
    from mert.models.config import EncoderConfig
    from mert.models.encoder import Encoder
    from mert.pretrain.export import ENCODER_PREFIX, find_checkpoint

    src = Path(source).expanduser()
    is_run = src.is_file() and src.suffix == ".ckpt" or (src.is_dir() and (src / "checkpoints").is_dir())
    if not is_run:
        enc = Encoder.from_pretrained(str(source))
        return enc.eval(), {"source": str(source), "name": enc.config.name, "global_step": None}
    ckpt_path = find_checkpoint(src)
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, or not ours
        raise ValueError(f"cannot read checkpoint {str(ckpt_path)!r}: {e}") from None
    info = ckpt.get("mert") if isinstance(ckpt, dict) else None
    if not isinstance(info, dict) or "encoder_config" not in info:
        raise ValueError(f"{str(ckpt_path)!r} is not a mert pretraining checkpoint (no 'mert' section)")
    config = EncoderConfig.from_dict(info["encoder_config"])
    state = {k[len(ENCODER_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(ENCODER_PREFIX)}
    enc = Encoder(config)
    enc.load_state_dict(state)
    identity = {"source": str(ckpt_path), "name": config.name, "global_step": int(ckpt.get("global_step", 0))}
    return enc.eval(), identity

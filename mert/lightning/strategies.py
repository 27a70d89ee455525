"""Strategy and checkpoint-IO builders that YAML cannot express directly."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import FSDPStrategy

from mert.fileio import atomic_path
from mert.models.modules import TransformerLayer

__all__ = ["AtomicCheckpointIO", "fsdp_strategy"]


def fsdp_strategy(*, sharding_strategy: str = "FULL_SHARD", activation_checkpointing: bool = False, **kwargs: Any):
    """FSDP with one unit per transformer layer (and optionally activation checkpointing of each layer)."""
    layers = {TransformerLayer}
    return FSDPStrategy(
        auto_wrap_policy=layers,
        activation_checkpointing_policy=layers if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        **kwargs,
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file and renames it into place.

    A run killed while saving (the usual way long jobs end) then leaves the previous ``last.ckpt`` intact
    instead of a truncated one that the next resume would choke on.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        # A random, exclusively created temp name (``.NAME.XXXX.tmp``, which the trainer's start-up clean-up
        # recognises): a link planted at a predictable name is never written through.
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)

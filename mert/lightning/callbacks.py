"""Callbacks: the final checkpoint, and a progress bar in optimiser steps (Lightning's counts micro-batches)."""

from __future__ import annotations

import sys
from typing import Any

import lightning.pytorch as pl

__all__ = ["FinalCheckpoint", "StepProgressBar"]


class StepProgressBar(pl.Callback):
    """``step 120/400000 | loss 7.91 | 1450 audio-s/s | ppl 41.2 | R2 0.38`` on rank 0, refreshed every
    ``refresh_steps`` steps. ``ppl`` (code-prediction perplexity) and ``R2`` (feature head) are the latest
    training-health values when the run logs them, and ``health!`` counts the health warnings so far."""

    def __init__(self, refresh_steps: int = 1):
        self.refresh_steps = max(1, refresh_steps)
        self._bar = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from mert.progress import progress_bar

        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        # A terminal gets a live bar; a log file a plain line every 30 s (mert.progress).
        self._bar = progress_bar(
            total=total, initial=trainer.global_step, desc="pretrain", unit="step", file=sys.stderr
        )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar = self._bar
        if bar is None or trainer.global_step == bar.n or trainer.global_step % self.refresh_steps:
            return
        metrics = trainer.callback_metrics
        post = {}
        if "train/loss" in metrics:
            post["loss"] = f"{float(metrics['train/loss']):.3f}"
        if "train/audio_sec_per_sec" in metrics:
            post["audio-s/s"] = f"{float(metrics['train/audio_sec_per_sec']):.0f}"
        if "health/code_pred_perplexity" in metrics:
            post["ppl"] = f"{float(metrics['health/code_pred_perplexity']):.1f}"
        if "health/feature_r2" in metrics:
            post["R2"] = f"{float(metrics['health/feature_r2']):.2f}"
        if float(metrics.get("health/warnings", 0)) > 0:
            post["health!"] = f"{float(metrics['health/warnings']):.0f}"
        bar.set_postfix(post, refresh=False)
        bar.update(trainer.global_step - bar.n)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class FinalCheckpoint(pl.Callback):
    """Saves ``path`` when training ends, whatever stopped it (max_steps, a time limit, early stopping).

    Periodic checkpoints can predate the last steps; export and reruns must start from where training
    stopped. It runs inside the training processes, so spawned DDP workers save their real state.
    """

    def __init__(self, path: str):
        self.path = path

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # full state: optimiser, scheduler, loops

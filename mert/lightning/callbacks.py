"""Callbacks: the final checkpoint, stopping on signals and saving on a clock or a crash (:class:`RunGuard`), and
a progress bar in optimiser steps (Lightning's counts micro-batches)."""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any

import lightning.pytorch as pl

__all__ = ["FinalCheckpoint", "RunGuard", "StepProgressBar", "install_stop_handlers", "stop_signal"]

# The signal that asked this process to stop (None: none yet), and when it came. Per process: spawned ranks
# install their own handlers.
_STOP: dict[str, Any] = {"signum": None, "at": 0.0, "pid": None}


def stop_signal() -> int | None:
    """The signal number (SIGINT, SIGTERM) that asked this process to stop, or None."""
    return _STOP["signum"]


def _on_signal(signum: int, frame: Any) -> None:
    if _STOP["pid"] != os.getpid():
        return  # a forked DataLoader worker inherited the handler: the training process decides
    first = _STOP["signum"]
    # A terminal's Ctrl-C reaches every process of the job at once, and a parent forwards SIGTERM to spawned
    # ranks: the same stop can arrive twice within a moment. A repeat later than that means "stop now".
    if first is not None and time.monotonic() - _STOP["at"] > 2.0:
        print(f"mert pretrain: second {signal.Signals(signum).name}: stopping now, without a checkpoint", flush=True)
        raise KeyboardInterrupt
    if first is None:
        _STOP.update(signum=signum, at=time.monotonic())
        name = signal.Signals(signum).name
        if not _STOP.get("quiet"):
            from mert.lightning.runfolder import say

            say(f"mert pretrain: {name} received; saving a checkpoint at the end of this step")
    if _STOP.get("forward"):
        import multiprocessing

        for child in multiprocessing.active_children():
            with contextlib.suppress(OSError):
                os.kill(child.pid, signum)


def install_stop_handlers(forward: bool = False, quiet: bool = False) -> dict[int, Any] | None:
    """Make SIGINT and SIGTERM ask for a stop at the next optimiser step (a second one, later, stops at once);
    ``forward`` also sends them to this process's children (spawned ranks); ``quiet`` does not announce the
    stop (another process does). Returns the previous handlers, or None when this is not the main thread
    (signals can only be handled there)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if _STOP["pid"] != os.getpid():
        _STOP.update(signum=None, at=0.0, pid=os.getpid())
    _STOP.update(forward=forward, quiet=quiet)
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if handler is signal.SIG_IGN:
            continue  # ignored by whoever started us (a background job ignores Ctrl-C): keep it so
        previous[signum] = handler
        signal.signal(signum, _on_signal)
    return previous


def reset_stop(previous: dict[int, Any] | None) -> None:
    """Put back the handlers :func:`install_stop_handlers` replaced and forget any stop request."""
    if previous:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    _STOP.update(signum=None, at=0.0, forward=False, quiet=False)


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


class RunGuard(pl.Callback):
    """Never lose more than a few minutes of training.

    - SIGINT / SIGTERM: the step in progress finishes, then training stops as if ``max_steps`` were reached, so
      :class:`FinalCheckpoint` saves an exact, resumable ``last.ckpt`` at that step (all ranks agree on the stop
      at the same step). ``mert pretrain`` then exits 130 / 143.
    - every ``every_minutes`` (rank 0's clock, shared with all ranks): ``last.ckpt`` at a step boundary.
    - an exception during training (single process): ``last.ckpt`` with the state of the last completed
      optimiser step, unless saving is what failed. Weights, optimiser and scheduler only change at a step,
      so rolling back the counters and loop progress of the unfinished step gives an exact resume point.
    """

    def __init__(self, path: str, every_minutes: float | None = None):
        self.path = path
        self.every_s = float(every_minutes) * 60 if every_minutes else None
        self._last_save = time.monotonic()
        self._previous: dict[int, Any] | None = None
        self._boundary: dict[str, Any] | None = None
        self._loops_override: dict[str, Any] | None = None
        self._seen_step = -1
        self.stopped_by: int | None = None
        self.crash_checkpoint: str | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After Lightning's own signal handlers (its SIGTERM handler would end the run at once, exit status 0).
        self._previous = install_stop_handlers(quiet=not trainer.is_global_zero)
        self._last_save = time.monotonic()
        self._snapshot(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        if self._previous:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
            self._previous = None

    def _snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        counters = getattr(pl_module, "counters", None)
        self._boundary = {
            "step": trainer.global_step,
            "counters": counters() if callable(counters) else None,
            "fit_loop": copy.deepcopy(trainer.fit_loop.state_dict()),
        }
        self._seen_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self._seen_step:
            return  # inside an accumulation: not a step boundary
        self._snapshot(trainer, pl_module)
        due = self.every_s is not None and time.monotonic() - self._last_save >= self.every_s
        stop = stop_signal() is not None
        # One reduction for both decisions, so every rank stops or saves at the same step.
        decision = int(stop) * 2 + int(due)
        if trainer.world_size > 1:
            import torch

            t = torch.tensor(decision, device=pl_module.device)
            decision = int(trainer.strategy.reduce(t, reduce_op="max"))
        if decision & 2:
            self.stopped_by = stop_signal() or signal.SIGTERM
            trainer.should_stop = True  # FinalCheckpoint saves last.ckpt when the loop ends
            trainer.limit_val_batches = 0  # Lightning validates before an early stop: not within a signal's grace
        elif decision & 1:
            trainer.save_checkpoint(self.path, weights_only=False)
            self._last_save = time.monotonic()

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self._loops_override is not None:
            checkpoint["loops"]["fit_loop"] = self._loops_override

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()
        if isinstance(exception, (KeyboardInterrupt, SystemExit)) or trainer.world_size > 1:
            return  # stop now; under DDP the other ranks may be blocked in a collective and cannot join a save
        frames = traceback.extract_tb(exception.__traceback__)
        if any(f.name in ("save_checkpoint", "_save_checkpoint") for f in frames):
            return  # saving is what failed: the previous checkpoint stays
        boundary = self._boundary
        if boundary is None or boundary["step"] == 0:
            return
        if (boundary["counters"] or {}).get("usable_samples", 1) == 0:
            return  # nothing was learnt from real audio: no checkpoint that `mert export` would release
        restore = getattr(pl_module, "restore_counters", None)
        if callable(restore) and boundary["counters"] is not None:
            restore(boundary["counters"])
        self._loops_override = boundary["fit_loop"]
        try:
            trainer.save_checkpoint(self.path, weights_only=False)
            self.crash_checkpoint = self.path
            from mert.lightning.runfolder import say

            say(
                f"mert pretrain: training failed during step {trainer.global_step + 1}; saved {self.path} at step "
                f"{boundary['step']}: fix the cause and rerun the same command to continue",
                err=True,
            )
        except Exception as e:  # report the original failure, not this one
            print(f"mert pretrain: could not save a checkpoint after the failure: {e}", file=sys.stderr, flush=True)
        finally:
            self._loops_override = None

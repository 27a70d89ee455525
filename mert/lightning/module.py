"""`PretrainModule`: a thin Lightning shell around `MERTObjective`.

Shape legend: ``b`` batch, ``l`` samples.

What lives here and nowhere else: the global masked-frame normalisation across ranks, skipping non-finite
steps, per-step seeding (so a resumed run draws the same dropout, masks and mixing as an uninterrupted one),
logging (training-health statistics on logging steps, with warnings), and what a checkpoint carries besides
tensors (the encoder config, teacher settings, counters).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from mert.pretrain.health import HealthMonitor, TrainingHealthWarning
from mert.pretrain.objective import MERTObjective

__all__ = ["PretrainModule", "linear_warmup_decay"]

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


def linear_warmup_decay(optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int):
    """LR multiplier rising linearly from 0 to 1 over ``warmup_steps``, then falling linearly to 0 at
    ``total_steps`` (MERT-v1 training hyper-parameters: 32k warm-up, 0 at 400k)."""
    if total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"need 0 <= warmup_steps <= total_steps and total_steps > 0, got {warmup_steps}, {total_steps}"
        )

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _mix(*values: int) -> int:
    """A 63-bit seed from several integers (stable across processes, unlike hash())."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def frontend_parameters(encoder: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The learned front end that ``frontend_lr_mult`` slows: the waveform conv stack (MERT-v1's family), or the
    subsampler after the mel spectrogram (the mel + Conformer family: the spectrogram itself has no weights)."""
    parts = [encoder.frontend] + ([encoder.subsampler] if hasattr(encoder, "subsampler") else [])
    return [p for part in parts for p in part.parameters()]


class PretrainModule(pl.LightningModule):
    """Lightning wrapper of the MERT objective.

    Args:
        objective: the :class:`~mert.pretrain.MERTObjective` (encoder, heads, frozen teachers).
        optimizer: builds the optimiser from the trainable parameters (teachers are never included).
        scheduler: builds a per-step LR scheduler from the optimiser, or None.
        seed: base of every per-step and per-sample seed.
        frontend_lr_mult: learning-rate multiplier of the learned front end's parameters (their own optimiser
            group; :func:`frontend_parameters`: the conv stack, or the mel family's subsampler). MERT-v1-95M
            slows its front end with a gradient multiplier of 0.1, but Adam normalises gradients by their running
            RMS, so a scaled gradient gives the same update (up to eps): only a lower learning rate slows Adam.
            Small recipes use it to keep the front end a broad filterbank
            instead of rewriting it for a small corpus within minutes.
        run_config: the resolved run configuration (plain containers), saved as hyper-parameters.
    """

    def __init__(
        self,
        objective: MERTObjective,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        *,
        seed: int = 0,
        frontend_lr_mult: float = 1.0,
        run_config: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.objective = objective
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.seed = seed
        if frontend_lr_mult < 0:
            raise ValueError(f"frontend_lr_mult must be >= 0, got {frontend_lr_mult}")
        self.frontend_lr_mult = frontend_lr_mult
        self.save_hyperparameters({"run": run_config or {}})
        self.micro_batches_seen = 0
        self.samples_seen = 0  # global stream positions consumed (all ranks): where a resume restarts
        self.skipped_steps = 0
        self.skipped_files = 0
        self.usable_samples = 0  # samples that reached the objective, all ranks
        self.audio_seconds = 0.0
        self._final: dict[str, Any] | None = None  # restore_summary: counters of a run trained elsewhere (spawn)
        self._t_start: float | None = None
        self.health = HealthMonitor()
        self._health_step: int | None = None  # the optimiser step whose statistics are held in _health_logs
        self._health_logs: dict[str, Tensor] = {}
        self.data_identity: dict[str, Any] | None = None  # what the run trains on (saved; a resume compares it)
        self.reapply_optimizer = False  # a resume allowed to change optim.* / scheduler.*: apply them after loading
        self._configured_groups: list[dict[str, Any]] = []
        self._val_sums: dict[str, Tensor] = {}  # this rank's validation sums (on_validation_epoch_start resets them)
        self._rng_states: tuple[Any, ...] | None = None  # the global RNGs as validation found them
        self.last_validation: dict[str, float] | None = None  # the latest evaluation's metrics and its "step"

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        wav, lengths = batch["wav"], batch["lengths"]
        positions = batch["position"]
        self.skipped_files += int(batch.get("n_skipped", 0))
        world = self.trainer.world_size
        self.samples_seen += self.trainer.datamodule.micro_batch_size * world if self.trainer.datamodule else 0
        collect = self._collect_stats_now()
        self._check_usable_audio(wav.shape[0])
        if wav.shape[0] == 0:
            # Every file of this micro-batch was unreadable. A zero output tied to all parameters keeps this rank
            # making the same collective calls (reductions below, gradient all-reduce) as the others.
            out = self.objective.empty_output(self.device, collect_stats=collect)
        else:
            # Seeds from the samples' global positions: dropout, masks and mixing repeat exactly after a resume.
            first = int(positions[0])
            torch.manual_seed(_mix(self.seed, 1, first))
            out = self.objective(
                wav,
                lengths,
                targets=batch.get("targets"),
                generator=torch.Generator().manual_seed(_mix(self.seed, 2, first)),
                sample_seeds=[_mix(self.seed, 3, int(p)) for p in positions],
                collect_stats=collect,
            )
        strategy = self.trainer.strategy
        n_global = strategy.reduce(out.n_masked.float(), reduce_op="sum")
        # DDP averages gradients over ranks, so scaling by world / N_global makes the update the gradient of
        # (sum of all ranks' loss sums) / (all masked frames): every masked frame weighs the same (MERT-v1 targets and
        # loss).
        loss = out.loss_sum * world / n_global.clamp(min=1.0)

        self.micro_batches_seen += 1
        seconds = float(lengths.sum()) / self.objective.encoder.sample_rate
        self.audio_seconds += seconds * world
        terms = {
            k: strategy.reduce(v.detach().float(), reduce_op="sum") / n_global.clamp(min=1.0)
            for k, v in out.terms.items()
        }
        logs = {f"train/{k}": v for k, v in terms.items()}
        logs["train/loss"] = strategy.reduce(out.loss_sum.detach().float(), reduce_op="sum") / n_global.clamp(min=1.0)
        if out.correct is not None:
            correct = strategy.reduce(out.correct.float(), reduce_op="sum") / n_global.clamp(min=1.0)
            logs.update({f"train/acc_code_{i}": c for i, c in enumerate(correct)})
        logs["train/masked_frames"] = n_global
        self.log_dict(logs, on_step=True, prog_bar=False, batch_size=wav.shape[0])
        self.log("loss", logs["train/loss"], prog_bar=True, on_step=True, logger=False, batch_size=wav.shape[0])
        if collect:
            self._health_logs = self._reduce_health(out.stats, present=wav.shape[0] > 0, loss=logs["train/loss"])
            self._health_step = self.global_step
        if self._health_step == self.global_step:
            # Every micro-batch of the step logs the held values: Lightning writes the last one's.
            self.log_dict(self._health_logs, on_step=True, batch_size=1)
        return loss

    # ------------------------------------------------------------------ validation
    def validation_metric_names(self) -> list[str]:
        """The metrics every evaluation logs (``val/loss``, ``val/code_acc``, per term and codebook, counts)."""
        empty = self.objective.empty_output("cpu")
        names = ["val/loss", *(f"val/{k}" for k in sorted(empty.terms))]
        if empty.correct is not None:
            names += [f"val/acc_code_{i}" for i in range(empty.correct.shape[0])] + ["val/code_acc"]
        return names + ["val/masked_frames", "val/items", "val/skipped_files"]

    def on_validation_epoch_start(self) -> None:
        # Training draws from the global RNGs only after reseeding them, but nothing the evaluation touches may
        # leave them elsewhere than it found them (a run with and without validation trains identically).
        import random

        import numpy as np

        self._rng_states = (
            torch.get_rng_state(),
            torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            np.random.get_state(),
            random.getstate(),
        )
        # Sums over this rank's items, keyed as a real forward's terms (an empty output names them without data).
        # Kept on the device (float64): no host sync per batch.
        empty = self.objective.empty_output("cpu")
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_sums = {"loss": zero.clone(), "masked_frames": zero.clone(), "items": zero.clone()}
        self._val_sums["skipped_files"] = zero.clone()
        self._val_sums.update({k: zero.clone() for k in sorted(empty.terms)})
        if empty.correct is not None:
            self._val_sums.update({f"correct_{i}": zero.clone() for i in range(empty.correct.shape[0])})

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Loss and code-accuracy SUMS of one validation micro-batch (no mixing, no dropout: eval mode), masks
        drawn from each item's index and a fixed seed, so every evaluation of the same weights is identical."""
        from mert.lightning.validation import VALID_SEED

        wav, lengths, index = batch["wav"], batch["lengths"], batch["index"]
        sums = self._val_sums
        sums["skipped_files"] += int(batch.get("n_skipped", 0))
        if wav.shape[0] == 0:  # only padding or unreadable files in this micro-batch
            if self.trainer.world_size > 1:
                # The other ranks run a forward now; a sharded model (FSDP) gathers its weights inside it, so this
                # rank runs one too, on a second of silence, and scores nothing.
                silence = torch.zeros(1, self.objective.encoder.sample_rate, device=wav.device)
                self.objective(silence, generator=torch.Generator().manual_seed(0), sample_seeds=[0])
            return
        out = self.objective(
            wav,
            lengths,
            targets=batch.get("targets"),
            generator=torch.Generator().manual_seed(_mix(VALID_SEED, 2, int(index[0]))),
            sample_seeds=[_mix(VALID_SEED, 3, int(i)) for i in index],
        )
        sums["items"] += wav.shape[0]
        sums["loss"] += out.loss_sum.detach().double()
        sums["masked_frames"] += out.n_masked.double()
        for k, v in out.terms.items():
            sums[k] += v.detach().double()
        if out.correct is not None:
            for i in range(out.correct.shape[0]):
                sums[f"correct_{i}"] += out.correct[i].double()

    def on_validation_epoch_end(self) -> None:
        import random

        import numpy as np

        keys = list(self._val_sums)
        # One all-reduce of the sums: exact dataset-level ratios, whatever the split of the items over ranks.
        packed = torch.stack([self._val_sums[k] for k in keys])
        packed = self.trainer.strategy.reduce(packed, reduce_op="sum")
        total = dict(zip(keys, packed.double().cpu()))
        n = total["masked_frames"].clamp(min=1.0)
        logs = {"val/loss": total["loss"] / n}
        counts = ("masked_frames", "items", "skipped_files")
        for k in keys:
            if k != "loss" and k not in counts and not k.startswith("correct_"):
                logs[f"val/{k}"] = total[k] / n  # per term, normalised like train/<term>
        correct = [total[k] / n for k in keys if k.startswith("correct_")]
        if correct:
            logs.update({f"val/acc_code_{i}": c for i, c in enumerate(correct)})
            logs["val/code_acc"] = torch.stack(correct).mean()
        logs.update({f"val/{k}": total[k] for k in counts})
        # Already reduced: every rank holds the same numbers (no sync_dist, which would average them again). For
        # callbacks (ModelCheckpoint's monitor) through self.log; to the loggers at the optimiser step whose weights
        # were evaluated, the x value of the training rows computed with the same weights (Lightning would write
        # epoch-end values one step earlier).
        self.log_dict({k: v.float() for k, v in logs.items()}, on_step=False, on_epoch=True, batch_size=1, logger=False)
        if not self.trainer.sanity_checking:
            for logger in self.loggers:  # rank-zero-only methods
                logger.log_metrics({k: float(v) for k, v in logs.items()}, step=self.global_step)
            self.last_validation = {"step": self.global_step, **{k: float(v) for k, v in logs.items()}}
        cpu, cuda, np_state, py_state = self._rng_states
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        np.random.set_state(np_state)
        random.setstate(py_state)
        self._t_start = None  # the next training batch's throughput must not include the evaluation

    # ------------------------------------------------------------------ training health
    def _collect_stats_now(self) -> bool:
        """True on the first micro-batch of an optimiser step whose metrics Lightning will write."""
        every = self.trainer.log_every_n_steps
        # Lightning logs when (steps already taken + 1) % log_every_n_steps == 0; global_step counts them.
        return bool(every) and (self.global_step + 1) % every == 0 and self._health_step != self.global_step

    def _reduce_health(self, stats: dict[str, Tensor], *, present: bool, loss: Tensor) -> dict[str, Tensor]:
        """Mean over the ranks that had audio (one all-reduce), warnings on rank 0, ``health/...`` logs."""
        keys = sorted(stats)
        values = torch.stack([stats[k].float().to(self.device) for k in keys]) if keys else torch.zeros(0)
        if not present:
            values = torch.zeros_like(values)  # an empty rank's NaNs (statistics of no frames) must not count
        packed = torch.cat([values.to(self.device), torch.full((1,), float(present), device=self.device)])
        packed = self.trainer.strategy.reduce(packed, reduce_op="sum")
        mean = packed[:-1] / packed[-1].clamp(min=1.0)
        floats = dict(zip(keys, mean.tolist()))
        floats["loss"] = float(loss)
        # Every rank keeps the same monitor state (same reduced values); only rank 0 prints.
        for message in self.health.check(self.global_step, floats):
            if self.trainer.is_global_zero:
                warnings.warn(message, TrainingHealthWarning, stacklevel=2)
        logs = {f"health/{k}": v for k, v in zip(keys, mean)}
        logs["health/warnings"] = torch.tensor(float(len(self.health.messages)), device=self.device)
        return logs

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._t_start is None:
            self._t_start = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._t_start is not None and batch["wav"].shape[0]:
            dt = time.perf_counter() - self._t_start
            sec = float(batch["lengths"].sum()) / self.objective.encoder.sample_rate * self.trainer.world_size
            self.log("train/audio_sec_per_sec", sec / max(dt, 1e-9), on_step=True, batch_size=1, sync_dist=False)
        self._t_start = time.perf_counter()
        self.log_dict(
            {
                "train/skipped_steps": float(self.skipped_steps),
                "train/skipped_files": float(self.skipped_files),
                "train/audio_hours": self.audio_seconds / 3600,
            },
            on_step=True,
            batch_size=1,
        )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.objective.parameters() if p.grad is not None]
        norm = (
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
            if grads
            else torch.zeros(())
        )
        self.log("train/grad_norm", norm, on_step=True, batch_size=1)
        if not torch.isfinite(norm):
            # Skip the update: optimisers leave parameters whose grad is None untouched (no moment update either).
            # Gradients are already all-reduced, so every rank takes the same decision.
            for p in self.objective.parameters():
                p.grad = None
            self.skipped_steps += 1

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Clip by the global norm under FSDP too: its gradients are sharded, so only the root FSDP module's own
        ``clip_grad_norm_`` sees the whole norm (Lightning's FSDP precision plugin refuses norm clipping, which
        every experiment uses); other strategies clip as Lightning does."""
        from lightning.pytorch.strategies import FSDPStrategy

        strategy = self.trainer.strategy
        if gradient_clip_val and isinstance(strategy, FSDPStrategy) and gradient_clip_algorithm in (None, "norm"):
            strategy.model.clip_grad_norm_(float(gradient_clip_val))
            return
        self.clip_gradients(
            optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm
        )

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.objective.parameters() if p.requires_grad]
        if self.frontend_lr_mult == 1.0:
            opt = self.optimizer_factory(params)
        else:
            front = {id(p) for p in frontend_parameters(self.objective.encoder)}
            opt = self.optimizer_factory(
                [
                    {"params": [p for p in params if id(p) not in front]},
                    {"params": [p for p in params if id(p) in front]},
                ]
            )
            # Before the scheduler exists: it takes each group's lr as that group's peak.
            opt.param_groups[1]["lr"] *= self.frontend_lr_mult
        if self.scheduler_factory is None:
            self._configured_groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
            return {"optimizer": opt}
        scheduler = self.scheduler_factory(opt)
        # As configured (the scheduler has set each group's initial_lr), before a checkpoint overwrites them.
        self._configured_groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        if self.reapply_optimizer:
            self._apply_configured_optimizer()

    def _apply_configured_optimizer(self) -> None:
        """After a resume that was allowed to change optimiser or scheduler settings: a checkpoint restores the
        old learning rates (each group's ``lr``/``initial_lr`` and the scheduler's ``base_lrs``) and the old
        betas, eps, weight decay. Put the configured ones back and recompute the current LR at this step."""
        optimizer = self.trainer.optimizers[0]
        configs = self.trainer.lr_scheduler_configs
        scheduler = configs[0].scheduler if configs else None
        groups = optimizer.param_groups
        if len(groups) != len(self._configured_groups):
            raise ValueError(
                f"the checkpoint's optimiser has {len(groups)} parameter groups, this run configures "
                f"{len(self._configured_groups)} (frontend_lr_mult decides them); keep frontend_lr_mult at 1 or "
                "not 1 as the run had it"
            )
        for group, fresh in zip(groups, self._configured_groups):
            for key, value in fresh.items():
                if key not in ("lr", "initial_lr"):
                    group[key] = value
        if scheduler is None:
            for group, fresh in zip(groups, self._configured_groups):
                group["lr"] = fresh["lr"]
            return
        old_bases = list(scheduler.base_lrs)
        new_bases = [fresh.get("initial_lr", fresh["lr"]) for fresh in self._configured_groups]
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            # The factor functions are this run's (a checkpoint cannot hold functions): the closed form is exact.
            lrs = [b * f(scheduler.last_epoch) for b, f in zip(new_bases, scheduler.lr_lambdas)]
        else:
            lrs = [g["lr"] * (new / old if old else 0.0) for g, new, old in zip(groups, new_bases, old_bases)]
        scheduler.base_lrs = new_bases
        for group, base, lr in zip(groups, new_bases, lrs):
            group["initial_lr"], group["lr"] = base, lr
        scheduler._last_lr = list(lrs)

    # ------------------------------------------------------------------ checkpoints
    def _check_usable_audio(self, kept: int) -> None:
        """Fail, on every rank at once, when no sample at all has been usable after a dataset's worth (at most 64)
        of draws: a manifest whose files are all missing would otherwise "train" on nothing and save a checkpoint
        that exports."""
        if self.usable_samples:  # a global count, so every rank stops reducing at the same step
            return
        total = self.trainer.strategy.reduce(torch.tensor(float(kept), device=self.device), reduce_op="sum")
        self.usable_samples += int(total)
        if self.usable_samples:
            return
        datamodule = self.trainer.datamodule
        size = len(datamodule.dataset) if datamodule is not None and hasattr(datamodule.dataset, "__len__") else 64
        if self.samples_seen >= min(size, 64):
            raise ValueError(
                f"no usable audio: all {self.samples_seen} samples drawn so far (of {size} in the dataset) were "
                f"skipped ({self.skipped_files} on this process: missing, unreadable or too short files; see the "
                "warnings above); check the manifest's paths and root"
            )

    _COUNTERS = ("micro_batches_seen", "samples_seen", "skipped_steps", "skipped_files", "audio_seconds",
                 "usable_samples")  # fmt: skip

    def counters(self) -> dict[str, Any]:
        """The stream and bookkeeping counters (what :meth:`restore_counters` puts back)."""
        return {k: getattr(self, k) for k in self._COUNTERS}

    def restore_counters(self, counters: dict[str, Any]) -> None:
        """Roll the counters back to a step boundary (a checkpoint saved after a failure mid-step)."""
        for k, v in counters.items():
            setattr(self, k, v)

    def restore_summary(self, checkpoint: dict[str, Any]) -> None:
        """Take the counters of :meth:`summary` from a checkpoint: for a run whose steps ran in other processes
        (``ddp_spawn``), whose module this is not."""
        self.on_load_checkpoint(checkpoint)
        state = checkpoint.get("mert", {})
        self._final = {"steps": int(checkpoint.get("global_step", 0)), "final_loss": state.get("last_loss")}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from mert.version import __version__

        checkpoint["mert"] = {
            "version": __version__,
            "encoder_config": self.objective.encoder.config.to_dict(),
            "teachers": self.objective.teacher_settings(),
            "micro_batches_seen": self.micro_batches_seen,
            "samples_seen": self.samples_seen,
            "skipped_steps": self.skipped_steps,
            "skipped_files": self.skipped_files,
            "audio_seconds": self.audio_seconds,
            "usable_samples": self.usable_samples,
            "health": self.health.state_dict(),
            "last_loss": None if not math.isfinite(self._last_loss()) else self._last_loss(),
            "data": self.data_identity,
        }
        if self.last_validation is not None:
            checkpoint["mert"]["last_validation"] = dict(self.last_validation)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("mert", {})
        self.micro_batches_seen = int(state.get("micro_batches_seen", 0))
        self.samples_seen = int(state.get("samples_seen", 0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.skipped_files = int(state.get("skipped_files", 0))
        self.audio_seconds = float(state.get("audio_seconds", 0.0))
        # Checkpoints from before this counter trained on what they saw: count it as usable.
        self.usable_samples = int(state.get("usable_samples", self.samples_seen))
        self.health.load_state_dict(state.get("health") or {})
        self.last_validation = state.get("last_validation")

    def summary(self) -> dict[str, Any]:
        """Training summary for ``meta.json``."""
        final = self._final or {"steps": self.global_step, "final_loss": self._last_loss()}
        loss = final["final_loss"]
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        out = {
            "steps": int(final["steps"]),
            "micro_batches": self.micro_batches_seen,
            "samples_seen": self.samples_seen,
            "audio_hours": round(self.audio_seconds / 3600, 4),
            # The learning-curve x axis: audio_hours = global batch x seconds per sample (the crops actually drawn)
            # x steps, for `mert probe compare`.
            "global_batch_size": getattr(datamodule, "global_batch_size", None),
            "seconds_per_sample": round(self.audio_seconds / self.samples_seen, 4) if self.samples_seen else None,
            "skipped_steps": self.skipped_steps,
            "skipped_files": self.skipped_files,
            "final_loss": None if loss is None or not math.isfinite(loss) else loss,
            "health_warnings": list(self.health.messages),
        }
        if self.last_validation is not None:  # runs with data.valid: the latest evaluation
            out["validation"] = dict(self.last_validation)
        return out

    def _last_loss(self) -> float:
        value = self.trainer.callback_metrics.get("train/loss") if self._trainer is not None else None
        return float(value) if value is not None else float("nan")

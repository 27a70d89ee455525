"""`mert pretrain`: Hydra composes the run, this module wires the objects and starts Lightning.

Hydra stays at the edge: configs become plain objects here (`EncoderConfig` from a mapping, teachers and
optimiser from `_target_`s) and nothing below sees OmegaConf. The run directory is derived from the
experiment name and the overrides that change the science (not the hardware or logging), so rerunning the
same command finds the same folder and resumes from its ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mert.lightning.runfolder import DATA_PATH_KEYS, NON_SCIENTIFIC_KEYS
from mert.models.config import RUNTIME_MODEL_KEYS

log = logging.getLogger("mert.pretrain")

__all__ = [
    "hydra_entry",
    "run",
    "derive_run_dir",
    "check_cached_targets",
    "resume_checkpoint",
    "remove_stale_partials",
    "validate_run_config",
    "NON_SCIENTIFIC_PREFIXES",
]

# Overrides that leave the run directory as it is: the keys that never change what is learned (one list, in
# runfolder, also used to compare a resume), less the data paths (another corpus is another run), plus the whole
# trainer (its scientific keys, precision, clipping and accumulation, are refused on resume, not a new run).
NON_SCIENTIFIC_PREFIXES = ("trainer",) + tuple(k for k in NON_SCIENTIFIC_KEYS if k not in DATA_PATH_KEYS)


def derive_run_dir(runs_root: str, name: str, overrides: Sequence[str]) -> Path:
    """``runs_root/name`` plus a readable suffix for scientific overrides (hashed when long)."""
    keep = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if not any(key == p or key.startswith(p + ".") or key.startswith(p + "/") for p in NON_SCIENTIFIC_PREFIXES):
            keep.append(o.lstrip("+"))
    suffix = ",".join(sorted(keep)).replace("/", "_")
    if len(suffix) > 80:
        suffix = suffix[:60] + "-" + hashlib.sha256(suffix.encode()).hexdigest()[:12]
    return Path(runs_root) / name / suffix if suffix else Path(runs_root) / name


def _readable_checkpoint(path: Path) -> str | None:
    """None if ``path`` loads (lazily: tensors are memory-mapped, so this reads the index, not gigabytes), else
    why not. A folder (a sharded FSDP checkpoint) is left to Lightning."""
    if path.is_dir():
        return None
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a truncated zip, a half-written pickle, a file that is not a checkpoint
        from mert.models.checkpoint import load_error_reason

        return load_error_reason(e)
    return None


def resume_checkpoint(run_dir: Path, ckpt_path: str | None) -> str | None:
    """The checkpoint a run resumes from: ``ckpt_path`` if given (it must load), or for ``"last"`` the newest
    readable one in ``run_dir/checkpoints``: ``last.ckpt``, else the periodic ones newest first, saying which
    were passed over (a job killed while the file system was writing can leave a damaged ``last.ckpt``)."""
    if ckpt_path is None:
        return None
    if ckpt_path != "last":
        if not Path(ckpt_path).exists():
            raise FileNotFoundError(f"ckpt_path {ckpt_path!r} does not exist")
        if (why := _readable_checkpoint(Path(ckpt_path))) is not None:
            raise ValueError(f"ckpt_path {ckpt_path!r} cannot be loaded ({why}); pass another checkpoint")
        return ckpt_path
    folder = run_dir / "checkpoints"
    last = folder / "last.ckpt"
    others = sorted(
        (p for p in folder.glob("*.ckpt") if p != last and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    candidates = ([last] if last.exists() else []) + others
    for i, path in enumerate(candidates):
        why = _readable_checkpoint(path)
        if why is None:
            return str(path)
        following = f"trying {candidates[i + 1].name}" if i + 1 < len(candidates) else "starting afresh"
        log.warning("checkpoint %s cannot be loaded (%s); %s", path, why, following)
        print(f"mert pretrain: checkpoint {path} cannot be loaded ({why}); {following}", file=sys.stderr, flush=True)
    return None


def remove_stale_partials(run_dir: Path) -> list[Path]:
    """Delete ``checkpoints/.*.tmp`` left by a run killed while saving (AtomicCheckpointIO); return them."""
    stale = sorted((run_dir / "checkpoints").glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
        print(f"mert pretrain: removed {path}, a partial checkpoint of a run killed while saving", flush=True)
    return stale


def _is_global_rank_zero() -> bool:
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK"))


def validate_run_config(cfg: Any) -> None:
    """Refuse values of the wrong type or range before anything is built, naming the key (``optim.lr=fast``
    would otherwise fail deep inside the optimiser with a traceback that does not name it)."""
    from omegaconf import OmegaConf

    def get(key: str) -> Any:
        return OmegaConf.select(cfg, key, default=None)

    def number(key: str, value: Any, kind: type, minimum: float | None, strict: bool = False) -> None:
        ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
        if ok and minimum is not None:
            ok = value > minimum if strict else value >= minimum
        if not ok:
            what = {int: "an integer", float: "a number"}[kind]
            bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
            raise ValueError(f"{key} must be {what}{bound}, got {value!r}")

    checks: list[tuple[str, type, float | None, bool]] = [
        ("seed", int, None, False),
        ("trainer.max_steps", int, -1, False),
        ("trainer.log_every_n_steps", int, 0, True),
        ("data.global_batch_size", int, 0, True),
        ("data.micro_batch_size", int, 0, True),
        ("data.num_workers", int, 0, False),
        ("optim.lr", float, 0, False),
        ("optim.weight_decay", float, 0, False),
        ("scheduler.warmup_steps", int, 0, False),
        ("frontend_lr_mult", float, 0, False),
    ]
    for key, kind, minimum, strict in checks:
        value = get(key)
        if value is not None:
            number(key, value, kind, minimum, strict)
    if not isinstance(get("model.compile") or False, bool):
        raise ValueError(f"model.compile must be true or false, got {get('model.compile')!r}")
    modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
    if get("model.compile_mode") is not None and get("model.compile_mode") not in modes:
        raise ValueError(f"model.compile_mode must be null or one of {list(modes)}, got {get('model.compile_mode')!r}")
    if get("model.compile_dynamic") is not None and not isinstance(get("model.compile_dynamic"), bool):
        raise ValueError(f"model.compile_dynamic must be null, true or false, got {get('model.compile_dynamic')!r}")
    if get("trainer.max_steps") == 0:
        raise ValueError("trainer.max_steps must be a positive number of steps (or -1 for max_epochs), got 0")
    model = get("model")
    if model is not None and not cfg.get("init_from"):
        from mert import EncoderConfig

        try:
            EncoderConfig.from_dict(OmegaConf.to_container(model, resolve=True))
        except (ValueError, TypeError) as e:
            text = str(e)
            field = text.split(" ", 1)[0].rstrip(",")
            raise ValueError(
                f"model.{text}" if field in EncoderConfig.__dataclass_fields__ else f"model: {text}"
            ) from None


def _build_encoder(cfg: Any, ckpt_path: str | None, allow: Sequence[str] = ()):
    from mert import Encoder, EncoderConfig

    resuming = ckpt_path is not None
    if resuming:
        # The checkpoint's own architecture (after init_from it is the release's, not the model group's).
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        saved = (state.get("mert") or {}).get("encoder_config")
        if saved is not None:
            config = EncoderConfig.from_dict(saved)
            if not cfg.init_from:  # after init_from the run's architecture is the release's, not the model group's
                from omegaconf import OmegaConf

                asked = EncoderConfig.from_dict(OmegaConf.to_container(cfg.model, resolve=True))
                changed = [
                    f"{k}: {getattr(config, k)!r} -> {getattr(asked, k)!r}"
                    for k in config.to_dict()
                    if k != "name" and getattr(config, k) != getattr(asked, k)
                ]
                if changed and all(
                    any(f"model.{k}" == a or a == "model" for a in allow) for k in [c.split(":", 1)[0] for c in changed]
                ):
                    return Encoder(asked)  # +resume.allow_changes lets these model.* changes through
                if changed:
                    raise ValueError(
                        f"{ckpt_path} was trained with another model than this run configures ({'; '.join(changed)}): "
                        "a resumed run keeps its architecture. Drop the model.* overrides to resume, or pass another "
                        "run_dir (or ckpt_path=null) to start a new run"
                    )
            return Encoder(config)
    if cfg.init_from and not resuming:
        enc = Encoder.from_pretrained(cfg.init_from)
        log.warning(
            "continued pretraining from %s (%s); the model group's architecture is ignored",
            cfg.init_from,
            enc.config.name,
        )
        return enc.train()
    from omegaconf import OmegaConf

    return Encoder(EncoderConfig.from_dict(OmegaConf.to_container(cfg.model, resolve=True)))


def _without_paths(settings: Any) -> Any:
    """Teacher settings without their ``path`` entries, at any depth (a ConcatTargets nests its parts')."""
    if isinstance(settings, dict):
        return {k: _without_paths(v) for k, v in settings.items() if k != "path"}
    if isinstance(settings, list):
        return [_without_paths(v) for v in settings]
    return settings


def check_cached_targets(dataset: Any, teacher_settings: dict[str, dict[str, Any]]) -> None:
    """Refuse shards whose cached targets came from other teachers than the run configures.

    Cached targets replace the teachers' output, so a mismatch would silently train on other targets.
    Paths are not compared (shards and k-means files move between machines); everything else is.
    """
    cached = (getattr(dataset, "info", None) or {}).get("teachers") or {}
    for role, settings in cached.items():
        if role not in teacher_settings or not isinstance(settings, dict):
            continue
        mine, theirs = _without_paths(teacher_settings[role]), _without_paths(settings)
        if mine != theirs:
            raise ValueError(
                f"the shards' cached '{role}' targets were made by {theirs}, but this run configures {mine}; "
                "write the shards again with the run's teachers, or change targets.* to match"
            )


def run(cfg: Any, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train as configured by a composed Hydra config; returns a summary (also written to the run dir).

    Before the run folder is created: config values, the folder itself, data and teachers are checked. Then,
    holding the folder's lock, a resume is compared with its checkpoint (refused if a scientific setting or the
    data changed, unless ``+resume.allow_changes`` names it), the launch is recorded under ``launches/``, and
    training runs with a log file ``train.log``. SIGINT/SIGTERM stop at the next step with a checkpoint and
    raise ``SystemExit(130/143)``.
    """
    import contextlib

    from hydra.utils import instantiate

    from mert.lightning import runfolder

    validate_run_config(cfg)
    runfolder.preflight(cfg)
    runfolder.quiet_lightning()
    run_dir = Path(cfg.run_dir)
    rank_zero = _is_global_rank_zero()
    # Teachers (weights loaded) and data before the run folder exists: a missing file creates nothing.
    teachers = runfolder.build_teachers(cfg)
    dataset = instantiate(cfg.data.dataset)
    from mert.lightning.validation import build_valid_dataset, check_monitors

    check_monitors(cfg)
    valid = build_valid_dataset(cfg, dataset, getattr(dataset, "sample_rate", None))
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"run_dir={run_dir} cannot be created ({e.strerror}); pass another run_dir") from None
    with contextlib.ExitStack() as stack:
        if rank_zero:  # other ranks of a launched (not spawned) DDP job rerun this in the same folder
            stack.enter_context(runfolder.lock_run_dir(run_dir))
            stack.enter_context(runfolder.attach_log_file(run_dir / "train.log"))
        return _run_locked(cfg, run_dir, teachers, dataset, list(overrides), rank_zero, valid)


def _write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    from mert.fileio import write_text_atomic

    write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")


def _run_locked(
    cfg: Any,
    run_dir: Path,
    teachers: dict[str, Any],
    dataset: Any,
    overrides: list[str],
    rank_zero: bool,
    valid: Any = None,
) -> dict[str, Any]:
    import signal

    import lightning.pytorch as pl
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import FSDPStrategy
    from omegaconf import OmegaConf, open_dict

    from mert.fileio import write_text_atomic
    from mert.lightning import runfolder
    from mert.lightning.callbacks import FinalCheckpoint, RunGuard, install_stop_handlers, reset_stop, stop_signal
    from mert.lightning.data import AudioDataModule, derive_accumulation
    from mert.lightning.module import PretrainModule
    from mert.lightning.strategies import AtomicCheckpointIO

    last = run_dir / "checkpoints" / "last.ckpt"
    if rank_zero:
        remove_stale_partials(run_dir)
    ckpt_path = resume_checkpoint(run_dir, cfg.ckpt_path)
    allow = [str(a) for a in (OmegaConf.select(cfg, "resume.allow_changes", default=None) or [])]
    identity = runfolder.data_identity(cfg, dataset)
    changed: list[str] = []
    if ckpt_path is not None and not Path(ckpt_path).is_dir():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(state, dict) or "state_dict" not in state or "mert" not in state:
            raise ValueError(
                f"ckpt_path={ckpt_path} is not a mert pretraining checkpoint (no 'state_dict' and 'mert' sections); "
                "to start from released weights pass init_from=... instead"
            )
        old_config = (state.get("hyper_parameters") or {}).get("run") or None
        old_data = (state.get("mert") or {}).get("data")
        added = [o.split("=", 1)[0].lstrip("+") for o in overrides if o.startswith("+")]
        changed = runfolder.check_resume(
            ckpt_path, old_config, OmegaConf.to_container(cfg, resolve=True), old_data, identity, allow, added
        )
        del state
    runfolder.say(f"mert pretrain: run directory {run_dir}" + (f" (resuming from {ckpt_path})" if ckpt_path else ""))
    if changed:
        runfolder.say(f"mert pretrain: continuing with changed settings: {', '.join(changed)}")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)

    encoder = _build_encoder(cfg, ckpt_path, allow)
    # How to run the network (model.compile...), not what it is: kept beside the trained architecture.
    runtime = {k: cfg.model[k] for k in RUNTIME_MODEL_KEYS if k in cfg.model}
    with open_dict(cfg):
        # What is actually trained (a release's or a checkpoint's config).
        cfg.model = {**encoder.config.to_dict(), **runtime}
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    if rank_zero:
        # config.yaml is the run's: written by the launch that starts it; every launch keeps its own copy.
        if ckpt_path is None or not (run_dir / "config.yaml").is_file():
            write_text_atomic(run_dir / "config.yaml", config_yaml)
        runfolder.write_launch(run_dir, config_yaml, overrides)
        _write_summary(run_dir, {"run_dir": str(run_dir), "completed": False, "status": "running"})
    objective = instantiate(cfg.objective, encoder=encoder, **teachers)
    if runtime.get("compile"):
        # Compiled in place before the trainer wraps the module (Lightning's and PyTorch's guidance: compile the
        # inner module, then let DDP wrap it); the state dict keeps its keys.
        objective.compile(mode=runtime.get("compile_mode"), dynamic=runtime.get("compile_dynamic"))
        runfolder.say("mert pretrain: model.compile=true: the first steps compile the model (seconds to minutes)")
    run_config = OmegaConf.to_container(cfg, resolve=True)
    module = PretrainModule(
        objective,
        instantiate(cfg.optim, _convert_="all"),
        instantiate(cfg.scheduler, _convert_="all") if cfg.get("scheduler") else None,
        seed=cfg.seed,
        frontend_lr_mult=float(cfg.get("frontend_lr_mult", 1.0)),
        run_config=run_config,
    )
    module.data_identity = identity
    module.reapply_optimizer = any(k.split(".")[0] in ("optim", "scheduler", "frontend_lr_mult") for k in changed)
    check_cached_targets(dataset, objective.teacher_settings())
    if valid is not None:
        from mert.lightning.validation import check_monitor_names

        try:
            check_cached_targets(valid, objective.teacher_settings())
        except ValueError as e:
            raise ValueError(f"data.valid={cfg.data.valid}: {e}") from None
        check_monitor_names(cfg, module.validation_metric_names())
    from mert.lightning.validation import valid_schedule

    every, most = valid_schedule(cfg) if valid is not None else (0, None)
    datamodule = AudioDataModule(
        dataset,
        global_batch_size=cfg.data.global_batch_size,
        micro_batch_size=cfg.data.micro_batch_size,
        num_workers=cfg.data.num_workers,
        seed=cfg.seed,
        valid_dataset=valid,
        valid_max_items=None if most is None else int(most) * cfg.data.micro_batch_size,
    )
    callbacks_cfg = cfg.get("callbacks")
    if valid is not None and callbacks_cfg:
        from mert.lightning.validation import monitored_checkpoints_after_validation

        callbacks_cfg = monitored_checkpoints_after_validation(callbacks_cfg)
    callbacks = list(instantiate(callbacks_cfg).values()) if callbacks_cfg else []
    if valid is not None:
        from mert.lightning.validation import LoggingStepAfterResume

        callbacks.insert(0, LoggingStepAfterResume())  # before LearningRateMonitor logs
    guard = RunGuard(str(last), cfg.get("checkpoint_every_minutes"))
    callbacks += [guard, FinalCheckpoint(str(last))]
    loggers = list(instantiate(cfg.logger)) if cfg.get("logger") else False
    trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers, default_root_dir=str(run_dir), plugins=[AtomicCheckpointIO()]
    )
    # The world size as the trainer resolved it (devices may be "auto", -1 or a list), then the accumulation.
    accumulation = derive_accumulation(cfg.data.global_batch_size, cfg.data.micro_batch_size, trainer.world_size)
    trainer.accumulate_grad_batches = accumulation
    if valid is None:
        trainer.limit_val_batches = 0  # no validation loop, whatever the trainer group says
    else:
        # Lightning counts micro-batches (total over the run, as the stream is endless): N steps = N x accumulation.
        trainer.val_check_interval = every * accumulation
        trainer.check_val_every_n_epoch = None
        trainer.limit_val_batches = 1.0  # the sampler already holds the valid_max_batches cut
        trainer.num_sanity_val_steps = 0
    if encoder.config.layerdrop > 0 and isinstance(trainer.strategy, FSDPStrategy):
        raise ValueError(
            f"LayerDrop ({encoder.config.layerdrop}) skips layers per rank, which FSDP cannot shard around; "
            "set model.layerdrop=0 or use trainer=ddp"
        )
    # This process stops at a step on SIGINT/SIGTERM (RunGuard re-installs the same in the training processes);
    # spawned ranks get the signal forwarded.
    previous = install_stop_handlers(forward=_spawned(trainer), quiet=_spawned(trainer))
    try:
        # Our checkpoints hold only tensors and plain containers, so resuming never unpickles arbitrary objects.
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except BaseException as e:
        signum = guard.stopped_by or stop_signal()
        interrupted = isinstance(e, (SystemExit, KeyboardInterrupt)) and signum is not None
        if rank_zero:
            record: dict[str, Any] = {"run_dir": str(run_dir), "completed": False}
            if interrupted:
                record["status"] = f"stopped by a second {signal.Signals(signum).name}, without a checkpoint"
            else:
                record.update(status="failed", error=f"{type(e).__name__}: {e}".strip())
            if guard.crash_checkpoint:
                record["checkpoint"] = guard.crash_checkpoint
            _write_summary(run_dir, record)
        if interrupted:
            # Lightning exits 1 on KeyboardInterrupt: keep the signal's exit status.
            raise SystemExit(128 + int(signum)) from None
        raise
    finally:
        signum = guard.stopped_by or stop_signal()
        reset_stop(previous)
    if _spawned(trainer) and last.is_file():
        # ddp_spawn trained in child processes: this process's module never saw a step. The final checkpoint,
        # written by rank 0 when training ended, has the run's real counters.
        module.restore_summary(torch.load(last, map_location="cpu", weights_only=True, mmap=True))

    summary = {
        "run_dir": str(run_dir),
        "accumulate_grad_batches": accumulation,
        "world_size": trainer.world_size,
        **module.summary(),
    }
    max_steps = trainer.max_steps
    stopped = signum is not None and not (max_steps and max_steps > 0 and summary["steps"] >= max_steps)
    summary["completed"] = not stopped
    summary["status"] = f"stopped by {signal.Signals(signum).name}" if stopped else "completed"
    if trainer.is_global_zero:
        _write_summary(run_dir, summary)
        if stopped:
            runfolder.say(
                f"mert pretrain: stopped by {signal.Signals(signum).name} at step {summary['steps']}; checkpoint "
                f"{last}; rerun the same command to continue"
            )
        else:
            steps = summary["steps"]
            runfolder.say(f"mert pretrain: done at step {steps}; export with `mert export {run_dir} OUT_DIR`")
    if stopped:
        raise SystemExit(128 + int(signum))
    return summary


def _spawned(trainer: Any) -> bool:
    """Whether the trainer ran in processes it spawned (``ddp_spawn``), rather than in this one."""
    from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher

    return isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher)


def hydra_entry(cfg: Any) -> None:
    """The Hydra task of ``mert pretrain``: derive the run folder from the overrides if unset, then :func:`run`."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    if cfg.run_dir is None:
        overrides = HydraConfig.get().overrides.task
        with open_dict(cfg):
            cfg.run_dir = str(derive_run_dir(cfg.runs_root, cfg.name, overrides))
    run(cfg, list(HydraConfig.get().overrides.task))

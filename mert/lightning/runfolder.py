"""A pretraining run folder over several launches: checks before anything is written, one process at a time,
resumes that refuse what changed, a record of every launch, and a log file.

Why here and not in Lightning: Lightning resumes whatever checkpoint it is given with whatever the new config
says, and some of the new config is silently overridden by the checkpoint (the optimiser's learning rates and
the scheduler's ``base_lrs`` come back from the checkpoint) while the rest silently applies (precision,
clipping). A resume must therefore either refuse a scientific change, naming it, or make it really apply.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mert.data.remote import is_url
from mert.download import sha256_file

__all__ = [
    "RunFolderBusy",
    "SCIENTIFIC_TRAINER_KEYS",
    "NON_SCIENTIFIC_KEYS",
    "is_scientific",
    "flatten",
    "config_changes",
    "check_resume",
    "data_identity",
    "preflight",
    "lock_run_dir",
    "write_launch",
    "attach_log_file",
    "quiet_lightning",
]

log = logging.getLogger("mert.pretrain")

# Trainer settings that change what is learned; every other trainer.* key is hardware, logging or length.
SCIENTIFIC_TRAINER_KEYS = (
    "trainer.precision",
    "trainer.gradient_clip_val",
    "trainer.gradient_clip_algorithm",
    "trainer.accumulate_grad_batches",
    "trainer.deterministic",
)
# Keys that never change what is learned: a resume may change them freely. Data paths are here because the
# data's identity (manifest or shard-index digest and length) is compared instead: a moved corpus resumes, an
# edited one is refused.
NON_SCIENTIFIC_KEYS = (
    "logger",
    "callbacks",
    "hydra",
    "run_dir",
    "runs_root",
    "ckpt_path",
    "experiment",
    "name",
    "resume",
    "checkpoint_every_minutes",
    "model.compile",  # how the network runs (torch.compile), not what it learns
    "model.compile_mode",
    "model.compile_dynamic",
    "data.num_workers",
    "data.micro_batch_size",
    "data.manifest",
    "data.shards",
    "data.dataset.entries_or_manifest_path",
    "data.dataset.path_or_dir_or_list_of_tars",
    "data.storage_options",
    "data.dataset.storage_options",
    "data.retries",
    "data.dataset.retries",
    # Validation reads held-out data and learns nothing from it.
    "data.valid",
    "data.valid_every_n_steps",
    "data.valid_max_batches",
    "data.valid_crop_seconds",
    "data.valid_min_seconds",
)


# The corpus a run trains on: another value is another run (its own folder), but the same corpus moved elsewhere
# resumes, since its identity (manifest or shard-index digest) is what a resume compares.
DATA_PATH_KEYS = (
    "data.manifest",
    "data.shards",
    "data.dataset.entries_or_manifest_path",
    "data.dataset.path_or_dir_or_list_of_tars",
)


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def is_scientific(key: str) -> bool:
    """Whether a dotted config key changes what a run learns (so a resume may not change it silently)."""
    if key.startswith("trainer."):
        return any(_under(key, k) for k in SCIENTIFIC_TRAINER_KEYS)
    return not any(_under(key, k) for k in NON_SCIENTIFIC_KEYS)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are leaves."""
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, Mapping) and v:
                out.update(flatten(v, key))
            else:
                out[key] = v
        return out
    return {prefix: tree}


def _normalised(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """A resolved run config with its model section written out in full (EncoderConfig defaults filled in), so a
    stored config (always full) and a composed one (the model group's keys only) compare key by key."""
    from mert import EncoderConfig

    config = dict(run_config)
    if config.get("init_from"):
        config.pop("model", None)  # after init_from the architecture is the release's (the checkpoint keeps it)
    elif isinstance(config.get("model"), Mapping):
        with contextlib.suppress(ValueError, TypeError):
            model = EncoderConfig.from_dict(dict(config["model"])).to_dict()
            model.pop("name", None)
            config["model"] = model
    return config


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """Scientific keys whose value differs between two resolved run configs: ``[(key, old, new), ...]``.

    A key present on one side only counts as changed (``<unset>`` on the other side).
    """
    a, b = flatten(_normalised(old)), flatten(_normalised(new))
    unset = "<unset>"
    changes = []
    for key in sorted(set(a) | set(b)):
        if not is_scientific(key):
            continue
        va, vb = a.get(key, unset), b.get(key, unset)
        if va != vb and not (_number(va) and _number(vb) and float(va) == float(vb)):
            changes.append((key, va, vb))
    return changes


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _allowed(key: str, allow: Sequence[str]) -> bool:
    return any(_under(key, a) for a in allow)


def check_resume(
    checkpoint: str,
    old_config: Mapping[str, Any] | None,
    new_config: Mapping[str, Any],
    old_data: Mapping[str, Any] | None,
    new_data: Mapping[str, Any] | None,
    allow: Sequence[str],
    added: Sequence[str] = (),
) -> list[str]:
    """Refuse a resume whose scientific settings or data differ from the checkpoint's, unless allowed.

    A setting the checkpoint's config does not have at all was added to ``mert`` after it was written; its
    default keeps the earlier behaviour, so it is reported (a warning) rather than refused, unless this command
    line added it (``added``: keys given as ``+KEY=...``), which is a change like any other.
    Returns the changed keys that ``allow`` (``+resume.allow_changes=[...]``) lets through; each entry of
    ``allow`` is a key or a prefix (``optim`` allows every ``optim.*``; ``data`` allows other data).
    Raises:
        ValueError: naming every refused change as ``key: old -> new`` and how to allow it.
    """
    changes = [] if old_config is None else config_changes(old_config, new_config)
    unknown = [c for c in changes if c[1] == "<unset>" and not any(_under(c[0], a) for a in added)]
    if unknown:
        listed = ", ".join(f"{k}={_show(b)}" for k, _, b in unknown)
        log.warning("%s predates these settings; resuming with their values: %s", checkpoint, listed)
        changes = [c for c in changes if c not in unknown]
    if old_data and new_data and dict(old_data) != dict(new_data):
        changes.append(("data", _describe_data(old_data), _describe_data(new_data)))
    refused = [c for c in changes if not _allowed(c[0], allow)]
    if refused:
        listed = "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, a, b in refused)
        keys = ",".join(k for k, _, _ in refused)
        raise ValueError(
            f"{checkpoint} was trained with other settings than this run configures ({listed}). A resumed run keeps "
            f"its settings: drop these overrides to resume, pass +resume.allow_changes=[{keys}] to continue with the "
            "new values, or pass another run_dir (or ckpt_path=null) to start a new run"
        )
    return [k for k, _, _ in changes]


def _show(v: Any) -> str:
    return v if isinstance(v, str) and v.startswith(("<", "manifest", "shards", "dataset")) else repr(v)


def _describe_data(identity: Mapping[str, Any]) -> str:
    digest = identity.get("sha256")
    what = identity.get("kind", "dataset")
    parts = [f"{what} {digest[:12]}" if digest else what]
    if identity.get("length") is not None:
        parts.append(f"{identity['length']} items")
    return " ".join(parts[:1]) + (f" ({parts[1]})" if len(parts) > 1 else "")


def data_identity(cfg: Any, dataset: Any) -> dict[str, Any]:
    """What the run trains on, independent of where it lies: a manifest's SHA-256, a shard index's SHA-256 (or
    the shard names and sizes without an index), plus the dataset's length. A synthetic dataset is identified
    by its settings, which the config comparison already covers, and its length."""
    from omegaconf import OmegaConf

    length = len(dataset) if hasattr(dataset, "__len__") else getattr(dataset, "num_samples", None)
    manifest = OmegaConf.select(cfg, "data.dataset.entries_or_manifest_path", default=None)
    if isinstance(manifest, str) and Path(manifest).is_file():
        return {"kind": "manifest", "sha256": sha256_file(Path(manifest)), "length": length}
    info = getattr(dataset, "info", None)
    tars = getattr(dataset, "tars", None)
    urls = getattr(dataset, "urls", None)
    if info or tars or urls:
        if info:
            blob = json.dumps(info, sort_keys=True).encode()
        elif urls:  # streamed shards without an index: their names (the bucket or host may change)
            blob = json.dumps([u.rsplit("/", 1)[-1] for u in urls]).encode()
        else:
            blob = json.dumps([[Path(t).name, Path(t).stat().st_size] for t in tars]).encode()
        return {"kind": "shards", "sha256": hashlib.sha256(blob).hexdigest(), "length": length}
    return {"kind": type(dataset).__name__, "length": length}


# ----------------------------------------------------------------------------------------------------- preflight
def _check_folder(path: Path, key: str) -> None:
    """``path`` is a folder or can become one: neither it nor any parent is a file."""
    for p in [path, *path.parents]:
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                where = "" if p == path else f" (its parent {p} is a file)"
                raise ValueError(
                    f"{key}={path} cannot be a run folder{where}: {p} is a file, not a folder; pass another {key} "
                    "or move the file away"
                )
            if not os.access(p, os.W_OK | os.X_OK):
                verb = "written to" if p == path else "created"
                raise ValueError(f"{key}={path} cannot be {verb}: no write permission on {p}; pass another {key}")
            return


def _teacher_paths(tree: Any, prefix: str) -> Iterator[tuple[str, str]]:
    """``(key, value)`` of every local teacher file named in the targets config (``path``, ``weights``)."""
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            key = f"{prefix}.{k}"
            if k in ("path", "weights") and isinstance(v, str) and "://" not in v:
                yield key, v
            else:
                yield from _teacher_paths(v, key)
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _teacher_paths(v, f"{prefix}[{i}]")


def preflight(cfg: Any) -> None:
    """Checks that need no model and no data loading, before the run folder is created or any rank starts:
    the run folder and its ``checkpoints`` folder can be folders, the data and the teachers' files exist.

    Raises:
        ValueError / FileNotFoundError: one line naming the config key to change.
    """
    from omegaconf import OmegaConf

    run_dir = Path(cfg.run_dir)
    _check_folder(run_dir, "run_dir")
    for sub in ("checkpoints", "launches"):
        p = run_dir / sub
        if (p.exists() or p.is_symlink()) and not p.is_dir():
            raise ValueError(
                f"run_dir={run_dir} holds a file named {sub!r} where the run keeps its {sub} folder; move it away "
                "or pass another run_dir"
            )
    dirpath = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=None)
    if dirpath and Path(dirpath) != run_dir / "checkpoints":
        _check_folder(Path(dirpath), "callbacks.model_checkpoint.dirpath")
    for key in ("data.manifest", "data.shards"):
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if not isinstance(value, str) or (key == "data.shards" and is_url(value)):
            continue  # a URL is checked when the dataset opens its index
        path = Path(value)
        if not path.exists():
            raise FileNotFoundError(f"{key}={value} does not exist; pass the {key.split('.')[1]} to train on")
        if key == "data.manifest" and (path.is_dir() or path.stat().st_size == 0):
            what = "a folder" if path.is_dir() else "empty"
            hint = "make one with `mert data manifest DIR --out FILE.tsv`"
            raise ValueError(f"{key}={value} is {what}, not a manifest; {hint}")
        if key == "data.shards" and path.is_dir() and not any(path.glob("*.tar")):
            raise ValueError(f"{key}={value} holds no shard-*.tar; write them with `mert data shard`")
    init_from = cfg.get("init_from")
    local = isinstance(init_from, str) and init_from.startswith(("/", ".", "~"))
    if local and not Path(init_from).expanduser().exists():
        raise FileNotFoundError(f"init_from={init_from} does not exist; pass a released encoder's folder or Hub id")
    ckpt = cfg.get("ckpt_path")
    if isinstance(ckpt, str) and ckpt != "last":
        path = Path(ckpt)
        if not path.exists():
            raise FileNotFoundError(f"ckpt_path={ckpt} does not exist; pass a .ckpt file, or ckpt_path=last")
        sharded = (path / ".metadata").exists() or (path / "meta.pt").exists()  # an FSDP sharded checkpoint
        if path.is_dir() and not sharded:
            hint = (
                f"to resume that run pass run_dir={ckpt}"
                if (path / "checkpoints").is_dir()
                else "to start from released weights pass init_from=FOLDER"
            )
            raise ValueError(f"ckpt_path={ckpt} is a folder, not a checkpoint file; {hint}")
    targets = OmegaConf.to_container(cfg.targets, resolve=True) if cfg.get("targets") else {}
    for key, value in _teacher_paths(targets, "targets"):
        path = Path(value).expanduser()
        looks_local = value.startswith((".", "/", "~")) or path.suffix in (".pt", ".pth", ".th", ".ckpt")
        if looks_local and not path.is_file():
            raise FileNotFoundError(f"{key}={value} does not exist; pass the teacher's file")


def build_teachers(cfg: Any) -> dict[str, Any]:
    """Instantiate ``cfg.targets`` (loading teacher weights), turning a failure into one line naming the key."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    teachers: dict[str, Any] = {}
    for role in cfg.targets:
        try:
            teachers[role] = instantiate(cfg.targets[role], _convert_="all")
        except InstantiationException as e:
            cause = e.__cause__ or e
            text = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
            node = cfg.targets[role]
            if node is not None and "weights" in node:
                # The teacher's own advice names its Python argument; a `mert pretrain` user sets a config key.
                text = re.sub(r"\w+\(weights='([^']*)'\)", rf"targets.{role}.weights=\1", text)
                if f"targets.{role}.weights" not in text:
                    text += f"; set targets.{role}.weights=PATH to a local copy of the weights"
            raise ValueError(f"targets.{role} could not be built: {text}") from cause
    return teachers


# ----------------------------------------------------------------------------------------------------- the lock
class RunFolderBusy(ValueError):
    """Another process trains in this run folder."""


@contextlib.contextmanager
def lock_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` while training: a second process in the same folder is refused, naming the first
    (process id, host, start time from ``run_dir/.lock.owner``). The lock is an OS lock, so a killed process
    frees it."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(run_dir / ".lock"))
    owner = run_dir / ".lock.owner"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        who = "another process"
        with contextlib.suppress(OSError, ValueError, KeyError):
            info = json.loads(owner.read_text())
            who = f"process {info['pid']} on {info['host']} (started {info['started']})"
        raise RunFolderBusy(
            f"run_dir={run_dir} is in use by {who}; wait for it to finish or stop it, or pass another run_dir"
        ) from None
    try:
        from mert.fileio import write_json_atomic

        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        write_json_atomic(owner, {"pid": os.getpid(), "host": socket.gethostname(), "started": started})
        yield
    finally:
        with contextlib.suppress(OSError):
            owner.unlink()
        lock.release()


# ----------------------------------------------------------------------------------------------------- records
def write_launch(run_dir: Path, config_yaml: str, overrides: Sequence[str]) -> Path:
    """``run_dir/launches/NNN-YYYYmmddTHHMMSSZ/{config.yaml,overrides.yaml}``: what each launch ran with."""
    from mert.fileio import write_text_atomic

    folder = run_dir / "launches"
    folder.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name.split("-", 1)[0]) for p in folder.iterdir() if p.name.split("-", 1)[0].isdigit()]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    launch = folder / f"{max(numbers, default=0) + 1:03d}-{stamp}"
    launch.mkdir()
    write_text_atomic(launch / "config.yaml", config_yaml)
    write_text_atomic(launch / "overrides.yaml", "".join(f"- {json.dumps(o)}\n" for o in overrides) or "[]\n")
    return launch


_FILE_LOGGERS = ("mert", "lightning.pytorch", "lightning.fabric", "mert.runlog")
# What `mert pretrain` prints on the console (run folder, stops, "done") also goes to train.log through this
# logger, which does not propagate: the console has it already.
RUN_LOG = logging.getLogger("mert.runlog")
RUN_LOG.propagate = False
RUN_LOG.setLevel(logging.INFO)


def say(message: str, *, err: bool = False) -> None:
    """Print ``message`` (stdout, or stderr) and copy it to the run's ``train.log``."""
    import sys

    print(message, file=sys.stderr if err else sys.stdout, flush=True)
    RUN_LOG.info(message)


@contextlib.contextmanager
def attach_log_file(path: Path) -> Iterator[None]:
    """Copy the ``mert`` and Lightning loggers' records to ``path`` (appended, one file per run folder) while the
    block runs. Console output is the CLI's business; this adds a file handler only."""
    from mert.fileio import check_target

    check_target(path)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    loggers = [logging.getLogger(n) for n in _FILE_LOGGERS]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        handler.close()


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip")


def quiet_lightning() -> None:
    """Drop Lightning's advertising tips and the "checkpoint directory not empty" warning that every resume
    would print (a resumed run's checkpoint folder is never empty)."""
    import warnings

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in lg.filters):
            lg.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")

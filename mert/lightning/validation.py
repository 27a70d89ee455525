"""Validation during pretraining: the held-out dataset (``data.valid``), its rank split, and the checkpoint rule.

Shape legend: ``b`` batch, ``l`` samples.

Evaluations must be comparable with each other, so nothing here depends on the step, the run seed or the global
RNG: manifest crops are drawn from ``(VALID_SEED, index)`` and masks from ``VALID_SEED`` and each item's index
(:meth:`mert.lightning.module.PretrainModule.validation_step`). Two runs with other seeds are therefore scored on
the same crops and the same masked frames.

Under DDP every rank evaluates a disjoint part of the set: a fixed order of the items, dealt round-robin, padded
with empty places so that every rank runs the same number of batches (a DDP forward can hold collective calls,
so ranks must make the same number of them). Padding is never scored and never counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Sampler

from mert.data.datasets import collate_audio
from mert.data.remote import is_url

try:
    import lightning.pytorch as pl
except ImportError as e:  # pragma: no cover - the train extra is missing
    raise ImportError("training needs the train extra: pip install 'mert[train]'") from e

__all__ = [
    "VALID_SEED",
    "ValidSampler",
    "LoggingStepAfterResume",
    "build_valid_dataset",
    "check_monitor_names",
    "check_monitors",
    "collate_valid",
    "monitored_checkpoints_after_validation",
    "valid_schedule",
]

VALID_SEED = 1_000_003  # crops, item order and masks of every evaluation; independent of the run's seed
_PAD = -1  # a sampler place with no item (equal batch counts over ranks)


def _select(cfg: Any, key: str) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)


def _training_crop_seconds(cfg: Any, training: Any) -> tuple[float, float]:
    """Crop length and shortest file of the training data: a manifest's ``crop_seconds``/``min_seconds``, the
    synthetic clips' ``seconds``, the training shards' ``segment_seconds``/``min_seconds``; else 5 s and 3 s."""
    crop = _select(cfg, "data.dataset.crop_seconds")
    shortest = _select(cfg, "data.dataset.min_seconds")
    if crop is None:
        crop = _select(cfg, "data.dataset.seconds")
    info = getattr(training, "info", None) or {}
    if crop is None:
        crop = info.get("segment_seconds")
    if shortest is None:
        shortest = info.get("min_seconds")
    crop = float(crop) if crop is not None else 5.0
    shortest = float(shortest) if shortest is not None else min(3.0, crop)
    return crop, min(shortest, crop)


def valid_schedule(cfg: Any) -> tuple[int, int | None]:
    """``(data.valid_every_n_steps, data.valid_max_batches)``, checked; a data group without the keys gets
    ``(1000, None)``: every 1000 optimiser steps, the whole set."""
    every = _select(cfg, "data.valid_every_n_steps")
    every = 1000 if every is None else every
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ValueError(f"data.valid_every_n_steps must be a positive number of optimiser steps, got {every!r}")
    most = _select(cfg, "data.valid_max_batches")
    if most is not None and (not isinstance(most, int) or isinstance(most, bool) or most < 1):
        raise ValueError(f"data.valid_max_batches must be a positive number of batches or null (all), got {most!r}")
    return every, most


def build_valid_dataset(cfg: Any, training: Any = None, sample_rate: int | None = None) -> Dataset | None:
    """The validation dataset named by ``data.valid``, or None when it is unset.

    ``data.valid`` is a manifest TSV (``mert data manifest --valid-percent`` writes ``valid.tsv``): one crop per
    file, drawn from ``(VALID_SEED, index)`` so every evaluation reads the same audio, of
    ``data.valid_crop_seconds`` (default: the training crop), files shorter than ``data.valid_min_seconds``
    (default: the training minimum) skipped and counted. Or a shard folder, an ``index.json`` or one ``.tar``
    written by ``mert data shard``: whole segments, with the shards' cached targets if they have them; or a
    shard URL (``s3://``, ``https://``, ``pipe:``), copied once to ``$MERT_CACHE/shards`` and read from there.

    Args:
        cfg: the composed run config.
        training: the training dataset (its crop length and shard index are the defaults).
        sample_rate: the encoder's rate; None: ``model.sample_rate``.
    Returns:
        A map-style dataset of mert items (``CropDataset`` or ``ShardDataset``), or None.
    Raises:
        ValueError: a URL that cannot be copied, a value that is not a path, an unusable manifest or bad crop
            settings.
        FileNotFoundError: the path does not exist.
    """
    from mert.data.datasets import CropDataset
    from mert.data.shards import ShardDataset

    source = _select(cfg, "data.valid")
    if source is None:
        return None
    if not isinstance(source, str) or not source:
        raise ValueError(f"data.valid must be the path of a manifest (.tsv) or of a shard folder, got {source!r}")
    if is_url(source):
        # A validation set is read whole at every evaluation, by random access: copy it once to the local cache.
        from mert.data.streaming import download_shards

        options = _select(cfg, "data.storage_options") or {}
        if not isinstance(options, dict):
            from omegaconf import OmegaConf

            options = OmegaConf.to_container(options, resolve=True)
        try:
            source = str(download_shards(source, storage_options=options))
        except Exception as e:  # unreachable, missing, refused: one line naming the key, before any training
            url = _select(cfg, "data.valid")
            raise ValueError(f"data.valid={url} could not be copied to the local cache: {e}") from None
    valid_schedule(cfg)
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"data.valid={source} does not exist; pass a manifest (`mert data manifest DIR --valid-percent 5` writes "
            "valid.tsv) or a shard folder (`mert data shard valid.tsv --out DIR`)"
        )
    rate = int(sample_rate if sample_rate is not None else _select(cfg, "model.sample_rate"))
    if path.is_dir() or path.suffix in (".json", ".tar"):
        try:
            return ShardDataset(path, sample_rate=rate)
        except ValueError as e:
            raise ValueError(f"data.valid={source}: {e}") from None
    if path.stat().st_size == 0:
        raise ValueError(f"data.valid={source} is empty, not a manifest; make one with `mert data manifest DIR`")
    crop, shortest = _training_crop_seconds(cfg, training)
    crop_key, min_key = _select(cfg, "data.valid_crop_seconds"), _select(cfg, "data.valid_min_seconds")
    crop = float(crop_key) if crop_key is not None else crop
    shortest = float(min_key) if min_key is not None else min(shortest, crop)
    try:
        dataset = CropDataset(str(path), sample_rate=rate, crop_seconds=crop, min_seconds=shortest, seed=VALID_SEED)
    except ValueError as e:
        raise ValueError(f"data.valid: {e}") from None
    if dataset.num_filtered:
        from mert.lightning.runfolder import say

        say(
            f"mert pretrain: validation skips {dataset.num_filtered} of {dataset.num_filtered + len(dataset)} files "
            f"of {source} shorter than {shortest:g} s (data.valid_min_seconds)"
        )
    return dataset


class ValidSampler(Sampler):
    """One rank's places in the validation order: item indices, and ``-1`` for an empty place.

    The order is a permutation of the items drawn from ``seed``, cut to its first ``max_items``; rank ``r`` takes
    places ``r, r + world, ...``, and ranks short of ``ceil(n / world)`` places get an empty one at the end.
    The union over ranks is the cut order exactly once, whatever the number of ranks.
    """

    def __init__(
        self,
        num_items: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        max_items: int | None = None,
        seed: int = VALID_SEED,
    ):
        if num_items <= 0:
            raise ValueError("the validation dataset is empty")
        order = np.random.default_rng(seed).permutation(num_items)
        if max_items is not None:
            order = order[:max_items]
        mine = order[rank::world_size].tolist()
        per_rank = -(-len(order) // world_size)
        self.indices: list[int] = mine + [_PAD] * (per_rank - len(mine))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


class PaddedDataset(Dataset):
    """``dataset[index]``, and a padding marker for the sampler's empty places."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        return {"pad": True} if index == _PAD else self.dataset[index]


def collate_valid(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """:func:`~mert.data.datasets.collate_audio` of the real items (padding dropped, not counted as skipped):
    ``{"wav": (b, l), "lengths": (b,), "index": (b,), "n_skipped": int, ["targets"]}``."""
    return collate_audio([it for it in items if not (it is not None and it.get("pad"))])


def _checkpoint_nodes(callbacks: Any) -> Iterator[tuple[str, Any]]:
    for name, node in (callbacks or {}).items():
        target = str(node.get("_target_", "")) if hasattr(node, "get") else ""
        if target.endswith("ModelCheckpoint"):
            yield str(name), node


def check_monitors(cfg: Any) -> None:
    """Refuse a checkpoint monitoring a ``val/`` metric in a run without ``data.valid`` (it would never save)."""
    if _select(cfg, "data.valid") is not None:
        return
    for name, node in _checkpoint_nodes(_select(cfg, "callbacks")):
        monitor = node.get("monitor")
        if isinstance(monitor, str) and monitor.startswith("val/"):
            raise ValueError(
                f"callbacks.{name}.monitor={monitor} needs validation data: set data.valid=MANIFEST_OR_SHARDS, "
                f"or drop the monitor (callbacks.{name}.monitor=null)"
            )


def check_monitor_names(cfg: Any, names: list[str]) -> None:
    """Refuse a checkpoint monitoring a ``val/`` metric that validation does not log (Lightning would stop the run
    at the first evaluation), naming the ones it does."""
    for name, node in _checkpoint_nodes(_select(cfg, "callbacks")):
        monitor = node.get("monitor")
        if isinstance(monitor, str) and monitor.startswith("val/") and monitor not in names:
            raise ValueError(
                f"callbacks.{name}.monitor={monitor} is not a validation metric of this run; choose one of "
                f"{', '.join(names)}"
            )


def monitored_checkpoints_after_validation(callbacks: Any) -> Any:
    """The callbacks config with every ``ModelCheckpoint`` that monitors a ``val/`` metric saving right after each
    validation instead of every N training steps: a step-triggered save would rank the weights of that step by the
    score of earlier weights. Returns a copy; the run's recorded config keeps what the user wrote."""
    from omegaconf import OmegaConf, open_dict

    out = OmegaConf.create(OmegaConf.to_container(callbacks, resolve=True)) if callbacks is not None else callbacks
    for _, node in _checkpoint_nodes(out):
        monitor = node.get("monitor")
        if isinstance(monitor, str) and monitor.startswith("val/"):
            with open_dict(node):
                # ModelCheckpoint saves its top k at the end of a validation when triggered by epochs; validation is
                # not per epoch here (the stream is endless), and every_n_epochs=1 makes each validation count.
                node.every_n_train_steps = None
                node.train_time_interval = None
                node.every_n_epochs = 1
    return out


class LoggingStepAfterResume(pl.Callback):
    """Keep the loggers' step equal to the optimiser step after a resume at a validation step.

    A run resumed from a checkpoint saved when training ended (``last.ckpt``) at a step where validation was due
    passes once through Lightning's "validation already ran" path, which counts one optimiser step more for the
    loggers without training one: every later row would be written one step late. Between micro-batches the two
    counters are equal in every other case, so this sets one to the other before anything logs (place it first).
    """

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        loop = trainer.fit_loop.epoch_loop
        if loop._batches_that_stepped != trainer.global_step:
            loop._batches_that_stepped = trainer.global_step

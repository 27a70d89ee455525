"""Data plumbing for training: a resumable, rank-aware infinite sampler and the `AudioDataModule`.

Training is counted in steps, not epochs, so the sampler is an endless stream of global sample positions:
position ``p`` is sample ``perm_e[p % N]`` of epoch ``e = p // N``, with ``perm_e`` a permutation drawn from
``(seed, e)``. Global micro-batch ``j`` covers positions ``[j G, (j + 1) G)`` with ``G = micro_batch * world``;
rank ``r`` takes the ``r``-th slice of ``micro_batch`` positions. A resume restarts at the number of positions
consumed, so it continues the same stream even with another micro-batch size or number of ranks (as long as
``G`` divides that number), and the samples of a global batch do not depend on how it is split over ranks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

try:
    import lightning.pytorch as pl
except ImportError as e:  # pragma: no cover - the train extra is missing
    raise ImportError("training needs the train extra: pip install 'mert[train]'") from e

from mert.data.datasets import collate_audio

__all__ = ["StreamSampler", "AudioDataModule", "derive_accumulation"]


def derive_accumulation(global_batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """Gradient-accumulation steps so that ``micro * world * accumulation == global`` exactly."""
    per_pass = micro_batch_size * world_size
    if global_batch_size < per_pass or global_batch_size % per_pass:
        raise ValueError(
            f"global_batch_size {global_batch_size} must be a positive multiple of micro_batch_size "
            f"{micro_batch_size} x world size {world_size} = {per_pass}; adjust data.global_batch_size or "
            "data.micro_batch_size"
        )
    return global_batch_size // per_pass


class StreamSampler(Sampler):
    """Endless, deterministic, rank-sliced stream of ``(index, epoch, position)`` tuples."""

    def __init__(
        self,
        num_items: int,
        *,
        micro_batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_micro_batch: int = 0,
        shuffle: bool = True,
    ):
        if num_items <= 0:
            raise ValueError("the training dataset is empty")
        self.n, self.micro, self.seed = num_items, micro_batch_size, seed
        self.rank, self.world, self.start, self.shuffle = rank, world_size, start_micro_batch, shuffle
        self._perm_epoch, self._perm = -1, np.arange(num_items)

    def _index(self, position: int) -> tuple[int, int]:
        epoch = position // self.n
        if self.shuffle and epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        return int(self._perm[position % self.n]), epoch

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        g = self.micro * self.world
        j = self.start
        while True:
            base = j * g + self.rank * self.micro
            for p in range(base, base + self.micro):
                index, epoch = self._index(p)
                yield index, epoch, p
            j += 1


class _EpochIndexed(Dataset):
    """Adapts ``(index, epoch, position)`` keys to datasets with ``set_epoch`` and adds the position."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any] | None:
        index, epoch, position = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        item = self.dataset[index]
        if item is not None:
            item["position"] = position
        return item


def collate_with_positions(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    batch = collate_audio(items)
    batch["position"] = torch.tensor([it["position"] for it in items if it is not None], dtype=torch.long)
    return batch


class AudioDataModule(pl.LightningDataModule):
    """Batches of audio for pretraining.

    Args:
        dataset: a map-style dataset yielding mert item dicts (``CropDataset``, ``ShardDataset``,
            ``SyntheticDataset``), or a ``StreamingShards`` that yields whole micro-batches.
        global_batch_size: clips per optimiser step over all ranks (MERT-v1 training hyper-parameters: 1024 for 95M).
        micro_batch_size: clips per forward pass on one rank; accumulation is derived.
        num_workers: DataLoader worker processes per rank.
        seed: drives the order of samples (and, through positions, crops, masks and mixing).
        valid_dataset: held-out data for the validation loop (``data.valid``), or None for no validation.
        valid_max_items: evaluate only the first items of the fixed validation order (None: all).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        global_batch_size: int,
        micro_batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
        valid_dataset: Dataset | None = None,
        valid_max_items: int | None = None,
    ):
        super().__init__()
        self.dataset = dataset
        self.valid_dataset, self.valid_max_items = valid_dataset, valid_max_items
        self.global_batch_size, self.micro_batch_size = global_batch_size, micro_batch_size
        self.num_workers, self.seed, self.pin_memory = num_workers, seed, pin_memory

    def accumulation(self, world_size: int) -> int:
        return derive_accumulation(self.global_batch_size, self.micro_batch_size, world_size)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        module = trainer.lightning_module if trainer is not None else None
        # Stream positions already trained on (restored from the checkpoint before this is called). Counted in
        # samples, so a resume with another micro-batch size or number of ranks continues the same stream.
        seen = int(getattr(module, "samples_seen", 0))
        per_pass = self.micro_batch_size * world
        if seen % per_pass:
            raise ValueError(
                f"the checkpoint has consumed {seen} samples, not a multiple of micro_batch_size x ranks = {per_pass}; "
                "resume with a micro-batch size and number of ranks whose product divides it"
            )
        start = seen // per_pass
        if isinstance(self.dataset, IterableDataset):
            # A shard stream (URLs): each rank and worker reads shards of its own and batches them itself.
            self.dataset.check_layout(self.num_workers, world)
            self.dataset.plan(
                rank=rank, world_size=world, micro_batch_size=self.micro_batch_size, start_micro_batch=start,
                seed=self.seed,
            )  # fmt: skip
            return DataLoader(
                self.dataset,
                batch_size=None,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                persistent_workers=self.num_workers > 0,
            )
        sampler = StreamSampler(
            len(self.dataset),
            micro_batch_size=self.micro_batch_size,
            seed=self.seed,
            rank=rank,
            world_size=world,
            start_micro_batch=start,
        )
        return DataLoader(
            _EpochIndexed(self.dataset),
            batch_size=self.micro_batch_size,
            sampler=sampler,
            collate_fn=collate_with_positions,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader | list:
        """This rank's disjoint part of the validation set, in micro-batches (:class:`ValidSampler`); ``[]`` without
        one (the trainer's ``limit_val_batches=0`` keeps Lightning from asking)."""
        from mert.lightning.validation import VALID_SEED, PaddedDataset, ValidSampler, collate_valid

        if self.valid_dataset is None:
            return []
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = ValidSampler(len(self.valid_dataset), rank=rank, world_size=world, max_items=self.valid_max_items)
        return DataLoader(
            PaddedDataset(self.valid_dataset),
            batch_size=self.micro_batch_size,
            sampler=sampler,
            collate_fn=collate_valid,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            # Workers start for each evaluation and exit after it: between evaluations the run holds only the
            # training loader's processes, as without validation.
            persistent_workers=False,
            # Its own generator: creating the loader's iterator must not draw from the training process's RNG.
            generator=torch.Generator().manual_seed(VALID_SEED),
        )

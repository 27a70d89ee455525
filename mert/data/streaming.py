"""Shards read as streams: object storage (``s3://``, ``gs://``), HTTP, ``file://``, local folders and ``pipe:``.

``data.shards=s3://bucket/corpus`` trains on shards that only exist in a bucket: every process downloads whole
shards (one request each) and reads their samples from memory, so no file system has to be mounted on the nodes.

Who reads what. A run of ``R`` ranks with ``W`` loader workers each has ``S = R W`` readers, *slots*. In epoch
``e`` the shard list is permuted by a generator seeded with ``(seed, e)`` and slot ``s`` takes every ``S``-th
shard of that permutation from position ``s``: slots read disjoint shards. A slot loads ``shuffle_shards``
consecutive shards of its list at a time and yields their samples in an order seeded by ``(seed, e, s, group)``;
its stream is endless (epoch after epoch) and cut into micro-batches. A slot's stream depends only on the seed,
the shard list and ``S``, never on the transport: the same shards in a bucket, behind HTTP or in a local folder
give the same samples at every step.

Resume. The DataLoader takes micro-batches from its workers in turn, so micro-batch ``k`` of rank ``r`` comes from
slot ``r W + (k mod W)``. A run resumed at micro-batch ``k`` (the checkpoint's sample count) gives each slot the
number of micro-batches it had delivered, passes over that many samples (whole groups by the sample counts of
``index.json``, without downloading them), and rotates its workers so that the first new micro-batch comes from
the slot that was next. With the same ranks, ``data.num_workers``, ``data.micro_batch_size``, seed and shards, the
resumed run sees exactly the samples an uninterrupted run sees. With another layout the streams are cut anew:
each new slot passes over its share of the samples consumed, so the run keeps its place in the epoch count but
samples of the current epoch may be seen twice or not at all.

Failures. A shard whose download fails is retried ``retries`` times (waits doubling from ``retry_wait`` seconds);
then its samples are skipped, counted in the batch's ``n_skipped`` (the trainer's ``train/skipped_files``) and
logged, and training goes on. A corrupt sample is skipped the same way. A shard that failed before a resume
point and reads fine after it shifts that slot's stream by its samples.

What comes from libraries: fsspec (with s3fs for ``s3://``, gcsfs for ``gs://``, aiohttp for ``http(s)://``)
fetches shards and writes them (:func:`mert.data.remote.upload`); webdataset runs ``pipe:`` commands and expands
``{000000..000099}`` brace patterns; the standard library's ``tarfile`` indexes each downloaded shard in memory, so
members are read without copies. The reader assignment, order, resume, retries and counting are ours:
webdataset's own pipeline does not resume mid-epoch, and its splitters depend on the worker count in ways that do
not survive a restart.

Shape legend: ``b`` micro-batch, ``l`` samples, ``t`` frames.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from mert.data.datasets import SkipCounter, collate_audio
from mert.data.remote import fetch_bytes, is_url, url_join
from mert.data.shards import INDEX_NAME, ShardDataset, decode_sample

__all__ = ["StreamingShards", "download_shards", "open_shards", "shard_dataset"]

log = logging.getLogger("mert.data")


def _tar_samples(data: bytes, url: str) -> list[tuple[str, dict[str, memoryview]]]:
    """``[(key, {suffix: member bytes})]`` of a tar shard held in memory, in file order (WebDataset grouping:
    the key is the name up to the first dot of its last part). Members are views of ``data``, not copies.

    Raises:
        tarfile.TarError, ValueError: a damaged or truncated shard (the caller retries, then skips it).
    """
    view = memoryview(data)
    out: dict[str, dict[str, memoryview]] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:  # BytesIO shares the bytes until written
        for info in tf:
            if not info.isfile():
                continue
            if info.offset_data + info.size > len(data):
                raise ValueError(f"{url} is truncated at member {info.name}")
            folder, _, base = info.name.rpartition("/")
            stem, dot, suffix = base.partition(".")
            if not dot or stem.startswith("__"):  # no suffix, or WebDataset metadata such as __index__
                continue
            key = f"{folder}/{stem}" if folder else stem
            members = out.setdefault(key, {})
            if suffix in members:
                raise ValueError(f"{url}: member {info.name} appears twice")
            members[suffix] = view[info.offset_data : info.offset_data + info.size]
    return list(out.items())


def _expand(pattern: str) -> list[str]:
    from braceexpand import braceexpand

    return list(braceexpand(pattern))


def open_shards(
    source: str | os.PathLike | Sequence[str | os.PathLike], storage_options: Mapping[str, Any] | None = None
) -> tuple[list[str], list[int | None], dict[str, Any]]:
    """Shard URLs, their sample counts (None when unknown) and the ``index.json`` contents of a shard source.

    Args:
        source: a folder URL or path holding ``index.json`` (``s3://bucket/corpus``), an ``index.json`` URL, one
            tar URL or a brace pattern (``https://host/shard-{000000..000099}.tar``, ``pipe:curl -s URL``), or a
            list of them.
        storage_options: fsspec options (``endpoint_url``, ``anon``, ...).
    Raises:
        FileNotFoundError: no ``index.json`` at a folder URL. ValueError: no shards.
    """
    opts = dict(storage_options or {})
    sources = [os.fspath(s) for s in source] if isinstance(source, (list, tuple)) else [os.fspath(source)]
    urls: list[str] = []
    for s in sources:
        urls.extend(_expand(s) if ("{" in s and ".." in s) else [s])
    info: dict[str, Any] = {}
    if len(urls) == 1 and not urls[0].startswith("pipe:") and not urls[0].endswith(".tar"):
        index_url = urls[0] if urls[0].endswith(".json") else url_join(urls[0], INDEX_NAME)
        folder = index_url[: -len(index_url.rsplit("/", 1)[-1])].rstrip("/")
        try:
            info = json.loads(fetch_bytes(index_url, opts))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no {INDEX_NAME} at {index_url}: write the shards with `mert data shard --out {folder}`, or list "
                f"them as a pattern such as {url_join(folder, 'shard-{000000..000009}.tar')}"
            ) from None
        except (OSError, ValueError) as e:
            raise ValueError(f"{index_url} could not be read as a shard index ({e})") from None
        shards = info.get("shards") if isinstance(info, dict) else None
        if not isinstance(shards, list) or not all(isinstance(x, dict) and "name" in x for x in shards):
            raise ValueError(f"{index_url} is not a shard index written by `mert data shard` (no 'shards' list)")
        urls = [url_join(folder, str(x["name"])) for x in shards]
        sizes: list[int | None] = [int(x["num_samples"]) if "num_samples" in x else None for x in shards]
    else:
        sizes = [None] * len(urls)
        first = urls[0] if urls else ""
        if first and not first.startswith("pipe:"):
            # An index beside listed tars gives their sample counts (resume then skips without downloading).
            try:
                found = json.loads(fetch_bytes(url_join(first.rsplit("/", 1)[0], INDEX_NAME), opts))
                counts = {str(x["name"]): int(x["num_samples"]) for x in found.get("shards", [])}
                sizes = [counts.get(u.rsplit("/", 1)[-1]) for u in urls]
                info = found
            except Exception:  # no index beside them: counts stay unknown
                pass
    if not urls:
        raise ValueError(f"no shards in {source!r}")
    return urls, sizes, info


def download_shards(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    dest: str | os.PathLike | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Path:
    """Copy a (small) shard set to a local folder once, for readers that need random access (validation).

    Args:
        source: see :func:`open_shards`.
        dest: the folder; default ``$MERT_CACHE/shards/<digest of the source>`` (``~/.cache/mert``).
        storage_options: fsspec options.
    Returns:
        The folder, holding the shards and the source's ``index.json`` (when it has one). Shards already there
        are reused (each file is written whole or not at all), so a second run downloads nothing.
    """
    import hashlib

    from mert.download import default_cache_dir
    from mert.fileio import write_bytes_atomic, write_json_atomic

    urls, _, info = open_shards(source, storage_options)
    if dest is None:
        key = hashlib.sha256(json.dumps([str(source), urls], default=str).encode()).hexdigest()[:16]
        dest = default_cache_dir() / "shards" / key
    folder = Path(dest).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    names = [u.rsplit("/", 1)[-1] for u in urls]
    if len(set(names)) != len(names):
        raise ValueError(f"shards of {source!r} share file names; give them distinct names to copy them")
    for url, name in zip(urls, names):
        if not (folder / name).is_file():
            write_bytes_atomic(folder / name, fetch_bytes(url, storage_options))
    if info:
        write_json_atomic(folder / INDEX_NAME, info)
    return folder


class StreamingShards(IterableDataset, SkipCounter):
    """Endless, resumable stream of micro-batches from shards read whole, per rank and loader worker.

    Iterating yields collated micro-batches (``mert.data.collate_audio`` plus ``position``), so the DataLoader is
    built with ``batch_size=None``. :meth:`plan` must be called first (the data module does it) with the rank
    layout and the micro-batch to start from.

    Args:
        source: see :func:`open_shards`.
        sample_rate: the rate the consumer expects; an index at another rate is refused.
        storage_options: fsspec options for the URLs (credentials are better left to the environment).
        shuffle_shards: shards mixed in memory by one reader (the sample-order window; memory: that many shards
            per loader worker).
        retries: further attempts at a shard whose download fails, before its samples are skipped.
        retry_wait: seconds before the first retry; doubled at each one.
    Attributes:
        urls, sizes, info: the shards, their sample counts (None when unknown) and the index contents.
        roles: target roles of the samples.
        failed_shards: shards given up on by this process.
    """

    def __init__(
        self,
        source: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        sample_rate: int = 24000,
        storage_options: Mapping[str, Any] | None = None,
        shuffle_shards: int = 2,
        retries: int = 3,
        retry_wait: float = 1.0,
    ):
        SkipCounter.__init__(self)
        if int(shuffle_shards) < 1 or int(retries) < 0 or float(retry_wait) < 0:
            raise ValueError(
                "need shuffle_shards >= 1, retries >= 0, retry_wait >= 0; "
                f"got {shuffle_shards}, {retries}, {retry_wait}"
            )
        self.storage_options = dict(storage_options or {})
        self.urls, self.sizes, self.info = open_shards(source, self.storage_options)
        self.sample_rate = int(sample_rate)
        self.shuffle_shards, self.retries, self.retry_wait = int(shuffle_shards), int(retries), float(retry_wait)
        rate = self.info.get("sample_rate")
        if rate is not None and int(rate) != self.sample_rate:
            raise ValueError(
                f"shards {source} hold {rate} Hz audio and targets, but sample_rate={self.sample_rate} was asked for; "
                f"write shards at {self.sample_rate} Hz (mert data shard --sample-rate)"
            )
        self.roles: list[str] = [str(r) for r in self.info.get("roles", [])]
        if not self.info:  # no index: the first shard tells the roles
            first = [name for _, members in self._load(self.urls[0]) for name in members]
            self.roles = sorted({k[len("targets.") : -len(".npy")] for k in first if k.startswith("targets.")})
        # Member names in decode_sample's order: audio, metadata, then each role's targets.
        self._members = ["audio.npy", "json", *(f"targets.{r}.npy" for r in self.roles)]
        self.failed_shards = 0
        self._layout: dict[str, int] | None = None

    @property
    def num_samples(self) -> int | None:
        """Samples in the shards, when the index tells (no ``__len__``: the stream is endless)."""
        return sum(self.sizes) if all(s is not None for s in self.sizes) else None  # type: ignore[arg-type]

    def plan(
        self, *, rank: int = 0, world_size: int = 1, micro_batch_size: int, start_micro_batch: int = 0, seed: int = 0
    ) -> None:
        """Set the reader layout before iterating: this rank, the number of ranks, the micro-batch size, the
        rank's micro-batches already consumed (a resume) and the seed of the order."""
        if micro_batch_size < 1 or not 0 <= rank < world_size or start_micro_batch < 0:
            raise ValueError(f"bad stream layout: rank {rank} of {world_size}, micro-batch {micro_batch_size}")
        self._layout = dict(
            rank=rank, world=world_size, micro=micro_batch_size, start=start_micro_batch, seed=int(seed)
        )

    def check_layout(self, num_workers: int, world_size: int) -> None:
        """Refuse a layout with more readers than shards (some readers would have nothing to read)."""
        readers = max(1, num_workers) * world_size
        if readers > len(self.urls):
            raise ValueError(
                f"{len(self.urls)} shard(s) cannot feed {readers} readers ({world_size} rank(s) x "
                f"{max(1, num_workers)} loader worker(s)): every reader streams whole shards of its own. Write more, "
                "smaller shards (mert data shard --shard-size) or lower data.num_workers"
            )

    # ------------------------------------------------------------------ order
    def slot_groups(self, slot: int, num_slots: int, seed: int) -> Iterator[tuple[int, int, list[int]]]:
        """``(epoch, group, shard indices)`` read by reader ``slot`` of ``num_slots``, endlessly."""
        n = len(self.urls)
        epoch = 0
        while True:
            mine = np.random.default_rng([seed, epoch]).permutation(n)[slot::num_slots]
            for g, a in enumerate(range(0, len(mine), self.shuffle_shards)):
                yield epoch, g, [int(i) for i in mine[a : a + self.shuffle_shards]]
            epoch += 1

    # ------------------------------------------------------------------ reading
    def _load(self, url: str) -> list[tuple[str, dict[str, bytes]]]:
        """The samples of one shard, retried on failure; ``[]`` when it cannot be read (counted)."""
        wait = self.retry_wait
        for attempt in range(self.retries + 1):
            try:
                return _tar_samples(fetch_bytes(url, self.storage_options), url)
            except Exception as e:  # network, server, truncated tar, failing command: retry, then skip
                if attempt == self.retries:
                    self.failed_shards += 1
                    log.warning("shard %s failed %d time(s) (%s); skipping its samples", url, attempt + 1, e)
                    return []
                log.info("shard %s failed (%s); retrying in %.1f s", url, e, wait)
                time.sleep(wait)
                wait *= 2
        return []

    def _decode(self, key: str, members: Mapping[str, bytes], url: str) -> dict[str, Any] | None:
        try:
            return decode_sample(lambda m: members.get(self._members[m]), self.roles)
        except Exception as e:  # a corrupt sample: skip it, never stop training
            self.skip(f"{url}:{key}", str(e) or type(e).__name__)
            return None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._layout is None:
            raise RuntimeError("StreamingShards.plan(...) must be called before iterating")
        lay = self._layout
        worker = get_worker_info()
        workers, wid = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        k, micro = lay["start"], lay["micro"]
        # The new loader's first micro-batch (from worker 0) must be global micro-batch k, from reader k mod W.
        local = (wid + k) % workers
        slot, num_slots = lay["rank"] * workers + local, lay["world"] * workers
        delivered = -(-(k - local) // workers) if k > local else 0  # ceil: micro-batches this reader gave
        skip = delivered * micro
        position = skip  # samples of this reader's stream consumed so far
        items: list[dict[str, Any] | None] = []
        lost = 0  # samples of failed shards since the last micro-batch
        for epoch, group, shards in self.slot_groups(slot, num_slots, lay["seed"]):
            sizes = [self.sizes[i] for i in shards]
            if skip and all(s is not None for s in sizes) and skip >= sum(sizes):  # type: ignore[arg-type]
                skip -= sum(sizes)  # type: ignore[arg-type]
                continue
            samples: list[tuple[str, dict[str, bytes], str]] = []
            for i in shards:
                got = self._load(self.urls[i])
                if not got:
                    lost += self.sizes[i] or 0
                samples.extend((key, members, self.urls[i]) for key, members in got)
            order = np.random.default_rng([lay["seed"], epoch, slot, group]).permutation(len(samples))
            for j in order:
                if skip:
                    skip -= 1
                    continue
                key, members, url = samples[int(j)]
                item = self._decode(key, members, url)
                if item is not None:
                    # Unique over all readers and steps: masks and mixing are seeded from it.
                    item["position"] = position * num_slots + slot
                    item["index"] = int(j)
                    item["key"] = key
                items.append(item)
                position += 1
                if len(items) == micro:
                    yield self._collate(items, lost)
                    items, lost = [], 0

    @staticmethod
    def _collate(items: list[dict[str, Any] | None], lost: int) -> dict[str, Any]:
        batch = collate_audio(items)
        kept = [it for it in items if it is not None]
        batch["n_skipped"] += lost
        batch["position"] = torch.tensor([it["position"] for it in kept], dtype=torch.long)
        batch["keys"] = [it["key"] for it in kept]
        return batch


def shard_dataset(
    path_or_dir_or_list_of_tars: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    sample_rate: int = 24000,
    streaming: bool | str = "auto",
    storage_options: Mapping[str, Any] | None = None,
    shuffle_shards: int = 2,
    retries: int = 3,
    retry_wait: float = 1.0,
) -> ShardDataset | StreamingShards:
    """The dataset of ``data=shards``: a map-style :class:`ShardDataset` for local shards, a
    :class:`StreamingShards` for URLs (or for local shards with ``streaming=True``).

    Local shards are read by random access (any micro-batch size or rank count resumes the same stream); URLs are
    streamed whole-shard by each reader (see the module docstring for the order and what a resume repeats).
    """
    if streaming not in (True, False, "auto"):
        raise ValueError(f"data.streaming must be auto, true or false, got {streaming!r}")
    sources = path_or_dir_or_list_of_tars
    urls = any(is_url(s) for s in (sources if isinstance(sources, (list, tuple)) else [sources]))
    if streaming is False and urls:
        raise ValueError(f"data.streaming=false reads local shards only, but {sources!r} is a URL")
    if urls or streaming is True:
        return StreamingShards(
            sources,
            sample_rate=sample_rate,
            storage_options=storage_options,
            shuffle_shards=shuffle_shards,
            retries=retries,
            retry_wait=retry_wait,
        )
    return ShardDataset(sources, sample_rate=sample_rate)

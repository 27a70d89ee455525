"""WebDataset-format tar shards of fixed audio segments, optionally with cached teacher targets.

Why fixed segments: cached targets must equal the targets a teacher computes on the fly for the same audio, and
teachers with memory (EnCodec's LSTM) give different codes for a crop than for the same samples inside a whole
file. So each file is cut into consecutive segments once, the teachers run on exactly those segments, and the
training sample is the whole segment (no further cropping).

Layout of ``out_dir``::

    shard-000000.tar, shard-000001.tar, ...   plain (uncompressed) tar files
    index.json                                shards, sample counts, sample rate, segment length, teacher roles

Members of one sample (WebDataset convention: the key is the name up to the first dot, members are consecutive)::

    {file:08d}_{segment:04d}.audio.npy             float32 (l,), mono, at the index's sample rate
    {file:08d}_{segment:04d}.json                  {"source", "start", "num_samples", "sample_rate", ...}
    {file:08d}_{segment:04d}.targets.ROLE.npy      (t, ...) targets of this segment, t = frame_lengths(l)

Audio is stored as float32 ``.npy`` rather than 16-bit audio so the samples read back are bit-identical to the
ones the teachers saw. ``ShardDataset`` reads members by seeking to offsets found by one scan of the tar
headers, so it is a map-style dataset (random access, resumable sampling) on any mounted file system.

Shape legend: ``b`` batch, ``l`` samples, ``t`` frames (75 Hz).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import tarfile
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mert.data.datasets import SkipCounter, load_entries
from mert.data.manifest import ManifestEntry
from mert.fileio import open_atomic, write_json_atomic
from mert.models.config import frame_lengths, receptive_field

__all__ = ["INDEX_NAME", "ShardDataset", "ShardWriteResult", "decode_sample", "write_shards"]

log = logging.getLogger("mert.data")

INDEX_NAME = "index.json"
_SHARD_NAME = "shard-{:06d}.tar"
_ROLE_RE = re.compile(r"^[A-Za-z0-9_-]+$")  # no dots: a dot would split the member name differently
_MAX_OPEN_SHARDS = 64  # file handles per process; thousands of shards x workers would exceed ulimit -n


@dataclass
class ShardWriteResult:
    """What :func:`write_shards` wrote.

    Attributes:
        out_dir: the shard folder (or URL).
        shards: tar files written, in order (URLs when written to object storage).
        shard_sizes: samples per shard.
        num_samples_written: segments written over all shards.
        num_files: source files that contributed at least one segment.
        seconds_written: audio written, seconds.
        roles: teacher roles stored with every sample.
        skipped: ``(path, reason)`` for source files left out.
    """

    out_dir: Path | str
    shards: list[Path | str] = field(default_factory=list)
    shard_sizes: list[int] = field(default_factory=list)
    num_samples_written: int = 0
    num_files: int = 0
    seconds_written: float = 0.0
    roles: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def num_shards(self) -> int:
        return len(self.shards)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _load_npy(data: bytes | memoryview) -> np.ndarray:
    """A writable array from ``.npy`` bytes, copied once (``np.load`` on a ``BytesIO`` copies twice)."""
    from numpy.lib import format as npy

    head = io.BytesIO(bytes(data[:4096]))  # the header; a longer one (thousands of dimensions) reads it all
    try:
        version = npy.read_magic(head)
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, fortran, dtype = read_header(head, max_header_size=4096)
    except ValueError:
        return np.load(io.BytesIO(bytes(data)), allow_pickle=False).copy()
    if dtype.hasobject:
        raise ValueError("the .npy member holds Python objects, which are never unpickled")
    count = int(np.prod(shape, dtype=np.int64))
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=head.tell())  # ValueError when truncated
    return arr.reshape(shape, order="F" if fortran else "C").copy(order="K")


class _ShardWriter:
    """Appends samples to ``shard-NNNNNN.tar`` files of ``shard_size`` samples; each shard appears atomically."""

    def __init__(self, out_dir: Path, shard_size: int, publish: Callable[[Path], str | Path] | None = None):
        self.out_dir, self.shard_size, self.publish = out_dir, shard_size, publish
        self.shards: list[Path] = []
        self.sizes: list[int] = []
        self._file: Any = None
        self._tar: tarfile.TarFile | None = None
        self._tmp: Any = None
        self._count = 0

    def _open(self) -> None:
        final = self.out_dir / _SHARD_NAME.format(len(self.shards))
        # Kept open across add() calls until the shard is full: the context is entered here, left in finish().
        self._tmp = open_atomic(final, text=False)
        self._file = self._tmp.__enter__()
        # USTAR with fixed owner and mtime: identical inputs give byte-identical shards.
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self._count = 0

    def add(self, key: str, members: Sequence[tuple[str, bytes]]) -> None:
        if self._tar is None:
            self._open()
        for suffix, data in members:
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        if self._count >= self.shard_size:
            self.finish()

    def finish(self) -> None:
        """Close the current shard and move it to its final name."""
        if self._tar is None:
            return
        self._tar.close()
        self._tmp.__exit__(None, None, None)  # flushed, fsynced, renamed: a shard appears complete or not at all
        final = self.out_dir / _SHARD_NAME.format(len(self.shards))
        self.shards.append(self.publish(final) if self.publish else final)
        self.sizes.append(self._count)
        self._tar = self._file = self._tmp = None

    def abort(self) -> None:
        """Drop a half-written shard (after an error), leaving the completed ones."""
        if self._tar is not None:
            err = RuntimeError("shard writing aborted")
            with contextlib.suppress(RuntimeError):
                self._tmp.__exit__(RuntimeError, err, None)  # removes the temporary file
            self._tar = self._file = self._tmp = None


@dataclass
class _Segment:
    key: str
    audio: np.ndarray  # (l,) float32
    meta: dict[str, Any]
    targets: dict[str, np.ndarray] = field(default_factory=dict)


def _expected_frames(teacher: Callable[[Tensor], Tensor], num_samples: int) -> int:
    """Frames a teacher must return: its own ``num_frames`` (mert Teachers) or MERT-v1's front end."""
    num_frames = getattr(teacher, "num_frames", None)
    return int(num_frames(num_samples)) if callable(num_frames) else int(frame_lengths(num_samples))


def _compute_targets(
    segments: list[_Segment], teachers: Mapping[str, Callable[[Tensor], Tensor]], batch_size: int, device: Any
) -> None:
    """Fill ``segment.targets``: teachers see ``(b, l)`` batches of equal-length segments (no padding)."""
    by_length: dict[int, list[_Segment]] = {}
    for s in segments:
        by_length.setdefault(s.audio.shape[0], []).append(s)
    for length, group in by_length.items():
        for i in range(0, len(group), batch_size):
            chunk = group[i : i + batch_size]
            x = torch.from_numpy(np.stack([s.audio for s in chunk])).to(device)  # (b, l)
            for role, teacher in teachers.items():
                with torch.inference_mode():
                    y = teacher(x)  # (b, t, ...)
                t = _expected_frames(teacher, length)
                if not isinstance(y, Tensor) or y.dim() < 2 or y.shape[0] != len(chunk) or y.shape[1] != t:
                    shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
                    raise ValueError(
                        f"teacher {role!r} must map a ({len(chunk)}, {length}) batch to ({len(chunk)}, {t}, ...) "
                        f"targets on the encoder's frame grid, got {shape}"
                    )
                y = y.detach().cpu().numpy()
                for j, s in enumerate(chunk):
                    s.targets[role] = y[j].copy()  # (t, ...)


# Whole-file teachers (EnCodec) run on windows this long, each with this much of the audio before it as context:
# bounded memory for any file length (EnCodec's first layers on a whole hour would need ~11 GB). Files up to the
# window get exactly the whole-file targets; beyond it, the LSTM restarts 20 s before each window.
WHOLE_FILE_WINDOW_SECONDS = 120.0
WHOLE_FILE_CONTEXT_SECONDS = 20.0


def _whole_file_targets(role: str, teacher: Any, wav: Tensor, device: Any) -> np.ndarray:
    """``(T, ...)`` targets of the whole file ``wav (n,)``, computed window by window (see the constants above).

    Frame ``f`` of the file reads samples ``[f * hop, f * hop + rf)``; a window fed from sample ``a`` (a multiple of
    the hop) gives file frame ``f`` as its frame ``f - a / hop``.
    """
    n = int(wav.shape[0])
    total = _expected_frames(teacher, n)
    hop = _hop(teacher)
    rf = receptive_field(teacher.conv_kernel, teacher.conv_stride)
    sr = int(getattr(teacher, "sample_rate", 24000))
    per = max(1, int(WHOLE_FILE_WINDOW_SECONDS * sr) // hop)  # frames per window
    ctx = int(WHOLE_FILE_CONTEXT_SECONDS * sr) // hop  # frames of context before a window
    parts = []
    for f0 in range(0, total, per):
        f1 = min(total, f0 + per)
        a = max(0, f0 - ctx) * hop
        b = min(n, (f1 - 1) * hop + rf)
        with torch.inference_mode():
            y = teacher(wav[a:b][None].to(device))[0]  # (t_window, ...)
        first = f0 - a // hop
        if y.shape[0] < first + (f1 - f0):
            raise ValueError(
                f"teacher {role!r} gave {y.shape[0]} frames for samples [{a}, {b}), fewer than the "
                f"{first + f1 - f0} its frame grid needs"
            )
        parts.append(y[first : first + (f1 - f0)].detach().cpu().numpy())
    return np.concatenate(parts, axis=0)


def _hop(teacher: Any) -> int:
    """Samples between the frames of the front end a teacher's targets are gridded for."""
    return math.prod(teacher.conv_stride)


def _teacher_settings(teacher: Any) -> Any:
    settings = getattr(teacher, "settings", None)
    if callable(settings):
        try:
            return json.loads(json.dumps(settings(), default=str))
        except Exception:  # settings are informative only; never fail a shard run over them
            pass
    return repr(teacher)[:200]


def write_shards(
    entries_or_manifest: Sequence[ManifestEntry] | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    sample_rate: int = 24000,
    segment_seconds: float = 5.0,
    min_seconds: float = 3.0,
    shard_size: int = 256,
    teachers: Mapping[str, Callable[[Tensor], Tensor]] | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> ShardWriteResult:
    """Cut every file into fixed segments and write them (with teacher targets) to tar shards.

    Args:
        entries_or_manifest: manifest entries, or the path of a manifest TSV.
        out_dir: output folder (created), or a URL (``s3://bucket/prefix``, any fsspec URL): each shard is built
            in a local temporary folder, uploaded when complete and deleted, ``index.json`` last, so readers never
            see an index naming a missing shard and the local disk holds one shard at a time.
        sample_rate: files are mixed down to mono and resampled to this rate.
        segment_seconds: segment length; a file gives ``floor(duration / segment_seconds)`` full segments plus its
            remainder when that is at least ``min_seconds``.
        min_seconds: shortest segment kept; shorter files are skipped.
        shard_size: samples (segments) per tar file.
        teachers: ``{role: callable}``, each mapping ``(b, l)`` float audio to ``(b, t, ...)`` targets with ``t``
            equal to the encoder's frame count; roles become member names ``KEY.targets.ROLE.npy``. The trainer
            expects ``"codes"`` and ``"features"``.
        batch_size: segments per teacher call (only segments of equal length are batched together).
        device: where teachers run; audio is moved there and targets back to the CPU.
        overwrite: replace the shards and index of a previous run in ``out_dir``.
        progress: show a tqdm progress bar over files.
        storage_options: fsspec options for a URL ``out_dir`` (``endpoint_url``, ...).
    Returns:
        A :class:`ShardWriteResult`; unreadable, too short and non-finite files are in ``skipped``.
    Raises:
        FileExistsError: ``out_dir`` already holds shards and ``overwrite`` is False.
        ValueError: bad arguments, or a teacher returning targets of the wrong shape.
    """
    if segment_seconds <= 0 or not 0 < min_seconds <= segment_seconds:
        raise ValueError(f"need 0 < min_seconds <= segment_seconds, got {min_seconds}, {segment_seconds}")
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be positive, got {shard_size}, {batch_size}")
    teachers = dict(teachers or {})
    for role, teacher in teachers.items():
        if not _ROLE_RE.match(role):
            raise ValueError(f"teacher role {role!r} must contain only letters, digits, '_' and '-'")
        rate = getattr(teacher, "sample_rate", sample_rate)
        if rate != sample_rate:
            raise ValueError(f"teacher {role!r} expects {rate} Hz audio but shards are written at {sample_rate} Hz")
    entries = load_entries(entries_or_manifest)
    from mert.data.remote import is_url

    if is_url(out_dir):
        with tempfile.TemporaryDirectory(prefix="mert-shards-") as staging:
            return _write_shards_to_url(
                entries, str(out_dir), Path(staging), dict(storage_options or {}), overwrite=overwrite,
                sample_rate=sample_rate, segment_seconds=segment_seconds, min_seconds=min_seconds,
                shard_size=shard_size, teachers=teachers, batch_size=batch_size, device=device, progress=progress,
            )  # fmt: skip
    return _write_shards(
        entries, Path(out_dir).expanduser().absolute(), overwrite=overwrite, sample_rate=sample_rate,
        segment_seconds=segment_seconds, min_seconds=min_seconds, shard_size=shard_size, teachers=teachers,
        batch_size=batch_size, device=device, progress=progress,
    )  # fmt: skip


def _write_shards_to_url(
    entries: Sequence[ManifestEntry],
    url: str,
    staging: Path,
    storage_options: dict[str, Any],
    *,
    overwrite: bool,
    **kwargs: Any,
) -> ShardWriteResult:
    """:func:`write_shards` to object storage: shards built in ``staging``, each uploaded then deleted."""
    from mert.data.remote import filesystem, upload, url_join

    if url.startswith("pipe:"):
        raise ValueError(f"shards cannot be written to a command ({url}); pass a folder or an object-store URL")
    url = url.rstrip("/")
    fs, root = filesystem(url, storage_options)
    old = sorted(fs.glob(url_join(root, "shard-*.tar"))) + [p for p in [url_join(root, INDEX_NAME)] if fs.exists(p)]
    if old and not overwrite:
        raise FileExistsError(f"{url} already holds shards ({old[0].rsplit('/', 1)[-1]}, ...); pass --overwrite")
    for p in sorted(old, key=lambda p: not p.endswith(INDEX_NAME)):  # the index first: no reader sees a partial set
        fs.rm_file(p)

    def publish(local: Path) -> str:
        remote = url_join(url, local.name)
        upload(local, remote, storage_options)
        local.unlink()
        return remote

    result = _write_shards(entries, staging, overwrite=False, publish=publish, **kwargs)
    publish(staging / INDEX_NAME)
    result.out_dir = url
    return result


def _write_shards(
    entries: Sequence[ManifestEntry],
    out_dir: Path,
    *,
    sample_rate: int,
    segment_seconds: float,
    min_seconds: float,
    shard_size: int,
    teachers: dict[str, Callable[[Tensor], Tensor]],
    batch_size: int,
    device: str | torch.device,
    overwrite: bool,
    progress: bool,
    publish: Callable[[Path], str] | None = None,
) -> ShardWriteResult:
    from mert.audio import load_audio
    from mert.progress import progress_bar

    out_dir.mkdir(parents=True, exist_ok=True)
    old = sorted(out_dir.glob("shard-*.tar")) + [p for p in [out_dir / INDEX_NAME] if p.exists()]
    if old and not overwrite:
        raise FileExistsError(f"{out_dir} already holds shards ({old[0].name}, ...); pass overwrite=True (--overwrite)")
    for p in old:
        p.unlink()

    seg_n = int(round(segment_seconds * sample_rate))
    min_n = int(round(min_seconds * sample_rate))
    result = ShardWriteResult(out_dir=out_dir, roles=sorted(teachers))
    writer = _ShardWriter(out_dir, shard_size, publish)
    pending: list[_Segment] = []

    # Teachers with memory run over each whole file (then cropped per segment), the others per segment in batches.
    whole = {role: t for role, t in teachers.items() if getattr(t, "whole_file", False)}
    per_segment = {role: t for role, t in teachers.items() if role not in whole}
    for role, t in whole.items():
        if seg_n % (hop := _hop(t)):
            raise ValueError(
                f"teacher {role!r} runs over whole files, so segments must start on its {hop}-sample frame grid: "
                f"segment_seconds={segment_seconds} is {seg_n} samples, not a multiple of {hop}"
            )

    def flush() -> None:
        if per_segment:
            _compute_targets(pending, per_segment, batch_size, device)
        for s in pending:
            members = [("audio.npy", _npy_bytes(s.audio)), ("json", json.dumps(s.meta, sort_keys=True).encode())]
            members += [(f"targets.{role}.npy", _npy_bytes(s.targets[role])) for role in sorted(s.targets)]
            writer.add(s.key, members)
            result.num_samples_written += 1
            result.seconds_written += s.audio.shape[0] / sample_rate
        pending.clear()

    bar = progress_bar(entries, desc="shard", unit="file", disable=not progress)
    try:
        for file_index, entry in enumerate(bar):
            try:
                wav, _ = load_audio(entry.path, sample_rate=sample_rate, mono=True)  # (l,)
            except Exception as e:  # unreadable or missing: skip the file, keep going
                result.skipped.append((entry.path, str(e) or type(e).__name__))
                continue
            n = int(wav.shape[0])
            if n < min_n:
                result.skipped.append(
                    (entry.path, f"too short ({n / sample_rate:.2f} s < min_seconds {min_seconds:g} s)")
                )
                continue
            if not torch.isfinite(wav).all():
                result.skipped.append((entry.path, "contains NaN or infinite samples"))
                continue
            audio = wav.numpy()
            full = {role: _whole_file_targets(role, t, wav, device) for role, t in whole.items()}
            for segment, start in enumerate(range(0, n, seg_n)):
                length = min(seg_n, n - start)
                if length < min_n:
                    break  # only the last remainder can be short
                meta = {
                    "source": entry.path,
                    "start": start,
                    "num_samples": length,
                    "sample_rate": sample_rate,
                    "file_index": file_index,
                    "segment": segment,
                }
                seg = _Segment(f"{file_index:08d}_{segment:04d}", audio[start : start + length].copy(), meta)
                for role, targets in full.items():
                    first = start // _hop(whole[role])
                    seg.targets[role] = targets[first : first + _expected_frames(whole[role], length)].copy()
                pending.append(seg)
            result.num_files += 1
            if len(pending) >= batch_size:
                flush()
            bar.set_postfix(samples=result.num_samples_written + len(pending), skipped=len(result.skipped))
        flush()
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    result.shards, result.shard_sizes = writer.shards, writer.sizes
    index = {
        "format": "webdataset",
        "writer": "mert.data.shards",
        "version": 1,
        "sample_rate": sample_rate,
        "segment_seconds": segment_seconds,
        "min_seconds": min_seconds,
        "roles": result.roles,
        "teachers": {role: _teacher_settings(t) for role, t in sorted(teachers.items())},
        "whole_file_roles": sorted(whole),  # targets cut from whole-file runs, not computed per segment
        "num_samples": result.num_samples_written,
        "num_files": result.num_files,
        "seconds": round(result.seconds_written, 3),
        "shards": [
            {"name": str(p).rsplit("/", 1)[-1], "num_samples": k} for p, k in zip(result.shards, result.shard_sizes)
        ],
        "skipped": [{"path": p, "reason": r} for p, r in result.skipped],
    }
    write_json_atomic(out_dir / INDEX_NAME, index)
    return result


def _resolve_tars(source: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[list[Path], dict[str, Any]]:
    """Tar files and the ``index.json`` contents (empty when there is none) of a shard source."""
    if isinstance(source, (str, os.PathLike)):
        p = Path(source).expanduser().absolute()
        if not p.exists():
            raise FileNotFoundError(f"shard path {str(p)!r} does not exist")
        index_path = p / INDEX_NAME if p.is_dir() else p if p.suffix == ".json" else p.parent / INDEX_NAME
        info = json.loads(index_path.read_text(encoding="utf-8")) if index_path.is_file() else {}
        if p.is_dir() or p.suffix == ".json":
            folder = p if p.is_dir() else p.parent
            # index.json lists exactly the shards of the last complete run; without it, every tar in the folder.
            tars = [folder / s["name"] for s in info["shards"]] if info else sorted(folder.glob("*.tar"))
        else:
            tars = [p]
    else:
        tars = [Path(t).expanduser().absolute() for t in source]
        info = {}
        if tars and (tars[0].parent / INDEX_NAME).is_file():
            info = json.loads((tars[0].parent / INDEX_NAME).read_text(encoding="utf-8"))
    missing = [str(t) for t in tars if not t.is_file()]
    if missing:
        raise FileNotFoundError(f"shard file(s) do not exist: {missing[:5]}")
    if not tars:
        raise ValueError(f"no .tar shards found in {source!r}")
    return tars, info


class ShardDataset(Dataset, SkipCounter):
    """Map-style dataset over every sample of a set of shards written by :func:`write_shards`.

    The constructor scans the tar headers once (no data is read) and keeps, per sample, the shard and the byte
    offsets of its members in numpy arrays (cheap to share with DataLoader workers). Items are read with
    positioned reads on file handles opened lazily in each process, so the dataset is safe after fork.

    Args:
        path_or_dir_or_list_of_tars: a shard folder (uses its ``index.json``, else every ``*.tar``), an
            ``index.json``, one ``.tar`` file, or a list of them.
        sample_rate: the rate the consumer expects; shards written at another rate are rejected (their targets
            belong to that rate).
    Attributes:
        roles: target roles found in the shards.
        skipped: samples this process returned None for (corrupt members), per process.
    Raises:
        FileNotFoundError: a shard does not exist.
        ValueError: no samples, or a sample-rate mismatch.
    """

    def __init__(
        self, path_or_dir_or_list_of_tars: str | os.PathLike | Sequence[str | os.PathLike], *, sample_rate: int = 24000
    ):
        SkipCounter.__init__(self)
        self.tars, self.info = _resolve_tars(path_or_dir_or_list_of_tars)
        self.sample_rate = int(sample_rate)
        records: list[tuple[int, str, dict[str, tuple[int, int]]]] = []
        for i, tar in enumerate(self.tars):
            records.extend((i, key, members) for key, members in self._scan(tar).items())
        records = [r for r in records if "audio.npy" in r[2]]
        if not records:
            raise ValueError(f"no samples with an audio.npy member in {len(self.tars)} shard(s), e.g. {self.tars[0]}")
        roles = sorted(
            {ext[len("targets.") : -len(".npy")] for r in records for ext in r[2] if ext.startswith("targets.")}
        )
        self.roles: list[str] = list(self.info.get("roles", roles)) or roles
        # Parallel arrays instead of a list of dicts: forked workers do not touch (and so copy) their pages.
        n = len(records)
        self._tar_index = np.array([r[0] for r in records], dtype=np.int32)
        self._keys = np.array([r[1] for r in records], dtype=np.bytes_)
        names = ["audio.npy", "json", *(f"targets.{r}.npy" for r in self.roles)]
        self._offsets = np.full((n, len(names), 2), -1, dtype=np.int64)  # (sample, member, [offset, size])
        for j, (_, _, members) in enumerate(records):
            for m, name in enumerate(names):
                if name in members:
                    self._offsets[j, m] = members[name]
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._pid = os.getpid()
        rate = self.info.get("sample_rate")
        if rate is None:
            try:  # no index.json: the first sample's metadata tells the rate
                rate = self.metadata(0).get("sample_rate")
            except Exception:
                rate = None
        if rate is not None and int(rate) != self.sample_rate:
            raise ValueError(
                f"shards {self.tars[0].parent} hold {rate} Hz audio and targets, but sample_rate={self.sample_rate} "
                f"was asked for; write shards at {self.sample_rate} Hz (mert data shard --sample-rate)"
            )

    @staticmethod
    def _scan(tar: Path) -> dict[str, dict[str, tuple[int, int]]]:
        """``{key: {member suffix: (data offset, size)}}`` in file order, from the tar headers only."""
        out: dict[str, dict[str, tuple[int, int]]] = {}
        file_size = tar.stat().st_size
        try:
            with tarfile.open(tar, mode="r:") as tf:
                for info in tf:
                    if not info.isfile():
                        continue
                    if info.offset_data + info.size > file_size:
                        log.warning("shard %s is truncated at member %s; later samples are unavailable", tar, info.name)
                        break
                    folder, _, base = info.name.rpartition("/")
                    stem, dot, suffix = base.partition(".")
                    if not dot:
                        continue
                    key = f"{folder}/{stem}" if folder else stem
                    out.setdefault(key, {})[suffix] = (info.offset_data, info.size)
        except (tarfile.TarError, OSError) as e:
            # A damaged tail costs the samples after it, not the run.
            log.warning("shard %s could not be read to the end (%s); using the %d samples before", tar, e, len(out))
        return out

    def __len__(self) -> int:
        return len(self._tar_index)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fds"] = OrderedDict()  # file descriptors do not travel to spawned workers
        return state

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Close the file handles this process opened."""
        fds = getattr(self, "_fds", None)
        if fds and getattr(self, "_pid", None) == os.getpid():
            for fd in fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
        if fds:
            fds.clear()

    def _read(self, sample: int, member: int) -> bytes | None:
        offset, size = (int(v) for v in self._offsets[sample, member])
        if offset < 0:
            return None
        if self._pid != os.getpid():
            # After fork the parent's descriptors are shared with it; open our own.
            self._fds, self._pid = OrderedDict(), os.getpid()
        tar = int(self._tar_index[sample])
        fd = self._fds.get(tar)
        if fd is None:
            if len(self._fds) >= _MAX_OPEN_SHARDS:
                os.close(self._fds.popitem(last=False)[1])
            fd = self._fds[tar] = os.open(self.tars[tar], os.O_RDONLY | getattr(os, "O_BINARY", 0))
        else:
            self._fds.move_to_end(tar)
        chunks, got = [], 0
        while got < size:  # pread may return less than asked on network file systems
            if hasattr(os, "pread"):
                chunk = os.pread(fd, size - got, offset + got)
            else:  # Windows: no pread; dataset handles are per process, so seek + read is safe enough
                os.lseek(fd, offset + got, os.SEEK_SET)
                chunk = os.read(fd, size - got)
            if not chunk:
                raise OSError(f"unexpected end of {self.tars[tar]} at byte {offset + got}")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def key(self, index: int) -> str:
        """The sample key, e.g. ``00000003_0001`` (file 3, segment 1)."""
        return self._keys[index].decode()

    def shard_path(self, index: int) -> Path:
        """The tar file holding sample ``index``."""
        return self.tars[int(self._tar_index[index])]

    def metadata(self, index: int) -> dict[str, Any]:
        """The sample's ``json`` member (source file, start sample, sample rate, ...); ``{}`` when absent."""
        data = self._read(index, 1)
        return json.loads(data) if data is not None else {}

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        try:
            item = decode_sample(lambda m: self._read(index, m), self.roles)
            item["index"] = index
        except Exception as e:  # corrupt member or unreadable shard: skip the sample, never stop training
            self.skip(f"{self.shard_path(index)}:{self.key(index)}", str(e) or type(e).__name__)
            return None
        return item


def decode_sample(read: Callable[[int], bytes | None], roles: Sequence[str]) -> dict[str, Any]:
    """A training item from a sample's members: ``read(0)`` the audio, ``read(2 + i)`` the targets of ``roles[i]``.

    Returns:
        ``{"wav": (l,) float32, "length": l, "targets": {role: (t, ...)}}`` (no ``targets`` without roles).
    Raises:
        ValueError: a missing or malformed member (callers skip the sample and count it).
    """
    data = read(0)
    if data is None:
        raise ValueError("member audio.npy is missing")
    wav = _load_npy(data)
    if wav.ndim != 1 or wav.shape[0] == 0 or wav.dtype.kind != "f":
        raise ValueError(f"audio member must be a non-empty 1-D float array, got {wav.dtype} {wav.shape}")
    if not np.isfinite(wav).all():
        raise ValueError("audio contains NaN or infinite samples")
    item: dict[str, Any] = {"wav": torch.from_numpy(wav.astype(np.float32, copy=False)), "length": int(wav.shape[0])}
    targets = {}
    for m, role in enumerate(roles, start=2):
        data = read(m)
        if data is None:
            # Silently dropping one role would make collate drop it for the whole batch.
            raise ValueError(f"member targets.{role}.npy is missing")
        y = _load_npy(data)
        if y.ndim < 1:
            raise ValueError(f"targets.{role} must have a frame axis, got shape {y.shape}")
        targets[role] = torch.from_numpy(y)  # (t, ...)
    if targets:
        item["targets"] = targets
    return item

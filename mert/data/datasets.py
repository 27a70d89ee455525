"""Map-style datasets for pretraining and the collate function that batches their items.

Every dataset here yields the same item dict, or ``None`` when a sample cannot be used (a corrupt or missing file,
NaN samples, a clip too short): a bad file in a corpus of millions must cost one sample, not a crashed run.

Item::

    {"wav": FloatTensor (l,), "length": int (= l), "index": int,
     "targets": {role: Tensor (t, ...)},      # ShardDataset with cached teacher targets only
     "labels": dict}                          # SyntheticDataset only

Shape legend: ``b`` batch, ``l`` samples, ``t`` frames (75 Hz).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mert.data.manifest import ManifestEntry, read_manifest

__all__ = ["CropDataset", "SkipCounter", "SyntheticDataset", "collate_audio", "load_entries"]

log = logging.getLogger("mert.data")

# libsndfile seeks sample-exactly in these containers, so reading only the crop gives the same samples as
# decoding the whole file and slicing. Compressed formats with approximate seeking are decoded whole.
_EXACT_SEEK_FORMATS = {"WAV", "WAVEX", "W64", "RF64", "FLAC", "AIFF", "CAF"}


def load_entries(entries_or_manifest_path: Sequence[ManifestEntry] | str | os.PathLike) -> list[ManifestEntry]:
    """Entries given directly, or read from a manifest file."""
    if isinstance(entries_or_manifest_path, (str, os.PathLike)):
        return read_manifest(entries_or_manifest_path)
    return list(entries_or_manifest_path)


class SkipCounter:
    """Counts unusable samples and warns once per sample, so a bad file read every epoch stays one log line.

    The mix-in of every dataset that skips samples (:class:`CropDataset`, :class:`mert.data.shards.ShardDataset`)."""

    def __init__(self) -> None:
        self.skipped = 0
        self._warned: set[str] = set()

    def skip(self, name: str, reason: str) -> None:
        self.skipped += 1
        if name not in self._warned:
            self._warned.add(name)
            log.warning("skipping %s: %s", name, reason)


class CropDataset(Dataset, SkipCounter):
    """Random fixed-length crops of the files in a manifest (MERT-v1 training hyper-parameters: 5 s crops, clips under
    3 s skipped).

    The crop offset of item ``index`` depends only on ``(seed, epoch, index)``, never on worker count, process or
    global RNG state, so a run is reproducible and resumable; :meth:`set_epoch` gives new crops.

    Args:
        entries_or_manifest_path: manifest entries, or the path of a manifest TSV.
        sample_rate: output rate; files are mixed down to mono and resampled to it.
        crop_seconds: crop length. Clips shorter than this (but at least ``min_seconds``) are returned whole.
        min_seconds: shorter clips are skipped. Entries already known to be shorter from the manifest are dropped
            at construction (counted in ``num_filtered``); others found short when read return None.
        seed: seed of the crop offsets.
    Attributes:
        skipped: samples this process returned None for (per process: DataLoader workers count separately;
            batches carry ``n_skipped`` for a global count).
        num_filtered: manifest entries dropped as too short at construction.
    Raises:
        ValueError: no entry is long enough.
    """

    def __init__(
        self,
        entries_or_manifest_path: Sequence[ManifestEntry] | str | os.PathLike,
        *,
        sample_rate: int = 24000,
        crop_seconds: float = 5.0,
        min_seconds: float = 3.0,
        seed: int = 0,
    ):
        SkipCounter.__init__(self)
        if crop_seconds <= 0 or min_seconds < 0 or min_seconds > crop_seconds:
            raise ValueError(
                f"need 0 <= min_seconds <= crop_seconds and crop_seconds > 0, got {min_seconds}, {crop_seconds}"
            )
        source = entries_or_manifest_path
        entries = load_entries(source)
        total = len(entries)
        self.entries = [e for e in entries if e.seconds >= min_seconds]
        self.num_filtered = total - len(self.entries)
        name = str(source) if isinstance(source, (str, os.PathLike)) else f"{total} given entries"
        if not self.entries:
            raise ValueError(
                f"no usable audio in {name}: {total} entries, none at least min_seconds={min_seconds:g} s long"
            )
        if self.num_filtered:
            log.info("CropDataset: dropped %d of %d entries shorter than %g s", self.num_filtered, total, min_seconds)
        self.sample_rate = int(sample_rate)
        self.crop_samples = int(round(crop_seconds * sample_rate))
        self.min_samples = int(round(min_seconds * sample_rate))
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """Select the crops of ``epoch`` (offsets are drawn from ``(seed, epoch, index)``)."""
        self.epoch = int(epoch)

    def crop_offset(self, index: int, num_samples: int) -> int:
        """Start sample of the crop of item ``index`` in a clip of ``num_samples`` (at ``sample_rate``)."""
        if num_samples <= self.crop_samples:
            return 0
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return int(rng.integers(0, num_samples - self.crop_samples + 1))

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        if not 0 <= index < len(self.entries):
            raise IndexError(f"index {index} out of range for {len(self.entries)} entries")
        path = self.entries[index].path
        try:
            wav = self._read_crop(index, path)
        except Exception as e:  # any decoder error: skip the sample, never stop training
            self.skip(path, f"unreadable ({type(e).__name__}): {e}")
            return None
        if isinstance(wav, str):
            self.skip(path, wav)
            return None
        return {"wav": wav, "length": int(wav.shape[0]), "index": index}

    def _read_crop(self, index: int, path: str) -> Tensor | str:
        """The crop ``(l,)``, or the reason the file is unusable."""
        import soundfile as sf

        from mert.audio import check_header, load_audio, read_frames, resampled_length

        if not os.path.isfile(path):
            return "file does not exist (deleted or moved since the manifest was written)"
        with sf.SoundFile(path) as f:
            try:  # a 1 Hz header would be resampled whole, on every draw
                check_header(f, os.path.getsize(path))
            except ValueError as e:
                return str(e)
            # Lengths come from the file, not the manifest, so a file edited since cannot push a crop off its end.
            n = resampled_length(f.frames, f.samplerate, self.sample_rate)
            if n < self.min_samples:
                return (
                    f"too short ({n / self.sample_rate:.2f} s < min_seconds {self.min_samples / self.sample_rate:g} s)"
                )
            if f.samplerate == self.sample_rate and f.format in _EXACT_SEEK_FORMATS:
                # Decode only the crop: a 5 s crop of a 4 min track is ~50x less work than decoding it all.
                start = self.crop_offset(index, n)
                want = min(self.crop_samples, n - start)
                wav = read_frames(f, start, want)
                if wav.shape[0] != want:
                    return f"truncated file: read {wav.shape[0]} of {want} samples at offset {start} of {n}"
                return self._check(wav)
        full, _ = load_audio(path, sample_rate=self.sample_rate, mono=True)
        # Header frame counts of compressed formats can be estimates: the offset follows the decoded length.
        start = self.crop_offset(index, full.shape[0])
        # clone: a view would keep (and ship between processes) the whole decoded file.
        return self._check(full[start : start + self.crop_samples].clone())

    def _check(self, wav: Tensor) -> Tensor | str:
        """The crop ``(l,)`` itself if usable, else the reason."""
        if wav.shape[0] < self.min_samples:
            return f"too short ({wav.shape[0] / self.sample_rate:.2f} s after decoding)"
        if not torch.isfinite(wav).all():
            return "contains NaN or infinite samples"
        return wav


class SyntheticDataset(Dataset):
    """Synthetic labelled clips rendered on the fly (:func:`mert.data.synthetic.render_clip`); no files needed.

    Clip ``index`` is rendered from seed ``seed * 1_000_003 + index`` as kind
    :func:`~mert.data.synthetic.clip_kind` ``(index, mix)`` (music, a single note or a chord), so it is the same in
    every process and epoch, and the same as clip ``index`` of ``write_synthetic_corpus`` with the same arguments.

    Args:
        num_clips: number of distinct clips.
        seconds: clip length.
        sample_rate: output rate.
        seed: corpus seed.
        mix: kind -> weight; None: :data:`~mert.data.synthetic.DEFAULT_MIX` (70 % music, 15 % notes, 15 % chords).
    """

    def __init__(
        self,
        num_clips: int,
        *,
        seconds: float = 5.0,
        sample_rate: int = 24000,
        seed: int = 0,
        mix: dict[str, float] | None = None,
    ):
        from mert.data.synthetic import DEFAULT_MIX, clip_kind

        if num_clips <= 0:
            raise ValueError(f"num_clips must be positive, got {num_clips}")
        self.num_clips, self.seconds, self.sample_rate, self.seed = int(num_clips), seconds, int(sample_rate), int(seed)
        self.mix = dict(DEFAULT_MIX if mix is None else mix)
        clip_kind(0, self.mix)  # validates the mixture now, not in a DataLoader worker
        self.skipped = 0  # same attribute as the file datasets; rendering never fails

    def __len__(self) -> int:
        return self.num_clips

    def clip_seed(self, index: int) -> int:
        """The ``render_clip`` seed of clip ``index``."""
        return self.seed * 1_000_003 + index

    def __getitem__(self, index: int) -> dict[str, Any]:
        from mert.data.synthetic import clip_kind, render_clip

        if not 0 <= index < self.num_clips:
            raise IndexError(f"index {index} out of range for {self.num_clips} clips")
        kind = clip_kind(index, self.mix)
        wav, labels = render_clip(self.seconds, self.sample_rate, seed=self.clip_seed(index), kind=kind)
        wav = torch.from_numpy(wav)  # (l,)
        return {"wav": wav, "length": int(wav.shape[0]), "index": index, "labels": labels.to_dict()}


def _pad_stack(tensors: list[Tensor]) -> Tensor:
    """Right-pad along the first axis with zeros and stack: ``[(t_i, ...)] -> (b, max t_i, ...)``."""
    t = max(x.shape[0] for x in tensors)
    out = tensors[0].new_zeros((len(tensors), t, *tensors[0].shape[1:]))
    for i, x in enumerate(tensors):
        out[i, : x.shape[0]] = x
    return out


def collate_audio(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Batch item dicts, dropping the ``None`` ones (unusable samples).

    Args:
        items: dataset items or None.
    Returns:
        ``{"wav": (b, l) float (zero right-padded to the longest), "lengths": (b,) long samples,
        "index": (b,) long, "n_skipped": int (Nones dropped)}``, plus ``"targets": {role: (b, t, ...)}``
        (zero right-padded along ``t``) when every item has targets (roles common to all items), and
        ``"labels": list[dict]`` when every item has labels. When every item is None, ``wav`` is ``(0, 0)``
        and consumers skip the batch.
    """
    kept = [it for it in items if it is not None]
    batch: dict[str, Any] = {"n_skipped": len(items) - len(kept)}
    if not kept:
        batch.update(
            wav=torch.zeros(0, 0), lengths=torch.zeros(0, dtype=torch.long), index=torch.zeros(0, dtype=torch.long)
        )
        return batch
    batch["wav"] = _pad_stack([it["wav"] for it in kept])  # (b, l)
    batch["lengths"] = torch.tensor([int(it["length"]) for it in kept], dtype=torch.long)
    batch["index"] = torch.tensor([int(it["index"]) for it in kept], dtype=torch.long)
    if all(it.get("targets") for it in kept):
        roles = set.intersection(*(set(it["targets"]) for it in kept))
        if roles:
            batch["targets"] = {r: _pad_stack([it["targets"][r] for it in kept]) for r in sorted(roles)}  # (b, t, ...)
    if all("labels" in it for it in kept):
        batch["labels"] = [it["labels"] for it in kept]
    return batch

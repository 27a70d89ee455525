"""Feature extraction for probing, cached on disk once per (encoder, data set, pooling, window).

Shape legend: ``N`` examples, ``n`` hidden-state layers, ``d`` width, ``t`` label frames, ``w`` windows.

Clip-level features follow MARBLE: the audio is cut into ``window_seconds`` windows (a shorter remainder of at
least ``min_window_seconds`` is kept; a clip shorter than one window is one window), every layer is
mean-pooled over each window's valid frames, and the windows are averaged: ``(n, d)`` per clip.
Frame-level features (for beat and frame tasks) are the encoder's 75 Hz hidden states, computed with the
encoder's deterministic windowing (``chunk_seconds``) and averaged down to the task's frame rate: ``(t, n, d)``
per clip, stored as float16.

Each example is one ``.npy`` file under ``<cache_dir>/<encoder fingerprint>/<variant>/``, written atomically
(temp file + rename), so an interrupted extraction resumes where it stopped and finished files are never
recomputed. Unreadable audio is skipped, counted and listed in ``skipped.json`` with the reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mert.fileio import open_atomic, write_json_atomic
from mert.models.encoder import Encoder
from mert.models.pooling import mean_pool, parse_layers, pool_frames
from mert.probe.manifest import ManifestRow
from mert.probe.tasks import ProbeDataset

__all__ = ["FeatureSpec", "FeatureCache", "ExtractReport", "encoder_fingerprint", "read_example"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureSpec:
    """How features are pooled; part of the cache key.

    Attributes:
        window_seconds: clip-level sliding-window length (MARBLE: 5 s); for frame-level features, the
            encoder's ``chunk_seconds`` (bounded memory on long files).
        min_window_seconds: a clip's last, shorter window is kept when at least this long.
        frame_rate: None for clip-level features; a label frame rate (Hz, dividing 75) for frame-level ones.
        layers: hidden states to keep (``parse_layers`` syntax); frame-level caches of every layer are large,
            so they can be restricted.
    """

    window_seconds: float = 5.0
    min_window_seconds: float = 1.0
    frame_rate: float | None = None
    layers: str = "all"

    def __post_init__(self) -> None:
        if self.window_seconds <= 0 or self.min_window_seconds < 0:
            raise ValueError(f"window_seconds must be > 0 and min_window_seconds >= 0, got {self}")

    def variant(self) -> str:
        kind = "clip" if self.frame_rate is None else f"frames{self.frame_rate:g}hz"
        layers = "all" if self.layers == "all" else hashlib.sha256(str(self.layers).encode()).hexdigest()[:8]
        return f"{kind}-w{self.window_seconds:g}s-min{self.min_window_seconds:g}s-layers_{layers}"


@dataclass
class ExtractReport:
    """What an extraction did: examples computed now, found in the cache, and skipped (path -> reason)."""

    computed: int = 0
    cached: int = 0
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.computed} computed, {self.cached} from the cache, {len(self.skipped)} skipped"


def encoder_fingerprint(encoder: Encoder) -> str:
    """SHA-256 (16 hex) of the encoder's config and every weight: equal fingerprints mean equal features."""
    h = hashlib.sha256(json.dumps(encoder.config.to_dict(), sort_keys=True).encode())
    h.update(str(encoder.strict_mert_compat).encode())
    for name, t in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def read_example(example: ManifestRow, sample_rate: int) -> Tensor:
    """The example's audio (its ``start``/``end`` segment), mono, at ``sample_rate``: ``(l,)`` float32.

    Raises:
        FileNotFoundError, ValueError: missing, unreadable, empty or non-finite audio (message names the file).
    """
    from mert.audio import read_audio

    wav, _ = read_audio(example.path, example.start or 0.0, example.end, sample_rate=sample_rate)
    if not torch.isfinite(wav).all():
        raise ValueError(f"audio file {str(example.path)!r} has NaN or infinite samples")
    return wav


class FeatureCache:
    """Extracts and stores per-example features of one encoder under one :class:`FeatureSpec`.

    Args:
        cache_dir: parent of all feature caches.
        encoder: the frozen encoder (any device; it is put in eval mode).
        spec: pooling and window settings.
        batch_size: windows encoded together (clip-level) or ``chunk_batch_size`` (frame-level).
    """

    def __init__(self, cache_dir: str | os.PathLike, encoder: Encoder, spec: FeatureSpec, batch_size: int = 8):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.encoder = encoder.eval()
        self.spec = spec
        self.batch_size = batch_size
        self.fingerprint = encoder_fingerprint(encoder)
        self.folder = Path(cache_dir).expanduser() / self.fingerprint / spec.variant()
        self.layers = parse_layers(spec.layers, encoder.num_layers + 1)

    def path(self, example: ManifestRow) -> Path:
        return self.folder / "items" / f"{example.key}.npy"

    def extract(self, dataset: ProbeDataset, progress: bool = True) -> ExtractReport:
        """Compute the features of every example not yet in the cache; unreadable files are skipped."""
        (self.folder / "items").mkdir(parents=True, exist_ok=True)
        meta = {"encoder_config": self.encoder.config.to_dict(), "spec": self.spec.__dict__, "layers": self.layers}
        write_json_atomic(self.folder / "cache.json", meta)
        report = ExtractReport()
        todo = []
        for e in dataset.examples:
            if self.path(e).is_file():
                report.cached += 1
            else:
                todo.append(e)
        bar = None
        if progress and todo:
            from mert.progress import progress_bar

            bar = progress_bar(total=len(todo), desc="features", unit="file")
        try:
            if self.spec.frame_rate is None:
                self._extract_clips(todo, report, bar)
            else:
                self._extract_frames(todo, report, bar)
        finally:
            if bar is not None:
                bar.close()
        if report.skipped:
            write_json_atomic(self.folder / "skipped.json", report.skipped)
            log.warning("skipped %d unreadable files (listed in %s)", len(report.skipped), self.folder / "skipped.json")
        return report

    def _read_ahead(self, todo: list[ManifestRow]) -> Iterator[tuple[ManifestRow, Tensor | Exception]]:
        """Decode and resample files on a background thread while the encoder runs (soundfile and the
        resampler release the GIL), keeping at most a few files in memory."""
        q: queue.Queue = queue.Queue(maxsize=2 * self.batch_size)
        sr = self.encoder.sample_rate
        stop = threading.Event()

        def work() -> None:
            try:
                for e in todo:
                    if stop.is_set():
                        break
                    try:
                        item: Tensor | Exception = read_example(e, sr)
                    except (OSError, ValueError, RuntimeError) as err:  # this file is bad: skip it
                        item = err
                    q.put((e, item))
            except BaseException as err:  # anything else (MemoryError...) stops the run, in the main thread
                q.put(("fatal", err))
            finally:
                q.put(None)  # always: a reader that died silently would leave the main thread waiting for ever

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            while (got := q.get()) is not None:
                if got[0] == "fatal":
                    raise got[1]
                yield got
        finally:
            stop.set()
            while thread.is_alive():  # unblock the reader if we stop early
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)

    def _windows(self, wav: Tensor) -> list[Tensor]:
        sr = self.encoder.sample_rate
        win = int(round(self.spec.window_seconds * sr))
        min_len = max(int(round(self.spec.min_window_seconds * sr)), 400)
        if wav.shape[0] < 400:
            raise ValueError(f"clip is {wav.shape[0]} samples at {sr} Hz, shorter than one frame (400 samples)")
        starts = list(range(0, wav.shape[0], win))
        out = [wav[s : s + win] for s in starts]
        if len(out) > 1 and out[-1].shape[0] < min_len:
            out.pop()
        return out

    @torch.inference_mode()
    def _encode_windows(self, windows: list[Tensor]) -> Tensor:
        """``w`` windows -> ``(w, n', d)`` mean-pooled over valid frames."""
        device = next(self.encoder.parameters()).device
        lengths = torch.tensor([len(w) for w in windows])
        batch = torch.nn.utils.rnn.pad_sequence(windows, batch_first=True).to(device)
        # layers=: the transformer stops after the deepest layer the probe keeps.
        out = self.encoder(batch, lengths.to(device), sample_rate=self.encoder.sample_rate, layers=self.layers)
        return mean_pool(out.stacked(self.layers), out.lengths).float().cpu()

    def _save(self, example: ManifestRow, array: np.ndarray) -> None:
        with open_atomic(self.path(example), text=False) as f:
            np.save(f, array)

    def _extract_clips(self, todo: list[ManifestRow], report: ExtractReport, bar) -> None:
        pending: list[tuple[ManifestRow, int]] = []  # (example, number of windows) in batch order
        windows: list[Tensor] = []

        def flush() -> None:
            if not windows:
                return
            pooled = torch.cat(
                [
                    self._encode_windows(windows[i : i + self.batch_size])
                    for i in range(0, len(windows), self.batch_size)
                ]
            )
            at = 0
            for e, k in pending:
                self._save(e, pooled[at : at + k].mean(0).numpy())  # (n', d)
                at += k
                report.computed += 1
                if bar is not None:
                    bar.update(1)
            pending.clear()
            windows.clear()

        for e, wav in self._read_ahead(todo):
            if isinstance(wav, Exception):
                self._skip(e, wav, report, bar)
                continue
            try:
                ws = self._windows(wav)
            except ValueError as err:
                self._skip(e, ValueError(f"{e.path}: {err}"), report, bar)
                continue
            pending.append((e, len(ws)))
            windows.extend(ws)
            if len(windows) >= self.batch_size:
                flush()
        flush()

    @torch.inference_mode()
    def _extract_frames(self, todo: list[ManifestRow], report: ExtractReport, bar) -> None:
        device = next(self.encoder.parameters()).device
        for e, wav in self._read_ahead(todo):
            if isinstance(wav, Exception) or wav.shape[0] < 400:
                self._skip(
                    e, wav if isinstance(wav, Exception) else ValueError("shorter than 400 samples"), report, bar
                )
                continue
            out = self.encoder(
                wav[None].to(device),
                sample_rate=self.encoder.sample_rate,
                chunk_seconds=self.spec.window_seconds,
                chunk_batch_size=self.batch_size,
                layers=self.layers,
            )
            x = out.stacked(self.layers)[0]  # (n', T, d) at 75 Hz
            pooled, _ = pool_frames(x, None, out.frame_rate, float(self.spec.frame_rate))  # (n', t, d)
            self._save(e, pooled.transpose(0, 1).to(torch.float16).cpu().numpy())  # (t, n', d)
            report.computed += 1
            if bar is not None:
                bar.update(1)

    @staticmethod
    def _skip(e: ManifestRow, err: Exception, report: ExtractReport, bar) -> None:
        report.skipped[str(e.path) + (f"[{e.start}:{e.end}]" if e.start is not None or e.end is not None else "")] = (
            str(err)
        )
        log.warning("skipping %s: %s", e.path, err)
        if bar is not None:
            bar.update(1)

    def load(self, dataset: ProbeDataset) -> tuple[list[np.ndarray | None], np.ndarray]:
        """Cached features per example (None where skipped) and an ``(N,)`` bool mask of available ones."""
        feats: list[np.ndarray | None] = []
        for e in dataset.examples:
            p = self.path(e)
            feats.append(_load_item(p) if p.is_file() else None)
        return feats, np.array([f is not None for f in feats])


def _load_item(path: Path) -> np.ndarray:
    """One cached feature array; a damaged or foreign file (a pickle, a truncated write) is refused naming it."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(
            f"feature cache file {str(path)!r} cannot be read ({e}); delete that file and run again to recompute it"
        ) from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fc":
        raise ValueError(
            f"feature cache file {str(path)!r} does not hold float features (dtype "
            f"{getattr(arr, 'dtype', type(arr).__name__)}); delete that file and run again to recompute it"
        )
    return arr

"""Deterministic synthetic music: chords in a key, a melody in one of several timbres, drums at a tempo.

Used for the README's first command, demos and tests where no real audio may be downloaded. Every clip
comes with its labels (key, mode, tempo, timbre) so probes have something true to predict.

Shape legend: ``l`` samples.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

__all__ = ["ClipLabels", "render_clip", "write_synthetic_corpus", "TIMBRES", "KEYS"]

KEYS = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
TIMBRES = ("sine", "organ", "saw", "square", "pluck")
_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)
_PROGRESSIONS = ((0, 3, 4, 0), (0, 5, 3, 4), (0, 4, 5, 3), (5, 3, 0, 4))  # scale degrees of chord roots


@dataclass(frozen=True)
class ClipLabels:
    key: int  # tonic pitch class, 0 = C
    mode: str  # "major" | "minor"
    tempo_bpm: float
    timbre: str  # melody instrument, one of TIMBRES
    seed: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _tone(freq: float, n: int, sr: int, timbre: str, rng: np.random.Generator) -> np.ndarray:
    """One note of ``n`` samples with a timbre-specific spectrum and envelope."""
    t = np.arange(n) / sr
    phase = rng.uniform(0, 2 * np.pi)
    if timbre == "sine":
        harmonics = [(1, 1.0)]
    elif timbre == "organ":
        harmonics = [(1, 1.0), (2, 0.5), (3, 0.3), (4, 0.2), (8, 0.1)]
    elif timbre == "saw":
        harmonics = [(k, 1.0 / k) for k in range(1, 16)]
    elif timbre == "square":
        harmonics = [(k, 1.0 / k) for k in range(1, 16, 2)]
    else:  # pluck: bright attack, fast decay
        harmonics = [(k, 0.8**k) for k in range(1, 10)]
    nyquist = sr / 2
    x = sum(a * np.sin(2 * np.pi * freq * k * t + phase * k) for k, a in harmonics if freq * k < nyquist)
    attack = min(n, int(0.01 * sr))
    env = np.ones(n)
    env[:attack] = np.linspace(0, 1, attack)
    decay = 8.0 if timbre == "pluck" else 1.5
    env *= np.exp(-decay * t)
    release = min(n, int(0.02 * sr))
    env[n - release :] *= np.linspace(1, 0, release)
    return (x * env).astype(np.float64)


def render_clip(
    seconds: float = 5.0,
    sample_rate: int = 24000,
    seed: int = 0,
    *,
    key: int | None = None,
    mode: str | None = None,
    tempo_bpm: float | None = None,
    timbre: str | None = None,
) -> tuple[np.ndarray, ClipLabels]:
    """Render one clip. Unspecified attributes are drawn from ``seed``.

    Returns:
        ``(wav, labels)``: ``wav`` float32 ``(l,)`` with peak 0.9, ``l = round(seconds * sample_rate)``.
    """
    if seconds <= 0 or sample_rate <= 0:
        raise ValueError(f"seconds and sample_rate must be positive, got {seconds}, {sample_rate}")
    rng = np.random.default_rng(seed)
    key = int(rng.integers(12)) if key is None else int(key) % 12
    mode = mode or str(rng.choice(["major", "minor"]))
    tempo = float(tempo_bpm or rng.choice([70.0, 90.0, 110.0, 130.0, 150.0]))
    timbre = timbre or str(rng.choice(TIMBRES))
    if timbre not in TIMBRES or mode not in ("major", "minor"):
        raise ValueError(f"timbre must be one of {TIMBRES} and mode 'major'/'minor', got {timbre!r}, {mode!r}")
    n = int(round(seconds * sample_rate))
    out = np.zeros(n)
    scale = _MAJOR if mode == "major" else _MINOR
    beat = 60.0 / tempo
    beat_n = max(1, int(beat * sample_rate))
    progression = _PROGRESSIONS[int(rng.integers(len(_PROGRESSIONS)))]
    tonic_midi = 48 + key

    def midi_hz(m: float) -> float:
        return 440.0 * 2 ** ((m - 69) / 12)

    # Chords: one per bar of 4 beats, triads from the scale, soft organ pad.
    bar_n = 4 * beat_n
    for b, start in enumerate(range(0, n, bar_n)):
        degree = progression[b % len(progression)]
        length = min(bar_n, n - start)
        for step in (0, 2, 4):
            idx = degree + step
            pitch = tonic_midi + scale[idx % 7] + 12 * (idx // 7)
            out[start : start + length] += 0.12 * _tone(midi_hz(pitch), length, sample_rate, "organ", rng)
    # Melody: eighth notes from the scale, one octave up, in the clip's timbre.
    note_n = max(1, beat_n // 2)
    for start in range(0, n, note_n):
        if rng.random() < 0.2:
            continue  # rests make onsets irregular
        idx = int(rng.integers(0, 10))
        pitch = tonic_midi + 12 + scale[idx % 7] + 12 * (idx // 7)
        length = min(note_n, n - start)
        out[start : start + length] += 0.25 * _tone(midi_hz(pitch), length, sample_rate, timbre, rng)
    # Drums: kick on beats 1 and 3, hi-hat on every eighth.
    kick_n, hat_n = int(0.12 * sample_rate), int(0.03 * sample_rate)
    kt = np.arange(kick_n) / sample_rate
    kick = np.sin(2 * np.pi * (50 + 60 * np.exp(-30 * kt)) * kt) * np.exp(-25 * kt)
    for i, start in enumerate(range(0, n, note_n)):
        if i % 4 == 0:
            m = min(kick_n, n - start)
            out[start : start + m] += 0.5 * kick[:m]
        m = min(hat_n, n - start)
        out[start : start + m] += 0.05 * rng.standard_normal(m) * np.exp(-np.arange(m) / (0.005 * sample_rate))
    out += 1e-3 * rng.standard_normal(n)
    out *= 0.9 / max(np.abs(out).max(), 1e-9)
    return out.astype(np.float32), ClipLabels(key, mode, tempo, timbre, seed)


def write_synthetic_corpus(
    out_dir: str | os.PathLike,
    num_clips: int,
    *,
    seconds: float = 5.0,
    sample_rate: int = 24000,
    seed: int = 0,
    subtype: str = "PCM_16",
) -> Path:
    """Write ``num_clips`` rendered clips as ``clip_00000.wav ...`` plus ``labels.csv``.

    Clip ``i`` uses seed ``seed * 1_000_003 + i`` (as :class:`mert.data.datasets.SyntheticDataset`), so the same
    arguments always give the same files. ``labels.csv`` has the columns ``path,key,mode,tempo_bpm,timbre,seed``
    with ``path`` relative to ``out_dir``.

    Args:
        out_dir: folder to write (created).
        num_clips: number of clips.
        seconds: clip length.
        sample_rate: file sample rate.
        seed: corpus seed.
        subtype: soundfile subtype of the WAV files (``"PCM_16"``, ``"FLOAT"``, ...).
    Returns:
        The folder.
    """
    import csv

    import soundfile as sf

    if num_clips <= 0:
        raise ValueError(f"num_clips must be positive, got {num_clips}")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(num_clips):
        clip_seed = seed * 1_000_003 + i
        wav, labels = render_clip(seconds, sample_rate, seed=clip_seed)
        name = f"clip_{i:05d}.wav"
        sf.write(str(out / name), wav, sample_rate, subtype=subtype)
        rows.append({"path": name, **labels.to_dict()})
    tmp = out / f".labels.csv.tmp{os.getpid()}"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "key", "mode", "tempo_bpm", "timbre", "seed"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out / "labels.csv")  # the demo takes an existing labels.csv as "corpus complete"
    return out

"""Deterministic synthetic music with labels: songs, single notes and chords from a bank of ten instruments.

Used by ``mert demo``, the tests and anywhere no real audio may be downloaded. Everything is numpy and is drawn
from one integer seed, so a seed always gives the same samples. A 4 s clip at 24 kHz takes about 0.03 s (a
note) to 0.1 s (a band) of one core.

What it models:

- Instruments (:data:`INSTRUMENTS`), each a family with its own synthesis, envelope and fixed body/formant
  filter, and with per-note random variation (brightness, detune, vibrato, attack, velocity):
  ``piano`` (inharmonic partials ``f_k = k f sqrt(1 + B k^2)``, two-stage decay, hammer-position comb, brighter
  when louder), ``guitar`` (Karplus-Strong string plucked at a random point, body resonances), ``strings``
  (bowed saw spectrum, delayed vibrato, slow attack, violin-body formants), ``brass`` (odd and even harmonics
  whose brightness rises during the attack, pitch scoop, bell formant), ``reed`` (clarinet: mostly odd
  harmonics), ``flute`` (few harmonics, breath noise, chiff), ``organ`` (drawbar registrations, no decay, key
  click, optional Leslie), ``mallet`` (inharmonic bar modes 1, 2.76, 5.40, 8.93 or 1, 3.99, 9.14, or an FM
  bell), ``bass`` (low-register Karplus-Strong or filtered-saw synth bass) and ``synth`` (detuned saws or
  squares through a low-pass with a filter envelope: leads and pads).
- Music (``kind="music"``): a key and mode, a chord progression voiced by one instrument (sustained, stabs,
  arpeggios or strums), a melody in another (scale notes, chromatic neighbours, rests, varied rhythms,
  random register), a bass line (roots, root-fifth, pulses or walking), drums in one of :data:`STYLES`,
  dynamics (crescendo/decrescendo, accents), a tempo from :data:`TEMPI_BPM`, an arrangement
  (:data:`ARRANGEMENTS`: full band, solo phrase, drums only, pad only, ...) in which a part may enter or drop
  out at a bar line, occasional doubling (a detuned, delayed copy of the melody), a room (noise impulse
  response with random RT60, brighter early part and early reflections), background noise (white, pink or
  brown, sometimes mains hum) at a random SNR and a random output gain.
- Notes (``kind="note"``): one instrument playing one MIDI note of octaves 2 to 6 (36..95) within its range,
  with a random onset, hold and velocity, in a small room with light noise.
- Chords (``kind="chord"``): one instrument playing one chord of a quality in :data:`CHORDS` with a random root,
  register and inversion, struck together or arpeggiated (the notes ring on), in a room with light noise.

Labels (:class:`ClipLabels`; fields that do not apply hold -1, 0.0 or ""):

- ``kind``: ``"music"``, ``"note"`` or ``"chord"``.
- ``key``: tonic pitch class (0 = C) of music, else -1; ``mode``: ``"major"``/``"minor"`` or "".
- ``tempo_bpm``: a value of :data:`TEMPI_BPM` for music (any positive value when overridden), else 0.0.
  Beat ``k`` starts at ``k * 60 / tempo_bpm`` seconds (the grid starts at sample 0; the clip may start on any
  beat of the bar).
- ``style``: drum pattern of :data:`STYLES` when drums play in the clip, else "".
- ``instrument``: the melody (music), the solo note's or the chord's instrument. Music without a melody names
  its chord instrument, else its bass instrument, else ``"drums"``.
- ``parts``: the music parts that play, ``"+"``-joined in the order melody, chords, bass, drums; else "".
- ``pitch``: pitch class (0 = C) of a note, or of a chord's root; else -1. ``midi``: the note's MIDI number or
  the chord root's as voiced (it may not be the lowest note); else -1.
- ``chord``: chord quality (a key of :data:`CHORDS`) of a chord clip, else "".
- ``seed``: the seed the clip was rendered from.

Shape legend: ``l`` samples, ``k`` partials or harmonics, ``nb`` blocks of samples, ``j`` samples in a block.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from mert.fileio import open_atomic

__all__ = [
    "ARRANGEMENTS",
    "CHORDS",
    "DEFAULT_MIX",
    "GENERATOR_VERSION",
    "INSTRUMENTS",
    "KEYS",
    "KINDS",
    "STYLES",
    "TEMPI_BPM",
    "ClipLabels",
    "clip_kind",
    "render_clip",
    "render_clips",
    "write_synthetic_corpus",
]

KEYS = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
KINDS = ("music", "note", "chord")
INSTRUMENTS = ("piano", "guitar", "strings", "brass", "reed", "flute", "organ", "mallet", "bass", "synth")
STYLES = ("rock", "four_on_floor", "waltz", "shuffle", "bossa")
# Five tempo classes about a third apart, no two an octave apart (half/double tempo stays a different class).
TEMPI_BPM = (60.0, 80.0, 105.0, 140.0, 180.0)
CHORDS = {  # quality -> semitones above the root
    "major": (0, 4, 7),
    "minor": (0, 3, 7),
    "diminished": (0, 3, 6),
    "augmented": (0, 4, 8),
    "dominant7": (0, 4, 7, 10),
    "sus4": (0, 5, 7),
}
PARTS = ("melody", "chords", "bass", "drums")
ARRANGEMENTS = {  # name -> (parts, probability in a random music clip)
    "full": (("melody", "chords", "bass", "drums"), 0.40),
    "band": (("chords", "bass", "drums"), 0.10),
    "lead": (("melody", "bass", "drums"), 0.07),
    "trio": (("melody", "chords", "bass"), 0.10),
    "duo": (("melody", "chords"), 0.09),
    "solo": (("melody",), 0.07),
    "pad": (("chords",), 0.06),
    "groove": (("bass", "drums"), 0.06),
    "drums": (("drums",), 0.05),
}
DEFAULT_MIX = {"music": 0.7, "note": 0.15, "chord": 0.15}
GENERATOR_VERSION = 2  # bumped whenever the same arguments start giving different clips

# Playable MIDI range per family (what a player of the instrument would play).
_RANGE = {
    "piano": (28, 100),
    "guitar": (40, 86),
    "strings": (36, 96),
    "brass": (40, 82),
    "reed": (50, 91),
    "flute": (60, 96),
    "organ": (36, 96),
    "mallet": (53, 100),
    "bass": (28, 55),
    "synth": (36, 96),
}
_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)
_PROGRESSIONS = {  # 0-based scale degrees of the chord roots; every one starts on the tonic
    "major": ((0, 3, 4, 0), (0, 4, 5, 3), (0, 5, 3, 4), (0, 3, 0, 4), (0, 1, 4, 0), (0, 2, 3, 4), (0, 5, 1, 4)),
    "minor": ((0, 3, 4, 0), (0, 5, 2, 6), (0, 6, 5, 4), (0, 3, 6, 2), (0, 5, 3, 4), (0, 3, 0, 4)),
}
_WAVETABLE = 2048  # samples per wavetable period
_REF_RMS = 0.1


@dataclass(frozen=True)
class ClipLabels:
    """What a clip contains; see the module docstring for the definitions."""

    kind: str
    key: int = -1
    mode: str = ""
    tempo_bpm: float = 0.0
    style: str = ""
    instrument: str = ""
    parts: str = ""
    pitch: int = -1
    midi: int = -1
    chord: str = ""
    seed: int = 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


LABEL_FIELDS = tuple(f.name for f in fields(ClipLabels))


# ------------------------------------------------------------------------------------------------ helpers
def _hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def _fast_len(n: int) -> int:
    """The smallest ``2^a 3^b 5^c >= n``: FFT lengths with large prime factors are many times slower."""
    best = 1 << max(0, (n - 1).bit_length())
    f5 = 1
    while f5 < best:
        f35 = f5
        while f35 < best:
            m = f35
            while m < n:
                m *= 2
            best = min(best, m)
            f35 *= 3
        f5 *= 5
    return best


def _fft_filter(x: np.ndarray, sr: int, gain_fn) -> np.ndarray:
    """Zero-phase filtering by a magnitude response ``gain_fn(freqs_hz) -> gains``; ``(l,) -> (l,)``."""
    n = _fast_len(len(x) + min(8192, max(1024, len(x) // 4)))  # room for the short ring before the circular wrap
    spec = np.fft.rfft(x, n)
    spec *= gain_fn(np.fft.rfftfreq(n, 1.0 / sr))
    return np.fft.irfft(spec, n)[: len(x)]


def _resonance_db(freqs: np.ndarray, peaks) -> np.ndarray:
    """Sum of Gaussian bumps on a log-frequency axis: ``peaks`` = ``[(centre_hz, width_octaves, gain_db)]``."""
    lf = np.log2(np.maximum(freqs, 1.0))
    out = np.zeros_like(freqs)
    for centre, width, gain in peaks:
        out += gain * np.exp(-0.5 * ((lf - math.log2(centre)) / width) ** 2)
    return out


def _body_gain(peaks, highpass_hz: float, lowpass_hz: float):
    """A fixed body/formant response: resonances, a 24 dB/oct high-pass and a 12 dB/oct low-pass.

    Returns ``gain(freqs_hz) -> gains``; evaluated on a log-spaced grid and interpolated (it is smooth).
    """
    grid = np.geomspace(10.0, 30000.0, 400)
    db = _resonance_db(grid, peaks)
    g = 10.0 ** (db / 20.0) / (1.0 + (highpass_hz / grid) ** 4) / np.sqrt(1.0 + (grid / lowpass_hz) ** 4)
    lg = np.log(grid)

    def gain(freqs: np.ndarray) -> np.ndarray:
        return np.interp(np.log(np.maximum(freqs, 10.0)), lg, g)

    return gain


def _noise_color(n: int, rng: np.random.Generator, slope: float) -> np.ndarray:
    """Noise with power ~ 1/f^slope (0 white, 1 pink, 2 brown), unit RMS; ``(l,)``."""
    m = _fast_len(n)
    spec = np.fft.rfft(rng.standard_normal(m))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    spec *= f ** (-slope / 2)
    spec[0] = 0.0
    x = np.fft.irfft(spec, m)[:n]
    return x / max(float(np.sqrt(np.mean(x**2))), 1e-12)


def _ramp(n: int, sr: int, attack: float) -> np.ndarray:
    """A 0 -> 1 raised-cosine onset ramp of ``attack`` seconds, then 1; ``(l,)``."""
    a = max(1, min(n, int(attack * sr)))
    env = np.ones(n)
    env[:a] = 0.5 - 0.5 * np.cos(np.pi * np.arange(a) / a)
    return env


def _release(env: np.ndarray, sr: int, hold: float, release: float) -> np.ndarray:
    """Multiply ``env`` by an exponential release (-60 dB over ``release`` s) after ``hold`` seconds."""
    h = max(0, int(hold * sr))  # a hold that ends before the note starts (short clips) releases from its onset
    if h < len(env):
        t = np.arange(len(env) - h) / sr
        env[h:] *= np.exp(-6.9 * t / max(release, 1e-3))
    return env


# ------------------------------------------------------------------------------------------------ instruments
@dataclass
class _Voice:
    """One instrument as played in one clip: its family plus what a player or patch keeps fixed for all notes."""

    family: str
    sr: int
    bright: float  # -1 dark .. +1 bright; each note varies around it
    tuning: float  # cents
    body: Callable[[np.ndarray], np.ndarray]  # fixed body/formant response, gain at each frequency (Hz)
    params: dict = field(default_factory=dict)


def _make_voice(family: str, sr: int, rng: np.random.Generator) -> _Voice:
    """Draw a voice of ``family``: its body filter and the settings kept for all its notes in a clip."""

    def j(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    p: dict = {}
    if family == "piano":
        body = _body_gain([(j(90, 130), 0.5, j(2, 5)), (j(400, 700), 0.8, j(-3, 1)), (j(2500, 3500), 0.7, 3)], 30, 9000)
        p.update(hammer=j(0.10, 0.14), inharm=j(-4.0, -3.4), sustain=j(0.8, 1.3))
    elif family == "guitar":
        peaks = [(j(95, 115), 0.2, j(6, 10)), (j(190, 230), 0.25, j(4, 8)), (j(380, 480), 0.3, 3)]
        body = _body_gain(peaks + [(j(2500, 3500), 0.5, 2)], 70, j(4500, 8000))
        p.update(pluck=j(0.08, 0.25), damping=j(0.35, 0.5), t60=j(1.5, 4.0), tilt=j(0.9, 1.5))
    elif family == "strings":
        peaks = [(j(270, 300), 0.15, j(5, 9)), (j(430, 500), 0.2, j(4, 7)), (j(1000, 1200), 0.3, -4)]
        body = _body_gain(peaks + [(j(2200, 3000), 0.35, j(5, 9)), (j(4500, 6000), 0.4, -6)], j(150, 200), j(6e3, 9e3))
        p.update(vib_rate=j(4.8, 6.5), vib_cents=j(8, 25), noise=j(0.01, 0.04), noise_band=(2000, 8000))
    elif family == "brass":
        f1 = j(700, 1400)  # trombone/horn low, trumpet high
        body = _body_gain([(f1, 0.5, j(6, 10)), (2.3 * f1, 0.4, j(0, 4))], j(100, 200), j(5000, 9000))
        p.update(vib_rate=j(4.5, 6.0), vib_cents=j(0, 12), scoop=j(-60, -20), noise=0.005, noise_band=(1000, 5000))
    elif family == "reed":
        body = _body_gain([(j(1300, 1700), 0.3, j(3, 7)), (j(2800, 3600), 0.3, j(2, 6))], j(120, 180), j(5000, 8000))
        p.update(even=j(0.03, 0.15), register_hz=j(1500, 2500), vib_rate=j(4.5, 5.5), vib_cents=j(0, 6))
        p.update(noise=0.015, noise_band=(1500, 6000))
    elif family == "flute":
        body = _body_gain([(j(800, 1200), 0.6, 2)], j(200, 260), j(6000, 10000))
        p.update(harmonics=np.array([1.0, j(0.2, 0.6), j(0.1, 0.35), j(0.03, 0.15), j(0.01, 0.06)]))
        p.update(vib_rate=j(4.5, 5.5), vib_cents=j(5, 20), noise=j(0.03, 0.1), noise_band=(800, 7000))
    elif family == "organ":
        body = _body_gain([(j(2000, 4000), 0.8, j(-3, 3))], 40, j(6000, 12000))
        presets = (  # drawbars 16', 8', 5 1/3', 4', 2 2/3', 2', 1 3/5', 1 1/3', 1'
            (8, 8, 6, 0, 0, 0, 0, 0, 0),
            (0, 8, 4, 8, 6, 6, 0, 0, 0),
            (6, 8, 6, 8, 6, 6, 6, 6, 6),
            (0, 8, 0, 8, 0, 0, 0, 0, 6),
            (6, 8, 5, 0, 0, 0, 0, 0, 0),
            (0, 8, 6, 4, 6, 2, 0, 0, 0),
        )
        bars = np.array(presets[int(rng.integers(len(presets)))], dtype=float)
        bars = np.clip(bars + rng.integers(-1, 2, size=9) * (bars > 0), 0, 8)
        bars[:3] = min(bars[0], 6), 8, min(bars[2], 5)  # the 8' (the note itself) leads: the pitch heard
        p.update(drawbars=bars, leslie=bool(rng.random() < 0.5), leslie_rate=j(5.5, 7.0))
    elif family == "mallet":
        subtype = str(rng.choice(["vibes", "marimba", "glock", "bell"]))
        body = _body_gain([(j(300, 600), 0.8, j(0, 4))], 100, j(7000, 11000))
        p.update(subtype=subtype, tremolo=bool(subtype == "vibes" and rng.random() < 0.5), fm_ratio=j(1.38, 1.42))
    elif family == "bass":
        subtype = str(rng.choice(["finger", "pick", "synth"], p=[0.5, 0.3, 0.2]))
        body = _body_gain([(j(70, 110), 0.5, j(2, 6)), (j(700, 900), 0.5, j(-4, 2))], 30, j(2500, 5000))
        p.update(subtype=subtype, pluck=j(0.15, 0.35), damping=j(0.45, 0.5), t60=j(1.0, 3.0), cutoff=j(300, 1200))
        p.update(tilt={"finger": j(1.6, 2.2), "pick": j(1.0, 1.4)}.get(subtype, 1.0), wave="saw", voices=1)
    elif family == "synth":
        subtype = str(rng.choice(["lead", "pad"]))
        body = _body_gain([(j(500, 3000), 0.6, j(0, 6))], 40, min(j(2500, 9000), 0.45 * sr))
        p.update(subtype=subtype, wave=str(rng.choice(["saw", "square"])), voices=int(rng.integers(2, 4)))
        # cutoff in harmonics of the fundamental at full brightness; env_decay: filter envelope of a lead (s)
        p.update(spread=j(5, 18), cutoff=j(1.5, 8.0), env_decay=j(0.1, 0.6), vib_rate=j(4.5, 6), vib_cents=j(0, 10))
    else:
        raise ValueError(f"unknown instrument {family!r}; choose from {INSTRUMENTS}")
    return _Voice(family, sr, bright=j(-1.0, 1.0), tuning=j(-6.0, 6.0), body=body, params=p)


def _table(amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """One period (``_WAVETABLE + 1`` samples, wrapped) with harmonic ``k + 1`` of amplitude ``amps[k]``."""
    spec = np.zeros(_WAVETABLE // 2 + 1, dtype=np.complex128)
    k = min(len(amps), _WAVETABLE // 2 - 1)
    spec[1 : k + 1] = amps[:k] * np.exp(1j * phases[:k]) * (_WAVETABLE / 2)
    tab = np.fft.irfft(spec, _WAVETABLE)
    return np.append(tab, tab[0]).astype(np.float32)


def _read(table: np.ndarray, cycles: np.ndarray) -> np.ndarray:
    """Linear-interpolated wavetable lookup at phase ``cycles`` (in periods); ``(l,) -> (l,)`` float32."""
    pos = (cycles - np.floor(cycles)) * _WAVETABLE
    i = pos.astype(np.int64)
    frac = (pos - i).astype(np.float32)
    a = table[i]
    return a + frac * (table[i + 1] - a)


def _cycles(f0: float, t: np.ndarray, sr: int, rng, vib_rate=0.0, vib_cents=0.0, vib_delay=0.0, scoop=0.0):
    """Phase in periods ``(l,)`` of a tone at ``f0`` with optional delayed vibrato and an onset pitch scoop."""
    if vib_cents <= 0 and scoop == 0:
        return f0 * t.astype(np.float64) + rng.random()
    cents = np.zeros(len(t))
    if vib_cents > 0:
        fade = np.clip((t - vib_delay) / 0.3, 0.0, 1.0)  # vibrato grows in after the onset, as players do
        cents += vib_cents * fade * np.sin(2 * np.pi * vib_rate * t + rng.uniform(0, 2 * np.pi))
    if scoop:
        cents += scoop * np.exp(-t / 0.04)
    # 2^(c/1200) ~ 1 + c ln2 / 1200: within 0.6 cent for the few tens of cents used here
    return np.cumsum(f0 * (1.0 + cents * (math.log(2) / 1200.0))) / sr + rng.random()


def _karplus_strong(f0: float, n: int, sr: int, rng, *, pluck: float, damping: float, t60: float, tilt: float):
    """A plucked string ``(l,)``: one period of a plucked shape through a damped, tuned delay loop.

    The initial period has harmonic amplitudes ``|sin(pi k pluck)| / k^tilt`` (plucking at a fraction of the
    length removes the harmonics with a node there; a pick gives ``tilt`` near 1, a finger near 2) with random
    phases and a little jitter. A noise burst, as in the textbook version, leaves the few harmonics of a high
    note at the mercy of chance. The loop ``y[i] = g (c0 y[i-P] + c1 y[i-P-1] + c2 y[i-P-2])`` (a two-tap
    damping filter times a linear fractional delay, ``sr / f0`` samples in all) reads only samples at least
    ``P`` back, so it runs a period at a time instead of sample by sample.
    """
    period = sr / f0
    # The damping filter alone loses f0 s (1 - s) w0^2 / 2 nepers a second at the fundamental: capped at 2, so
    # high strings still ring for a second or more (it would be 30 dB/s at 740 Hz with s = 0.5).
    w0 = 2 * np.pi * f0 / sr
    cap = 4.0 / (f0 * w0**2)
    if cap < 0.25:
        damping = min(damping, 0.5 - math.sqrt(0.25 - cap))
    d = period - damping
    p_int = max(2, int(d))
    c = np.convolve([1.0 - damping, damping], [1.0 - (d - p_int), d - p_int])  # (3,)
    g = 10.0 ** (-3.0 * period / (t60 * sr))  # -60 dB after t60 seconds
    k = np.arange(1, p_int // 2 + 1)
    amps = (np.abs(np.sin(np.pi * k * pluck)) + 0.02) / k**tilt * rng.uniform(0.8, 1.2, len(k))
    spec = np.zeros(p_int // 2 + 1, dtype=np.complex128)
    spec[1:] = amps * np.exp(2j * np.pi * rng.random(len(k)))
    exc = np.fft.irfft(spec, p_int)
    exc /= max(float(np.abs(exc).max()), 1e-12)
    y = np.zeros(n + 2)
    y[2 : 2 + min(n, p_int)] = exc[: min(n, p_int)]
    c0, c1, c2 = g * c
    for s in range(2 + p_int, n + 2, p_int):
        e = min(s + p_int, n + 2)
        a = s - p_int
        y[s:e] = c0 * y[a : e - p_int] + c1 * y[a - 1 : e - p_int - 1] + c2 * y[a - 2 : e - p_int - 2]
    return y[2:]


def _partials(freqs, amps, taus, n: int, sr: int, rng, block: int = 256) -> np.ndarray:
    """Sum of exponentially decaying sinusoids ``sum_k amps_k exp(-t / taus_k) sin(2 pi freqs_k t + phi_k)``.

    With ``t = t_b + t_j`` (block start plus offset in the block) each term factors into a block part times an
    offset part (angle addition), so the whole sum is two matrix products instead of ``k * l`` sines and
    exponentials. ``freqs``, ``amps``, ``taus`` ``(k,)`` -> ``(l,)`` float64.
    """
    w = 2 * np.pi * np.asarray(freqs, dtype=np.float64)[:, None]  # (k, 1)
    decay = 1.0 / np.asarray(taus, dtype=np.float64)[:, None]
    phi = rng.uniform(0, 2 * np.pi, (len(w), 1))
    tb = np.arange(-(-n // block))[None, :] * (block / sr)  # (1, nb) block starts
    tj = np.arange(block)[None, :] / sr  # (1, j)
    head = np.asarray(amps, dtype=np.float64)[:, None] * np.exp(-tb * decay)  # (k, nb)
    tail = np.exp(-tj * decay)  # (k, j)
    out = (head * np.sin(w * tb + phi)).T @ (tail * np.cos(w * tj)) + (head * np.cos(w * tb + phi)).T @ (
        tail * np.sin(w * tj)
    )  # (nb, j)
    return out.reshape(-1)[:n]


def _note(v: _Voice, midi: float, hold: float, vel: float, rng: np.random.Generator, max_n: int):
    """One note of voice ``v`` held ``hold`` seconds, then its release; at most ``max_n`` samples.

    ``vel`` in (0, 1] scales loudness and, for most families, brightness. Per-note variation (detune,
    brightness, attack, vibrato depth) is drawn from ``rng``.

    Returns:
        ``(x, noise_env)``: the tone ``(l,)`` float32, and the envelope ``(l,)`` of its breath/bow noise or None.
    """
    sr, p, fam = v.sr, v.params, v.family
    bright = float(np.clip(v.bright + rng.normal(0, 0.25) + (vel - 0.7), -1.5, 1.5))
    f0 = _hz(midi + (v.tuning + rng.normal(0, 3.0)) / 100.0)
    tail = {"piano": 0.3, "guitar": 0.15, "mallet": 1.0, "strings": 0.3, "flute": 0.12, "synth": 0.4}.get(fam, 0.1)
    n = min(max_n, max(1, int((hold + tail) * sr)))
    t = np.arange(n, dtype=np.float32) / sr
    noise_env = None
    if fam == "piano":
        k = np.arange(1, 13, dtype=np.float64)
        b = 10.0 ** (p["inharm"] + 0.8 * max(0.0, (midi - 72) / 36))  # treble strings are stiffer
        fk = k * f0 * np.sqrt(1 + b * k**2)
        k, fk = k[fk < 0.45 * sr], fk[fk < 0.45 * sr]
        tilt = 1.9 - 1.0 * vel - 0.35 * bright  # louder -> brighter
        amps = k**-tilt * (np.abs(np.sin(np.pi * k * p["hammer"])) + 0.05)  # the hammer position's comb
        scale = (f0 / 262.0) ** -0.6
        fast = 0.35 * scale / (1 + 0.25 * (k - 1))
        slow = min(8.0, 3.5 * scale * p["sustain"]) / (1 + 0.12 * (k - 1))
        # Two-stage decay (prompt sound, then aftersound) and two unison strings a fraction of a Hz apart.
        beat_hz = rng.uniform(0.3, 1.5)
        x = _partials(
            np.concatenate([fk, fk[:2] + beat_hz]),
            np.concatenate([0.65 * amps, 0.2 * amps[:2]]),
            np.concatenate([fast, slow[:2]]),
            n,
            sr,
            rng,
        ) + _partials(fk, 0.35 * amps, slow, n, sr, rng)
        x *= _release(_ramp(n, sr, 0.002), sr, hold, 0.25)
        m = min(n, int(0.015 * sr))
        x[:m] += 0.05 * vel * np.convolve(rng.standard_normal(m), np.ones(8) / 8, "same") * np.linspace(1, 0, m)
    elif fam == "guitar" or (fam == "bass" and p["subtype"] != "synth"):
        tilt = p["tilt"] - 0.3 * bright
        damping = float(np.clip(p["damping"] - 0.1 * bright, 0.3, 0.5))
        t60 = p["t60"] * (f0 / 200) ** -0.3
        pluck = p["pluck"] * rng.uniform(0.85, 1.15)
        x = _karplus_strong(f0, n, sr, rng, pluck=pluck, damping=damping, t60=t60, tilt=tilt)
        x *= _release(np.ones(n), sr, hold, 0.12)
    elif fam == "mallet":
        if p["subtype"] == "bell":  # FM bell: inharmonic sidebands whose number decays after the strike
            idx = (2.0 + 2.0 * vel) * np.exp(-t / 0.8)
            x = np.sin(2 * np.pi * f0 * t + idx * np.sin(2 * np.pi * p["fm_ratio"] * f0 * t)) * np.exp(-t / 2.5)
        else:
            ratios, amps, taus = {
                "vibes": ((1.0, 2.76, 5.40, 8.93), (1.0, 0.35, 0.15, 0.06), (2.5, 0.6, 0.25, 0.1)),
                "marimba": ((1.0, 3.99, 9.14), (1.0, 0.3, 0.08), (0.6, 0.12, 0.04)),
                "glock": ((1.0, 2.76, 5.40, 8.93), (1.0, 0.4, 0.25, 0.12), (1.8, 0.8, 0.4, 0.2)),
            }[p["subtype"]]
            keep = [i for i, r in enumerate(ratios) if r * f0 < 0.45 * sr]
            hard = [1.0 + 0.3 * bright * (ratios[i] > 1) for i in keep]  # a harder mallet excites upper modes
            sc = (f0 / 440.0) ** -0.3
            x = _partials(
                [ratios[i] * f0 for i in keep],
                [amps[i] * h for i, h in zip(keep, hard)],
                [taus[i] * sc for i in keep],
                n,
                sr,
                rng,
            )
            if p["tremolo"]:
                x *= 1 - 0.3 * (0.5 + 0.5 * np.sin(2 * np.pi * 5.5 * t))
        m = min(n, int(0.004 * sr))
        x[:m] += 0.1 * vel * rng.standard_normal(m) * np.linspace(1, 0, m)
        x *= _release(_ramp(n, sr, 0.001), sr, hold + 0.5, 0.5)
    else:
        x, noise_env = _sustained(v, f0, t, hold, vel, bright, rng)
    gain = vel**1.3
    return (x * gain).astype(np.float32), None if noise_env is None else noise_env * gain


def _sustained(v: _Voice, f0: float, t: np.ndarray, hold: float, vel: float, bright: float, rng):
    """Wavetable families (strings, brass, reed, flute, organ, synth, synth bass): a crossfade of a dark and a
    bright table with the same harmonic phases (so it changes brightness, never cancels partials), weighted by
    a brightness envelope ``w(t)``. Returns ``(x, noise_env)`` as :func:`_note`."""
    sr, p, fam = v.sr, v.params, v.family
    n = len(t)
    kmax = max(1, min(80, int(0.45 * sr / f0)))
    k = np.arange(1, kmax + 1, dtype=np.float64)
    att = rng.uniform(0.7, 1.4)  # per-note attack variation
    vib = dict(vib_rate=p.get("vib_rate", 0.0), vib_cents=p.get("vib_cents", 0.0) * rng.uniform(0.6, 1.3))
    onset_noise, voices, spread = 0.0, 1, 0.0
    if fam == "strings":
        dark, bright_amps = k**-1.0 / (1 + (k / (8 + 4 * bright)) ** 2), k**-1.0
        env = _release(_ramp(n, sr, 0.12 * att + 0.1 * (1 - vel)), sr, hold, 0.25)
        w = np.clip(env * (0.6 + 0.3 * bright), 0, 1)  # more bow pressure, more high harmonics
        vib["vib_delay"] = 0.2
    elif fam == "brass":
        beta = max(1.2, 1.5 + 3.0 * vel + 1.2 * bright)
        dark, bright_amps = np.exp(-(k - 1) / 1.0), np.exp(-(k - 1) / beta)
        attack = 0.04 * att
        env = _release(_ramp(n, sr, attack), sr, hold, 0.1) * (1 + 0.15 * np.exp(-t / 0.1))  # slight overshoot
        w = np.clip(t / (2.5 * attack), 0, 1) ** 0.7  # the spectrum opens up as the lips lock in
        vib.update(vib_delay=0.35, scoop=p["scoop"] * rng.uniform(0.5, 1.2))
    elif fam == "reed":
        low = k * f0 < p["register_hz"]  # below it a clarinet's even harmonics are weak
        base = np.where(k % 2 == 1, 1.0, np.where(low, p["even"], 0.4)) / k
        dark, bright_amps = base / (1 + (k / 5) ** 2), base * (1 + 0.3 * bright)
        env = _release(_ramp(n, sr, 0.03 * att), sr, hold, 0.08)
        w = np.clip(env * (0.5 + 0.3 * vel), 0, 1)
        vib["vib_delay"] = 0.3
    elif fam == "flute":
        m = min(kmax, 5)
        dark, bright_amps = np.zeros(kmax), np.zeros(kmax)
        dark[:m] = p["harmonics"][:m] * np.array([1.0, 0.6, 0.4, 0.3, 0.2])[:m]
        bright_amps[:m] = p["harmonics"][:m] * (1 + 0.3 * bright)
        env = _release(_ramp(n, sr, 0.06 * att), sr, hold, 0.1)
        env *= 1 + 0.08 * np.sin(2 * np.pi * p["vib_rate"] * t) * np.clip((t - 0.3) / 0.3, 0, 1)  # breath vibrato
        w = np.clip(env * (0.4 + 0.5 * vel), 0, 1)
        vib["vib_delay"] = 0.3
        onset_noise = 0.15 * vel  # chiff
    elif fam == "organ":
        # Drawbars 16', 8', 5 1/3', 4', 2 2/3', 2', 1 3/5', 1 1/3', 1' are harmonics 1, 2, 3, 4, 6, 8, 10, 12, 16
        # of half the note's frequency.
        f0 = f0 / 2
        kmax = max(1, min(16, int(0.45 * sr / f0)))
        dark = np.zeros(kmax)
        for harm, level in zip((1, 2, 3, 4, 6, 8, 10, 12, 16), p["drawbars"]):
            if harm <= kmax and level > 0:
                dark[harm - 1] = 10 ** (3 * (level - 8) / 20)  # a drawbar step is 3 dB
        if not dark.any():
            dark[min(1, kmax - 1)] = 1.0
        bright_amps = dark
        env = _release(_ramp(n, sr, 0.006), sr, hold, 0.04)
        w = np.ones(n, dtype=np.float32)
        if p["leslie"]:  # rotating speaker: amplitude and pitch wobble
            env = env * (1 - 0.15 * (0.5 + 0.5 * np.sin(2 * np.pi * p["leslie_rate"] * t)))
        vib = dict(vib_rate=p["leslie_rate"], vib_cents=6.0 if p["leslie"] else 0.0)
        onset_noise = 0.05  # key click
    else:  # synth lead/pad and synth bass: detuned saws or squares through a low-pass with a filter envelope
        shape = 1.0 / k if p["wave"] == "saw" else np.where(k % 2 == 1, 1.0 / k, 0.0)
        voices, spread = p["voices"], p.get("spread", 0.0)
        if fam == "bass":
            cutoff_hz = p["cutoff"] * (1 + 0.5 * bright)
            dark = shape / np.sqrt(1 + (k * f0 / (0.5 * cutoff_hz)) ** 4)
            bright_amps = shape / np.sqrt(1 + (k * f0 / (2.5 * cutoff_hz)) ** 4)
            env = _release(_ramp(n, sr, 0.005), sr, hold, 0.08) * np.exp(-t / 1.5)
            w = np.exp(-t / 0.15)
        else:
            cut = p["cutoff"] * (1.0 + 0.4 * bright)
            dark = shape / np.sqrt(1 + (k / max(cut / 2.5, 1.0)) ** 4)
            bright_amps = shape / np.sqrt(1 + (k / cut) ** 4)
            if p["subtype"] == "pad":
                env = _release(_ramp(n, sr, rng.uniform(0.25, 0.7)), sr, hold, 0.5)
                w = np.clip(t / 1.0, 0, 1)
            else:
                env = _release(_ramp(n, sr, 0.01 * att), sr, hold, 0.1)
                w = np.exp(-t / p["env_decay"])
    norm = 1.0 / max(float(np.sqrt(np.sum(np.square(bright_amps)))), 1e-9)
    ph = rng.uniform(0, 2 * np.pi, len(dark))
    t_dark, t_bright = _table(np.asarray(dark) * norm, ph), _table(np.asarray(bright_amps) * norm, ph)
    w = w.astype(np.float32)
    x = np.zeros(n, dtype=np.float32)
    for i in range(voices):
        cents = 0.0 if voices == 1 else spread * (2 * i / (voices - 1) - 1)
        cyc = _cycles(f0 * 2 ** (cents / 1200), t, sr, rng, **vib)
        a = _read(t_dark, cyc)
        x += a + w * (_read(t_bright, cyc) - a)
    x *= (env / np.sqrt(voices)).astype(np.float32)
    if onset_noise:
        m = min(n, int(0.025 * sr))
        x[:m] += onset_noise * rng.standard_normal(m).astype(np.float32) * np.linspace(1, 0, m, dtype=np.float32)
    return x, (p["noise"] * env if "noise" in p else None)


def _render_part(v: _Voice, events, n: int, rng: np.random.Generator) -> np.ndarray:
    """Play ``events`` = ``[(onset_s, midi, hold_s, velocity)]`` on voice ``v`` into ``(l,)`` samples, then apply
    its body filter and add its breath/bow noise. Onsets may be negative (a note sounding into the clip)."""
    sr = v.sr
    track = np.zeros(n)
    noise_env = np.zeros(n) if "noise" in v.params else None
    for onset, midi, hold, vel in events:
        start = int(round(onset * sr))
        if start >= n:
            continue
        x, ne = _note(v, midi, hold, vel, rng, n - start)
        head = max(0, -start)
        if head >= len(x):
            continue
        a, b = start + head, start + len(x)
        track[a:b] += x[head:]
        if noise_env is not None and ne is not None:
            noise_env[a:b] += ne[head:]
    if not events:
        return track
    track = _fft_filter(track, sr, v.body)
    if noise_env is not None and noise_env.any():
        lo, hi = v.params["noise_band"]
        band = _fft_filter(
            rng.standard_normal(n), sr, lambda f: 1.0 / (1 + (lo / np.maximum(f, 1)) ** 2 + (f / hi) ** 2)
        )
        track += band * noise_env
    return track


# ------------------------------------------------------------------------------------------------ drums
def _drum_kit(sr: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One drum kit, tuned at random: kick, snare, closed and open hi-hat, rim click; each ``(l,)``."""
    t = np.arange(int(0.6 * sr)) / sr

    def hp(x: np.ndarray, fc: float) -> np.ndarray:
        return _fft_filter(x, sr, lambda f: 1.0 / (1 + (fc / np.maximum(f, 1)) ** 4))

    f_hi, f_lo, tau_f = rng.uniform(100, 180), rng.uniform(42, 60), rng.uniform(0.02, 0.05)
    freq = f_lo + (f_hi - f_lo) * np.exp(-t / tau_f)
    kick = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / rng.uniform(0.12, 0.3))
    kick[: int(0.003 * sr)] += 0.3 * rng.standard_normal(int(0.003 * sr))
    tone = rng.uniform(160, 240)
    snare = 0.5 * np.sin(2 * np.pi * tone * t) * np.exp(-t / 0.05)
    snare += hp(rng.standard_normal(len(t)), rng.uniform(800, 2000)) * np.exp(-t / rng.uniform(0.06, 0.15))
    metal = sum(np.sign(np.sin(2 * np.pi * f * t)) for f in rng.uniform(300, 900, 6))  # 808-style square cluster
    hat_src = hp(rng.standard_normal(len(t)) + 0.3 * metal, min(rng.uniform(5000, 8000), 0.35 * sr))
    hat = hat_src * np.exp(-t / rng.uniform(0.02, 0.05))
    open_hat = hat_src * np.exp(-t / rng.uniform(0.15, 0.35))
    rim = hp(np.sin(2 * np.pi * rng.uniform(1500, 2500) * t) + rng.standard_normal(len(t)), 1000) * np.exp(-t / 0.01)
    kit = {"kick": kick, "snare": snare, "hat": hat, "open_hat": open_hat, "rim": rim}
    return {name: (x / max(np.abs(x).max(), 1e-9)).astype(np.float32) for name, x in kit.items()}


# Hits per bar: (drum, beat position within the bar, velocity). Shuffle positions are swung when played.
_DRUM_PATTERNS = {
    "rock": [("kick", 0, 1.0), ("kick", 2, 0.9), ("kick", 2.5, 0.7), ("snare", 1, 0.9), ("snare", 3, 0.95)]
    + [("hat", b / 2, 0.6 if b % 2 else 0.8) for b in range(8)],
    "four_on_floor": [("kick", b, 1.0) for b in range(4)]
    + [("snare", 1, 0.8), ("snare", 3, 0.8)]
    + [("open_hat", b + 0.5, 0.6) for b in range(4)]
    + [("hat", b / 4, 0.3) for b in range(16) if b % 2 == 0 and b % 4],
    "waltz": [
        ("kick", 0, 1.0),
        ("snare", 1, 0.5),
        ("snare", 2, 0.5),
        ("hat", 0, 0.6),
        ("hat", 1, 0.5),
        ("hat", 2, 0.5),
    ],
    "shuffle": [("kick", 0, 1.0), ("kick", 2, 0.9), ("snare", 1, 0.9), ("snare", 3, 0.9)]
    + [("hat", b / 2, 0.45 if b % 2 else 0.75) for b in range(8)],
    "bossa": [("kick", 0, 0.9), ("kick", 1.5, 0.6), ("kick", 2, 0.9), ("kick", 3.5, 0.6)]
    + [("rim", x, 0.7) for x in (0, 0.75, 1.5, 2.5, 3.0)]
    + [("hat", b / 2, 0.35) for b in range(8)],
}


# ------------------------------------------------------------------------------------------------ music
def _scale_chord(mode: str, degree: int, rng: np.random.Generator) -> list[int]:
    """Semitones above the tonic of the triad (sometimes seventh) on scale ``degree``; ``V`` in minor is often major."""
    scale = list(_MAJOR if mode == "major" else _MINOR)
    if mode == "minor" and degree == 4 and rng.random() < 0.7:
        scale[6] = 11  # harmonic minor: the leading tone
    size = 4 if rng.random() < 0.25 else 3
    return [scale[(degree + 2 * i) % 7] + 12 * ((degree + 2 * i) // 7) for i in range(size)]


def _fold(midi: int, lo: int, hi: int) -> int:
    """Move ``midi`` by octaves into ``[lo, hi]`` (as close to the range as octaves allow)."""
    while midi < lo:
        midi += 12
    while midi > hi and midi - 12 >= lo:
        midi -= 12
    return midi


@dataclass
class _Grid:
    """Beat grid of a music clip: beat ``b`` (counted from the first bar line) -> seconds from the clip start."""

    beat_s: float
    start_beat: int
    swing: bool

    def time(self, b: float) -> float:
        whole = math.floor(b)
        frac = b - whole
        if self.swing:  # swung eighths: the off-beat lands two thirds through the beat
            frac = frac * 4 / 3 if frac <= 0.5 else 2 / 3 + (frac - 0.5) * 2 / 3
        return (whole + frac - self.start_beat) * self.beat_s


def _comp_events(grid: _Grid, chords, span: float, family: str, lo: int, hi: int, rng) -> list:
    """Chord part: each chord ``(start_beat, tones)`` voiced in the instrument's register as block, stab, strum or
    arpeggio events ``[(onset_s, midi, hold_s, vel)]``."""
    sustained = family in ("strings", "organ", "synth", "brass", "reed", "flute")
    styles = ["sustain", "halves"] if sustained else ["sustain", "beats", "offbeat", "arp_up", "arp_updown", "alberti"]
    if family == "guitar":
        styles = ["strum", "strum", "arp_up", "sustain"]
    style = str(rng.choice(styles))
    centre = int(rng.integers(50, 66))
    events = []
    for b0, tones in chords:
        notes = sorted(_fold(centre - 6 + (tn - centre + 6) % 12, lo, hi) for tn in tones)  # close voicing
        if rng.random() < 0.3:
            notes = notes[1:] + [notes[0] + 12]  # an inversion
        if rng.random() < 0.3:
            notes = [notes[0] - 12, *notes] if notes[0] - 12 >= lo else notes  # doubled bass note
        vel = rng.uniform(0.45, 0.8)
        if style in ("sustain", "halves", "beats", "offbeat", "strum"):
            step = {"sustain": span, "halves": 2.0, "beats": 1.0, "offbeat": 1.0, "strum": 0.5}[style]
            pos = np.arange(0.0, span, step) + (0.5 if style == "offbeat" else 0.0)
            for i, b in enumerate(pos):
                if style == "strum" and rng.random() < 0.35 and i:
                    continue  # a rhythm of strums, not every eighth
                length = step * (0.45 if style in ("beats", "offbeat") else 0.95) * grid.beat_s
                up = style == "strum" and (b % 1) > 0  # up-strokes on the off-beats
                order = notes[::-1] if up else notes
                spread = rng.uniform(0.008, 0.03) if style == "strum" else rng.uniform(0, 0.008)
                accent = 1.1 if (b0 + b) % 2 == 0 else 0.9
                for j, m in enumerate(order):
                    t0 = grid.time(b0 + b) + j * spread
                    events.append((t0, m, length, vel * accent * rng.uniform(0.9, 1.05)))
        else:
            pattern = {
                "arp_up": list(range(len(notes))),
                "arp_updown": list(range(len(notes))) + list(range(len(notes) - 2, 0, -1)),
                "alberti": [0, len(notes) - 1, 1, len(notes) - 1],
            }[style]
            step = 0.5 if grid.beat_s > 0.45 else 1.0
            for i, b in enumerate(np.arange(0.0, span, step)):
                m = notes[pattern[i % len(pattern)]]
                events.append(
                    (grid.time(b0 + b), m, step * grid.beat_s * rng.uniform(1.0, 2.0), vel * rng.uniform(0.85, 1.05))
                )
    return events


def _bass_events(grid: _Grid, chords, span: float, key: int, mode: str, lo: int, hi: int, rng) -> list:
    """Bass line under ``chords``: held roots, root-fifth, eighth pulses, syncopation or a walking line."""
    style = str(rng.choice(["root", "root_fifth", "pulse", "syncopated", "walking"]))
    scale = _MAJOR if mode == "major" else _MINOR

    def low(pitch: int) -> int:  # the pitch class of ``pitch`` in the bass register
        return _fold(28 + (pitch - 28) % 12, max(lo, 31), min(hi, 50))

    events = []
    for ci, (b0, tones) in enumerate(chords):
        root = low(tones[0])
        fifth = root + 7 if root + 7 <= hi else root - 5
        if style == "root":
            hits = [(0.0, root, span)]
        elif style == "root_fifth":
            hits = [(b, root if i % 2 == 0 else fifth, 1.8) for i, b in enumerate(np.arange(0, span, 2.0))]
        elif style == "pulse":
            hits = [(b, root, 0.4) for b in np.arange(0, span, 0.5)]
        elif style == "syncopated":
            hits = [(b, root if b < 2 else fifth, 0.6) for b in (0.0, 1.5, 2.0, 3.5) if b < span]
        else:  # walking quarters from this root towards the next, the last a chromatic approach
            nxt = chords[(ci + 1) % len(chords)][1][0]
            target = low(nxt)
            beats = np.arange(0, span, 1.0)
            hits = []
            for i, b in enumerate(beats):
                if i == 0:
                    m = root
                elif i == len(beats) - 1:
                    m = target + (1 if target < root else -1)
                else:
                    deg = int(np.argmin([(root - key - s) % 12 for s in scale]))
                    step = 1 if target >= root else -1
                    m = low(key + scale[(deg + step * i) % 7])
                hits.append((b, m, 0.9))
        for b, m, dur in hits:
            vel = rng.uniform(0.6, 0.9) * (1.1 if b == 0 else 1.0)
            events.append((grid.time(b0 + b), m, dur * grid.beat_s, vel))
    return events


def _melody_events(grid: _Grid, chords, key: int, mode: str, total_beats: float, seconds: float, lo: int, hi: int, rng):
    """A melody: rhythms from note values that suit the tempo, a walk on the scale that favours steps and lands
    on chord tones on strong beats, chromatic neighbours, rests and accents."""
    scale = _MAJOR if mode == "major" else _MINOR
    values = [0.5, 1.0, 1.5, 2.0, 0.25, 0.75, 3.0]
    weights = np.array([4, 4, 1.5, 2, 1, 1, 0.7]) if grid.beat_s >= 0.5 else np.array([3, 4, 2, 2, 0.1, 0.5, 1])
    weights[4] *= 0.3 if grid.beat_s < 0.6 else 1.0
    weights = weights / weights.sum()
    centre = int(rng.integers(max(lo, 55), max(max(lo, 55) + 1, min(hi, 84) - 6)))
    tonic = _fold(key, centre - 6, centre + 6)
    deg = int(rng.integers(0, 7))
    legato = rng.uniform(0.6, 1.0)
    events = []
    b = 0.0
    while b < total_beats:
        dur = float(rng.choice(values, p=weights))
        if rng.random() < 0.12:  # a rest
            b += dur
            continue
        deg += int(
            rng.choice([-2, -1, 0, 1, 2, -3, 3, 4, -4], p=[0.12, 0.25, 0.06, 0.25, 0.12, 0.06, 0.06, 0.04, 0.04])
        )
        chord = next((tones for cb, tones in reversed(chords) if cb <= b), chords[0][1])
        if b % 1 == 0 and rng.random() < 0.6:  # strong beat: nearest chord tone
            pcs = {tn % 12 for tn in chord}
            cands = [d for d in range(deg - 3, deg + 4) if (key + scale[d % 7]) % 12 in pcs]
            if cands:
                deg = min(cands, key=lambda d: abs(d - deg))
        midi = tonic + scale[deg % 7] + 12 * (deg // 7)
        if b % 1 != 0 and dur <= 0.5 and rng.random() < 0.12:
            midi += int(rng.choice([-1, 1]))  # chromatic neighbour
        if midi < lo or midi > hi:  # out of the instrument's range: jump an octave back towards the middle
            deg += -7 if midi > hi else 7
            midi = _fold(midi, lo, hi)
        accent = 1.15 if b % 2 == 0 else (1.0 if b % 1 == 0 else 0.88)  # strong beats louder
        events.append((grid.time(b), midi, dur * grid.beat_s * legato, rng.uniform(0.6, 0.9) * accent))
        b += dur
    if not any(0 <= on < seconds for on, *_ in events):  # all rests in a short clip: a melody still has a note
        events.append((max(0.0, grid.time(grid.start_beat)), _fold(tonic, lo, hi), 2 * grid.beat_s, 0.8))
    return events


def _room(x: np.ndarray, sr: int, rng: np.random.Generator, rt60: float) -> np.ndarray:
    """Reverberate ``x`` ``(l,)``: early reflections, then decaying noise whose highs die out twice as fast."""
    m = int(min(1.2 * rt60, 2.0) * sr)
    t = np.arange(m) / sr
    mf = _fast_len(m)
    noise = np.fft.rfft(rng.standard_normal(mf))
    cross = rng.uniform(1500, 4000)
    f = np.fft.rfftfreq(mf, 1 / sr)
    low, high = np.fft.irfft(noise * (f < cross), mf)[:m], np.fft.irfft(noise * (f >= cross), mf)[:m]
    ir = low * np.exp(-6.9 * t / rt60) + high * np.exp(-13.8 * t / rt60)
    ir *= np.clip((t - 0.005) / 0.02, 0, 1)  # the diffuse tail builds up after the first reflections
    for _ in range(int(rng.integers(3, 7))):
        i = int(rng.uniform(0.002, 0.04) * sr)
        if i < m:
            ir[i] += rng.choice([-1, 1]) * rng.uniform(0.2, 0.6) * np.sqrt(np.sum(ir**2) / max(1, m) * sr * 0.01)
    size = _fast_len(len(x) + m)
    wet = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)[: len(x)]
    drr_db = rng.uniform(0, 15)  # direct-to-reverberant ratio
    scale = np.sqrt(np.mean(x**2) / max(np.mean(wet**2), 1e-20)) * 10 ** (-drr_db / 20)
    return x + scale * wet


def _finish(x: np.ndarray, sr: int, rng: np.random.Generator, *, room_p: float, rt60, snr_db) -> np.ndarray:
    """Room (with probability ``room_p``, RT60 drawn from ``rt60``), background noise at an SNR drawn from
    ``snr_db`` (white/pink/brown, sometimes mains hum), then a random peak level in [0.25, 0.95]."""
    if rng.random() < room_p:
        x = _room(x, sr, rng, float(rng.uniform(*rt60)))
    rms = float(np.sqrt(np.mean(x**2)))
    noise = _noise_color(len(x), rng, float(rng.choice([0.0, 1.0, 2.0])))
    if rng.random() < 0.15:
        t = np.arange(len(x)) / sr
        mains = float(rng.choice([50.0, 60.0]))
        noise = 0.5 * noise + sum(np.sin(2 * np.pi * mains * h * t) / h for h in (1, 2, 3)) / 1.2
    x = x + noise * max(rms, 1e-4) * 10 ** (-float(rng.uniform(*snr_db)) / 20)
    return x * (rng.uniform(0.25, 0.95) / max(float(np.abs(x).max()), 1e-9))


def _pick(rng: np.random.Generator, choices, override, name: str):
    """Draw from ``choices`` (always, so the rest of the clip does not depend on overrides), then apply one."""
    drawn = choices[int(rng.integers(len(choices)))]
    if override is None:
        return drawn
    if override not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {override!r}")
    return override


def _music(n: int, sr: int, rng: np.random.Generator, seed: int, o: dict) -> tuple[np.ndarray, ClipLabels]:
    """A music clip (see the module docstring); ``o`` holds the caller's overrides."""
    key = int(rng.integers(12)) if o["key"] is None else int(o["key"]) % 12
    mode = _pick(rng, ("major", "minor"), o["mode"], "mode")
    tempo = float(TEMPI_BPM[int(rng.integers(len(TEMPI_BPM)))])
    if o["tempo_bpm"] is not None:
        if not o["tempo_bpm"] > 0:
            raise ValueError(f"tempo_bpm must be positive, got {o['tempo_bpm']}")
        tempo = float(o["tempo_bpm"])
    style = _pick(rng, STYLES, o["style"], "style")
    names = list(ARRANGEMENTS)
    drawn = names[int(rng.choice(len(names), p=[ARRANGEMENTS[a][1] for a in names]))]
    arrangement = _pick(rng, names, o["arrangement"], "arrangement") if o["arrangement"] else drawn
    parts = list(ARRANGEMENTS[arrangement][0])
    melody_inst = _pick(rng, INSTRUMENTS, o["instrument"], "instrument")
    others = [i for i in INSTRUMENTS if i not in (melody_inst, "bass")]
    chord_inst = others[int(rng.integers(len(others)))]
    bass_inst = "bass" if rng.random() < 0.9 else "synth"

    meter = 3 if style == "waltz" else 4
    grid = _Grid(60.0 / tempo, int(rng.integers(meter)), style == "shuffle")
    seconds = n / sr
    total_beats = grid.start_beat + seconds / grid.beat_s + 1
    # Harmonic rhythm: chords lasting 0.7..3 s, so a clip hears the progression, not one chord.
    spans = [s for s in (1.0, 2.0, float(meter), 2.0 * meter) if 0.7 <= s * grid.beat_s <= 3.0] or [float(meter)]
    span = float(rng.choice(spans))
    prog = _PROGRESSIONS[mode][int(rng.integers(len(_PROGRESSIONS[mode])))]
    # (start beat, MIDI-relative pitches: tonic pitch class + semitones) of every chord in the clip
    chords = [
        (c * span, [key + x for x in _scale_chord(mode, prog[c % len(prog)], rng)])
        for c in range(int(total_beats / span) + 1)
    ]

    # Sections: a part may enter or drop out at a bar line (never leaving the clip silent).
    window = {part: (-1e9, 1e9) for part in parts}
    if len(parts) > 1 and rng.random() < 0.3:
        bars = [b * meter for b in range(1, int(total_beats / meter) + 1)]
        cuts = [grid.time(b) for b in bars if 0.25 * seconds < grid.time(b) < 0.75 * seconds]
        if cuts:
            cut = float(rng.choice(cuts))
            part = parts[int(rng.integers(len(parts)))]
            window[part] = (cut, 1e9) if rng.random() < 0.5 else (-1e9, cut)

    def clip_events(part: str, events: list) -> list:
        t0, t1 = window[part]
        return [(on, m, min(h, t1 - on), v) for on, m, h, v in events if t0 <= on < t1]

    # Dynamics: a crescendo, decrescendo or swell over the clip (applied to the velocities).
    dyn_db = rng.uniform(-6, 6) * np.array(
        {0: [0, 0], 1: [0, 1], 2: [1, 0]}[int(rng.integers(3))], dtype=float
    ) - rng.uniform(0, 3)

    def dyn(t: float) -> float:
        return 10 ** (float(np.interp(t, [0, seconds], dyn_db)) / 20)

    mix: dict[str, np.ndarray] = {}
    lo_hi = {name: _RANGE[name] for name in INSTRUMENTS}
    if "melody" in parts:
        v = _make_voice(melody_inst, sr, rng)
        ev = clip_events(
            "melody", _melody_events(grid, chords, key, mode, total_beats, seconds, *lo_hi[melody_inst], rng)
        )
        ev = [(on, m, h, vel * dyn(on)) for on, m, h, vel in ev]
        track = _render_part(v, ev, n, rng)
        if rng.random() < 0.2:  # doubling: a second player, a few cents off and a few ms late
            twin = _Voice(v.family, sr, v.bright, v.tuning + rng.choice([-1, 1]) * rng.uniform(5, 12), v.body, v.params)
            delay = rng.uniform(0.008, 0.03)
            track += rng.uniform(0.5, 0.8) * _render_part(twin, [(on + delay, *rest) for on, *rest in ev], n, rng)
        mix["melody"] = track
    if "chords" in parts:
        v = _make_voice(chord_inst, sr, rng)
        ev = clip_events("chords", _comp_events(grid, chords, span, chord_inst, *lo_hi[chord_inst], rng))
        mix["chords"] = _render_part(v, [(on, m, h, vel * dyn(on)) for on, m, h, vel in ev], n, rng)
    if "bass" in parts:
        v = _make_voice(bass_inst, sr, rng)
        lo, hi = lo_hi["bass"]
        ev = clip_events("bass", _bass_events(grid, chords, span, key, mode, lo, hi, rng))
        mix["bass"] = _render_part(v, [(on, m, h, vel * dyn(on)) for on, m, h, vel in ev], n, rng)
    if "drums" in parts:
        kit = _drum_kit(sr, rng)
        track = np.zeros(n)
        t0, t1 = window["drums"]
        for bar in range(int(total_beats / meter) + 1):
            for name, pos, vel in _DRUM_PATTERNS[style]:
                on = grid.time(bar * meter + pos) + rng.normal(0, 0.004)  # a human drummer
                start = int(round(on * sr))
                gain = vel * dyn(on) * rng.uniform(0.85, 1.1)
                if not (t0 <= on < t1) or start >= n or start + len(kit[name]) <= 0:
                    continue
                hit = kit[name][max(0, -start) : n - start]  # a hit just before the clip rings into it
                track[max(0, start) : max(0, start) + len(hit)] += hit * gain
        mix["drums"] = track
    levels = {
        "melody": 1.0,
        "chords": rng.uniform(0.4, 0.75),
        "bass": rng.uniform(0.5, 0.85),
        "drums": rng.uniform(0.4, 0.9),
    }
    out = np.zeros(n)
    for part, track in mix.items():
        rms = float(np.sqrt(np.mean(track**2)))
        if rms > 1e-9:
            out += track * (_REF_RMS * levels[part] / rms)
    out = _finish(out, sr, rng, room_p=0.85, rt60=(0.15, 1.5), snr_db=(12, 50))
    present = [p for p in PARTS if p in mix and np.any(mix[p])]
    if "melody" in present:
        inst = melody_inst
    elif "chords" in present:
        inst = chord_inst
    elif "bass" in present:
        inst = bass_inst
    else:
        inst = "drums"
    labels = ClipLabels(
        kind="music",
        key=key,
        mode=mode,
        tempo_bpm=tempo,
        style=style if "drums" in present else "",
        instrument=inst,
        parts="+".join(present),
        seed=seed,
    )
    return out, labels


def _note_clip(n: int, sr: int, rng: np.random.Generator, seed: int, o: dict) -> tuple[np.ndarray, ClipLabels]:
    """One instrument, one note of octaves 2..6 in its range, a random onset, hold and velocity."""
    inst = _pick(rng, INSTRUMENTS, o["instrument"], "instrument")
    u = rng.random()
    if o["midi"] is not None:
        midi = int(o["midi"])
        if o["instrument"] is None:  # an instrument that can play it
            able = [i for i in INSTRUMENTS if _RANGE[i][0] <= midi <= _RANGE[i][1]] or list(INSTRUMENTS)
            inst = able[int(u * len(able))]
    else:
        lo, hi = max(_RANGE[inst][0], 36), min(_RANGE[inst][1], 95)
        if o["pitch"] is not None:
            choices = [m for m in range(lo, hi + 1) if m % 12 == int(o["pitch"]) % 12]
            midi = choices[int(u * len(choices))]
        else:
            midi = lo + int(u * (hi - lo + 1))
    seconds = n / sr
    onset = rng.uniform(0.0, 0.15) * min(seconds, 1.0)
    hold = max(0.1, rng.uniform(0.4, 0.85) * seconds)
    v = _make_voice(inst, sr, rng)
    x = _render_part(v, [(onset, midi, hold, rng.uniform(0.35, 1.0))], n, rng)
    x = _finish(x, sr, rng, room_p=0.7, rt60=(0.1, 0.8), snr_db=(25, 60))
    return x, ClipLabels(kind="note", instrument=inst, pitch=midi % 12, midi=midi, seed=seed)


def _chord_clip(n: int, sr: int, rng: np.random.Generator, seed: int, o: dict) -> tuple[np.ndarray, ClipLabels]:
    """One instrument, one chord: quality, root, register and inversion drawn; struck together or arpeggiated."""
    inst = _pick(rng, tuple(i for i in INSTRUMENTS if i != "bass"), o["instrument"], "instrument")
    quality = _pick(rng, tuple(CHORDS), o["chord"], "chord")
    root_pc = int(rng.integers(12)) if o["pitch"] is None else int(o["pitch"]) % 12
    lo, hi = _RANGE[inst]
    shift = int(rng.choice([-12, 0, 0, 12]))
    root = _fold(48 + root_pc + shift, lo, hi - 8)
    notes = [root + i for i in CHORDS[quality]]
    inversion = int(rng.integers(len(notes)))
    notes = notes[inversion:] + [m + 12 for m in notes[:inversion]]
    arpeggio = bool(rng.random() < 0.4) if o["arpeggio"] is None else bool(o["arpeggio"])
    seconds = n / sr
    onset = rng.uniform(0.0, 0.1) * min(seconds, 1.0)
    hold = max(0.1, rng.uniform(0.55, 0.85) * seconds)
    step = rng.uniform(0.08, 0.25) if arpeggio else (rng.uniform(0.01, 0.04) if inst == "guitar" else 0.0)
    vel = rng.uniform(0.4, 0.95)
    events = [(onset + i * step, m, hold - i * step, vel * rng.uniform(0.9, 1.05)) for i, m in enumerate(notes)]
    x = _render_part(_make_voice(inst, sr, rng), events, n, rng)
    x = _finish(x, sr, rng, room_p=0.7, rt60=(0.1, 0.8), snr_db=(25, 60))
    return x, ClipLabels(kind="chord", instrument=inst, pitch=root_pc, midi=root, chord=quality, seed=seed)


def render_clip(
    seconds: float = 5.0,
    sample_rate: int = 24000,
    seed: int = 0,
    kind: str | None = None,
    *,
    key: int | None = None,
    mode: str | None = None,
    tempo_bpm: float | None = None,
    style: str | None = None,
    arrangement: str | None = None,
    instrument: str | None = None,
    midi: int | None = None,
    pitch: int | None = None,
    chord: str | None = None,
    arpeggio: bool | None = None,
) -> tuple[np.ndarray, ClipLabels]:
    """Render one labelled clip; every attribute not given is drawn from ``seed``.

    Args:
        seconds: clip length.
        sample_rate: output rate (any; 16000, 24000 and 44100 are tested).
        seed: the clip's seed; the same arguments always give the same samples.
        kind: ``"music"``, ``"note"`` or ``"chord"``; None: ``"note"`` when ``midi`` is given, ``"chord"`` when
            ``chord`` is, else ``"music"``.
        key, mode, tempo_bpm, style, arrangement: music only. ``key`` is taken modulo 12, ``tempo_bpm`` may be
            any positive value, ``arrangement`` a key of :data:`ARRANGEMENTS`.
        instrument: the melody's (music), the note's or the chord's instrument, one of :data:`INSTRUMENTS`.
        midi: a note clip's MIDI note; pitch: a note clip's pitch class (random octave 2..6 in range) or a
            chord clip's root pitch class.
        chord: a chord clip's quality (a key of :data:`CHORDS`); arpeggio: a chord clip's notes one by one.
    Returns:
        ``(wav, labels)``: ``wav`` float32 ``(l,)``, ``l = round(seconds * sample_rate)``, peak in [0.25, 0.95].
    Raises:
        ValueError: a non-positive length or rate, or an override outside its choices.
    """
    if seconds <= 0 or sample_rate <= 0:
        raise ValueError(f"seconds and sample_rate must be positive, got {seconds}, {sample_rate}")
    if kind is None:
        kind = "note" if midi is not None else "chord" if chord is not None else "music"
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    n = max(1, int(round(seconds * sample_rate)))
    rng = np.random.default_rng(seed)
    overrides = dict(
        key=key, mode=mode, tempo_bpm=tempo_bpm, style=style, arrangement=arrangement, instrument=instrument,
        midi=midi, pitch=pitch, chord=chord, arpeggio=arpeggio,
    )  # fmt: skip
    render = {"music": _music, "note": _note_clip, "chord": _chord_clip}[kind]
    wav, labels = render(n, int(sample_rate), rng, int(seed), overrides)
    return wav.astype(np.float32), labels


def clip_kind(index: int, mix: Mapping[str, float] = DEFAULT_MIX) -> str:
    """The kind of corpus clip ``index`` under the mixture ``mix`` (kind -> weight).

    Kinds follow a golden-ratio sequence, so every stretch of a corpus holds them in the mixture's proportions
    (to within a clip or two) and the kind depends only on the index.
    """
    bad = [k for k in mix if k not in KINDS]
    if bad or not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"mix must map kinds of {KINDS} to non-negative weights with a positive sum, got {dict(mix)}")
    u = (index * 0.6180339887498949 + 0.5) % 1.0
    total = sum(mix.values())
    acc = 0.0
    for k in KINDS:
        acc += mix.get(k, 0.0) / total
        if u < acc:
            return k
    return next(k for k in reversed(KINDS) if mix.get(k, 0.0) > 0)


def _render_job(job: dict) -> tuple[np.ndarray, ClipLabels]:
    return render_clip(**job)


def render_clips(jobs: Sequence[Mapping], workers: int = 1) -> list[tuple[np.ndarray, ClipLabels]]:
    """``[render_clip(**job) for job in jobs]``, in ``workers`` processes when there are enough jobs to gain.

    The clips are the same whatever ``workers`` is (each depends only on its own arguments).
    """
    jobs = [dict(j) for j in jobs]
    workers = min(workers, len(jobs) // 16)  # a process costs an interpreter start: worth it for 16+ clips
    if workers <= 1:
        return [render_clip(**j) for j in jobs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # A fork server that has imported this module: workers start fast, and are never forked from a caller that
    # holds torch/BLAS threads (which forked children can deadlock on).
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        return list(pool.map(_render_job, jobs, chunksize=max(1, len(jobs) // (8 * workers))))


def write_synthetic_corpus(
    out_dir: str | os.PathLike,
    num_clips: int,
    *,
    seconds: float = 5.0,
    sample_rate: int = 24000,
    seed: int = 0,
    mix: Mapping[str, float] = DEFAULT_MIX,
    subtype: str = "PCM_16",
    workers: int = 1,
) -> Path:
    """Write ``num_clips`` rendered clips as ``clip_00000.wav ...`` plus ``labels.csv``.

    Clip ``i`` is of kind :func:`clip_kind(i, mix) <clip_kind>` and uses seed ``seed * 1_000_003 + i`` (as
    :class:`mert.data.datasets.SyntheticDataset`), so the same arguments always give the same files.
    ``labels.csv`` has the columns ``path`` (relative to ``out_dir``) and every :class:`ClipLabels` field.

    Args:
        out_dir: folder to write (created).
        num_clips: number of clips.
        seconds: clip length.
        sample_rate: file sample rate.
        seed: corpus seed.
        mix: kind -> weight (default 70 % music, 15 % notes, 15 % chords).
        subtype: soundfile subtype of the WAV files (``"PCM_16"``, ``"FLOAT"``, ...).
        workers: processes rendering clips (the files are the same for any number).
    Returns:
        The folder.
    """
    import soundfile as sf

    if num_clips <= 0:
        raise ValueError(f"num_clips must be positive, got {num_clips}")
    clip_kind(0, mix)  # validates the mixture before any file is written
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for start in range(0, num_clips, 256):  # in batches: a large corpus never sits in memory at once
        jobs = [
            dict(seconds=seconds, sample_rate=sample_rate, seed=seed * 1_000_003 + i, kind=clip_kind(i, mix))
            for i in range(start, min(start + 256, num_clips))
        ]
        for i, (wav, labels) in enumerate(render_clips(jobs, workers), start):
            name = f"clip_{i:05d}.wav"
            with open_atomic(out / name, text=False) as f:
                sf.write(f, wav, sample_rate, subtype=subtype, format="WAV")
            rows.append({"path": name, **labels.to_dict()})
    # The demo takes an existing labels.csv as "corpus complete", so it appears whole and last.
    with open_atomic(out / "labels.csv", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", *LABEL_FIELDS])
        writer.writeheader()
        writer.writerows(rows)
    return out

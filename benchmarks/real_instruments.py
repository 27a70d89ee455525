"""A local stand-in for probing an encoder on recordings of real instruments: labelled clips rendered from the
sampled instruments of a General MIDI sound font (FluidR3_GM: recordings of real pianos, strings, brass, reeds,
guitars, organs, mallets, drum kits), sounds the synthetic pretraining corpus (mert/data/synthetic.py) never
produces, probed with `mert probe` next to a random encoder of the same shape.

Needs the `fluidsynth` command and a GM sound font from the OS packages (nothing else beyond this repository's
venv; the MIDI files are written here byte by byte):

    apt-get install -y fluidsynth fluid-soundfont-gm      # /usr/share/sounds/sf2/FluidR3_GM.sf2

Build the clips (4 s, 24 kHz mono 16-bit wav, peak-normalised to a random level, half of them with FluidSynth's
room reverb) and one manifest per task (`DIR/<task>.csv`: path,label,split with a seeded stratified 60/20/20
split; `DIR/meta/<task>.jsonl` says what each clip plays), then probe one or more encoders on every task:

    python benchmarks/real_instruments.py build --out /tmp/real_instruments [--seed 0] [--clips-per-task 240]
    python benchmarks/real_instruments.py probe --data /tmp/real_instruments \\
        --encoder runs/export --encoder random:runs/export [--features] [--out results.md]

Tasks (balanced classes): `pitch` (pitch class of one sustained note, octaves 2-6, 12 classes), `instrument`
(GM family of a note or phrase, 8 classes), `chord` (quality of a block, strummed or arpeggiated chord, 6 classes),
`key` (tonic of a major or minor cadence with melody and bass, 12 classes), `tempo` (drum kit + bass at 70, 90,
110, 130 or 150 bpm), `style` (rock, waltz, bossa, ballad, electronic) and `tags` (multi-label: which of the 8
families and drums play). `probe` runs `mert probe ... protocol=quick` once per task and encoder (features cached
under `DIR/probe_runs/cache`, run folders under `DIR/probe_runs/runs`) and prints one Markdown table of test scores
(primary metric of the candidate chosen on validation, with that layer: `L3` a hidden state, `w` the weighted
sum). `--features` adds the hand-crafted baselines `features:mfcc`, `features:chroma`, `features:cqt`,
`features:all`. Extra words after the options are passed to every `mert probe` call (e.g. 'probe.seeds=[0]').

With 240 clips a task the test split has 48 clips: one clip is 2 points and the standard error of an accuracy near
50 % is about 7 points, so compare means over tasks or build more clips (`--clips-per-task 600`) for finer calls.
On the 2-core development machine (shared with other jobs): build 4 min (about 70 s of CPU), probe 40-110 s per
task and encoder, about half of it `mert probe` starting up.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mert.data.synthetic import CHORDS

# ---------------------------------------------------------------------------------------------------------------
# Rendering constants
# ---------------------------------------------------------------------------------------------------------------

SAMPLE_RATE = 24000
CLIP_SECONDS = 4.0  # every clip
GAP_SECONDS = 1.5  # silence rendered between clips (all sound off, then the reverb tail dies away)
LEAD_SECONDS = 0.5  # silence before the first clip of a rendered chunk
CLIPS_PER_CHUNK = 40  # clips per MIDI file / fluidsynth call
FADE_SECONDS = 0.02  # fade-out at the clip's end (the notes are cut there)
PEAK_DBFS = (-12.0, -1.0)  # each clip is peak-normalised to a random level in this range
REVERB_PROBABILITY = 0.5  # share of clips with a reverb send
REVERB_SEND = (25, 90)  # CC91 range when reverb is on (FluidSynth's own reverb, default room)
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
SOUND_FONT_CANDIDATES = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/soundfonts/default.sf2",
)
DRUM_CHANNEL = 9  # GM channel 10

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")

# ---------------------------------------------------------------------------------------------------------------
# Instrument tables: GM program (0-based) -> (name, lowest, highest MIDI note used)
# ---------------------------------------------------------------------------------------------------------------

FAMILIES: dict[str, dict[int, tuple[str, int, int]]] = {
    "piano": {
        0: ("acoustic grand", 36, 96),
        1: ("bright acoustic", 36, 96),
        2: ("electric grand", 36, 96),
        3: ("honky-tonk", 36, 96),
        4: ("electric piano 1", 36, 91),
        5: ("electric piano 2", 36, 91),
        6: ("harpsichord", 36, 89),
        7: ("clavinet", 36, 84),
    },
    "mallets": {
        8: ("celesta", 60, 96),
        9: ("glockenspiel", 72, 100),
        10: ("music box", 60, 96),
        11: ("vibraphone", 53, 89),
        12: ("marimba", 45, 96),
        13: ("xylophone", 65, 96),
        15: ("dulcimer", 48, 84),
    },
    "organ": {
        16: ("drawbar organ", 36, 96),
        17: ("percussive organ", 36, 96),
        18: ("rock organ", 36, 96),
        19: ("church organ", 36, 96),
        20: ("reed organ", 36, 84),
        21: ("accordion", 41, 89),
        23: ("bandoneon", 41, 84),
    },
    "guitar": {
        24: ("nylon guitar", 40, 83),
        25: ("steel guitar", 40, 83),
        26: ("jazz guitar", 40, 83),
        27: ("clean guitar", 40, 83),
        28: ("muted guitar", 40, 76),
        29: ("overdrive guitar", 40, 83),
        30: ("distortion guitar", 40, 83),
    },
    "bass": {
        32: ("acoustic bass", 28, 55),
        33: ("fingered bass", 28, 60),
        34: ("picked bass", 28, 60),
        35: ("fretless bass", 28, 60),
        36: ("slap bass", 28, 60),
        37: ("pop bass", 28, 60),
    },
    "strings": {
        40: ("violin", 55, 100),
        41: ("viola", 48, 88),
        42: ("cello", 36, 76),
        44: ("tremolo strings", 40, 90),
        45: ("pizzicato strings", 36, 84),
        46: ("harp", 36, 91),
        48: ("string ensemble", 36, 96),
        49: ("slow strings", 36, 96),
    },
    "brass": {
        56: ("trumpet", 55, 82),
        57: ("trombone", 40, 72),
        58: ("tuba", 28, 58),
        59: ("muted trumpet", 55, 82),
        60: ("french horn", 41, 77),
        61: ("brass section", 40, 84),
    },
    "reed_pipe": {
        64: ("soprano sax", 56, 87),
        65: ("alto sax", 49, 81),
        66: ("tenor sax", 44, 76),
        67: ("baritone sax", 36, 69),
        68: ("oboe", 58, 91),
        69: ("english horn", 52, 81),
        70: ("bassoon", 34, 75),
        71: ("clarinet", 50, 91),
        72: ("piccolo", 74, 102),
        73: ("flute", 60, 96),
        74: ("recorder", 60, 96),
        75: ("pan flute", 60, 96),
    },
}
RANGE: dict[int, tuple[int, int]] = {p: (lo, hi) for fam in FAMILIES.values() for p, (_, lo, hi) in fam.items()}
FAMILY_OF: dict[int, str] = {p: f for f, fam in FAMILIES.items() for p in fam}

# pitch: sustained single notes of many instruments (no harp/pizzicato/muted guitar: too short to be "sustained")
PITCH_PROGRAMS = (0, 2, 4, 6, 11, 12, 16, 19, 21, 24, 25, 26, 32, 33, 35, 40, 41, 42, 48, 56, 57, 58, 60, 61)
PITCH_PROGRAMS += (64, 65, 66, 67, 68, 70, 71, 72, 73)
PITCH_OCTAVES = (2, 3, 4, 5, 6)  # scientific octaves: C4 = MIDI 60
# instruments that can play chords
CHORD_PROGRAMS = (0, 1, 2, 4, 5, 6, 11, 12, 16, 18, 19, 21, 24, 25, 26, 27, 46, 48, 49, 61)
MELODY_PROGRAMS = (40, 56, 59, 60, 64, 65, 66, 68, 71, 73, 74, 11, 0, 4, 26, 21)
BASS_PROGRAMS = (32, 33, 34, 35, 37)
# GM drum kits (bank 128) present in FluidR3_GM
KITS = {"standard": 0, "room": 8, "power": 16, "electronic": 24, "tr808": 25, "jazz": 32, "brush": 40}
ACOUSTIC_KITS = ("standard", "room", "power", "jazz", "brush")
# GM percussion keys
KICK, SIDE_STICK, SNARE, CLAP, CLOSED_HH, PEDAL_HH, OPEN_HH, CRASH, RIDE = 36, 37, 38, 39, 42, 44, 46, 49, 51
MARACAS, CLAVES, CABASA = 70, 75, 69

# The demo's chord qualities, so this stand-in probes the same classes on sampled instruments.
CHORD_QUALITIES = CHORDS
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 11)  # harmonic minor: the V chord has the leading tone
# cadences that start and end on the tonic: (root degree offset in semitones, quality)
KEY_PROGRESSIONS = {
    "major": (
        ((0, "major"), (5, "major"), (7, "major"), (0, "major")),
        ((0, "major"), (2, "minor"), (7, "dominant7"), (0, "major")),
        ((0, "major"), (9, "minor"), (7, "major"), (0, "major")),
        ((0, "major"), (5, "major"), (7, "dominant7"), (0, "major")),
    ),
    "minor": (
        ((0, "minor"), (5, "minor"), (7, "major"), (0, "minor")),
        ((0, "minor"), (8, "major"), (7, "dominant7"), (0, "minor")),
        ((0, "minor"), (2, "diminished"), (7, "major"), (0, "minor")),
        ((0, "minor"), (5, "minor"), (7, "dominant7"), (0, "minor")),
    ),
}
TEMPO_CLASSES = (70, 90, 110, 130, 150)  # bpm
TEMPO_JITTER = 2.0  # +- bpm around the class tempo
# drum patterns over one 4/4 bar in eighth-note steps: step -> GM percussion keys
TEMPO_PATTERNS = {
    "backbeat": {0: (KICK, CLOSED_HH), 1: (CLOSED_HH,), 2: (SNARE, CLOSED_HH), 3: (CLOSED_HH,), 4: (KICK, CLOSED_HH),
                 5: (CLOSED_HH,), 6: (SNARE, CLOSED_HH), 7: (CLOSED_HH,)},
    "backbeat_kick8": {0: (KICK, CLOSED_HH), 1: (CLOSED_HH,), 2: (SNARE, CLOSED_HH), 3: (KICK, CLOSED_HH),
                       4: (KICK, CLOSED_HH), 5: (CLOSED_HH,), 6: (SNARE, CLOSED_HH), 7: (CLOSED_HH,)},
    "quarter_hat": {0: (KICK, CLOSED_HH), 2: (SNARE, CLOSED_HH), 4: (KICK, CLOSED_HH), 5: (KICK,),
                    6: (SNARE, CLOSED_HH)},
    "ride": {0: (KICK, RIDE), 1: (RIDE,), 2: (SNARE, RIDE), 3: (RIDE,), 4: (KICK, RIDE), 5: (RIDE,),
             6: (SNARE, RIDE), 7: (RIDE,)},
    "four_floor": {0: (KICK,), 1: (OPEN_HH,), 2: (KICK, CLAP), 3: (OPEN_HH,), 4: (KICK,), 5: (OPEN_HH,),
                   6: (KICK, CLAP), 7: (OPEN_HH,)},
}  # fmt: skip
STYLES = ("rock", "waltz", "bossa", "ballad", "electronic")
STYLE_TEMPO = {
    "rock": (100, 150),
    "waltz": (120, 180),
    "bossa": (120, 145),
    "ballad": (60, 84),
    "electronic": (118, 132),
}
STYLE_PROGRESSIONS = {  # per style, progressions of (semitones over the tonic, quality), one chord per bar
    "rock": (
        ((0, "power"), (7, "power"), (9, "power"), (5, "power")),
        ((0, "power"), (5, "power"), (7, "power"), (5, "power")),
    ),
    "waltz": (
        ((0, "major"), (7, "dominant7"), (7, "dominant7"), (0, "major")),
        ((0, "major"), (5, "major"), (7, "dominant7"), (0, "major")),
    ),
    "bossa": (
        ((2, "minor7"), (7, "dominant7"), (0, "major7"), (0, "major7")),
        ((0, "major7"), (9, "minor7"), (2, "minor7"), (7, "dominant7")),
    ),
    "ballad": (
        ((0, "major"), (9, "minor"), (5, "major"), (7, "major")),
        ((0, "major"), (7, "major"), (9, "minor"), (5, "major")),
    ),
    "electronic": (
        ((9, "minor"), (5, "major"), (0, "major"), (7, "major")),
        ((0, "minor"), (8, "major"), (3, "major"), (10, "major")),
    ),
}
STYLE_QUALITIES = {**CHORD_QUALITIES, "power": (0, 7, 12), "major7": (0, 4, 7, 11), "minor7": (0, 3, 7, 10)}
ROCK_GUITARS = (29, 30)
WALTZ_BASS = (58, 32, 42)  # tuba, acoustic bass, cello
WALTZ_CHORDS = (48, 21, 0, 45)  # strings, accordion, piano, pizzicato
WALTZ_MELODY = (40, 73, 71, 21)
BALLAD_PIANOS = (0, 1, 4, 5)
BALLAD_PADS = (48, 49, 52, 89)
ELECTRO_BASS = (38, 39)
ELECTRO_LEADS = (80, 81, 87, 90)
ELECTRO_PADS = (88, 89, 90, 94)
TAG_DRUMS = "drums"
TAG_DRUM_PROBABILITY = 0.5
TAG_FAMILY_COUNTS = (1, 2, 3)
POLYPHONIC_FAMILIES = ("piano", "organ", "guitar", "strings")

TASKS = ("pitch", "instrument", "chord", "key", "tempo", "style", "tags")

# ---------------------------------------------------------------------------------------------------------------
# A clip: timed MIDI messages on up to 16 channels
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Clip:
    """MIDI messages of one clip; times in seconds from the clip's start (kept inside ``[0, CLIP_SECONDS)``)."""

    rng: np.random.Generator
    events: list[tuple[float, int, bytes]] = field(default_factory=list)  # (time, order, message)
    meta: dict = field(default_factory=dict)
    reverb: int = 0

    def setup(self, ch: int, program: int, volume: int = 100, pan: int = 64) -> None:
        """Program, volume, pan, reverb and chorus sends of a channel, at the clip's start."""
        msgs = [
            bytes([0xB0 | ch, 121, 0]),  # reset controllers
            bytes([0xB0 | ch, 7, int(np.clip(volume, 1, 127))]),
            bytes([0xB0 | ch, 10, int(np.clip(pan, 0, 127))]),
            bytes([0xB0 | ch, 91, self.reverb]),
            bytes([0xB0 | ch, 93, 0]),
            bytes([0xC0 | ch, program & 0x7F]),
        ]
        self.events += [(0.0, 1, m) for m in msgs]

    def note(self, ch: int, pitch: int, start: float, dur: float, vel: int) -> None:
        start = max(0.0, start + float(self.rng.normal(0, 0.004)))  # a little human timing
        if start >= CLIP_SECONDS - 0.05 or not 0 <= pitch <= 127:
            return
        end = min(start + max(dur, 0.03), CLIP_SECONDS - 0.02)
        vel = int(np.clip(vel + self.rng.integers(-6, 7), 1, 127))
        self.events.append((start, 3, bytes([0x90 | ch, pitch, vel])))
        self.events.append((end, 2, bytes([0x80 | ch, pitch, 0])))

    def chord(self, ch: int, pitches, start: float, dur: float, vel: int, strum: float = 0.0) -> None:
        for i, p in enumerate(pitches):
            self.note(ch, p, start + i * strum, dur - i * strum, vel)


def _vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def write_midi(path: Path, clips: list[Clip]) -> list[float]:
    """One format-0 MIDI file playing the clips one after another; returns each clip's start in seconds.

    1 tick = 1 ms (1000 ticks per quarter at 60 bpm). Every clip ends with all-notes-off and all-sound-off on
    every channel followed by ``GAP_SECONDS`` of silence, so nothing of one clip sounds in the next one.
    """
    events: list[tuple[int, int, int, bytes]] = []  # (tick, order, seq, message)
    starts = []
    t0 = LEAD_SECONDS
    seq = 0
    for clip in clips:
        starts.append(t0)
        for t, order, msg in clip.events:
            events.append((round((t0 + t) * 1000), order, seq, msg))
            seq += 1
        end = round((t0 + CLIP_SECONDS) * 1000)
        for ch in range(16):
            events.append((end, 0, seq, bytes([0xB0 | ch, 123, 0])))
            events.append((end, 0, seq + 1, bytes([0xB0 | ch, 120, 0])))
            seq += 2
        t0 += CLIP_SECONDS + GAP_SECONDS
    events.sort()
    track = bytearray(b"\x00\xff\x51\x03" + (1_000_000).to_bytes(3, "big"))  # tempo: 1 s per quarter
    now = 0
    for tick, _, _, msg in events:
        track += _vlq(tick - now) + msg
        now = tick
    track += _vlq(round(t0 * 1000) - now) + b"\xff\x2f\x00"
    path.write_bytes(b"MThd" + struct.pack(">IHHH", 6, 0, 1, 1000) + b"MTrk" + struct.pack(">I", len(track)) + track)
    return starts


def find_sound_font(path: str | None) -> str:
    for p in [path] if path else SOUND_FONT_CANDIDATES:
        if p and Path(p).is_file():
            return str(Path(p).resolve())
    raise SystemExit(
        f"no General MIDI sound font found (looked at {path or ', '.join(SOUND_FONT_CANDIDATES)}): "
        "apt-get install fluid-soundfont-gm, or pass --sound-font"
    )


def render_chunk(clips: list[Clip], workdir: Path, name: str, sound_font: str) -> list[np.ndarray]:
    """Render clips with the fluidsynth CLI; returns one mono float32 array per clip (CLIP_SECONDS long)."""
    import soundfile as sf

    mid, wav = workdir / f"{name}.mid", workdir / f"{name}.wav"
    starts = write_midi(mid, clips)
    cmd = ["fluidsynth", "-q", "-n", "-i", "-o", "synth.dynamic-sample-loading=1", "-R", "1", "-C", "0"]
    cmd += ["-g", "0.4", "-r", str(SAMPLE_RATE), "-O", "float", "-T", "wav", "-F", str(wav), sound_font, str(mid)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not wav.is_file():
        raise RuntimeError(f"fluidsynth failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    audio, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    assert sr == SAMPLE_RATE, sr
    audio = audio.mean(1)
    n = int(CLIP_SECONDS * SAMPLE_RATE)
    out = []
    for s in starts:
        i = round(s * SAMPLE_RATE)
        seg = np.pad(audio[i : i + n], (0, max(0, n - len(audio[i : i + n]))))
        fade = int(FADE_SECONDS * SAMPLE_RATE)
        seg[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
        out.append(seg)
    mid.unlink()
    wav.unlink()
    return out


# ---------------------------------------------------------------------------------------------------------------
# Task generators: (rng, label) -> Clip
# ---------------------------------------------------------------------------------------------------------------


def _new_clip(rng: np.random.Generator) -> Clip:
    reverb = int(rng.integers(*REVERB_SEND)) if rng.random() < REVERB_PROBABILITY else 0
    return Clip(rng=rng, reverb=reverb, meta={"reverb": reverb})


def _choice(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _fit(pitch: int, lo: int, hi: int) -> int:
    """Move a pitch by octaves into [lo, hi]."""
    while pitch < lo:
        pitch += 12
    while pitch > hi:
        pitch -= 12
    return pitch


def _voicing(rng: np.random.Generator, root: int, intervals, inversion: int | None = None) -> list[int]:
    notes = [root + i for i in intervals]
    inv = int(rng.integers(len(notes))) if inversion is None else inversion
    return sorted(notes[inv:] + [n + 12 for n in notes[:inv]])


def gen_pitch(rng: np.random.Generator, label: str) -> Clip:
    pc = NOTE_NAMES.index(label)
    while True:
        prog = int(_choice(rng, PITCH_PROGRAMS))
        lo, hi = RANGE[prog]
        octaves = [o for o in PITCH_OCTAVES if lo <= 12 * (o + 1) + pc <= hi]
        if octaves:
            break
    pitch = 12 * (int(_choice(rng, octaves)) + 1) + pc
    c = _new_clip(rng)
    c.setup(0, prog, volume=int(rng.integers(90, 121)))
    start, dur = float(rng.uniform(0.05, 0.3)), float(rng.uniform(1.5, 3.2))
    c.note(0, pitch, start, dur, int(rng.integers(55, 116)))
    c.meta.update(program=prog, midi=pitch)
    return c


def _phrase(c: Clip, ch: int, prog: int, rng: np.random.Generator, start: float = 0.1, end: float = 3.7) -> list[int]:
    """A stepwise melody on a random scale inside the program's range; returns the pitches."""
    lo, hi = RANGE.get(prog, (48, 84))
    scale = MAJOR_SCALE if rng.random() < 0.5 else MINOR_SCALE
    tonic = int(rng.integers(12))
    pitches = [p for p in range(lo, hi + 1) if (p - tonic) % 12 in scale]
    i = int(rng.integers(len(pitches) // 4, max(len(pitches) * 3 // 4, len(pitches) // 4 + 1)))
    t, played = start, []
    while t < end:
        dur = float(_choice(rng, (0.2, 0.3, 0.4, 0.6, 0.8)))
        c.note(ch, pitches[i], t, dur * 0.95, int(rng.integers(60, 112)))
        played.append(pitches[i])
        i = int(np.clip(i + int(rng.integers(-2, 3)), 0, len(pitches) - 1))
        t += dur
    return played


def gen_instrument(rng: np.random.Generator, label: str) -> Clip:
    prog = int(_choice(rng, sorted(FAMILIES[label])))
    lo, hi = RANGE[prog]
    c = _new_clip(rng)
    c.setup(0, prog, volume=int(rng.integers(90, 121)))
    mode = _choice(rng, ("note", "phrase", "phrase"))
    if mode == "note":
        c.note(0, int(rng.integers(lo, hi + 1)), float(rng.uniform(0.05, 0.3)), float(rng.uniform(1.0, 3.2)), 90)
    else:
        _phrase(c, 0, prog, rng)
    c.meta.update(program=prog, mode=mode)
    return c


def gen_chord(rng: np.random.Generator, label: str) -> Clip:
    prog = int(_choice(rng, CHORD_PROGRAMS))
    root = int(rng.integers(45, 62))
    notes = _voicing(rng, root, CHORD_QUALITIES[label])
    lo, hi = RANGE[prog]
    shift = 0
    while notes[0] + shift < lo:
        shift += 12
    while notes[-1] + shift > hi:
        shift -= 12
    notes = [n + shift for n in notes]
    c = _new_clip(rng)
    c.setup(0, prog, volume=int(rng.integers(90, 121)))
    vel = int(rng.integers(60, 110))
    style = _choice(rng, ("block", "block_repeat", "strum", "arp_up", "arp_down", "arp_updown"))
    t = float(rng.uniform(0.05, 0.25))
    if rng.random() < 0.4 and notes[0] - 12 >= lo:  # the root an octave below the voicing
        c.note(0, root + shift - 12 if root + shift - 12 < notes[0] else notes[0] - 12, t, 3.3, vel)
    if style == "block":
        c.chord(0, notes, t, float(rng.uniform(2.0, 3.4)), vel)
    elif style == "block_repeat":
        step = float(rng.uniform(0.5, 1.0))
        while t < 3.4:
            c.chord(0, notes, t, step * 0.9, vel)
            t += step
    elif style == "strum":
        step = float(rng.uniform(0.8, 1.6))
        while t < 3.2:
            c.chord(0, notes, t, step * 0.95, vel, strum=float(rng.uniform(0.015, 0.05)))
            t += step
    else:
        order = {"arp_up": notes, "arp_down": notes[::-1], "arp_updown": notes + notes[-2:0:-1]}[style]
        step = float(rng.uniform(0.12, 0.3))
        i = 0
        while t < 3.6:
            c.note(0, order[i % len(order)], t, step * 1.5, vel)
            t += step
            i += 1
    c.meta.update(program=prog, root=NOTE_NAMES[root % 12], style=style)
    return c


def gen_key(rng: np.random.Generator, label: str) -> Clip:
    tonic = NOTE_NAMES.index(label)
    mode = "major" if rng.random() < 0.5 else "minor"
    scale = MAJOR_SCALE if mode == "major" else MINOR_SCALE
    prog_chords = int(_choice(rng, CHORD_PROGRAMS))
    prog_melody = int(_choice(rng, MELODY_PROGRAMS))
    with_bass = rng.random() < 0.6
    c = _new_clip(rng)
    c.setup(0, prog_chords, volume=int(rng.integers(70, 100)))
    c.setup(1, prog_melody, volume=int(rng.integers(95, 121)))
    if with_bass:
        c.setup(2, int(_choice(rng, BASS_PROGRAMS)), volume=int(rng.integers(85, 115)))
    progression = _choice(rng, KEY_PROGRESSIONS[mode])
    bar = float(rng.uniform(0.8, 0.95))
    mel_lo, mel_hi = RANGE.get(prog_melody, (60, 84))
    mel_lo, mel_hi = max(mel_lo, 60), min(mel_hi, 86)
    if mel_hi - mel_lo < 12:
        mel_lo, mel_hi = RANGE[prog_melody]
    melody_notes = [p for p in range(mel_lo, mel_hi + 1) if (p - tonic) % 12 in scale]
    t = 0.05
    prev = _fit(tonic + 60, mel_lo, mel_hi)
    for k, (deg, qual) in enumerate(progression):
        root = tonic + deg
        chord = _voicing(rng, _fit(root + 48, 45, 57), CHORD_QUALITIES[qual])
        last = k == len(progression) - 1
        dur = CLIP_SECONDS - 0.15 - t if last else bar
        c.chord(0, chord, t, dur, int(rng.integers(55, 90)))
        if with_bass:
            c.note(2, _fit(root + 36, 33, 47), t, dur * 0.95, 95)
        if last:  # the melody ends on the tonic
            c.note(1, _fit(tonic + 60, mel_lo, mel_hi), t, dur, 100)
        else:
            n_notes = int(_choice(rng, (1, 2, 2, 3)))
            tones = [p for p in melody_notes if (p - root) % 12 in [i % 12 for i in CHORD_QUALITIES[qual]]]
            for j in range(n_notes):
                pool = tones if j == 0 or rng.random() < 0.5 else melody_notes
                pool = sorted(pool, key=lambda p: abs(p - prev))[:4] or melody_notes
                prev = int(_choice(rng, pool))
                c.note(1, prev, t + j * bar / n_notes, bar / n_notes * 0.95, int(rng.integers(80, 115)))
        t += bar
    c.meta.update(mode=mode, programs=[prog_chords, prog_melody], bass=bool(with_bass))
    return c


def _drums(c: Clip, pattern: dict, step: float, offset_steps: int, start: float, steps_per_bar: int = 8) -> None:
    """Play a step pattern on the drum channel from ``start`` to the clip's end."""
    t, k = start, offset_steps
    while t < CLIP_SECONDS - 0.05:
        for key in pattern.get(k % steps_per_bar, ()):
            accent = 110 if k % steps_per_bar == 0 else 90
            vel = accent - (20 if key in (CLOSED_HH, OPEN_HH, RIDE, MARACAS, CABASA, PEDAL_HH) else 0)
            c.note(DRUM_CHANNEL, key, t, 0.1, vel)
        t += step
        k += 1


def gen_tempo(rng: np.random.Generator, label: str) -> Clip:
    bpm = float(label.removesuffix("bpm")) + float(rng.uniform(-TEMPO_JITTER, TEMPO_JITTER))
    beat = 60.0 / bpm
    kit = _choice(rng, sorted(KITS))
    pattern_name = _choice(rng, sorted(TEMPO_PATTERNS))
    c = _new_clip(rng)
    c.setup(DRUM_CHANNEL, KITS[kit], volume=int(rng.integers(95, 121)))
    bass = int(_choice(rng, BASS_PROGRAMS))
    c.setup(0, bass, volume=int(rng.integers(85, 115)))
    offset = int(rng.integers(8))
    start = float(rng.uniform(0.0, beat / 2))
    _drums(c, TEMPO_PATTERNS[pattern_name], beat / 2, offset, start)
    root = int(rng.integers(28, 40))
    bass_line = _choice(rng, ("quarters", "eighths", "root_fifth"))
    t, k = start, offset
    while t < CLIP_SECONDS - 0.05:
        if bass_line == "eighths" or k % 2 == 0:
            note = root + (7 if bass_line == "root_fifth" and k % 4 == 2 else 0) + (12 if k % 8 == 7 else 0)
            c.note(0, note, t, beat / 2 * 0.8 if bass_line == "eighths" else beat * 0.8, 100)
        t += beat / 2
        k += 1
    c.meta.update(bpm=round(bpm, 2), kit=kit, pattern=pattern_name, bass=bass, bass_line=bass_line)
    return c


def _style_chords(rng, style: str, tonic: int):
    prog = _choice(rng, STYLE_PROGRESSIONS[style])
    return [(tonic + deg, STYLE_QUALITIES[q]) for deg, q in prog]


def gen_style(rng: np.random.Generator, label: str) -> Clip:
    bpm = float(rng.uniform(*STYLE_TEMPO[label]))
    beat = 60.0 / bpm
    tonic = int(rng.integers(12))
    c = _new_clip(rng)
    chords = _style_chords(rng, label, tonic)
    t0 = float(rng.uniform(0.0, 0.2))
    if label == "rock":
        c.setup(DRUM_CHANNEL, KITS[_choice(rng, ("standard", "room", "power"))], volume=110)
        c.setup(0, int(_choice(rng, ROCK_GUITARS)), volume=int(rng.integers(80, 105)))
        c.setup(1, int(_choice(rng, (33, 34))), volume=105)
        pattern = TEMPO_PATTERNS[_choice(rng, ("backbeat", "backbeat_kick8"))]
        _drums(c, {**pattern, 0: (*pattern[0], CRASH)} if rng.random() < 0.5 else pattern, beat / 2, 0, t0)
        for k in range(int((CLIP_SECONDS - t0) / (beat / 2)) + 1):
            root, iv = chords[(k // 8) % len(chords)]
            t = t0 + k * beat / 2
            c.chord(0, [_fit(root + 40, 40, 51) + i for i in iv], t, beat / 2 * 0.9, 100)
            c.note(1, _fit(root + 28, 28, 39), t, beat / 2 * 0.85, 105)
    elif label == "waltz":  # 3/4: bass on one, chords on two and three
        c.setup(0, int(_choice(rng, WALTZ_BASS)), volume=105)
        c.setup(1, int(_choice(rng, WALTZ_CHORDS)), volume=int(rng.integers(80, 100)))
        melody = rng.random() < 0.6
        if melody:
            c.setup(2, int(_choice(rng, WALTZ_MELODY)), volume=110)
        for k in range(int((CLIP_SECONDS - t0) / beat) + 1):
            root, iv = chords[(k // 3) % len(chords)]
            t = t0 + k * beat
            if k % 3 == 0:
                c.note(0, _fit(root + 36, 33, 50), t, beat * 0.9, 105)
                if melody:
                    c.note(2, _fit(root + 72 + _choice(rng, iv), 64, 86), t, beat * 2.8, 100)
            else:
                c.chord(1, _voicing(rng, _fit(root + 55, 53, 64), iv, 0), t, beat * 0.6, 80)
    elif label == "bossa":  # 3-2 bossa clave on the rim, shaker eighths, nylon guitar, root-fifth bass
        c.setup(DRUM_CHANNEL, KITS[_choice(rng, ("jazz", "brush", "standard"))], volume=105)
        c.setup(0, 24, volume=int(rng.integers(85, 110)))
        c.setup(1, 32, volume=105)
        clave = {0: (SIDE_STICK,), 3: (SIDE_STICK,), 6: (SIDE_STICK,), 10: (SIDE_STICK,), 13: (SIDE_STICK,)}
        pattern = {k: (*clave.get(k, ()), _choice(rng, (MARACAS, CLOSED_HH, CABASA))) for k in range(16)}
        for k in (0, 3, 4, 7, 8, 11, 12, 15):
            pattern[k] = (*pattern[k], KICK)
        _drums(c, pattern, beat / 2, 0, t0, steps_per_bar=16)
        comp = (0, 3, 5, 8, 11, 13)  # eighth steps of the guitar over two bars
        for k in range(int((CLIP_SECONDS - t0) / (beat / 2)) + 1):
            root, iv = chords[(k // 8) % len(chords)]
            t = t0 + k * beat / 2
            if k % 16 in comp:
                c.chord(0, _voicing(rng, _fit(root + 52, 50, 61), iv, 0), t, beat * 0.7, 85, strum=0.01)
            if k % 4 == 0:
                c.note(1, _fit(root + 36, 33, 47), t, beat * 1.4, 100)
            elif k % 4 == 3:
                c.note(1, _fit(root + 43, 33, 50), t, beat * 0.45, 90)
    elif label == "ballad":  # piano arpeggios + melody, maybe a pad and brushes
        c.setup(0, int(_choice(rng, BALLAD_PIANOS)), volume=110)
        pad = rng.random() < 0.5
        if pad:
            c.setup(1, int(_choice(rng, BALLAD_PADS)), volume=75)
        if rng.random() < 0.3:
            c.setup(DRUM_CHANNEL, KITS["brush"], volume=80)
            _drums(c, {0: (KICK,), 2: (SIDE_STICK,), 4: (KICK,), 6: (SIDE_STICK,)}, beat / 2, 0, t0)
        for k in range(int((CLIP_SECONDS - t0) / (beat / 2)) + 1):
            root, iv = chords[(k // 8) % len(chords)]
            t = t0 + k * beat / 2
            arp = [_fit(root + 36, 36, 47), *_voicing(rng, _fit(root + 48, 48, 59), iv, 0)]
            c.note(0, arp[[0, 1, 2, 3, 2, 1, 2, 3][k % 8]], t, beat, 70)
            if k % 4 == 0:
                c.note(0, _fit(root + 72 + _choice(rng, iv) + _choice(rng, (0, 0, 2)), 67, 84), t, beat * 1.8, 95)
            if pad and k % 8 == 0:
                c.chord(1, _voicing(rng, _fit(root + 55, 53, 64), iv, 0), t, beat * 4, 70)
    elif label == "electronic":  # four on the floor, offbeat synth bass, synth arpeggio or pad
        c.setup(DRUM_CHANNEL, KITS[_choice(rng, ("electronic", "tr808"))], volume=110)
        c.setup(0, int(_choice(rng, ELECTRO_BASS)), volume=105)
        lead = rng.random() < 0.5
        c.setup(1, int(_choice(rng, ELECTRO_LEADS if lead else ELECTRO_PADS)), volume=85)
        _drums(c, TEMPO_PATTERNS["four_floor"], beat / 2, 0, t0)
        for k in range(int((CLIP_SECONDS - t0) / (beat / 4)) + 1):
            root, iv = chords[(k // 16) % len(chords)]
            t = t0 + k * beat / 4
            if k % 4 == 2:
                c.note(0, _fit(root + 36, 33, 47), t, beat / 2 * 0.8, 110)
            if lead:
                notes = _voicing(rng, _fit(root + 60, 57, 68), iv, 0)
                c.note(1, notes[k % len(notes)], t, beat / 4 * 0.8, 90)
            elif k % 16 == 0:
                c.chord(1, _voicing(rng, _fit(root + 55, 53, 64), iv, 0), t, beat * 4, 80)
    else:
        raise ValueError(label)
    c.meta.update(bpm=round(bpm, 1), tonic=NOTE_NAMES[tonic])
    return c


def gen_tags(rng: np.random.Generator, label: str) -> tuple[Clip, str]:
    """``label`` is ignored: the tags are drawn here (families playing, and drums)."""
    n = int(_choice(rng, TAG_FAMILY_COUNTS))
    fams = sorted(rng.choice(sorted(FAMILIES), size=n, replace=False).tolist())
    c = _new_clip(rng)
    tonic = int(rng.integers(12))
    for ch, fam in enumerate(fams):
        prog = int(_choice(rng, sorted(FAMILIES[fam])))
        c.setup(ch, prog, volume=int(rng.integers(85, 115)), pan=int(rng.integers(40, 89)))
        lo, hi = RANGE[prog]
        if fam in POLYPHONIC_FAMILIES and rng.random() < 0.5:
            step = float(rng.uniform(0.6, 1.2))
            t = float(rng.uniform(0.0, 0.3))
            while t < 3.5:
                root = _fit(tonic + int(_choice(rng, (0, 5, 7, 9))) + 48, max(lo, 40), max(lo, 40) + 11)
                c.chord(ch, _voicing(rng, root, CHORD_QUALITIES[_choice(rng, ("major", "minor"))]), t, step, 80)
                t += step
        else:
            _phrase(c, ch, prog, rng, start=float(rng.uniform(0.0, 0.4)))
    tags = list(fams)
    if rng.random() < TAG_DRUM_PROBABILITY:
        c.setup(DRUM_CHANNEL, KITS[_choice(rng, ACOUSTIC_KITS)], volume=100)
        beat = 60.0 / float(rng.uniform(80, 140))
        _drums(c, TEMPO_PATTERNS[_choice(rng, ("backbeat", "ride", "quarter_hat"))], beat / 2, 0, 0.05)
        tags.append(TAG_DRUMS)
    c.meta.update(families=fams)
    return c, ";".join(sorted(tags))


GENERATORS: dict[str, tuple[tuple[str, ...], Callable]] = {
    "pitch": (NOTE_NAMES, gen_pitch),
    "instrument": (tuple(FAMILIES), gen_instrument),
    "chord": (tuple(CHORD_QUALITIES), gen_chord),
    "key": (NOTE_NAMES, gen_key),
    "tempo": (tuple(f"{b}bpm" for b in TEMPO_CLASSES), gen_tempo),
    "style": (STYLES, gen_style),
    "tags": (("multilabel",), gen_tags),
}


def split_column(labels: list[str], seed: int, stratify: bool) -> list[str]:
    """Seeded 60/20/20 split, stratified by label (one group for multi-label tasks): the classes' shuffled
    members are laid end to end and dealt train, train, train, valid, test in turn, so every split gets its share
    of each class (to within one) and small classes still leave valid and test non-empty overall."""
    rng = np.random.default_rng([seed, 7919])
    groups: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(lab if stratify else "", []).append(i)
    deal = ["train"] * round(5 * SPLIT_FRACTIONS[0]) + ["valid"] * round(5 * SPLIT_FRACTIONS[1])
    deal += ["test"] * (5 - len(deal))
    out = [""] * len(labels)
    j = 0
    for key in sorted(groups):
        for i in rng.permutation(groups[key]):
            out[int(i)] = deal[j % len(deal)]
            j += 1
    return out


def build(out: Path, seed: int, clips_per_task: int, tasks: list[str], sound_font: str, jobs: int) -> None:
    import soundfile as sf

    if shutil.which("fluidsynth") is None:
        raise SystemExit("fluidsynth not found: apt-get install fluidsynth fluid-soundfont-gm")
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta").mkdir(exist_ok=True)
    t_start = time.time()
    plan: list[tuple[str, list[Clip], list[str]]] = []
    for ti, task in enumerate(TASKS):
        if task not in tasks:
            continue
        classes, gen = GENERATORS[task]
        order = np.random.default_rng([seed, ti]).permutation(clips_per_task)
        clips, labels = [], []
        for i in range(clips_per_task):
            rng = np.random.default_rng([seed, ti, i])
            made = gen(rng, classes[int(order[i]) % len(classes)])
            clip, label = made if isinstance(made, tuple) else (made, classes[int(order[i]) % len(classes)])
            clips.append(clip)
            labels.append(label)
        plan.append((task, clips, labels))
    jobs_list = [
        (task, k, clips[k : k + CLIPS_PER_CHUNK])
        for task, clips, _ in plan
        for k in range(0, len(clips), CLIPS_PER_CHUNK)
    ]
    with tempfile.TemporaryDirectory(prefix="real_instruments_") as tmp, ThreadPoolExecutor(jobs) as pool:
        futures = [
            pool.submit(render_chunk, chunk, Path(tmp), f"{task}_{k}", sound_font) for task, k, chunk in jobs_list
        ]
        rendered: dict[str, list[np.ndarray]] = {}
        for (task, _, _), fut in zip(jobs_list, futures):
            rendered.setdefault(task, []).extend(fut.result())
        # Some notes render silent (a preset without samples at that pitch or velocity): draw that clip again,
        # same class, from a derived seed, so every seed builds (the other clips stay as they were).
        for ti, (task, clips, labels) in enumerate(plan):
            classes, gen = GENERATORS[task]
            order = np.random.default_rng([seed, ti]).permutation(clips_per_task)
            for i, audio in enumerate(rendered[task]):
                attempt = 0
                while float(np.abs(audio).max()) < 1e-4 and attempt < 8:
                    attempt += 1
                    label = classes[int(order[i]) % len(classes)]
                    made = gen(np.random.default_rng([seed, ti, i, attempt]), label)
                    clip, label = made if isinstance(made, tuple) else (made, label)
                    audio = render_chunk([clip], Path(tmp), f"{task}_{i}_again{attempt}", sound_font)[0]
                    clips[i], labels[i], rendered[task][i] = clip, label, audio
    t_render = time.time() - t_start
    for ti, (task, clips, labels) in enumerate(plan):
        folder = out / task
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        gains = np.random.default_rng([seed, ti, 104729]).uniform(*PEAK_DBFS, size=len(clips))
        rows = []
        splits = split_column(labels, seed, stratify=task != "tags")
        with open(out / "meta" / f"{task}.jsonl", "w") as meta:
            for i, (clip, label, audio) in enumerate(zip(clips, labels, rendered[task])):
                peak = float(np.abs(audio).max())
                if peak < 1e-4:
                    raise RuntimeError(f"{task} clip {i} rendered silent: {clip.meta} (sound font lacks a preset?)")
                audio = audio / peak * 10 ** (gains[i] / 20)
                rel = f"{task}/{i:05d}.wav"
                sf.write(str(out / rel), audio.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
                rows.append((rel, label, splits[i]))
                meta.write(
                    json.dumps({"path": rel, "label": label, "peak_dbfs": round(gains[i], 2), **clip.meta}) + "\n"
                )
        with open(out / f"{task}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label", "split"])
            w.writerows(rows)
        counts = {lab: labels.count(lab) for lab in sorted(set(labels))}
        desc = f"{len(counts)} label sets" if task == "tags" else ", ".join(f"{k} {v}" for k, v in counts.items())
        print(f"{task}: {len(rows)} clips ({desc}) -> {out / task}.csv", flush=True)
    info = {"seed": seed, "clips_per_task": clips_per_task, "sound_font": sound_font, "sample_rate": SAMPLE_RATE}
    info["clip_seconds"] = CLIP_SECONDS
    (out / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"built {sum(len(p[1]) for p in plan)} clips in {time.time() - t_start:.1f} s (render {t_render:.1f} s)")


# ---------------------------------------------------------------------------------------------------------------
# Probing: `mert probe` per task and encoder, one table
# ---------------------------------------------------------------------------------------------------------------

FEATURE_BASELINES = ("features:mfcc", "features:chroma", "features:cqt", "features:all")


def _mert_command() -> list[str]:
    exe = Path(sys.executable).parent / "mert"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("mert")
    if found:
        return [found]
    return [sys.executable, "-m", "mert.cli"]


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in text).strip("_.")[:80] or "encoder"


def probe(data: Path, encoders: list[str], tasks: list[str], scratch: Path, protocol: str, overrides: list[str]):
    """Run `mert probe` per task and encoder; returns {(task, encoder): results.json summary or error string}."""
    results: dict[tuple[str, str], dict | str] = {}
    mert = _mert_command()
    for enc in encoders:
        for task in tasks:
            manifest = data / f"{task}.csv"
            run_dir = scratch / "runs" / _slug(enc) / task
            cmd = [*mert, "probe", f"encoder={enc}", f"data.manifest={manifest}", f"protocol={protocol}"]
            cmd += ["progress=false", f"runs_root={scratch / 'runs'}", f"run_dir={run_dir}"]
            cmd += [f"features.cache_dir={scratch / 'cache'}", *overrides]
            t0 = time.time()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            secs = time.time() - t0
            res_file = run_dir / "results.json"
            if proc.returncode != 0 or not res_file.is_file():
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                results[task, enc] = f"failed ({proc.returncode}): " + " | ".join(tail)
                print(f"[{task} / {enc}] FAILED in {secs:.0f} s: {results[task, enc]}", file=sys.stderr, flush=True)
                continue
            summary = json.loads(res_file.read_text())
            summary["_wall_s"] = secs
            results[task, enc] = summary
            metric = summary["task"]["metrics"][0]
            score = summary["headline"][metric]["mean"]
            print(
                f"[{task} / {enc}] {metric} {100 * score:.1f} (candidate {summary['headline']['candidate']}) "
                f"in {secs:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    return results


def _cell(res: dict | str | None) -> tuple[str, float | None]:
    if not isinstance(res, dict):
        return ("error" if res else "-"), None
    metric = res["task"]["metrics"][0]
    score = float(res["headline"][metric]["mean"])
    cand = str(res["headline"]["candidate"])
    where = "w" if cand == "weighted" else f"L{cand}"
    if (res["encoder"].get("config") or {}).get("type") == "handcrafted":
        where = ""
    return f"{100 * score:.1f}" + (f" ({where})" if where else ""), score


def table(results: dict, encoders: list[str], tasks: list[str]) -> str:
    head = ["task (metric)", "chance", *encoders]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    sums: dict[str, list[float]] = {e: [] for e in encoders}
    chances = []
    for task in tasks:
        first = next((r for e in encoders if isinstance(r := results.get((task, e)), dict)), None)
        metric = first["task"]["metrics"][0] if first else "?"
        n_cls = len(first["task"].get("classes") or []) if first else 0
        chance = (first.get("chance") or {}).get(metric) if first else None
        if chance is not None:
            chances.append(float(chance))
        row = [f"{task} ({metric}, {n_cls})", "-" if chance is None else f"{100 * chance:.1f}"]
        for e in encoders:
            text, score = _cell(results.get((task, e)))
            row.append(text)
            if score is not None:
                sums[e].append(score)
        lines.append("| " + " | ".join(row) + " |")
    mean_row = ["**mean**", f"{100 * np.mean(chances):.1f}" if len(chances) == len(tasks) else "-"]
    for e in encoders:
        v = sums[e]
        mean_row.append(f"**{100 * np.mean(v):.1f}**" if len(v) == len(tasks) else "-")
    lines.append("| " + " | ".join(mean_row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="render the labelled clips and write one manifest per task")
    b.add_argument("--out", type=Path, required=True, help="output folder (keep it out of the repository)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--clips-per-task", type=int, default=240, help="clips per task (balanced over the classes)")
    b.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    b.add_argument("--sound-font", default=None, help="GM .sf2 file (default: FluidR3_GM from the OS packages)")
    b.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel fluidsynth processes")
    p = sub.add_parser("probe", help="probe encoders on every task with `mert probe` and print one table")
    p.add_argument("--data", type=Path, required=True, help="a folder written by `build`")
    p.add_argument("--encoder", action="append", default=[], help="encoder source (repeat); e.g. random:<export>")
    p.add_argument("--features", action="store_true", help=f"also probe {', '.join(FEATURE_BASELINES)}")
    p.add_argument("--tasks", default=None, help="comma-separated subset (default: every manifest in --data)")
    p.add_argument("--protocol", default="quick", help="mert probe protocol (default quick)")
    p.add_argument("--scratch", type=Path, default=None, help="run folders and feature cache (default DATA/probe_runs)")
    p.add_argument("--out", type=Path, default=None, help="also write the table to this Markdown file")
    p.add_argument("overrides", nargs="*", help="extra `mert probe` overrides, e.g. 'probe.seeds=[0]' device=cpu")
    args = ap.parse_args(argv)

    if args.cmd == "build":
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        unknown = sorted(set(tasks) - set(TASKS))
        if unknown:
            ap.error(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
        build(args.out, args.seed, args.clips_per_task, tasks, find_sound_font(args.sound_font), max(1, args.jobs))
        return 0

    encoders = list(args.encoder) + (list(FEATURE_BASELINES) if args.features else [])
    if not encoders:
        ap.error("give at least one --encoder (or --features)")
    if args.tasks:
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    else:
        tasks = [t for t in TASKS if (args.data / f"{t}.csv").is_file()]
    missing = [t for t in tasks if not (args.data / f"{t}.csv").is_file()]
    if missing or not tasks:
        ap.error(f"no manifest for {missing or 'any task'} in {args.data}: run `build` first")
    scratch = args.scratch or args.data / "probe_runs"
    t0 = time.time()
    results = probe(args.data, encoders, tasks, scratch, args.protocol, args.overrides)
    md = (
        f"Real-instrument probes ({args.data}, protocol={args.protocol}"
        + (f", {' '.join(args.overrides)}" if args.overrides else "")
        + f"): test score (%) of the candidate chosen on validation (Lk: hidden state k, w: weighted sum); "
        f"{time.time() - t0:.0f} s.\n\n" + table(results, encoders, tasks)
    )
    print(md, end="")
    if args.out:
        args.out.write_text(md)
    return 1 if any(isinstance(v, str) for v in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())

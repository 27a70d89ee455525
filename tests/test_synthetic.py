"""The synthetic music generator: determinism, every kind and instrument at several rates, labels that the audio
bears out, the corpus writer's mixture and labels.csv."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import fields

import numpy as np
import pytest
import soundfile as sf

from mert.data.datasets import SyntheticDataset
from mert.data.synthetic import (
    ARRANGEMENTS,
    CHORDS,
    DEFAULT_MIX,
    INSTRUMENTS,
    STYLES,
    TEMPI_BPM,
    ClipLabels,
    clip_kind,
    render_clip,
    write_synthetic_corpus,
)


def _hz(midi: int) -> float:
    return 440.0 * 2 ** ((midi - 69) / 12)


@pytest.mark.parametrize("kind", ["music", "note", "chord"])
def test_same_seed_same_samples(kind):
    a, la = render_clip(1.5, 24000, seed=11, kind=kind)
    b, lb = render_clip(1.5, 24000, seed=11, kind=kind)
    c, _ = render_clip(1.5, 24000, seed=12, kind=kind)
    assert a.dtype == np.float32 and a.shape == (36000,)
    assert np.array_equal(a, b) and la == lb and la.seed == 11 and la.kind == kind
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("sr", [16000, 24000, 44100])
def test_every_kind_and_instrument_renders(sr):
    n = int(round(0.8 * sr))
    clips = [render_clip(0.8, sr, seed=i, kind="note", instrument=inst) for i, inst in enumerate(INSTRUMENTS)]
    clips += [
        render_clip(0.8, sr, seed=i, kind="chord", instrument=inst)
        for i, inst in enumerate(INSTRUMENTS)
        if inst != "bass"
    ]
    clips += [render_clip(0.8, sr, seed=i, kind="music", instrument=inst) for i, inst in enumerate(INSTRUMENTS)]
    clips += [render_clip(0.8, sr, seed=i, kind="music", style=s, arrangement="full") for i, s in enumerate(STYLES)]
    clips += [render_clip(0.8, sr, seed=9, kind="music", arrangement=a) for a in ARRANGEMENTS]
    for wav, lab in clips:
        assert wav.shape == (n,) and wav.dtype == np.float32, lab
        assert np.isfinite(wav).all() and 0.2 < np.abs(wav).max() <= 1.0, lab
        assert np.sqrt(np.mean(wav.astype(np.float64) ** 2)) > 1e-3, lab  # not silence


def test_labels_of_each_kind():
    _, music = render_clip(1.0, 16000, seed=3, kind="music")
    assert music.key in range(12) and music.mode in ("major", "minor") and music.tempo_bpm in TEMPI_BPM
    assert music.pitch == music.midi == -1 and music.chord == ""
    assert set(music.parts.split("+")) <= {"melody", "chords", "bass", "drums"}
    for seed in range(6):
        _, note = render_clip(1.0, 16000, seed=seed, kind="note")
        assert note.instrument in INSTRUMENTS and 36 <= note.midi <= 95 and note.pitch == note.midi % 12
        assert (note.key, note.mode, note.tempo_bpm, note.style, note.chord) == (-1, "", 0.0, "", "")
        _, chord = render_clip(1.0, 16000, seed=seed, kind="chord")
        assert chord.chord in CHORDS and chord.pitch == chord.midi % 12 and chord.instrument != "bass"
    assert [f.name for f in fields(ClipLabels)] == list(music.to_dict())


def test_overrides_and_their_errors():
    _, lab = render_clip(1.0, 16000, seed=1, key=14, mode="minor", tempo_bpm=120, instrument="brass", style="waltz")
    assert (lab.kind, lab.key, lab.mode, lab.tempo_bpm) == ("music", 2, "minor", 120.0)
    _, lab = render_clip(1.0, 16000, seed=1, instrument="brass", style="waltz", arrangement="full")
    assert (lab.instrument, lab.style, lab.parts) == ("brass", "waltz", "melody+chords+bass+drums")
    _, drums = render_clip(1.0, 16000, seed=1, arrangement="drums")
    assert (drums.instrument, drums.parts) == ("drums", "drums") and drums.style in STYLES
    _, solo = render_clip(1.0, 16000, seed=1, arrangement="solo", instrument="flute")
    assert (solo.instrument, solo.parts, solo.style) == ("flute", "melody", "")
    _, note = render_clip(1.0, 16000, seed=1, midi=40)  # kind inferred
    assert (note.kind, note.midi, note.pitch) == ("note", 40, 4) and note.instrument not in ("reed", "flute", "mallet")
    _, note = render_clip(1.0, 16000, seed=1, kind="note", pitch=9, instrument="flute")
    assert note.pitch == 9 and note.midi in (69, 81, 93)
    _, chord = render_clip(1.0, 16000, seed=1, chord="sus4", pitch=2, instrument="organ", arpeggio=True)
    assert (chord.kind, chord.chord, chord.pitch, chord.instrument) == ("chord", "sus4", 2, "organ")
    for kwargs, message in [
        ({"instrument": "violin"}, "instrument must be one of"),
        ({"mode": "dorian"}, "mode must be one of"),
        ({"style": "polka"}, "style must be one of"),
        ({"arrangement": "choir"}, "arrangement must be one of"),
        ({"kind": "noise"}, "kind must be one of"),
        ({"chord": "minor9"}, "chord must be one of"),
        ({"tempo_bpm": -5}, "tempo_bpm must be positive"),
        ({"seconds": 0}, "must be positive"),
    ]:
        with pytest.raises(ValueError, match=message):
            render_clip(**{"seconds": 1.0, **kwargs})


# Spectral peaks a note may show besides its harmonics: an organ's 16' and 5 1/3' drawbars, a bar's modes and
# an FM bell's sidebands (1 +- 1.4 k).
_EXTRA_RATIOS = {"organ": (0.5, 1.5), "mallet": (2.76, 3.99, 5.40, 8.93, 9.14, 2.4, 3.8, 4.2, 5.2, 6.6)}


@pytest.mark.parametrize("sr", [16000, 24000, 44100])
def test_a_note_peaks_at_its_pitch_or_a_harmonic(sr):
    for inst in INSTRUMENTS:
        for seed in range(4):
            wav, lab = render_clip(1.0, sr, seed=100 * seed + 7, kind="note", instrument=inst)
            spec = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
            freqs = np.fft.rfftfreq(len(wav), 1 / sr)
            spec[freqs < 30] = 0  # below the lowest note (C2 = 65 Hz); brown noise lives there
            ratio = freqs[np.argmax(spec)] / _hz(lab.midi)
            allowed = [*range(1, 11), *_EXTRA_RATIOS.get(inst, ())]
            assert min(abs(ratio / r - 1) for r in allowed) < 0.03, (inst, lab.midi, ratio)


def _chroma(wav: np.ndarray, sr: int) -> np.ndarray:
    """Energy per pitch class of the FFT bins within 30 cents of an equal-tempered pitch, 60 Hz..2.1 kHz."""
    spec = np.abs(np.fft.rfft(wav * np.hanning(len(wav)))) ** 2
    freqs = np.fft.rfftfreq(len(wav), 1 / sr)
    band = (freqs > 60) & (freqs < 2100)
    semis = 12 * np.log2(freqs[band] / 440) + 69
    near = np.abs(semis - np.round(semis)) < 0.3
    return np.bincount(np.round(semis[near]).astype(int) % 12, weights=spec[band][near], minlength=12)


def test_a_chord_clip_holds_its_chord_tones():
    sr = 24000
    for i in range(48):
        quality = list(CHORDS)[i % len(CHORDS)]
        wav, lab = render_clip(1.5, sr, seed=7000 + i, kind="chord", chord=quality)
        chroma = _chroma(wav, sr)
        chroma /= chroma.max()
        tones = sorted({(lab.pitch + step) % 12 for step in CHORDS[quality]})
        assert chroma[tones].min() > 0.01, (lab, chroma.round(3))  # every chord tone sounds
        others = np.delete(chroma, tones)
        assert chroma[tones].sum() > others.sum(), (lab, chroma.round(3))  # and they dominate


def test_music_keeps_to_its_key():
    """Pooled chroma of music in C major and of the same clips in F# major: the scale's notes dominate."""
    sr, scale = 16000, np.array([0, 2, 4, 5, 7, 9, 11])
    for shift in (0, 6):
        total = np.zeros(12)
        for i in range(6):
            wav, _ = render_clip(3.0, sr, seed=50 + i, key=shift, mode="major", arrangement="trio")
            chroma = _chroma(wav, sr)
            total += chroma / chroma.sum()
        assert total[(scale + shift) % 12].sum() > 0.8 * total.sum(), total.round(2)


def test_clip_kind_follows_the_mixture():
    counts = Counter(clip_kind(i) for i in range(1000))
    for kind, weight in DEFAULT_MIX.items():
        assert abs(counts[kind] - 1000 * weight) <= 2, counts
    first = Counter(clip_kind(i) for i in range(20))  # even a short corpus has each kind in proportion
    assert all(abs(first[kind] - 20 * weight) <= 1 for kind, weight in DEFAULT_MIX.items()), first
    assert {clip_kind(i, {"note": 1.0}) for i in range(50)} == {"note"}
    for bad in ({}, {"music": -1.0, "note": 2.0}, {"song": 1.0}, {"music": 0.0}):
        with pytest.raises(ValueError, match="mix must map kinds"):
            clip_kind(0, bad)


def test_write_synthetic_corpus_mixture_and_labels(tmp_path):
    out = write_synthetic_corpus(tmp_path / "a", 8, seconds=1.0, sample_rate=16000, seed=5)
    write_synthetic_corpus(tmp_path / "b", 8, seconds=1.0, sample_rate=16000, seed=5)
    assert sorted(p.name for p in out.iterdir()) == [f"clip_{i:05d}.wav" for i in range(8)] + ["labels.csv"]
    for name in ["clip_00003.wav", "labels.csv"]:
        assert (out / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with open(out / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", *(f.name for f in fields(ClipLabels))]
    assert [r["kind"] for r in rows] == [clip_kind(i) for i in range(8)]
    assert {r["kind"] for r in rows} == {"music", "note", "chord"}
    dataset = SyntheticDataset(8, seconds=1.0, sample_rate=16000, seed=5)  # the same clips, rendered on the fly
    for i, row in enumerate(rows):
        labels = dataset[i]["labels"]
        assert row == {"path": f"clip_{i:05d}.wav", **{k: str(v) for k, v in labels.items()}}
    wav, sr = sf.read(str(out / "clip_00002.wav"), dtype="float32")
    assert sr == 16000 and np.abs(wav - dataset[2]["wav"].numpy()).max() < 1e-4  # PCM_16
    notes = write_synthetic_corpus(tmp_path / "n", 3, seconds=0.5, sample_rate=16000, mix={"note": 1.0})
    with open(notes / "labels.csv", newline="") as f:
        assert {r["kind"] for r in csv.DictReader(f)} == {"note"}
    with pytest.raises(ValueError, match="mix must map kinds"):
        write_synthetic_corpus(tmp_path / "x", 2, mix={"song": 1.0})


def test_short_chord_clips_render():
    """Seeds whose note holds end before the clip does (negative hold) once broke the release envelope."""
    from mert.data.synthetic import render_clip

    for seed in (20_500_020, 20_500_025, 20_500_038):
        wav, labels = render_clip(0.5, 24000, seed=seed, kind="chord")
        assert wav.shape == (12000,) and labels.chord and np.isfinite(wav).all()

"""The `mert` command as a user runs it (through main(), and once through the installed console script)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from mert import Encoder
from mert.cli import main
from mert.data.synthetic import INSTRUMENTS, render_clip


def test_synth_is_deterministic_and_labelled():
    a, la = render_clip(2.0, 24000, seed=7)
    b, lb = render_clip(2.0, 24000, seed=7)
    c, _ = render_clip(2.0, 24000, seed=8)
    assert a.shape == (48000,) and a.dtype == np.float32
    assert np.array_equal(a, b) and la == lb and not np.array_equal(a, c)
    assert 0.25 - 1e-6 <= np.abs(a).max() <= 0.95 + 1e-6  # a random output level
    assert la.kind == "music" and (la.instrument in INSTRUMENTS or la.instrument == "drums") and 0 <= la.key < 12
    _, fixed = render_clip(1.0, 16000, seed=1, key=14, mode="minor", tempo_bpm=120, instrument="brass")
    assert (fixed.key, fixed.mode, fixed.tempo_bpm) == (2, "minor", 120.0)
    with pytest.raises(ValueError, match="instrument"):
        render_clip(1.0, instrument="violin")


def test_embed_files_and_folders_skips_bad_files(tmp_path, capsys):
    assert (
        main(["synth", str(tmp_path / "in" / "a.wav"), str(tmp_path / "in" / "sub" / "b.flac"), "--seconds", "2"]) == 0
    )
    # 44.1 kHz stereo file: mixed down and resampled by the command
    stereo = np.stack([render_clip(1.5, 44100, seed=3)[0]] * 2, axis=1)
    sf.write(tmp_path / "in" / "stereo.wav", stereo, 44100)
    (tmp_path / "in" / "broken.wav").write_bytes(b"RIFF....not audio")
    status = main(
        [
            "embed",
            str(tmp_path / "in"),
            str(tmp_path / "nope.wav"),
            "--preset",
            "tiny",
            "--out",
            str(tmp_path / "out"),
            "--layers",
            "0,-1",
            "--quiet",
        ]
    )
    assert status == 1  # some files failed
    err = capsys.readouterr().err
    assert "broken.wav" in err and "nope.wav" in err and "2 file(s) failed" in err
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert sorted(f["output"] for f in index["files"]) == ["a.npy", "b.npy", "stereo.npy"]
    assert index["layers"] == [0, 2] and len(index["failed"]) == 2
    assert np.load(tmp_path / "out" / "stereo.npy").shape == (2, 32)


def test_embed_matches_python_api_and_writes_safetensors(tmp_path):
    torch.manual_seed(0)
    enc = Encoder("tiny").eval()
    enc.save_pretrained(tmp_path / "model")
    wav, _ = render_clip(3.0, 24000, seed=1)
    sf.write(tmp_path / "x.wav", wav, 24000, subtype="FLOAT")
    assert (
        main(
            [
                "embed",
                str(tmp_path / "x.wav"),
                "--model",
                str(tmp_path / "model"),
                "--pool",
                "none",
                "--layers",
                "last",
                "--format",
                "safetensors",
                "--out",
                str(tmp_path / "o"),
                "--quiet",
            ]
        )
        == 0
    )
    from safetensors.numpy import load_file

    got = load_file(str(tmp_path / "o" / "x.safetensors"))["embeddings"]
    with torch.no_grad():
        ref = enc(torch.from_numpy(wav), sample_rate=24000).last_hidden_state.numpy()
    assert got.shape == (1, 224, 32)
    assert np.abs(got[0] - ref[0]).max() < 1e-5


def test_duplicate_stems_get_distinct_names(tmp_path):
    for d in ("x", "y"):
        main(["synth", str(tmp_path / d / "song.wav"), "--seconds", "1"])
    assert main(["embed", str(tmp_path), "--preset", "tiny", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").glob("*.npy")) == ["x__song.npy", "y__song.npy"]


def test_console_script_help():
    exe = shutil.which("mert")
    cmd = [exe] if exe else [sys.executable, "-m", "mert.cli"]
    out = subprocess.run([*cmd, "embed", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--layers" in out.stdout

"""The `mert` command as a user runs it (through main(), and once through the installed console script)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mert import Encoder, EncoderConfig
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
    # 44.1 kHz stereo file with two different channels: mixed down and resampled by the command
    stereo = np.stack([render_clip(1.5, 44100, seed=3)[0], render_clip(1.5, 44100, seed=4)[0]], axis=1)
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
    # The stereo file's embedding is that of its channel mean at 44.1 kHz (the command mixes and resamples).
    torch.manual_seed(0)  # --preset tiny with the default --seed 0
    enc = Encoder(EncoderConfig.preset("tiny")).eval()
    pcm, sr = sf.read(tmp_path / "in" / "stereo.wav", dtype="float32")
    ref = enc.embed(torch.from_numpy(pcm.mean(axis=1)), sr, layers=[0, 2], pool="mean").numpy()
    got = np.load(tmp_path / "out" / "stereo.npy")
    assert got.shape == (2, 32) and np.abs(got - ref).max() < 1e-5


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


def _console_script() -> list[str]:
    """The installed ``mert`` console script (beside this interpreter), after checking that its entry point is
    ``mert.cli:main``; where the script file is missing, that entry point run as the script would run it."""
    from importlib.metadata import entry_points

    found = entry_points(group="console_scripts", name="mert")
    if not found:
        pytest.skip("the mert package is not installed (pip install -e .): no console script")
    (entry,) = found
    assert entry.value == "mert.cli:main"
    script = Path(sysconfig.get_path("scripts")) / "mert"
    if script.is_file():
        return [str(script)]
    load = "(e,) = entry_points(group='console_scripts', name='mert'); sys.exit(e.load()())"
    return [sys.executable, "-c", f"import sys; from importlib.metadata import entry_points; {load}"]


def test_console_script_embeds_and_exits_with_the_status_of_main(tmp_path):
    """The `mert` command as its own process (the in-process tests call main()): it embeds with the checkpoint
    it is given, and its exit status is main()'s: 1 when a file failed, 2 with an argparse error line."""
    cmd = _console_script()
    torch.manual_seed(0)
    enc = Encoder("tiny").eval()
    enc.save_pretrained(tmp_path / "model")
    sf.write(tmp_path / "a.wav", render_clip(1.0, 24000, seed=1)[0], 24000, subtype="FLOAT")
    root = str(Path(__file__).resolve().parents[1])  # this checkout's mert, not another installed copy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}

    def run(*args):
        return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)

    done = run("embed", "a.wav", "missing.wav", "--model", "model", "--layers", "0,-1", "--out", "o", "--quiet",
               "--threads", "1")  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "missing.wav" in done.stderr and "1 file(s) failed" in done.stderr
    got = np.load(tmp_path / "o" / "a.npy")
    ref = enc.embed_file(tmp_path / "a.wav", layers=[0, 2], pool="mean").numpy()
    assert got.shape == (2, 32) and np.abs(got - ref).max() < 1e-5
    bad = run("embed", "a.wav", "--model", "model", "--pool", "max")
    assert bad.returncode == 2 and bad.stdout == ""
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("mert embed: error:") and "--pool: invalid choice: 'max'" in last, bad.stderr
    assert not (tmp_path / "embeddings").exists()  # refused before doing anything


# ------------------------------------------------------------------------------------ mert embed: bad input
def _embed(tmp_path, *inputs, out="o", extra=()):
    return main(["embed", *map(str, inputs), "--preset", "tiny", "--out", str(tmp_path / out), "--quiet", *extra])


def test_same_stem_in_one_folder_gets_one_output_each(tmp_path):
    """clip.wav and clip.flac of one folder used to share clip.npy (one lost, exit 0)."""
    wav, _ = render_clip(1.0, 24000, seed=1)
    other, _ = render_clip(1.0, 24000, seed=2)
    sf.write(tmp_path / "clip.wav", wav, 24000)
    sf.write(tmp_path / "clip.flac", other, 24000)
    assert _embed(tmp_path, tmp_path / "clip.wav", tmp_path / "clip.flac") == 0
    index = json.loads((tmp_path / "o" / "index.json").read_text())
    outputs = {e["file"].rsplit("/", 1)[1]: e["output"] for e in index["files"]}
    assert outputs == {"clip.wav": "clip.wav.npy", "clip.flac": "clip.flac.npy"}
    a, b = np.load(tmp_path / "o" / "clip.wav.npy"), np.load(tmp_path / "o" / "clip.flac.npy")
    assert not np.allclose(a, b)  # each input's own embedding


def test_rerun_merges_the_index_and_skips_what_is_done(tmp_path, capsys):
    for name, seed in (("a", 1), ("b", 2)):
        sf.write(tmp_path / f"{name}.wav", render_clip(1.0, 24000, seed=seed)[0], 24000)
    assert _embed(tmp_path, tmp_path / "a.wav") == 0
    first = (tmp_path / "o" / "a.npy").stat().st_mtime_ns
    assert _embed(tmp_path, tmp_path / "a.wav", tmp_path / "b.wav") == 0
    assert "1 file(s) already in" in capsys.readouterr().out
    index = json.loads((tmp_path / "o" / "index.json").read_text())
    assert sorted(e["output"] for e in index["files"]) == ["a.npy", "b.npy"]  # merged, not last-writer-wins
    assert (tmp_path / "o" / "a.npy").stat().st_mtime_ns == first  # not embedded again
    assert not list((tmp_path / "o").glob(".*.tmp"))
    # Other settings into the same folder would mix two kinds of embeddings: refused, nothing written.
    assert _embed(tmp_path, tmp_path / "a.wav", extra=["--layers", "last"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mert embed: error:") and "use another --out" in err and len(err.splitlines()) == 1


def test_user_mistakes_are_one_line_errors(tmp_path, capsys):
    sf.write(tmp_path / "a.wav", render_clip(1.0, 24000, seed=1)[0], 24000)
    (tmp_path / "file").write_text("x")
    cases = [
        (["--preset", "tiny", "--out", str(tmp_path / "file")], "is an existing file, not a folder"),
        (["--preset", "tiny", "--out", str(tmp_path / "file" / "sub")], "cannot create the output folder"),
        (["--preset", "tiny", "--layers", "9", "--out", str(tmp_path / "o")], "--layers '9'"),
        (["--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "o")], "cannot load --model"),
    ]
    for extra, message in cases:
        assert main(["embed", str(tmp_path / "a.wav"), "--quiet", *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("mert embed: error:") and message in err, err


def test_a_failed_write_stops_with_an_index_of_what_was_written(tmp_path, capsys, monkeypatch):
    for name, seed in (("a", 1), ("b", 2)):
        sf.write(tmp_path / f"{name}.wav", render_clip(1.0, 24000, seed=seed)[0], 24000)
    real_save = np.save

    def save(f, arr):
        if "b.npy" in getattr(f, "name", ""):
            raise OSError(28, "No space left on device")
        real_save(f, arr)

    monkeypatch.setattr(np, "save", save)
    assert _embed(tmp_path, tmp_path / "a.wav", tmp_path / "b.wav") == 2
    assert "No space left on device" in capsys.readouterr().err
    index = json.loads((tmp_path / "o" / "index.json").read_text())
    assert [e["output"] for e in index["files"]] == ["a.npy"]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.npy", "index.json"]  # no partial file


def test_truncated_wav_warns_and_huge_samples_fail_the_file(tmp_path, capsys):
    wav, _ = render_clip(3.0, 24000, seed=1)
    sf.write(tmp_path / "full.wav", wav, 24000, subtype="PCM_16")
    raw = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(raw[: 44 + 2 * 4800])  # header says 72000 frames, 4800 are present
    with pytest.warns(UserWarning, match=r"cut.wav' is truncated: its header declares 72000 frames, 4800"):
        assert _embed(tmp_path, tmp_path / "cut.wav") == 0
    # Finite samples of 1e30 overflow a LayerNorm front end to NaN: that file fails, named, and writes nothing.
    torch.manual_seed(0)
    Encoder(EncoderConfig.preset("tiny", frontend_norm="layer")).save_pretrained(tmp_path / "model")
    sf.write(tmp_path / "huge.wav", (wav * 1e30).astype(np.float32), 24000, subtype="FLOAT")
    status = main(["embed", str(tmp_path / "huge.wav"), "--model", str(tmp_path / "model"), "--out",
                   str(tmp_path / "h"), "--quiet"])  # fmt: skip
    assert status == 1
    assert "huge.wav" in capsys.readouterr().err
    index = json.loads((tmp_path / "h" / "index.json").read_text())
    assert index["files"] == [] and "not finite" in index["failed"][0]["error"]


def test_embed_keeps_only_the_chosen_layers(tmp_path, monkeypatch):
    """The CLI runs the bounded-memory path of Encoder.embed_file: windows keep only the chosen layers."""
    sf.write(tmp_path / "a.wav", render_clip(2.0, 24000, seed=1)[0], 24000)
    kept = []
    real = Encoder._encode_chunked

    def spy(self, *args, keep=None, **kwargs):
        kept.append(keep)
        return real(self, *args, keep=keep, **kwargs)

    monkeypatch.setattr(Encoder, "_encode_chunked", spy)
    assert _embed(tmp_path, tmp_path / "a.wav", extra=["--layers", "last"]) == 0
    assert kept == [[2]]


def test_weights_are_readable_like_the_rest_of_the_folder(tmp_path):
    """safetensors writes 0600; release folders and embeddings get the umask's mode, as config.json does."""
    old = os.umask(0o022)
    try:
        folder = Encoder(EncoderConfig.preset("tiny")).save_pretrained(tmp_path / "rel")
        sf.write(tmp_path / "a.wav", render_clip(1.0, 24000, seed=1)[0], 24000)
        assert _embed(tmp_path, tmp_path / "a.wav", extra=["--format", "safetensors"]) == 0
    finally:
        os.umask(old)
    for path in (folder / "model.safetensors", folder / "config.json", tmp_path / "o" / "a.safetensors"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


@pytest.mark.parametrize("native", [False, True])
def test_embed_dtype_auto_follows_the_hardware(tmp_path, monkeypatch, native):
    import mert.models.encoder as encoder_module

    monkeypatch.setattr(encoder_module, "cpu_has_native_bf16", lambda: native)
    torch.manual_seed(0)
    enc = Encoder("tiny").eval()
    enc.save_pretrained(tmp_path / "model")
    wav, _ = render_clip(2.0, 24000, seed=1)
    sf.write(tmp_path / "x.wav", wav, 24000, subtype="FLOAT")
    args = ["embed", str(tmp_path / "x.wav"), "--model", str(tmp_path / "model"), "--layers", "last", "--quiet"]
    assert main([*args, "--dtype", "auto", "--out", str(tmp_path / "auto")]) == 0
    assert main([*args, "--dtype", "bfloat16" if native else "float32", "--out", str(tmp_path / "ref")]) == 0
    got, ref = np.load(tmp_path / "auto" / "x.npy"), np.load(tmp_path / "ref" / "x.npy")
    assert np.array_equal(got, ref)


def test_export_converts_a_release_folder_to_the_transformers_layout(tmp_path, capsys):
    pytest.importorskip("transformers")
    from transformers import AutoModel

    torch.manual_seed(0)
    enc = Encoder("tiny").eval()
    enc.save_pretrained(tmp_path / "release")
    assert main(["export", str(tmp_path / "release"), str(tmp_path / "hf"), "--format", "hf"]) == 0
    assert "AutoModel.from_pretrained" in capsys.readouterr().out
    hf = AutoModel.from_pretrained(tmp_path / "hf").eval()
    wav = torch.from_numpy(render_clip(1.0, 24000, seed=2)[0])[None]
    with torch.no_grad():
        ours = enc(wav, sample_rate=24000).last_hidden_state
        theirs = hf(wav).last_hidden_state
    assert (ours - theirs).abs().max() < 1e-4
    back = Encoder.from_pretrained(tmp_path / "hf")
    assert back.config == enc.config
    with pytest.raises(SystemExit):  # argparse refuses an unknown format
        main(["export", str(tmp_path / "release"), str(tmp_path / "x"), "--format", "tflite"])

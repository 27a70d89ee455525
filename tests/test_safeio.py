"""Nothing lost, nothing silent: safe writes, outputs never over inputs, folder scans that say what they skipped,
audio headers that are not trusted, and `mert embed`'s cache identity, names and batching."""

from __future__ import annotations

import ast
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import mert
from mert import Encoder
from mert.audio import check_header, find_audio, read_audio
from mert.cli import main
from mert.data.synthetic import render_clip

PACKAGE = Path(mert.__file__).parent


def _clip(path: Path, seconds: float = 1.0, seed: int = 1, sr: int = 24000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, render_clip(seconds, sr, seed=seed)[0], sr)
    return path


def _embed(tmp_path, *inputs, out="o", extra=()):
    return main(["embed", *map(str, inputs), "--preset", "tiny", "--out", str(tmp_path / out), "--quiet", *extra])


# ------------------------------------------------------------------------------------------------ safe writes
# Modules whose writes belong to other parts of the code base (release-folder export, the trainer's run folder,
# resumable downloads that need a predictable partial name). Each must still hold such a write; once it is moved
# onto mert.fileio, drop it from here.
# Files that still name temp files themselves, each for a reason: train.py only deletes the `.tmp` leftovers of a
# run killed while saving; download.py keeps a fixed `.part` name in the cache so an interrupted download resumes.
_LEFT_TO_OTHERS = {"lightning/train.py", "download.py"}


def _names_tmp(text: str) -> bool:
    return ".tmp" in text and "\n" not in text  # a one-line string (a docstring may mention temp names)


def _unsafe_writes(source: str) -> list[str]:
    """Calls that write files outside mert.fileio: os.replace/rename, Path.write_text/write_bytes, mkstemp,
    open(..., "w"/"a"/"x"), and string literals naming a ``.tmp`` file."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            if owner == "os" and name in ("replace", "rename"):
                found.append(f"os.{name} line {node.lineno}")
            elif name in ("write_text", "write_bytes", "mkstemp", "mkdtemp"):
                found.append(f"{name} line {node.lineno}")
            elif name == "open" and owner in ("", "io"):
                modes = [a for a in node.args[1:2]] + [k.value for k in node.keywords if k.arg == "mode"]
                for m in modes:
                    texts = (
                        [m.value]
                        if isinstance(m, ast.Constant)
                        else [c.value for c in ast.walk(m) if isinstance(c, ast.Constant)]
                    )
                    if any(isinstance(t, str) and set(t) & set("wax") for t in texts):
                        found.append(f"open(..., write mode) line {node.lineno}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _names_tmp(node.value):
            found.append(f"'.tmp' name line {node.lineno}")
    return found


def test_every_file_write_goes_through_fileio():
    """Temp names, renames and plain writes live in mert/fileio.py only (a planted link at a predictable temp
    name made `mert embed` overwrite, and re-mode, a file outside its output folder)."""
    offenders, stale = {}, []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "fileio.py":
            continue
        hits = _unsafe_writes(path.read_text())
        if rel in _LEFT_TO_OTHERS:
            stale += [] if hits else [rel]
        elif hits:
            offenders[rel] = hits
    assert not offenders, f"write through mert.fileio instead: {offenders}"
    assert not stale, f"no longer writes on its own, remove from _LEFT_TO_OTHERS: {stale}"
    assert _unsafe_writes('import os\nos.replace(a, b)\nopen(p, "wb")\nx = f".{n}.tmp"\n')  # the check can fail


def test_a_link_planted_at_the_old_temp_name_is_never_followed(tmp_path):
    """N48: `OUT/.ok.npy.tmp -> ../victim` made `mert embed` overwrite the victim and chmod it 0644."""
    _clip(tmp_path / "ok.wav")
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("do not overwrite")
    victim.chmod(0o600)
    (out / ".ok.npy.tmp").symlink_to(victim)
    (out / ".index.json.tmp").symlink_to(victim)
    assert _embed(tmp_path, tmp_path / "ok.wav", out="out") == 0
    assert victim.read_text() == "do not overwrite" and (victim.stat().st_mode & 0o777) == 0o600
    assert not (out / "ok.npy").is_symlink() and np.load(out / "ok.npy").shape == (3, 32)
    # A link at the output name itself that leaves the folder: that file fails, named; the victim is untouched.
    (out / "ok.npy").unlink()
    (out / "index.json").unlink()
    (out / "ok.npy").symlink_to(victim)
    assert _embed(tmp_path, tmp_path / "ok.wav", out="out") == 1
    assert victim.read_text() == "do not overwrite"
    failed = json.loads((out / "index.json").read_text())["failed"]
    assert "symlink" in failed[0]["error"] and "outside the output folder" in failed[0]["error"]


def test_disk_full_while_writing_the_index_is_reported_not_a_traceback(tmp_path, capsys, monkeypatch):
    """N7: the per-file write error was handled, then the final index write crashed with a traceback."""
    import mert.fileio as fileio

    for name, seed in (("a", 1), ("b", 2)):
        _clip(tmp_path / f"{name}.wav", seed=seed)
    real_save, real_json = np.save, fileio.write_json_atomic

    def save(f, arr):
        if "b.npy" in getattr(f, "name", ""):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(f, arr)

    def write_json(path, obj, **kw):
        if Path(path).name == "index.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_json(path, obj, **kw)

    monkeypatch.setattr(np, "save", save)
    monkeypatch.setattr(fileio, "write_json_atomic", write_json)
    assert _embed(tmp_path, tmp_path / "a.wav", tmp_path / "b.wav") == 2
    err = capsys.readouterr().err
    assert "b.npy' failed: No space left on device" in err and "index.json' failed" in err, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.npy"]  # no temp file left behind


# ------------------------------------------------------------------------------------ outputs never over inputs
def test_manifest_refuses_an_output_over_an_input_or_the_other_output(tmp_path, capsys):
    """N45: `--out DIR/c0.wav` replaced an input with the TSV; N44: `--valid-out` = `--out` lost the valid list."""
    corpus = tmp_path / "corpus"
    for i in range(4):
        _clip(corpus / f"c{i}.wav", seconds=1.0, seed=i)
    before = (corpus / "c0.wav").read_bytes()
    args = ["data", "manifest", str(corpus), "--min-seconds", "0.5", "--quiet"]
    assert main([*args, "--out", str(corpus / "c0.wav")]) == 2
    assert "--out" in capsys.readouterr().err and (corpus / "c0.wav").read_bytes() == before
    assert main([*args, "--out", str(corpus / "new.flac")]) == 2  # a later scan would read it as audio
    assert not (corpus / "new.flac").exists()
    same = str(tmp_path / "same.tsv")
    assert main([*args, "--out", same, "--valid-percent", "50", "--valid-out", same]) == 2
    assert "two outputs are the same file" in capsys.readouterr().err and not Path(same).exists()
    assert main([*args, "--out", str(corpus / "train.tsv")]) == 0  # beside the audio, not audio: fine


def test_shard_and_fit_and_compare_refuse_outputs_over_inputs(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    _clip(corpus / "a.wav", seconds=1.0)
    man = tmp_path / "m.tsv"
    assert main(["data", "manifest", str(corpus), "--out", str(man), "--min-seconds", "0.5", "--quiet"]) == 0
    before = man.read_bytes()
    assert main(["data", "shard", str(man), "--out", str(tmp_path / "s"), "--report", str(man), "--quiet"]) == 2
    assert man.read_bytes() == before and "--report" in capsys.readouterr().err
    assert main(["targets", "fit-kmeans", str(corpus), "--out", str(corpus / "a.wav"), "--quiet"]) == 2
    assert "is the input" in capsys.readouterr().err
    # N28: `compare RUN --out RUN/results.json` replaced the run's results with a Markdown table.
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text('{"a": 1}')
    assert main(["probe", "compare", str(run), "--out", str(run / "results.json")]) == 1
    assert (run / "results.json").read_text() == '{"a": 1}'
    assert main(["probe", "compare", str(run), "--out", str(run / "results.md")]) == 1
    assert "inside the input folder" in capsys.readouterr().err and not (run / "results.md").exists()


def test_embed_refuses_a_matrix_over_an_input(tmp_path, capsys):
    _clip(tmp_path / "in" / "a.wav")
    assert _embed(tmp_path, tmp_path / "in", extra=["--matrix", str(tmp_path / "in" / "a.wav")]) == 2
    assert "mert embed: error:" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- folder scans
def test_scan_follows_symlinked_folders_once_and_lists_what_it_left_out(tmp_path):
    """N2: a symlinked subfolder was skipped without notice; N14/N26: non-regular files were 'missing'."""
    tree, ext = tmp_path / "tree", tmp_path / "ext" / "disk1"
    _clip(tree / "a.wav")
    _clip(ext / "b.wav")
    _clip(tree / "sub" / "c.wav")
    (tree / "linked_dir").symlink_to(ext)
    (tree / "linked_file.wav").symlink_to(ext / "b.wav")
    (tree / "sub" / "loop").symlink_to(tree)
    (tree / "broken.wav").symlink_to(tmp_path / "gone.wav")
    os.mkfifo(tree / "fifo.wav")
    skipped: list[tuple[str, str]] = []
    files = find_audio(tree, skipped=skipped)
    assert [p.relative_to(tree).as_posix() for p in files] == ["a.wav", "linked_dir/b.wav", "sub/c.wav"]
    reasons = {Path(p).name: r for p, r in skipped}
    assert reasons["fifo.wav"].startswith("not a regular file (a FIFO)")
    assert reasons["broken.wav"].startswith("broken symlink")
    assert "same file as" in reasons["linked_file.wav"] and "already scanned" in reasons["loop"]
    # Explicit non-regular paths are named for what they are, not "does not exist".
    with pytest.raises(IsADirectoryError, match="is a folder, not a file"):
        read_audio(tree)
    with pytest.raises(ValueError, match="is a FIFO, not a regular file"):
        read_audio(tree / "fifo.wav")
    from mert.probe.cache import read_example
    from mert.probe.manifest import ManifestRow

    with pytest.raises(IsADirectoryError, match="is a folder"):  # N26: a folder in a probe manifest's path column
        read_example(ManifestRow(tree / "sub", "x", None), 24000)


def test_manifest_and_embed_report_the_scan(tmp_path, capsys):
    tree = tmp_path / "tree"
    _clip(tree / "a.wav")
    _clip(tmp_path / "ext" / "b.wav", seed=2)
    (tree / "linked_dir").symlink_to(tmp_path / "ext")
    os.mkfifo(tree / "fifo.wav")
    assert main(["data", "manifest", str(tree), "--out", str(tmp_path / "t.tsv"), "--min-seconds", "0.5",
                 "--quiet"]) == 0  # fmt: skip
    assert "ext/b.wav" in (tmp_path / "t.tsv").read_text()  # stored by real path, as manifests are
    assert "fifo.wav: not a regular file" in capsys.readouterr().err
    assert _embed(tmp_path, tree) == 0  # a FIFO is not a failure, but it is listed
    err = capsys.readouterr().err
    assert "left out 1 path(s)" in err and "fifo.wav" in err
    assert sorted(e["output"] for e in json.loads((tmp_path / "o" / "index.json").read_text())["files"]) == [
        "a.npy", "b.npy"
    ]  # fmt: skip


@pytest.mark.skipif(shutil.which("setpriv") is None and os.geteuid() == 0, reason="needs setpriv to drop root")
def test_permission_denied_is_named_as_such(tmp_path):
    """N3: an unreadable file was reported with libsndfile's 'System error.'; a locked folder was silent."""
    tree = tmp_path / "perm"
    _clip(tree / "a.wav")
    _clip(tree / "noread.wav")
    _clip(tree / "locked" / "x.wav")
    (tree / "noread.wav").chmod(0)
    (tree / "locked").chmod(0)
    code = (
        "import sys; from mert.audio import find_audio, read_audio\n"
        "s = []; print([p.name for p in find_audio(sys.argv[1], skipped=s)]); print(s)\n"
        "try:\n    read_audio(sys.argv[1] + '/noread.wav')\nexcept PermissionError as e:\n    print('ERR', e)\n"
    )
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    try:
        res = subprocess.run([*drop, sys.executable, "-c", code, str(tree)], capture_output=True, text=True,
                             timeout=120, env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})  # fmt: skip
    finally:
        (tree / "locked").chmod(0o755)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "['a.wav']"
    assert "locked', 'unreadable folder: Permission denied'" in lines[1]
    assert "noread.wav', 'unreadable file: permission denied'" in lines[1]
    assert lines[2].startswith("ERR") and "noread.wav': permission denied" in lines[2]


# --------------------------------------------------------------------------------------------- audio headers
def test_absurd_header_rates_fail_per_file_and_the_batch_goes_on(tmp_path, capsys):
    """N1: a header saying 1 Hz or 50 MHz asked for 9.6 GB / 534 GB and crashed the whole batch."""
    d = tmp_path / "audio_sr"
    _clip(d / "a_ok.wav")
    rng = np.random.default_rng(1)
    sf.write(d / "b_sr1.wav", 0.1 * rng.standard_normal(20), 1)
    sf.write(d / "b_sr50M.wav", 0.1 * rng.standard_normal(2000), 50_000_001)
    _clip(d / "c_ok.wav", seed=2)
    assert _embed(tmp_path, d) == 1
    err = capsys.readouterr().err
    assert "b_sr1.wav" in err and "header sample rate 1 Hz is outside [1000, 768000] Hz" in err
    assert "b_sr50M.wav" in err and "50000001 Hz" in err
    index = json.loads((tmp_path / "o" / "index.json").read_text())
    assert sorted(e["output"] for e in index["files"]) == ["a_ok.npy", "c_ok.npy"] and len(index["failed"]) == 2
    assert main(["data", "manifest", str(d), "--out", str(tmp_path / "sr.tsv"), "--min-seconds", "0.5",
                 "--quiet"]) == 0  # fmt: skip
    assert len((tmp_path / "sr.tsv").read_text().splitlines()) == 3  # header + the two good files
    assert "header sample rate 1 Hz" in capsys.readouterr().err


def test_frame_counts_and_durations_beyond_the_limits_are_refused(tmp_path, monkeypatch, capsys):
    class Info:
        samplerate, frames, channels, subtype, format = 24000, 10**9, 1, "PCM_16", "WAV"

    with pytest.raises(ValueError, match="more than its 1000 bytes can hold"):
        check_header(Info(), 1000)
    Info.format, Info.subtype = "FLAC", "PCM_16"  # compressed: only an absurd ratio is refused
    check_header(Info(), 10**6, max_seconds=10**6)
    with pytest.raises(ValueError, match="more than its 1000 bytes"):
        check_header(Info(), 1000, max_seconds=10**6)
    with pytest.raises(ValueError, match=r"41666.7 s long, above the 14400 s limit"):
        check_header(Info(), 10**6)
    _clip(tmp_path / "two.wav", seconds=2.0)
    _clip(tmp_path / "one.wav", seconds=1.0, seed=2)
    monkeypatch.setenv("MERT_MAX_AUDIO_SECONDS", "1.5")
    assert _embed(tmp_path, tmp_path / "two.wav", tmp_path / "one.wav") == 1
    assert "2.0 s long, above the 1.5 s limit" in capsys.readouterr().err
    failed = json.loads((tmp_path / "o" / "index.json").read_text())["failed"]
    assert len(failed) == 1 and "two.wav" in failed[0]["file"] and "MERT_MAX_AUDIO_SECONDS" in failed[0]["error"]
    monkeypatch.delenv("MERT_MAX_AUDIO_SECONDS")
    assert _embed(tmp_path, tmp_path / "two.wav", out="o2", extra=["--max-seconds", "1.5"]) == 1
    assert _embed(tmp_path, tmp_path / "two.wav", out="o3", extra=["--max-seconds", "3"]) == 0


@pytest.mark.parametrize("rate", [True, False, 0, -24000, 1, 50_000_001, 2.5, float("nan"), "abc"])
def test_encoder_refuses_sample_rates_that_are_not_rates(tiny_encoder, rate):
    """N10: `sample_rate=True` was taken as 1 Hz and resampled 2000 samples to 48M."""
    with pytest.raises(ValueError, match="sample_rate"):
        tiny_encoder(0.1 * torch.randn(1, 2000), sample_rate=rate)


def test_the_resampler_refuses_them_for_every_caller():
    from mert.audio import resample

    wav = torch.zeros(2000)
    for orig, new in ((True, 24000), (1, 24000), (24000, 50_000_001), (44100.5, 24000)):
        with pytest.raises(ValueError, match="orig_sr|new_sr"):
            resample(wav, orig, new)
    assert resample(wav, 16000.0, 24000).shape == (3000,)


def test_encoder_still_takes_rates_written_as_numbers(tiny_encoder):
    wav = 0.1 * torch.randn(1, 16000)
    ref = tiny_encoder(wav, sample_rate=16000).last_hidden_state
    for rate in (16000.0, "16000", np.int64(16000)):
        assert torch.equal(tiny_encoder(wav, sample_rate=rate).last_hidden_state, ref)


# -------------------------------------------------------------------------------------- mert embed: identity
def test_long_and_deep_names_get_unique_bounded_outputs(tmp_path):
    """N5/N6: a 255-byte name, or same stems in deep Artist/Album trees, crashed with 'File name too long'."""
    names = tmp_path / "names"
    _clip(names / f"{'x' * 251}.wav")
    _clip(names / "zz_after.wav", seed=2)
    assert _embed(tmp_path, names, out="o1") == 0
    a, b = "Artist Name " * 12, "Album Title (Deluxe Remastered Edition) " * 3
    deep = tmp_path / "deep"
    _clip(deep / a / b / "CD1" / "01.flac", seed=1)
    _clip(deep / a / b / "CD2" / "01.flac", seed=2)
    _clip(deep / "zz.wav", seed=3)
    assert _embed(tmp_path, deep, out="o2") == 0
    for out, n in (("o1", 2), ("o2", 3)):
        files = json.loads((tmp_path / out / "index.json").read_text())["files"]
        outputs = [e["output"] for e in files]
        assert len(set(outputs)) == n and all(len(o.encode()) <= 170 for o in outputs), outputs
        assert all((tmp_path / out / o).is_file() for o in outputs)
    cd = sorted(e for e in outputs if e != "zz.npy")
    assert not np.allclose(np.load(tmp_path / "o2" / cd[0]), np.load(tmp_path / "o2" / cd[1]))


def test_resume_re_embeds_changed_files_and_knows_one_file_by_two_paths(tmp_path, capsys, monkeypatch):
    """N8: the index was keyed by the path string, so an edited file kept its stale embedding (rc 0)."""
    a = _clip(tmp_path / "a.wav", seed=1)
    (tmp_path / "link.wav").symlink_to(a)
    monkeypatch.chdir(tmp_path)
    assert main(["embed", "a.wav", "./a.wav", "link.wav", "--preset", "tiny", "--out", "o", "--quiet"]) == 0
    assert "2 path(s) name a file already listed" in capsys.readouterr().out
    index = json.loads((tmp_path / "o" / "index.json").read_text())
    assert len(index["files"]) == 1 and index["files"][0]["real"] == str(a.resolve())
    first = np.load(tmp_path / "o" / "a.npy")
    assert main(["embed", "./a.wav", "--preset", "tiny", "--out", "o", "--quiet"]) == 0  # same file, other path
    assert "1 file(s) already in" in capsys.readouterr().out
    # Same size, same mtime, other samples: only the content digest tells them apart.
    st = a.stat()
    sf.write(a, render_clip(1.0, 24000, seed=9)[0], 24000)
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert a.stat().st_size == st.st_size
    assert main(["embed", "a.wav", "--preset", "tiny", "--out", "o", "--quiet"]) == 0
    assert "1 file(s) changed since the last run" in capsys.readouterr().out
    second = np.load(tmp_path / "o" / "a.npy")
    ref = Encoder("tiny")
    torch.manual_seed(0)
    ref = Encoder("tiny").eval()
    assert not np.allclose(first, second)
    assert np.abs(second - ref.embed_file(a, pool="mean").numpy()).max() < 1e-5
    assert len(json.loads((tmp_path / "o" / "index.json").read_text())["files"]) == 1


# -------------------------------------------------------------------------------------- mert embed: many files
def test_batched_embedding_equals_one_file_at_a_time(tmp_path):
    """Several files per forward pass, of different lengths and rates, give each file's own embedding."""
    d = tmp_path / "in"
    for i, (sec, sr) in enumerate([(1.0, 24000), (1.7, 24000), (0.6, 16000), (1.3, 44100), (2.0, 24000)]):
        _clip(d / f"f{i}.wav", seconds=sec, seed=i, sr=sr)
    for pool in ("mean", "none"):
        # --chunk-seconds 1.5: the 1.7 s and 2.0 s files take the windowed path inside a batched run
        common = ["--pool", pool, "--chunk-seconds", "1.5"]
        assert _embed(tmp_path, d, out=f"one-{pool}", extra=[*common, "--batch-size", "1"]) == 0
        assert _embed(tmp_path, d, out=f"many-{pool}", extra=[*common, "--batch-size", "3"]) == 0
        for i in range(5):
            one = np.load(tmp_path / f"one-{pool}" / f"f{i}.npy")
            many = np.load(tmp_path / f"many-{pool}" / f"f{i}.npy")
            assert one.shape == many.shape and np.abs(one - many).max() < 1e-5, (pool, i)


def test_matrix_output_and_device_choice(tmp_path, capsys):
    d = tmp_path / "in"
    for i in range(3):
        _clip(d / f"f{i}.wav", seed=i)
    m = tmp_path / "all.npy"
    assert _embed(tmp_path, d, extra=["--matrix", str(m), "--layers", "last", "--batch-size", "2"]) == 0
    matrix = np.load(m)
    rows = (tmp_path / "all.rows.tsv").read_text().splitlines()
    assert matrix.shape == (3, 32) and rows[0] == "row\tfile" and rows[2].endswith("f1.wav")
    assert np.array_equal(matrix[1], np.load(tmp_path / "o" / "f1.npy")[0])
    assert _embed(tmp_path, d, out="o2", extra=["--matrix", str(m), "--pool", "none"]) == 2
    assert "--matrix needs --pool mean" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert _embed(tmp_path, d, out="o3", extra=["--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
    assert _embed(tmp_path, d, out="o4", extra=["--device", "auto"]) == 0


def test_a_full_disk_is_one_line_in_every_command(tmp_path, capsys, monkeypatch):
    """The file system refusing a write (ENOSPC, EROFS, EACCES...) ends any command with one line, exit 2."""
    import mert.data.manifest as manifest

    _clip(tmp_path / "c" / "a.wav")

    def full(path, text, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(manifest, "write_text_atomic", full)
    out = tmp_path / "t.tsv"
    argv = ["data", "manifest", str(tmp_path / "c"), "--out", str(out), "--min-seconds", "0.5", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mert data manifest: error: No space left on device: {out}"]


def test_probe_manifest_never_writes_over_the_data_set(tmp_path, capsys):
    root = tmp_path / "set"
    _clip(root / "rock" / "a.wav")
    _clip(root / "jazz" / "b.wav", seed=2)
    before = (root / "rock" / "a.wav").read_bytes()
    argv = ["probe", "manifest", "folders", str(root), "--out", str(tmp_path / "m.csv")]
    assert main([*argv, "--report", str(root / "rock" / "a.wav")]) == 1
    assert (root / "rock" / "a.wav").read_bytes() == before and "--report" in capsys.readouterr().err


def test_a_link_at_an_output_name_is_refused_in_one_line(tmp_path, capsys):
    _clip(tmp_path / "c" / "a.wav")
    victim = tmp_path / "elsewhere" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("keep")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "t.tsv").symlink_to(victim)
    argv = ["data", "manifest", str(tmp_path / "c"), "--out", str(tmp_path / "out" / "t.tsv"), "--min-seconds", "0.5"]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a symlink to" in err[0] and victim.read_text() == "keep"


def test_atomic_writes_keep_the_old_file_on_failure_and_set_the_mode(tmp_path):
    from mert.fileio import (
        UnsafeOutputError,
        atomic_dir,
        check_outputs,
        default_mode,
        open_atomic,
        write_text_atomic,
    )

    target = tmp_path / "t.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError), open_atomic(target) as f:
        f.write("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]
    assert (target.stat().st_mode & 0o777) == default_mode()
    long = tmp_path / ("é" * 120 + ".json")  # 241 bytes: the temp name must still fit in 255
    write_text_atomic(long, "{}")
    assert long.read_text() == "{}"
    with pytest.raises(UnsafeOutputError, match="is the input"):
        check_outputs([tmp_path / "." / "t.txt"], [target])
    check_outputs([tmp_path / "list.tsv"], scanned=[tmp_path], scanned_extensions=(".wav",))
    with pytest.raises(UnsafeOutputError, match="inside the input folder"):
        check_outputs([tmp_path / "x.WAV"], scanned=[tmp_path], scanned_extensions=(".wav",))
    rel = tmp_path / "rel"
    with atomic_dir(rel) as d:
        (d / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(rel) as d:
        (d / "b").write_text("2")
        raise RuntimeError("export failed")
    assert sorted(p.name for p in rel.iterdir()) == ["a"] and len(list(tmp_path.iterdir())) == 3


def test_checkpoints_are_written_under_a_random_temp_name(tmp_path, monkeypatch):
    pytest.importorskip("lightning")
    from mert.lightning.strategies import AtomicCheckpointIO

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (ckpts / ".last.ckpt.tmp").symlink_to(victim)  # the old, predictable temp name
    import contextlib

    import mert.lightning.strategies as strategies

    seen = []
    real_atomic = strategies.atomic_path

    @contextlib.contextmanager
    def spy(path, **kw):
        with real_atomic(path, **kw) as tmp:
            seen.append(tmp.name)
            yield tmp

    monkeypatch.setattr(strategies, "atomic_path", spy)
    AtomicCheckpointIO().save_checkpoint({"step": 3}, ckpts / "last.ckpt")
    assert torch.load(ckpts / "last.ckpt")["step"] == 3 and victim.read_text() == "keep"
    # A killed save leaves `.last.ckpt.XXXX.tmp`: the trainer's start-up clean-up (checkpoints/.*.tmp) finds it.
    assert seen and seen[0].startswith(".last.ckpt.") and seen[0].endswith(".tmp") and seen[0] != ".last.ckpt.tmp"


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare to mount")
def test_a_real_full_disk_during_embed(tmp_path):
    """N7 on a real 2 MB tmpfs: the outputs that fit are written and indexed or reported, nothing half-written
    is left, and the command ends with one error line and exit status 2."""
    for i in range(3):
        _clip(tmp_path / f"c{i}.wav", seed=i)
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    script = (
        f"mount -t tmpfs -o size=2m tmpfs {tiny} && dd if=/dev/zero of={tiny}/fill bs=1k count=2040 2>/dev/null; "
        f"{sys.executable} -m mert.cli embed {tmp_path}/c0.wav {tmp_path}/c1.wav {tmp_path}/c2.wav --preset tiny "
        f"--pool none --out {tiny}/emb --quiet; echo rc=$?; ls -a {tiny}/emb"
    )
    res = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})  # fmt: skip
    if "mount:" in res.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    assert "rc=2" in res.stdout, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "no space left on" in res.stderr.lower(), res.stderr
    assert not [n for n in res.stdout.split() if n.endswith(".tmp")]  # no temp file left behind

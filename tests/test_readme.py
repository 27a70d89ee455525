"""The README is executed: its Python snippet runs and its main-job command's `mert` steps succeed."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_python_snippets_run_and_print_what_they_claim(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = _blocks("python")
    assert blocks, "README has no python snippet"
    for code in blocks:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(compile(code, str(README), "exec"), {})
        printed = buf.getvalue().splitlines()
        # Every `print(...)  # value...` line claims a value; the printed text must contain it.
        claims = [m.group(1) for m in re.finditer(r"^print\(.*?\)\s*#\s*(\S+(?: \S+)*?)(?::|$)", code, flags=re.M)]
        assert len(claims) == len(printed)
        for claim, got in zip(claims, printed):
            normalised = got.replace("torch.Size([", "(").replace("])", ")")
            assert claim.split(":")[0].strip() in normalised, f"README claims {claim!r}, printed {got!r}"


def _mert_steps(block: str) -> list[list[str]]:
    """The `mert ...` commands of a bash block, as argument lists (install steps are the CI's job)."""
    steps = [s.strip() for s in block.replace("\\\n", " ").split("&&")]
    return [shlex.split(s) for s in steps if s.startswith("mert ")]


def _run(argv: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    exe = shutil.which("mert")
    cmd = [exe, *argv[1:]] if exe else [sys.executable, "-m", "mert.cli", *argv[1:]]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_embed_commands_run(tmp_path):
    block = next(b for b in _blocks("bash") if "mert embed" in b)
    steps = _mert_steps(block)
    assert [s[1] for s in steps] == ["synth", "embed"]
    for argv in steps:
        res = _run(argv, tmp_path, 300)
        assert res.returncode == 0, res.stderr
    emb = np.load(tmp_path / "embeddings" / "demo.npy")
    assert emb.shape == (3, 32)  # tiny preset: 2 layers + input, width 32, mean-pooled


@pytest.mark.parametrize(
    "experiment,model",
    [("default", "conformer_tiny"), pytest.param("demo_cpu", "tiny", marks=pytest.mark.slow)],
)
def test_main_job_runs_end_to_end_quickly(tmp_path, experiment, model):
    """The README's main job with a tiny budget (the default recipe, and MERT-v1's conv family): every stage runs
    and writes its outputs."""
    pytest.importorskip("lightning")
    steps = _mert_steps(_blocks("bash")[0])
    assert steps == [["mert", "demo"]]
    quick = ["--max-steps", "3", "--corpus-clips", "12", "--probe-clips", "48", "--model", model]
    quick += [] if experiment == "default" else ["--experiment", experiment]
    quick += ["--seconds", "1", "--note-seconds", "1", "--segment-seconds", "1"]
    res = _run(["mert", "demo", "--out", "d", *quick], tmp_path, 600)
    assert res.returncode == 0, res.stderr  # 0 whenever the loop ran, whatever the scores
    assert "mert demo: pretrained " in res.stdout and "on the mean" in res.stdout  # the one-line verdict
    assert "pretrain: step 3/3" in res.stderr  # plain progress lines when stderr is not a terminal
    out = tmp_path / "d"
    results = json.loads((out / "results.json").read_text())
    tasks = {"key", "instrument", "tempo", "pitch", "chord"}
    assert set(results["tasks"]) == set(results["pretrained"]) == set(results["handcrafted"]) == tasks
    assert results["passed"] == (results["mean"]["pretrained"] > results["mean"]["random"])
    table = (out / "results.md").read_text()
    assert "| hand-crafted (which) |" in table and table.count("\n") == 2 + len(tasks) + 1
    assert (out / "encoder" / "model.safetensors").is_file() and (out / "probe_layers.png").is_file()


@pytest.mark.slow
def test_main_job_exactly_as_in_readme(tmp_path):
    """`mert demo --strict` as the README runs it (plus --strict): it completes, writes its results and monitor
    curves, prints its one-line verdict, and exits 1 exactly when the pretrained encoder is not ahead of the
    random one on the mean."""
    pytest.importorskip("lightning")
    res = _run(["mert", "demo", "--strict"], tmp_path, 1500)
    assert res.returncode in (0, 1), res.stdout[-3000:] + res.stderr[-3000:]
    out = tmp_path / "mert-demo"
    results = json.loads((out / "results.json").read_text())
    assert results["passed"] == (res.returncode == 0)
    assert ("mert demo: FAILED (--strict):" in res.stderr) == (res.returncode == 1)
    assert f"mert demo: {results['verdict']}." in res.stdout
    assert (out / "run" / "monitor" / "scores.csv").is_file()

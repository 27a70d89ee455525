"""The README is executed: its Python snippet runs and its main-job command's `mert` steps succeed."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

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


def test_main_job_command_runs(tmp_path):
    first = _blocks("bash")[0]
    steps = [s.strip() for s in first.replace("\\\n", " ").split("&&") if s.strip().startswith("mert ")]
    assert [s.split()[1] for s in steps] == ["synth", "embed"]
    exe = shutil.which("mert")
    for step in steps:
        argv = shlex.split(step)
        cmd = [exe, *argv[1:]] if exe else [sys.executable, "-m", "mert.cli", *argv[1:]]
        res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
    emb = np.load(tmp_path / "embeddings" / "demo.npy")
    assert emb.shape == (3, 32)  # tiny preset: 2 layers + input, width 32, mean-pooled

"""EnCodec's teacher weights are a registered download: `mert download encodec-24khz` caches them (digest-checked,
locked) and ``targets=encodec_cqt`` (``weights: null``) finds them there, offline too.

The published file is not used: a randomly initialised EnCodec with filled codebooks is saved, served on loopback
and registered in place of the published URL and digest.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch

import mert.registry
from mert.cli import main
from mert.registry import ENCODEC_24KHZ
from tests.helpers import Quiet, filled_encodec, serving

pytest.importorskip("encodec")


@pytest.fixture
def served_encodec(request, tmp_path, monkeypatch):
    """(local file, GET log) with the built-in entry pointing at a loopback copy of the file.

    The file is a filled EnCodec's state dict (about 15 s to make on 2 cores) for tests marked slow,
    else a small state dict that only the download path reads.
    """
    real = request.node.get_closest_marker("slow") is not None
    state = filled_encodec().state_dict() if real else {"w": torch.zeros(3)}
    path = tmp_path / "encodec_24khz-test.th"
    torch.save(state, path)
    data = path.read_bytes()
    gets = []

    class Handler(Quiet):
        def do_GET(self) -> None:
            gets.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    env = {"MERT_CACHE": tmp_path / "cache", "TORCH_HOME": tmp_path / "torch", "MERT_REGISTRY": tmp_path / "r.json"}
    for var, value in {**env, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}.items():
        monkeypatch.setenv(var, str(value))
    for var in ("MERT_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    with serving(Handler) as url:
        builtin = list(mert.registry._BUILTIN)
        i = next(i for i, e in enumerate(builtin) if e.name == ENCODEC_24KHZ)
        builtin[i] = dataclasses.replace(
            builtin[i], source=f"{url}/encodec_24khz-test.th", sha256=hashlib.sha256(data).hexdigest()
        )
        monkeypatch.setattr(mert.registry, "_BUILTIN", tuple(builtin))
        yield path, gets


def test_the_published_entry_is_pinned():
    (entry,) = [e for e in mert.registry.builtin_checkpoints() if e.name == ENCODEC_24KHZ]
    assert entry.pinned and entry.source.endswith("/encodec_24khz-d7cc33bc.th")
    assert entry.sha256.startswith("d7cc33bc")  # the prefix torch.hub puts in the file name


def test_offline_error_names_the_config_key_and_the_download_command(served_encodec, monkeypatch):
    from mert.targets import EncodecTargets

    monkeypatch.setenv("MERT_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as err:
        EncodecTargets()
    message = str(err.value)
    assert "targets.code_teacher.weights=" in message and f"mert download {ENCODEC_24KHZ}" in message
    assert "EncodecTargets(" not in message
    assert served_encodec[1] == []  # offline: no request


def test_mert_download_caches_it_once_and_it_is_found_offline(served_encodec, monkeypatch, capsys):
    from mert.targets.encodec import published_weights

    path, gets = served_encodec
    assert main(["download", ENCODEC_24KHZ]) == 0
    cached = capsys.readouterr().out.strip().splitlines()[-1]
    assert cached.startswith(str(path.parent / "cache")) and len(gets) == 1
    assert main(["download", ENCODEC_24KHZ]) == 0 and len(gets) == 1  # a cache hit
    monkeypatch.setenv("MERT_OFFLINE", "1")
    assert str(published_weights()) == cached
    assert len(gets) == 1


@pytest.mark.slow
def test_mert_download_caches_it_and_the_teacher_finds_it_offline(served_encodec, monkeypatch, capsys):
    from mert.targets import EncodecTargets

    path, gets = served_encodec
    assert main(["download", ENCODEC_24KHZ]) == 0
    cached = capsys.readouterr().out.strip().splitlines()[-1]
    assert cached.startswith(str(path.parent / "cache")) and len(gets) == 1
    monkeypatch.setenv("MERT_OFFLINE", "1")
    teacher = EncodecTargets()  # what targets=encodec_cqt builds (weights: null)
    reference = EncodecTargets(weights=path)
    wav = torch.randn(2, 24000) * 0.1
    assert torch.equal(teacher(wav), reference(wav))
    assert len(gets) == 1  # the cache answered

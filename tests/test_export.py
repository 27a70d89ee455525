"""`mert export`: model card and licence notice, whole-folder swaps, refusals (another model, read-only places)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from mert import Encoder
from mert.cli import main as cli
from mert.models.checkpoint import weights_sha256
from mert.pretrain.export import export_run


def _run(folder: Path, seed: int, init_from: str | None = None, hours: float = 2.0) -> Path:
    """A run folder with a Lightning-style checkpoint of a tiny encoder, as `mert pretrain` writes it."""
    torch.manual_seed(seed)
    enc = Encoder("tiny")
    ckpt = {
        "mert": {
            "encoder_config": enc.config.to_dict(),
            "teachers": {"codes": {"kind": "encodec", "codebooks": 8}, "features": {"kind": "cqt", "bins": 84}},
            "audio_seconds": hours * 3600,
            "version": "0.1.0",
        },
        "state_dict": {f"objective.encoder.{k}": v for k, v in enc.state_dict().items()},
        "global_step": 1234,
        "hyper_parameters": {
            "run": {
                "init_from": init_from,
                "name": "tiny_cpu",
                "data": {"manifest": "/data/train.tsv", "dataset": {"_target_": "mert.data.datasets.CropDataset"}},
            }
        },
    }
    (folder / "checkpoints").mkdir(parents=True)
    torch.save(ckpt, folder / "checkpoints" / "last.ckpt")
    return folder


def _sums(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_card_and_licence_follow_init_from(tmp_path, capsys):
    nc = _run(tmp_path / "continued", 0, init_from="MERT-v1-95M", hours=2.5)
    assert cli(["export", str(nc), str(tmp_path / "out_nc")]) == 0
    card = (tmp_path / "out_nc" / "README.md").read_text()
    assert card.startswith("---\nlicense: cc-by-nc-4.0\n") and "base_model: MERT-v1-95M" in card
    for text in ("Base model: MERT-v1-95M", "manifest `/data/train.tsv`", "codes: kind encodec", "Steps: 1234"):
        assert text in card, text
    assert "audio seen: 2.5 hours" in card and "## Intended use" in card
    notice = (tmp_path / "out_nc" / "LICENSE").read_text()
    assert notice.startswith("Licence of these weights: CC-BY-NC-4.0") and "MERT-v1-95M" in notice
    meta = json.loads((tmp_path / "out_nc" / "meta.json").read_text())
    assert meta["licence"] == "CC-BY-NC-4.0" and meta["base_model"] == "MERT-v1-95M"
    # A run continued from that export inherits its licence through meta.json.
    child = _run(tmp_path / "child", 1, init_from=str(tmp_path / "out_nc"))
    export_run(child, tmp_path / "out_child")
    assert "license: cc-by-nc-4.0" in (tmp_path / "out_child" / "README.md").read_text()
    # A derivative cannot be relicensed.
    assert cli(["export", str(nc), str(tmp_path / "x"), "--licence", "MIT"]) == 1
    assert "conflicts with the licence these weights inherit: CC-BY-NC-4.0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # From scratch: the owner's choice, or "unspecified".
    scratch = _run(tmp_path / "scratch", 2)
    export_run(scratch, tmp_path / "out_s")
    assert "license: other\nlicense_name: unspecified" in (tmp_path / "out_s" / "README.md").read_text()
    export_run(scratch, tmp_path / "out_mit", licence="MIT")
    assert "license: mit" in (tmp_path / "out_mit" / "README.md").read_text()
    assert "Base model: none (trained from scratch)" in (tmp_path / "out_mit" / "README.md").read_text()
    # Unknown base model: the card says to check it.
    export_run(_run(tmp_path / "other", 3, init_from="someone/their-model"), tmp_path / "out_u")
    assert "Do not redistribute" in (tmp_path / "out_u" / "LICENSE").read_text()


def test_export_into_a_folder_with_another_model_is_refused_and_overwrite_replaces_it_whole(tmp_path, capsys):
    first, second = _run(tmp_path / "a", 0), _run(tmp_path / "b", 1)
    out = tmp_path / "existing"
    assert cli(["export", str(first), str(out)]) == 0
    (out / "notes.txt").write_text("my notes")
    (out / "pytorch_model.bin").write_bytes(b"another model")
    before = _sums(out)
    capsys.readouterr()
    assert cli(["export", str(second), str(out)]) == 1
    err = capsys.readouterr().err
    assert "already holds files an export does not write (notes.txt, pytorch_model.bin)" in err
    assert "--overwrite" in err and _sums(out) == before
    (out / "notes.txt").unlink()
    (out / "pytorch_model.bin").unlink()
    assert cli(["export", str(second), str(out)]) == 1  # only export files, but another model's weights
    assert "already holds another model" in capsys.readouterr().err
    assert cli(["export", str(first), str(out), "--format", "hf"]) == 0  # the same model: replaced freely
    assert json.loads((out / "config.json").read_text())["model_type"] == "hubert"
    (out / "notes.txt").write_text("my notes")
    assert cli(["export", str(second), str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "LICENSE",
        "README.md",
        "config.json",
        "meta.json",
        "model.safetensors",
    ]
    enc = Encoder.from_pretrained(out)
    ckpt = torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)
    assert weights_sha256(enc.state_dict()) == json.loads((out / "meta.json").read_text())["weights_sha256"]
    assert all(torch.equal(v, ckpt["state_dict"][f"objective.encoder.{k}"]) for k, v in enc.state_dict().items())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left


def test_unwritable_outputs_and_self_export_are_one_line_errors(tmp_path, capsys):
    run = _run(tmp_path / "run", 0)
    (tmp_path / "file").write_text("x")
    assert cli(["export", str(run), str(tmp_path / "file" / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mert export: cannot write ") and err.count("\n") == 1 and "Traceback" not in err
    assert cli(["export", str(run), str(tmp_path / "file")]) == 1
    assert "exists and is not a folder" in capsys.readouterr().err
    export_run(run, tmp_path / "rel")
    assert cli(["export", str(tmp_path / "rel"), str(tmp_path / "rel"), "--format", "hf"]) == 1
    assert "would destroy the input" in capsys.readouterr().err


def test_read_only_parent_is_a_one_line_error(tmp_path, capsys):
    """A read-only place to export to. Root ignores directory permissions, so as root the command runs in a
    process without the capabilities that override them (setpriv), as a normal user would."""
    import os
    import shutil
    import subprocess
    import sys

    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    run = _run(tmp_path / "run", 0)
    try:
        if os.geteuid() != 0:
            assert cli(["export", str(run), str(ro / "out")]) == 1
            err = capsys.readouterr().err
        else:
            if shutil.which("setpriv") is None:
                pytest.skip("root ignores directory permissions and setpriv is not installed")
            nocap = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
            proc = subprocess.run(
                [*nocap, sys.executable, "-m", "mert.cli", "export", str(run), str(ro / "out")],
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert proc.returncode == 1, proc.stderr
            err = proc.stderr
        assert "mert export: cannot write" in err and "Permission denied" in err and err.count("\n") == 1, err
        assert not (ro / "out").exists()
    finally:
        ro.chmod(0o755)


def _results(tmp_path: Path) -> Path:
    score = {"mean": 0.75, "std": 0.02, "ci_low": 0.6, "ci_high": 0.9}
    res = {
        "task": {"name": "gtzan_genre", "metrics": ["accuracy"]},
        "encoder": {"source": "runs/export"},
        "data": {"manifest": "gtzan.csv", "splits": {"train": 800, "valid": 100, "test": 100}},
        "probe": {"head": "mlp", "lrs": [0.001], "seeds": [0, 1, 2], "max_epochs": 100},
        "n_test": 100,
        "chance": {"accuracy": 0.1},
        "results": {"best_candidate": "7", "candidates": {"7": {"test": {"accuracy": score}}}},
    }
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "results.json").write_text(json.dumps(res))
    return tmp_path / "probe"


def test_card_carries_the_probe_table(tmp_path, capsys):
    run = _run(tmp_path / "run", 0)
    assert cli(["export", str(run), str(tmp_path / "out"), "--probe-results", str(_results(tmp_path))]) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert (
        "## Probe results" in card
        and "| gtzan.csv: gtzan_genre | accuracy (best layer) | 75.0 +- 2.0 [60.0, 90.0] |" in card
    )
    (tmp_path / "bad.json").write_text('{"a": 1}')
    assert cli(["export", str(run), str(tmp_path / "out2"), "--probe-results", str(tmp_path / "bad.json")]) == 1
    assert "is not a `mert probe` results file" in capsys.readouterr().err and not (tmp_path / "out2").exists()


class _UploadHub:
    """The Hugging Face Hub's upload endpoints as huggingface-hub calls them (create, validate-yaml, preupload,
    commit); every file is offered as a regular (non-LFS) upload, so the LFS/Xet path is not exercised here."""

    def __init__(self) -> None:
        import base64

        from tests.helpers import Quiet

        self.files: dict[str, bytes] = {}
        self.calls: list[str] = []
        hub = self

        class Handler(Quiet):
            def _send(self, obj: dict, code: int = 200) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._send({"error": "not here"}, 404)

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                base = f"http://{self.headers['Host']}"
                hub.calls.append(self.path)
                if self.headers.get("authorization") != "Bearer hf_loopback":
                    return self._send({"error": "unauthorized"}, 401)
                if self.path == "/api/repos/create":
                    return self._send({"url": f"{base}/user/repo"})
                if self.path == "/api/validate-yaml":
                    return self._send({})
                if self.path == "/api/models/user/repo/preupload/main":
                    files = json.loads(data)["files"]
                    return self._send(
                        {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
                    )
                if self.path == "/api/models/user/repo/commit/main":
                    for line in data.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            hub.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    return self._send({"commitUrl": f"{base}/user/repo/commit/{'a' * 40}", "commitOid": "a" * 40})
                return self._send({"error": "not here"}, 404)

        self.handler = Handler


def test_push_to_hub_uploads_the_export_through_huggingface_hub(tmp_path, monkeypatch, capsys):
    pytest.importorskip("huggingface_hub")
    from tests.helpers import serving

    hub = _UploadHub()
    run = _run(tmp_path / "run", 0)
    with serving(hub.handler) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("HF_TOKEN", "hf_loopback")
        # Weights without a licence are not published.
        assert cli(["export", str(run), str(tmp_path / "out"), "--push-to-hub", "user/repo"]) == 1
        assert "licence is unspecified" in capsys.readouterr().err and hub.files == {}
        assert cli(["export", str(run), str(tmp_path / "out"), "--licence", "MIT", "--push-to-hub", "user/repo"]) == 0
        assert f"pushed {tmp_path / 'out'} to {url}/user/repo/commit/" in capsys.readouterr().out
        assert hub.files == {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
        pushed = dict(hub.files)
        monkeypatch.setenv("HF_TOKEN", "hf_wrong")
        assert cli(["export", str(run), str(tmp_path / "out"), "--licence", "MIT", "--push-to-hub", "user/repo"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("mert export: could not push") and "401" in err and err.count("\n") == 1
    assert hub.files == pushed and hub.calls.count("/api/models/user/repo/commit/main") == 1


def test_an_unfinished_run_exports_with_a_warning(tmp_path):
    """A run stopped by a signal (summary.json: completed false) still exports, but says so and records it."""
    run = _run(tmp_path / "run", 0)
    (run / "summary.json").write_text(json.dumps({"completed": False, "status": "stopped by SIGTERM"}))
    with pytest.warns(UserWarning, match="did not finish.*step 1234"):
        export_run(run, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["training"]["completed"] is False
    (run / "summary.json").write_text(json.dumps({"completed": True}))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        export_run(run, tmp_path / "out2")

"""Checkpoint registry, `mert download` and resumable downloads, against loopback HTTP servers the tests run."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import torch

from mert import Encoder
from mert.cli import build_parser, main
from mert.download import download_url, url_cache_path
from mert.hub import resolve_source
from mert.registry import (
    builtin_checkpoints,
    list_checkpoints,
    lookup_checkpoint,
    register_checkpoint,
    registry_path,
    unregister_checkpoint,
)
from tests.helpers import MAIN_COMMIT, PinnedHub, Quiet, cached_files, serving

PIN_95M = lookup_checkpoint("MERT-v1-95M").revision
DATA = bytes((i + 0x80) % 256 for i in range(256)) * 40  # 10240 bytes, every offset distinguishable; a pickle start


@pytest.fixture(autouse=True)
def _isolated_env(isolated_hub_env, tmp_path, monkeypatch):
    """Caches (conftest's isolated_hub_env) and the user registry under tmp_path."""
    monkeypatch.setenv("MERT_REGISTRY", str(tmp_path / "config" / "registry.json"))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- a file server that can honour or ignore Range and cut a response short --------------------------------------


class RangeServer:
    """Serves ``files``; records each request's Range/If-Range headers and how many body bytes it sent."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.honour_range = True
        self.cut_after: dict[str, int] = {}  # name -> send only this many body bytes, once, then close
        self.delay_s = 0.0
        self.requests: list[dict] = []
        self.url = ""
        self._lock = threading.Lock()

    def add(self, name: str, data: bytes) -> str:
        self.files[name] = data
        return f"{self.url}/{name}"

    def gets(self, name: str) -> list[dict]:
        return [r for r in self.requests if r["name"] == name]

    def handler(self) -> type[BaseHTTPRequestHandler]:
        state = self

        class Handler(Quiet):
            def do_GET(self) -> None:
                name = urllib.parse.unquote(self.path.lstrip("/"))
                record = {"name": name, "range": self.headers.get("Range"), "if_range": self.headers.get("If-Range")}
                with state._lock:
                    state.requests.append(record)
                time.sleep(state.delay_s)  # widens the window in which concurrent callers race
                data = state.files.get(name)
                if data is None:
                    record["status"], record["sent"] = 404, 0
                    self.send_error(404)
                    return
                etag = f'"{sha(data)[:16]}"'
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", record["range"] or "")
                if state.honour_range and match and record["if_range"] in (None, etag):
                    start = int(match.group(1))
                    if start >= len(data):
                        record["status"], record["sent"] = 416, 0
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                body = data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", etag)
                self.end_headers()
                cut = state.cut_after.pop(name, None)
                sent = body[:cut] if cut is not None else body
                self.wfile.write(sent)  # HTTP/1.0: the connection closes after this, short of a cut body's length
                record["status"], record["sent"] = (206 if start else 200), len(sent)

        return Handler


@pytest.fixture
def server():
    state = RangeServer()
    with serving(state.handler()) as url:
        state.url = url
        yield state


# --- a fake Hugging Face Hub that knows the pinned commit ------------------------------------------------------


def release_files(encoder: Encoder, folder: Path) -> dict[str, bytes]:
    encoder.save_pretrained(folder)
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def assert_same_weights(a: Encoder, b: Encoder) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# --- registry lookup ----------------------------------------------------------------------------------------------


def test_builtin_entries_are_pinned_and_resolve_by_alias():
    names = [e.name for e in builtin_checkpoints()]
    models = ["MERT-v1-95M", "MERT-v1-330M", "MERT-v2-30s", "MERT-v2-FullSong", "MuQ-large-msd-iter"]
    assert names == [*models, "encodec-24khz"]  # then the teacher weights (tests/test_encodec_download.py)
    for entry in builtin_checkpoints()[: len(models)]:
        # Pinned to a commit wherever public sources name one (docs/checkpoints.md says which do not).
        if entry.name not in ("MERT-v2-30s", "MuQ-large-msd-iter"):
            assert re.fullmatch(r"[0-9a-f]{40}", entry.revision) and entry.pinned
        else:
            assert entry.revision is None and not entry.pinned
        assert entry.licence == "CC-BY-NC-4.0" and entry.sample_rate == 24000 and not entry.is_url
        assert entry.source.endswith(f"/{entry.name}") and entry.aliases == (entry.source,)
    small = lookup_checkpoint("MERT-v1-95M")
    for alias in ("mert-v1-95m", "MERT-V1-95M", "m-a-p/MERT-v1-95M", "M-A-P/mert-v1-95m"):
        assert lookup_checkpoint(alias) is small
    assert lookup_checkpoint("m-a-p/MERT-v1-330M").name == "MERT-v1-330M"
    for other in ("MERT-v1-96M", "m-a-p/MERT-v0", "https://x/MERT-v1-95M", "./MERT-v1-95M", "a/b/MERT-v1-95M"):
        assert lookup_checkpoint(other) is None


def test_unknown_name_lists_the_known_ones():
    register_checkpoint("team-small", "owner/team-small", revision="v1")
    with pytest.raises(FileNotFoundError) as info:
        resolve_source("MERT-v1-96M")
    message = str(info.value)
    assert (
        "MERT-v1-95M, MERT-v1-330M, MERT-v2-30s, MERT-v2-FullSong, MuQ-large-msd-iter, encodec-24khz, team-small"
        in message
    )
    assert "did you mean 'MERT-v1-95M'" in message


def test_builtin_entry_pins_revision_on_the_hub(tmp_path, monkeypatch, tiny_encoder):
    hub = PinnedHub({"m-a-p/MERT-v1-95M": release_files(tiny_encoder, tmp_path / "release")})
    with serving(hub.handler()) as url:
        hub.url = url
        monkeypatch.setenv("HF_ENDPOINT", url)
        folder = resolve_source("mert-v1-95m")
        assert hub.revisions() == {PIN_95M}
        # Without cache_dir, hub files follow $MERT_CACHE (set by the fixture) into its hf/ folder.
        assert folder.name == PIN_95M and folder.is_relative_to(tmp_path / "mert-cache" / "hf")
        enc = Encoder.from_pretrained("m-a-p/MERT-v1-95M")  # the hub id resolves to the entry: same pin
        assert hub.revisions() == {PIN_95M}
        assert_same_weights(enc, tiny_encoder)
        assert enc.source == "m-a-p/MERT-v1-95M"

        hub.paths.clear()
        assert resolve_source("MERT-v1-95M", revision="main").name == MAIN_COMMIT  # an explicit revision wins
        assert hub.revisions() == {"main", MAIN_COMMIT}  # config.json at main, the rest at the commit it named


# --- user entries ---------------------------------------------------------------------------------------------


def test_user_url_entry_round_trip(server, tmp_path, tiny_encoder, capsys):
    data = release_files(tiny_encoder, tmp_path / "release")["model.safetensors"]
    url = server.add("tiny.safetensors", data)
    entry = register_checkpoint("my-tiny", url, sha256=sha(data).upper(), licence="Apache-2.0", description="tiny")
    assert entry.sha256 == sha(data) and entry.pinned and not entry.builtin

    stored = json.loads(registry_path().read_text())
    assert stored == {"my-tiny": {"source": url, "sha256": sha(data), "licence": "Apache-2.0", "description": "tiny"}}
    builtin = ["MERT-v1-95M", "MERT-v1-330M", "MERT-v2-30s", "MERT-v2-FullSong", "MuQ-large-msd-iter", "encodec-24khz"]
    assert [e.name for e in list_checkpoints()] == [*builtin, "my-tiny"]
    assert main(["download", "--list"]) == 0
    listing = capsys.readouterr().out
    assert re.search(rf"my-tiny\s+{re.escape(url)}\s+sha256:{sha(data)[:16]}\.\.\.\s+Apache-2.0\s+user", listing)
    assert re.search(rf"MERT-v1-95M\s+m-a-p/MERT-v1-95M\s+{PIN_95M}\s+CC-BY-NC-4.0\s+built-in", listing)

    path = resolve_source("MY-TINY")
    assert path == url_cache_path(url) and path.read_bytes() == data
    enc = Encoder.from_pretrained("my-tiny")
    assert_same_weights(enc, tiny_encoder)
    assert len(server.gets("tiny.safetensors")) == 1  # the second resolve was a cache hit

    assert unregister_checkpoint("My-Tiny").name == "my-tiny"
    assert lookup_checkpoint("my-tiny") is None and json.loads(registry_path().read_text()) == {}


def test_register_refuses_what_it_cannot_check(tmp_path):
    with pytest.raises(ValueError, match=r"'x' is a URL \(https://example.org/x.bin\) without a sha256"):
        register_checkpoint("x", "https://example.org/x.bin")
    with pytest.raises(ValueError, match=r"belongs to the built-in entry 'MERT-v1-95M'"):
        register_checkpoint("mert-v1-95m", "owner/other")
    with pytest.raises(ValueError, match="not allowed"):
        register_checkpoint("owner/name", "owner/name")
    with pytest.raises(ValueError, match="neither an http"):
        register_checkpoint("ftp-one", "ftp://example.org/x.bin", sha256="0" * 64)
    with pytest.raises(ValueError, match="not a SHA-256 digest"):
        register_checkpoint("short", "https://example.org/x.bin", sha256="abc")
    digest = "ab" * 32
    entry = register_checkpoint("frag", f"https://example.org/x.bin#sha256={digest}")
    assert (entry.source, entry.sha256) == ("https://example.org/x.bin", digest)
    with pytest.raises(ValueError, match="already has a checkpoint named 'frag'"):
        register_checkpoint("FRAG", "owner/name")
    assert register_checkpoint("FRAG", "owner/name", overwrite=True).source == "owner/name"
    assert [e.name for e in list_checkpoints()][len(builtin_checkpoints()) :] == ["FRAG"]

    registry_path().write_text(json.dumps({"bad": {"source": "https://example.org/y.bin"}}))
    with pytest.raises(ValueError, match=rf"{re.escape(str(registry_path()))}: entry 'bad' is a URL"):
        resolve_source("bad")
    registry_path().write_text("{not json")
    with pytest.raises(ValueError, match="cannot read the checkpoint registry"):
        list_checkpoints()


def test_registry_file_location(tmp_path, monkeypatch):
    assert registry_path() == tmp_path / "config" / "registry.json"
    monkeypatch.delenv("MERT_REGISTRY")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert registry_path() == tmp_path / "xdg" / "mert" / "registry.json"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert registry_path() == tmp_path / ".config" / "mert" / "registry.json"


# --- corrupt, truncated and resumed downloads ---------------------------------------------------------------------


def test_tampered_file_is_removed_and_reported(server, tmp_path):
    url = server.add("model.bin", DATA[:-1] + b"!")
    register_checkpoint("tampered", url, sha256=sha(DATA))
    with pytest.raises(ValueError, match="sha256 mismatch") as info:
        Encoder.from_pretrained("tampered")
    message = str(info.value)
    assert url in message and sha(DATA) in message and sha(DATA[:-1] + b"!") in message
    assert cached_files(tmp_path / "mert-cache") == []  # neither the final file nor a partial one


def test_truncated_download_leaves_no_final_file_and_is_resumed(server):
    url = server.add("model.bin", DATA)
    server.cut_after["model.bin"] = 4000
    with pytest.raises(OSError, match=rf"truncated: received 4000 of {len(DATA)} bytes.*again to continue"):
        download_url(url, sha256=sha(DATA))
    target = url_cache_path(url)
    assert not target.exists()
    assert target.with_name(".model.bin.part").read_bytes() == DATA[:4000]

    assert download_url(url, sha256=sha(DATA)).read_bytes() == DATA
    second = server.gets("model.bin")[1]
    assert second["range"] == "bytes=4000-" and second["if_range"] is not None  # the ETag of the first response
    assert (second["status"], second["sent"]) == (206, len(DATA) - 4000)
    assert sorted(p.name for p in target.parent.iterdir()) == [".lock", "model.bin"]


def part_file(url: str, data: bytes) -> Path:
    """A partial download as an interrupted process leaves it (without the server's validator)."""
    part = url_cache_path(url).with_name("." + url_cache_path(url).name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data)
    return part


def test_resume_sends_only_the_rest(server):
    url = server.add("model.bin", DATA)
    part_file(url, DATA[: len(DATA) // 2])
    assert download_url(url, sha256=sha(DATA)).read_bytes() == DATA
    (request,) = server.gets("model.bin")
    assert request["range"] == f"bytes={len(DATA) // 2}-"
    assert (request["status"], request["sent"]) == (206, len(DATA) - len(DATA) // 2)


def test_server_ignoring_range_still_gives_the_right_file(server):
    server.honour_range = False
    url = server.add("model.bin", DATA)
    part_file(url, DATA[:3000])
    assert download_url(url, sha256=sha(DATA)).read_bytes() == DATA
    (request,) = server.gets("model.bin")
    assert request["range"] == "bytes=3000-" and (request["status"], request["sent"]) == (200, len(DATA))


def test_stale_partial_file_is_replaced(server):
    url = server.add("model.bin", DATA)
    part_file(url, b"\0" * 3000)  # not a prefix of the file: the resumed file fails its digest
    assert download_url(url, sha256=sha(DATA)).read_bytes() == DATA
    requests = [(r["range"], r["sent"]) for r in server.gets("model.bin")]
    assert requests == [("bytes=3000-", len(DATA) - 3000), (None, len(DATA))]
    part_file_too_long = part_file(server.add("small.bin", DATA[:100]), DATA[:500])  # 416 -> start over
    assert download_url(f"{server.url}/small.bin", sha256=sha(DATA[:100])).read_bytes() == DATA[:100]
    assert not part_file_too_long.exists()
    assert [r["status"] for r in server.gets("small.bin")] == [416, 200]


def test_partial_file_is_not_resumed_when_nothing_could_check_it(server):
    url = server.add("model.bin", DATA)
    part_file(url, DATA[:3000])  # no digest given and no validator recorded
    assert download_url(url).read_bytes() == DATA
    (request,) = server.gets("model.bin")
    assert request["range"] is None and request["sent"] == len(DATA)


def _download_in_child(url: str, cache: str, barrier, results) -> None:
    barrier.wait(timeout=30)
    results.put(str(download_url(url, cache_dir=cache, sha256=sha(DATA))))


def test_concurrent_processes_download_once(server, tmp_path):
    url = server.add("shared.bin", DATA)
    server.delay_s = 0.3
    # fork: the children need no re-import (the server stays in this process, in its thread).
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_download_in_child, args=(url, str(tmp_path / "c"), barrier, results)) for _ in "1234"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    paths = [results.get(timeout=5) for _ in procs]
    assert len(set(paths)) == 1 and Path(paths[0]).read_bytes() == DATA
    assert len(server.gets("shared.bin")) == 1


# --- offline ------------------------------------------------------------------------------------------------------


def test_offline_uses_the_cache_and_explains_a_miss(server, monkeypatch, tiny_encoder, tmp_path):
    data = release_files(tiny_encoder, tmp_path / "release")["model.safetensors"]
    url = server.add("tiny.safetensors", data)
    register_checkpoint("my-tiny", url, sha256=sha(data))

    monkeypatch.setenv("MERT_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as info:
        Encoder.from_pretrained("my-tiny")
    message = str(info.value)
    for part in ("checkpoint 'my-tiny'", url, str(url_cache_path(url)), "mert download", "MERT_CACHE"):
        assert part in message
    assert server.requests == []

    monkeypatch.delenv("MERT_OFFLINE")
    Encoder.from_pretrained("my-tiny")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_same_weights(Encoder.from_pretrained("my-tiny"), tiny_encoder)
    assert len(server.requests) == 1

    # A hub entry missing from the cache: the pinned revision, the command to run and the folder are named.
    with pytest.raises(FileNotFoundError) as info:
        resolve_source("MERT-v1-95M")
    message = str(info.value)
    assert f"checkpoint 'MERT-v1-95M' (Hugging Face repo 'm-a-p/MERT-v1-95M' (revision '{PIN_95M}'))" in message
    assert "`mert download MERT-v1-95M --cache-dir DIR`" in message
    assert str(tmp_path / "mert-cache" / "hf" / "models--m-a-p--MERT-v1-95M") in message


# --- mert download ------------------------------------------------------------------------------------------------


def test_cli_download_prints_the_path(server, capsys):
    assert "download" in build_parser().format_help()
    url = server.add("model.bin", DATA)
    assert main(["download", "--add", "cli-model", url, "--sha256", sha(DATA), "--licence", "MIT"]) == 0
    assert "registered 'cli-model'" in capsys.readouterr().err

    assert main(["download", "cli-model"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{url_cache_path(url)}\n" and "licence MIT" in err
    assert main(["download", "cli-model", "--offline"]) == 0
    assert capsys.readouterr().out == f"{url_cache_path(url)}\n"
    assert len(server.gets("model.bin")) == 1


def test_cli_download_fails_with_one_line(server, capsys, tmp_path):
    assert main(["download", "no-such-model"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("mert download: checkpoint source 'no-such-model' is neither") and "MERT-v1-95M" in err

    assert main(["download", "--add", "nosha", "https://example.org/x.bin"]) == 1
    assert "without a sha256" in capsys.readouterr().err
    url = server.add("model.bin", DATA)
    assert main(["download", url, "--offline", "--cache-dir", str(tmp_path / "c")]) == 1
    assert "not in the download cache" in capsys.readouterr().err
    assert main(["download", "--remove", "MERT-v1-95M"]) == 1
    assert "built-in" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["download"])

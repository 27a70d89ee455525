"""Checkpoint sources against real loopback HTTP servers: a plain file server and a fake Hugging Face Hub."""

from __future__ import annotations

import collections
import gzip
import hashlib
import io
import re
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse
import zipfile
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from mert.download import default_cache_dir, download_url, sha256_file
from mert.hub import resolve_source
from tests.helpers import HubHandler, Quiet, cached_files, serving

# The loopback servers speak plain http://: the warning about unpinned plain-http downloads is tested once below.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*plain http.// with no sha256:UserWarning"),
    pytest.mark.usefixtures("isolated_hub_env"),
]

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CONFIG = b'{"model_type": "hubert"}'
_HEADER = b'{"__metadata__": {"note": "not really weights"}}'
WEIGHTS = len(_HEADER).to_bytes(8, "little") + _HEADER + b"\x00" * 2000  # a safetensors header, no tensors


class FileServer:
    """Serves files written under ``root``; names starting with ``truncated`` announce 1000 bytes too many."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.gets: collections.Counter[str] = collections.Counter()
        self.delay_s = 0.0
        self.url = ""
        self._lock = threading.Lock()

    def add(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return f"{self.url}/{name}"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        state = self

        class Handler(Quiet):
            def do_GET(self) -> None:
                name = urllib.parse.unquote(self.path.lstrip("/"))
                with state._lock:
                    state.gets[name] += 1
                time.sleep(state.delay_s)  # widens the window in which concurrent callers race
                path = state.root / name
                if not path.is_file():
                    self.send_error(404)
                    return
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) + (1000 if name.startswith("truncated") else 0)))
                self.end_headers()
                self.wfile.write(body)  # HTTP/1.0: the connection closes here, short of a truncated file's length

        return Handler


@pytest.fixture
def files(tmp_path):
    state = FileServer(tmp_path / "www")
    state.root.mkdir()
    with serving(state.handler()) as url:
        state.url = url
        yield state


# --- local paths and unknown sources ----------------------------------------------------------------------------


def test_local_folder_and_file_are_returned_resolved(tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(WEIGHTS)
    assert resolve_source(folder) == folder.resolve()
    assert resolve_source(str(folder / "model.safetensors")) == (folder / "model.safetensors").resolve()
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_source("~/ckpt") == folder.resolve()


def test_local_file_sha256_is_checked(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(WEIGHTS)
    assert resolve_source(file, sha256=hashlib.sha256(WEIGHTS).hexdigest().upper()) == file.resolve()
    with pytest.raises(ValueError, match="sha256 mismatch"):
        resolve_source(file, sha256="0" * 64)
    with pytest.raises(ValueError, match="folder"):
        resolve_source(tmp_path, sha256="0" * 64)


@pytest.mark.parametrize("source", ["not a checkpoint", "ftp://host/x.bin"])
def test_unknown_source_is_explained(source):
    with pytest.raises(FileNotFoundError, match="neither an existing path, nor an http"):
        resolve_source(source)


@pytest.mark.parametrize("source", ["./missing/dir/x", "a/b/c", "~/nope/model", "weights.safetensors", "runs/exprot"])
def test_mistyped_local_path_never_goes_to_the_hub(source, tmp_path, monkeypatch):
    """A path-like string that does not exist is refused locally, with the closest name, before any request."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "export").mkdir(parents=True)  # "runs/exprot" is a typo of this folder
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a request would fail differently (and slowly)

    def no_network(*args, **kwargs):
        raise AssertionError("the Hub was contacted")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", no_network)
    with pytest.raises(FileNotFoundError, match="does not exist.*not looked up on the Hugging Face Hub") as err:
        resolve_source(source)
    if source == "runs/exprot":
        assert "did you mean 'runs/export'" in str(err.value)


def test_missing_path_object_is_not_taken_for_a_repo_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_source(Path("owner/name"))


def test_default_cache_dir_follows_env(tmp_path, monkeypatch):
    assert default_cache_dir() == tmp_path / "mert-cache"
    monkeypatch.delenv("MERT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "mert"


# --- URLs ---------------------------------------------------------------------------------------------------------


def test_url_download_then_cache_hit(files, tmp_path):
    url = files.add("model.safetensors", WEIGHTS)
    first = resolve_source(url)
    assert first.name == "model.safetensors"
    assert first.is_relative_to(tmp_path / "mert-cache")
    assert first.read_bytes() == WEIGHTS
    assert sha256_file(first) == hashlib.sha256(WEIGHTS).hexdigest()
    assert resolve_source(url) == first
    assert files.gets["model.safetensors"] == 1  # the second call never reached the server


def test_explicit_cache_dir_and_local_files_only(files, tmp_path):
    url = files.add("w.safetensors", WEIGHTS)
    cache = tmp_path / "elsewhere"
    with pytest.raises(FileNotFoundError, match=r"not in the download cache.*local_files_only") as info:
        resolve_source(url, cache_dir=cache, local_files_only=True)
    assert url in str(info.value)
    assert files.gets["w.safetensors"] == 0 and not cache.exists()
    path = download_url(url, cache_dir=cache)
    assert path.is_relative_to(cache)
    assert resolve_source(url, cache_dir=cache, local_files_only=True) == path
    assert files.gets["w.safetensors"] == 1


def test_sha256_fragment_verified(files):
    digest = hashlib.sha256(WEIGHTS).hexdigest()
    url = files.add("good.safetensors", WEIGHTS)
    assert resolve_source(f"{url}#sha256={digest}").read_bytes() == WEIGHTS
    assert resolve_source(url, sha256=digest.upper()).read_bytes() == WEIGHTS  # same cache entry, re-verified
    assert files.gets["good.safetensors"] == 1
    with pytest.raises(ValueError, match="disagrees"):
        resolve_source(f"{url}#sha256={digest}", sha256="0" * 64)
    with pytest.raises(ValueError, match="not a SHA-256 digest"):
        resolve_source(f"{url}#sha256=abc")


def test_tampered_download_is_rejected_and_not_kept(files, tmp_path):
    expected = hashlib.sha256(WEIGHTS).hexdigest()
    url = files.add("tampered.safetensors", WEIGHTS + b"!")
    with pytest.raises(ValueError, match="sha256 mismatch") as info:
        resolve_source(f"{url}#sha256={expected}")
    message = str(info.value)
    assert url in message and expected in message and hashlib.sha256(WEIGHTS + b"!").hexdigest() in message
    assert cached_files(tmp_path / "mert-cache") == []


def test_corrupt_cached_copy_is_downloaded_again(files):
    url = files.add("w.safetensors", WEIGHTS)
    path = resolve_source(url)
    path.write_bytes(b"bit rot")
    assert resolve_source(url, sha256=hashlib.sha256(WEIGHTS).hexdigest()).read_bytes() == WEIGHTS
    assert files.gets["w.safetensors"] == 2
    path.write_bytes(b"bit rot")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        resolve_source(url, sha256=hashlib.sha256(WEIGHTS).hexdigest(), local_files_only=True)
    assert not path.exists()


def test_truncated_response_raises_and_leaves_nothing(files, tmp_path):
    url = files.add("truncated.safetensors", WEIGHTS)
    with pytest.raises(OSError, match=rf"truncated.*{len(WEIGHTS)} of {len(WEIGHTS) + 1000} bytes") as info:
        resolve_source(url)
    assert url in str(info.value)
    # No final file; only the partial download, kept so the next call can continue it (tests/test_registry.py).
    left = [p.name for p in cached_files(tmp_path / "mert-cache")]
    assert left == [".truncated.safetensors.part", ".truncated.safetensors.part.json"]


def test_http_error_names_the_url(files):
    url = f"{files.url}/nope.bin"
    with pytest.raises(FileNotFoundError, match=re.escape(url)):
        resolve_source(url)


def test_concurrent_callers_download_once(files):
    url = files.add("shared.safetensors", WEIGHTS)
    files.delay_s = 0.3
    barrier = threading.Barrier(4)
    results: list[Path] = []

    def worker() -> None:
        barrier.wait()
        results.append(resolve_source(url))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert len(results) == 4 and len(set(results)) == 1
    assert results[0].read_bytes() == WEIGHTS
    assert files.gets["shared.safetensors"] == 1


# --- archives -------------------------------------------------------------------------------------------------------


def make_tar(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return buf.getvalue()


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("name, make", [("ckpt.tar.gz", make_tar), ("ckpt.zip", make_zip)])
def test_archive_is_extracted(files, name, make):
    nested = {"release/config.json": CONFIG, "release/model.safetensors": WEIGHTS}
    folder = resolve_source(files.add(name, make(nested)))
    assert folder.name == "release"
    assert (folder / "config.json").read_bytes() == CONFIG
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert resolve_source(f"{files.url}/{name}") == folder  # reused: no second download, no second extraction
    assert files.gets[name] == 1

    flat = resolve_source(files.add("flat-" + name, make({"config.json": CONFIG, "model.safetensors": WEIGHTS})))
    assert sorted(p.name for p in flat.iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize(
    "name, data",
    [
        ("evil.tar.gz", make_tar({"ok.txt": b"x", "../evil": b"x"})),
        ("abs.tar.gz", make_tar({"/tmp/evil": b"x"})),
        ("link.tar.gz", make_tar({"ok.txt": b"x"}, links={"passwd": "../../../etc/passwd"})),
        ("evil.zip", make_zip({"ok.txt": b"x", "../evil": b"x"})),
    ],
)
def test_unsafe_archive_is_rejected(files, tmp_path, name, data):
    with pytest.raises(ValueError, match="outside the extraction folder"):
        resolve_source(files.add(name, data))
    assert not (tmp_path / "evil").exists()
    assert [p.name for p in cached_files(tmp_path / "mert-cache")] == [name]  # the archive, nothing extracted


@pytest.mark.parametrize("name, make", [("cut.tar.gz", make_tar), ("cut.tar", make_tar), ("cut.zip", make_zip)])
def test_truncated_archive_error_names_the_file(files, tmp_path, name, make):
    """A cut-off archive raised a bare EOFError (or ReadError) that named nothing."""
    data = make({"release/config.json": CONFIG, "release/model.safetensors": WEIGHTS * 50})
    if name.endswith(".tar"):
        data = gzip.decompress(data)  # make_tar writes .tar.gz
    with pytest.raises(ValueError, match=rf"{re.escape(name)}' is damaged or truncated.*download it again"):
        resolve_source(files.add(name, data[: len(data) * 2 // 3]))


@pytest.mark.filterwarnings("error")
def test_plain_http_without_a_digest_warns(files):
    url = files.add("w.safetensors", WEIGHTS)
    with pytest.warns(UserWarning, match=r"plain http:// with no sha256.*use https://"):
        resolve_source(url)
    digest = hashlib.sha256(WEIGHTS).hexdigest()
    assert resolve_source(f"{url}#sha256={digest}").read_bytes() == WEIGHTS  # pinned: no warning (error filter)


# --- fake Hugging Face Hub ----------------------------------------------------------------------------------------


class FakeHub:
    """Answers ``/{owner}/{name}/resolve/{revision}/{filename}`` the way huggingface_hub expects from the Hub."""

    def __init__(self, repos: dict[str, dict[str, bytes]]) -> None:
        self.repos = repos
        self.url = ""
        self.requests: list[tuple[str, str]] = []

    def handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(HubHandler):
            def respond(self, body: bool) -> None:
                hub.requests.append((self.command, self.path))
                repo, revision, filename = self.resolve_parts() or ("", "", "")
                files = hub.repos.get(repo)
                if files is None:  # the Hub answers 401 for both missing and private repos
                    return self.error(401, "RepoNotFound")
                if urllib.parse.unquote(revision) not in ("main", COMMIT):
                    return self.error(404, "RevisionNotFound")
                if filename not in files:
                    return self.error(404, "EntryNotFound", commit=True)
                data = files[filename]
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)  # names the snapshot folder; required
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')  # names the blob; required
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def error(self, status: int, code: str, commit: bool = False) -> None:
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                if commit:
                    self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler


@pytest.fixture
def hub():
    fake = FakeHub(
        {
            "owner/name": {"config.json": CONFIG, "model.safetensors": WEIGHTS, "meta.json": b"{}"},
            "owner/old-style": {"config.json": CONFIG, "pytorch_model.bin": WEIGHTS},
            "owner/no-weights": {"config.json": CONFIG},
        }
    )
    with serving(fake.handler()) as url:
        fake.url = url
        yield fake


@pytest.mark.parametrize("revision", [None, "main", COMMIT])
def test_hub_repo_downloads_into_a_snapshot_folder(hub, tmp_path, revision):
    folder = resolve_source("owner/name", revision=revision, endpoint=hub.url, cache_dir=tmp_path)
    assert folder.is_relative_to(tmp_path / "hf") and folder.name == COMMIT
    assert (folder / "config.json").read_bytes() == CONFIG
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert (folder / "meta.json").is_file() and not (folder / "preprocessor_config.json").exists()
    assert not any(path.startswith("/api") for _, path in hub.requests)


def test_hub_endpoint_from_env_and_offline_reuse(hub, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"'owner/name'.*not in the cache.*internet"):
        resolve_source("owner/name", cache_dir=tmp_path, local_files_only=True)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    folder = resolve_source("owner/name", cache_dir=tmp_path)
    seen = len(hub.requests)
    assert resolve_source("owner/name", cache_dir=tmp_path, local_files_only=True) == folder
    assert len(hub.requests) == seen


def test_hub_falls_back_to_pytorch_model_bin(hub, tmp_path):
    folder = resolve_source("owner/old-style", endpoint=hub.url, cache_dir=tmp_path)
    assert (folder / "pytorch_model.bin").read_bytes() == WEIGHTS
    assert not (folder / "model.safetensors").exists()


def test_hub_weights_sha256(hub, tmp_path):
    good = hashlib.sha256(WEIGHTS).hexdigest()
    assert resolve_source("owner/name", endpoint=hub.url, cache_dir=tmp_path, sha256=good).is_dir()
    with pytest.raises(ValueError, match="sha256 mismatch for owner/name/model.safetensors"):
        resolve_source("owner/name", endpoint=hub.url, cache_dir=tmp_path, sha256="0" * 64)


@pytest.mark.parametrize(
    "repo, revision, message",
    [
        ("owner/unknown", None, r"'owner/unknown' \(revision 'main'\) was not found.*token=.*config.json"),
        ("owner/name", "v9", r"'owner/name' \(revision 'v9'\) was not found: .*no such branch"),
        ("owner/no-weights", None, r"no weights file \(tried config.json, model.safetensors, pytorch_model.bin\)"),
    ],
)
def test_hub_errors_name_the_repo(hub, tmp_path, repo, revision, message):
    with pytest.raises(FileNotFoundError, match=message):
        resolve_source(repo, revision=revision, endpoint=hub.url, cache_dir=tmp_path)


# --- import weight ----------------------------------------------------------------------------------------------


def test_import_is_light():
    code = "import sys, mert.hub; print(sorted({'huggingface_hub', 'lightning', 'hydra'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- end to end: Encoder.from_pretrained over loopback --------------------------------------------------------


def _hf_mert_folder(tmp_path: Path):
    """A MERT-style HF checkpoint (mert_model, weight_g/weight_v, pytorch_model.bin) and its reference model."""
    pytest.importorskip("transformers")
    from tests.helpers import hf_config, perturbed_hf_model, save_hf_folder

    hf = perturbed_hf_model(hf_config("95m"))
    folder = save_hf_folder(hf, tmp_path / "MERT-v1-small", fmt="bin", naming="old", model_type="mert_model")
    return hf, folder


def _assert_same_as_hf(enc, hf) -> None:
    import torch

    from tests.helpers import music_like

    wav = music_like(24000)
    with torch.no_grad():
        ours = enc(wav, sample_rate=24000).hidden_states
        ref = hf(wav, output_hidden_states=True).hidden_states
    assert max((a - b).abs().max().item() for a, b in zip(ours, ref)) <= 1e-4


def test_from_pretrained_hf_id_through_fake_hub(tmp_path, monkeypatch):
    from mert import Encoder

    hf, folder = _hf_mert_folder(tmp_path)
    repo = {p.name: p.read_bytes() for p in folder.iterdir()}
    fake = FakeHub({"m-a-p/MERT-v1-small": repo})
    with serving(fake.handler()) as url:
        fake.url = url
        monkeypatch.setenv("HF_ENDPOINT", url)
        enc = Encoder.from_pretrained("m-a-p/MERT-v1-small", revision="main", cache_dir=tmp_path / "c")
    _assert_same_as_hf(enc, hf)
    # Cached: works offline with the server gone.
    again = Encoder.from_pretrained("m-a-p/MERT-v1-small", cache_dir=tmp_path / "c", local_files_only=True)
    assert again.config == enc.config


def test_from_pretrained_url_archive_and_checksummed_file(files, tmp_path):
    import torch

    from mert import Encoder

    hf, folder = _hf_mert_folder(tmp_path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    url = files.add("mert-small.tar.gz", buf.getvalue())
    enc = Encoder.from_pretrained(url)
    _assert_same_as_hf(enc, hf)

    enc.save_pretrained(tmp_path / "export")
    data = (tmp_path / "export" / "model.safetensors").read_bytes()
    url = files.add("export.safetensors", data)
    digest = hashlib.sha256(data).hexdigest()
    single = Encoder.from_pretrained(f"{url}#sha256={digest}")
    wav = torch.randn(1, 8000) * 0.1
    with torch.no_grad():
        assert torch.equal(single(wav).last_hidden_state, enc(wav).last_hidden_state)
    tampered = files.add("tampered.safetensors", data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ValueError, match="sha256|digest"):
        Encoder.from_pretrained(tampered, sha256=digest)

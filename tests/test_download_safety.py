"""Downloads are what they claim: schemes, redirects, body formats, safetensors by header, fast offline failures.

Real loopback servers: plain HTTP, and HTTPS with a throw-away self-signed certificate made by ``openssl`` and
trusted through ``SSL_CERT_FILE`` (skipped where there is no openssl).
"""

from __future__ import annotations

import collections
import hashlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from mert import Encoder
from mert.download import download_url, url_cache_path
from mert.hub import resolve_source
from tests.helpers import Quiet, serving

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*plain http.// with no sha256:UserWarning"),
    pytest.mark.usefixtures("isolated_hub_env"),
]

_HEADER = b'{"__metadata__": {"note": "not really weights"}}'
SAFETENSORS = len(_HEADER).to_bytes(8, "little") + _HEADER + b"\x00" * 64


class Site:
    """Files by path, optional redirects (path -> absolute URL) and content types; counts GETs per path."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.types: dict[str, str] = {}
        self.gets: collections.Counter[str] = collections.Counter()
        self.url = ""

    def handler(self):
        site = self

        class Handler(Quiet):
            def do_GET(self) -> None:
                path = urllib.parse.unquote(self.path.lstrip("/"))
                site.gets[path] += 1
                if path in site.redirects:
                    self.send_response(302)
                    self.send_header("Location", site.redirects[path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path not in site.files:
                    self.send_error(404)
                    return
                body = site.files[path]
                self.send_response(200)
                self.send_header("Content-Type", site.types.get(path, "application/octet-stream"))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


@pytest.fixture
def http_site():
    site = Site()
    with serving(site.handler()) as url:
        site.url = url
        yield site


@pytest.fixture
def https_site(tmp_path, monkeypatch):
    """An HTTPS loopback server whose self-signed certificate this process trusts (SSL_CERT_FILE)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    site = Site()
    server = ThreadingHTTPServer(("127.0.0.1", 0), site.handler())
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    site.url = f"https://127.0.0.1:{server.server_address[1]}"
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_https_server_is_trusted(https_site):
    """The fixture itself: a plain https download works, so the refusals below are about the redirects."""
    https_site.files["ok.safetensors"] = SAFETENSORS
    assert download_url(f"{https_site.url}/ok.safetensors").read_bytes() == SAFETENSORS


def test_redirect_from_https_to_http_is_refused_unless_pinned(https_site, http_site):
    http_site.files["model.safetensors"] = SAFETENSORS
    https_site.redirects["redir"] = f"{http_site.url}/model.safetensors"
    url = f"{https_site.url}/redir"
    with pytest.raises(ValueError, match=r"refusing the redirect .* to plain-http .*pin the file with sha256"):
        download_url(url)
    assert http_site.gets["model.safetensors"] == 0  # the plain-text request was never made
    assert not url_cache_path(url).exists()
    # A pinned digest vouches for the bytes whatever the transport: then the redirect is followed.
    assert download_url(url, sha256=sha(SAFETENSORS)).read_bytes() == SAFETENSORS


@pytest.mark.parametrize("target", ["ftp://127.0.0.1:1/model.safetensors", "file:///etc/passwd"])
def test_redirect_to_another_scheme_is_refused_even_pinned(https_site, target):
    https_site.redirects["redir"] = target
    with pytest.raises(ValueError, match="only http\\(s\\) downloads are allowed"):
        download_url(f"{https_site.url}/redir", sha256=sha(SAFETENSORS))


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:1/x.safetensors", "file:///etc/passwd", "data:,hello"])
def test_non_http_urls_are_refused(url):
    with pytest.raises(ValueError, match="only http:// and https:// downloads"):
        download_url(url)


@pytest.mark.parametrize(
    ("name", "body", "problem"),
    [
        ("model.safetensors", b"<!DOCTYPE html><html><body>Sign in</body></html>", "HTML"),
        ("model.safetensors", b"PK\x03\x04 a torch zip renamed", "no safetensors header"),
        ("pytorch_model.bin", b'{"error": "not found"}' * 4, "not a PyTorch"),
        ("release.tar.gz", b"plain text, not gzip" * 4, "not a gzip"),
        ("release.zip", b"\x1f\x8b gzip, not zip" * 4, "not a zip"),
    ],
)
def test_a_body_that_does_not_fit_its_name_is_not_cached(http_site, name, body, problem):
    http_site.files[name] = body
    url = f"{http_site.url}/{name}"
    with pytest.raises(ValueError, match=rf"is .*{problem}.*it was not cached"):
        download_url(url)
    folder = url_cache_path(url).parent
    assert not any(p.name != ".lock" for p in folder.iterdir())
    with pytest.raises(ValueError, match="not cached"):  # and the next call asks the server again
        download_url(url)
    assert http_site.gets[name] == 2


def test_a_safetensors_body_under_a_torch_name_is_accepted(http_site):
    http_site.files["pytorch_model.bin"] = SAFETENSORS
    assert download_url(f"{http_site.url}/pytorch_model.bin").read_bytes() == SAFETENSORS


def test_an_html_content_type_is_refused(http_site):
    http_site.files["weights"] = b"\x80 looks like a pickle"
    http_site.types["weights"] = "text/html; charset=utf-8"
    with pytest.raises(OSError, match="HTML page"):
        download_url(f"{http_site.url}/weights")
    assert not url_cache_path(f"{http_site.url}/weights").exists()


def test_safetensors_is_recognised_by_its_header_not_the_url(http_site, tmp_path):
    Encoder("tiny").save_pretrained(tmp_path / "ck")
    data = (tmp_path / "ck" / "model.safetensors").read_bytes()
    http_site.files["weights"] = data
    http_site.files["download?id=3"] = data
    enc = Encoder.from_pretrained(f"{http_site.url}/weights#sha256={sha(data)}")
    assert enc.config.hidden_size == 32
    assert Encoder.from_pretrained(f"{http_site.url}/download?id=3").config.num_layers == 2


def test_no_error_suggests_weights_only_false(http_site, tmp_path):
    import os

    from mert.models.checkpoint import load_error_reason

    torch.save({"x": os.getcwd}, tmp_path / "evil.bin")  # a pickle that names a function
    http_site.files["evil.bin"] = (tmp_path / "evil.bin").read_bytes()
    with pytest.raises(ValueError) as err:
        Encoder.from_pretrained(f"{http_site.url}/evil.bin")
    message = str(err.value)
    assert "neither a safetensors file nor a plain PyTorch state dict" in message and "getcwd" in message
    assert "weights_only" not in message and "False" not in message
    try:
        torch.load(tmp_path / "evil.bin", weights_only=True)
    except Exception as e:  # torch's own message does advise it: ours must not pass that on
        assert "weights_only" in str(e) and "weights_only" not in load_error_reason(e)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["HF_HUB_OFFLINE", "unreachable"])
def test_offline_hub_loads_fail_fast(monkeypatch, mode):
    """No retries with back-off (about 25 s) before the not-in-cache error."""
    import huggingface_hub.constants  # noqa: F401  (it reads HF_HUB_OFFLINE once, at import: not in this test)

    if mode == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="is not in the cache") as err:
        resolve_source("owner/name")
    assert time.monotonic() - start < 5.0
    assert "mert download owner/name" in str(err.value)
    if mode == "unreachable":
        assert "cannot be reached" in str(err.value)


def test_cached_hub_files_are_used_when_the_hub_cannot_be_reached(monkeypatch, tmp_path):
    """An unreachable Hub is not an error when the files are cached: the cache answers at once."""
    from huggingface_hub import hf_hub_download

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    calls = []

    def fake(repo_id, filename, **kwargs):
        calls.append(kwargs["local_files_only"])
        if filename == "config.json":
            folder = tmp_path / "snap" / ("0" * 40)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / filename).write_text("{}")
            return str(folder / filename)
        if filename == "model.safetensors":
            return str(tmp_path / "snap" / ("0" * 40) / "config.json")
        return hf_hub_download(repo_id, filename, **kwargs)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake)
    assert resolve_source("owner/name").name == "0" * 40
    assert calls and all(calls)  # every lookup went to the cache only
    assert Path(tmp_path / "snap").is_dir()

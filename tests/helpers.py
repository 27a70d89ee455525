"""Helpers shared by several test files: plain functions and classes (fixtures live in ``conftest.py``)."""

from __future__ import annotations

import contextlib
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# --- loopback HTTP servers and download caches (tests/test_hub.py, tests/test_registry.py) -----------------------


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]):
    """Run ``handler`` on an ephemeral loopback port in a daemon thread; yield the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


class HubHandler(Quiet):
    """A fake Hugging Face Hub's handler: HEAD and GET both go to :meth:`respond`, which subclasses write."""

    def do_HEAD(self) -> None:
        self.respond(body=False)

    def do_GET(self) -> None:
        self.respond(body=True)

    def respond(self, body: bool) -> None:
        raise NotImplementedError

    def resolve_parts(self) -> tuple[str, str, str] | None:
        """``(repo, revision, filename)`` of a ``/{owner}/{name}/resolve/{revision}/{filename}`` request, else None."""
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", urllib.parse.urlsplit(self.path).path)
        return match.groups() if match else None


def cached_files(cache: Path) -> list[Path]:
    """Everything in a cache folder except lock files."""
    return sorted(p for p in cache.rglob("*") if p.is_file() and p.name != ".lock")

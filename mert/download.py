"""URL downloads: HTTP(S) fetch into a cache with resume, SHA-256 verification, locking and safe unpacking.

A URL's file lives in ``$MERT_CACHE`` (default ``~/.cache/mert``) under ``urls/<key>/<file name>``, ``key``
being derived from the URL (:func:`url_cache_path`). Each download is written to a partial file and moved into
place under a file lock, so several processes starting at once (DDP ranks) download once and nobody ever sees a
partial file; an interrupted download is continued with an HTTP range request (``If-Range`` guards against a
file that changed meanwhile). Archives are unpacked once, into a temporary folder renamed into place, refusing
members that would land outside it. Nothing here knows about checkpoint names or the Hugging Face Hub: source
resolution (:mod:`mert.hub`) calls this module, never the other way round.

Why our own code and not a library: ``pooch`` (1.9) downloads to a fresh temporary file that is deleted on any
failure (no resume of a partial download), unpacks straight into the final folder and later only checks that
the members exist (a crash mid-unpack can leave a truncated file that is then used), takes no lock, and would
add ``requests``; ``fsspec``'s http filesystem (2026.9) needs ``aiohttp``, and its ``get_file`` writes straight
to the destination with no resume, no digest check and no unpacking. Both would leave resume, verification and
atomic unpacking to us, which is what this module is; huggingface_hub (already a dependency) does all of it
for Hub repos (:mod:`mert.hub`).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import logging
import lzma
import os
import posixpath
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Collection
from pathlib import Path, PurePosixPath

from mert.registry import normalise_sha256

__all__ = [
    "check_format",
    "check_sha256",
    "default_cache_dir",
    "download_url",
    "fetch_url",
    "is_safetensors",
    "offline_mode",
    "sha256_file",
    "unpack_if_archive",
    "url_cache_path",
]

log = logging.getLogger(__name__)

_ARCHIVES = (".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".tar", ".zip")
_LOCK_NAME = ".lock"
_CHUNK_BYTES = 1 << 20
_PROGRESS_MIN_BYTES = 64 << 20  # outside a terminal, only downloads this large are worth a progress bar
_TIMEOUT_S = 60.0
_TRUE = ("1", "true", "yes", "on")


def default_cache_dir() -> Path:
    """The download cache: ``$MERT_CACHE`` if set, else ``~/.cache/mert``."""
    return Path(os.environ.get("MERT_CACHE") or "~/.cache/mert").expanduser()


def offline_mode() -> bool:
    """True when ``MERT_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to 1 (or true/yes/on): only caches are used."""
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in ("MERT_OFFLINE", "HF_HUB_OFFLINE"))


def url_cache_path(url: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`download_url` keeps the file of ``url``: ``<cache>/urls/<key>/<file name>``.

    ``key`` is the first 16 hex digits of the SHA-256 of the URL without its ``#`` fragment. Putting a file
    there by hand (e.g. copied from a connected machine) makes it a cache hit, re-verified when a digest is known.
    """
    base = url.partition("#")[0]
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(base).path)).name
    if name in ("", ".", "..", _LOCK_NAME):
        name = "download"
    folder = Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser()
    return folder / "urls" / hashlib.sha256(base.encode()).hexdigest()[:16] / name


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def download_url(
    url: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    sha256: str | None = None,
    local_files_only: bool = False,
) -> Path:
    """Download ``url`` into the cache once and return the cached file (archives are not unpacked here).

    A cached copy is reused without touching the network, and re-verified when a digest is known (from
    ``sha256`` or a ``#sha256=<hex>`` URL fragment); a copy that fails verification is deleted and downloaded
    again. A download goes to ``.<name>.part`` next to the final file and is checked against the announced size
    and the digest before it is renamed into place. A partial file left by an interrupted download is continued
    with an HTTP ``Range`` request when the server supports it and the file can be checked (a known digest, or
    the server's ``ETag``/``Last-Modified`` sent as ``If-Range``); otherwise the download starts over.

    Args:
        url: ``http(s)://`` address, optionally ending in ``#sha256=<hex>``.
        cache_dir: download cache (default :func:`default_cache_dir`); see :func:`url_cache_path`.
        sha256: expected hex digest of the file.
        local_files_only: raise instead of downloading when the file is not cached.

    Returns:
        The cached file, named like the URL's last path component.

    Raises:
        FileNotFoundError: not cached with ``local_files_only``, or the server answers 404/410.
        ValueError: the file does not match the expected digest, or its first bytes do not fit its name (an
            HTML page, a ``.safetensors`` without a header: nothing is left in the cache), a non-http(s) address,
            or a redirect to another scheme or from https to http without a digest.
        OSError: the server cannot be reached, answers an error, or sends fewer bytes than announced (the
            partial file is kept, and the next call continues it).
    """
    return fetch_url(
        url, cache_dir=cache_dir, sha256=sha256, local_files_only=local_files_only or offline_mode(), label=url
    )


def fetch_url(
    url: str,
    *,
    cache_dir: str | os.PathLike | None,
    sha256: str | None,
    local_files_only: bool,
    label: str,
    what: str | None = None,
) -> Path:
    """:func:`download_url` for a caller that names the source: ``label`` is what to pass to ``mert download`` on
    another machine (shown when the file is missing offline), ``what`` names the thing in errors.

    ``local_files_only`` is taken as given (:func:`download_url` adds :func:`offline_mode` to it).
    """
    base, _, fragment = url.partition("#")
    scheme = urllib.parse.urlsplit(base).scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"{base}: only http:// and https:// downloads are supported, not {scheme or 'no'} scheme")
    expected = _expected_digest(url, fragment, sha256)
    if expected is None and base.lower().startswith("http://"):
        warnings.warn(
            f"{base}: plain http:// with no sha256, so nothing vouches for what arrives (anyone on the path can "
            "change it); use https://, or pin the file with sha256= or a '#sha256=<hex>' URL fragment",
            stacklevel=3,
        )
    target = url_cache_path(base, cache_dir)
    folder = target.parent

    # Files only ever appear complete (os.replace), so a cached copy can be trusted without taking the lock.
    if target.is_file() and (expected is None or sha256_file(target) == expected):
        return target
    if local_files_only and not target.is_file():
        where = f"{what} ({base})" if what else base
        raise FileNotFoundError(
            f"{where} is not in the download cache ({target}) and local_files_only=True (offline: --offline, "
            f"MERT_OFFLINE=1 or HF_HUB_OFFLINE=1). On a machine with internet access run `mert download {label} "
            f"--cache-dir DIR`, copy DIR here and set MERT_CACHE to it (or pass cache_dir=), or put the file itself "
            f"at {target}, or pass a local path"
        )

    from filelock import FileLock

    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / _LOCK_NAME):
        if target.is_file():  # another process may have finished the download while we waited for the lock
            actual = sha256_file(target) if expected is not None else None
            if actual == expected:
                return target
            target.unlink()
            if local_files_only:
                raise _mismatch(what or base, expected, actual, "the cached copy was deleted; download it again")
            log.warning("cached %s does not match sha256 %s; downloading it again", target, expected)
        # Partial files of older layouts and what was unpacked from a stale copy go; a resumable partial stays.
        _clear(folder, keep={_part_path(target).name, _part_meta_path(target).name})
        _fetch(base, target, expected)
    return target


def _expected_digest(url: str, fragment: str, sha256: str | None) -> str | None:
    """The digest to check: from ``sha256=`` and/or the URL's ``#sha256=`` fragment, which must agree."""
    from_url = fragment[len("sha256=") :] if fragment.startswith("sha256=") else None
    digests = {normalise_sha256(d, url) for d in (sha256, from_url) if d}
    if len(digests) > 1:
        raise ValueError(f"{url}: sha256={sha256} disagrees with the URL's #sha256= fragment")
    return digests.pop() if digests else None


def _mismatch(what: str, expected: str | None, actual: str | None, hint: str) -> ValueError:
    return ValueError(
        f"sha256 mismatch for {what}: expected {expected}, got {actual}; the file is corrupt or changed, or the "
        f"expected digest is wrong ({hint})"
    )


def check_sha256(path: Path, sha256: str, what: str, hint: str) -> None:
    """Raise a ``ValueError`` naming ``what`` (and ending with ``hint``) unless ``path`` has digest ``sha256``."""
    expected = normalise_sha256(sha256, what)
    if (actual := sha256_file(path)) != expected:
        raise _mismatch(what, expected, actual, hint)


def _clear(folder: Path, keep: Collection[str] = ()) -> None:
    """Empty a URL's cache folder, except for its lock file and the names in ``keep``."""
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.name != _LOCK_NAME and entry.name not in keep:
            entry.unlink()


def _part_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.part")


def _part_meta_path(target: Path) -> Path:
    """What the server said about the file when the partial download began: URL, validator, size."""
    return target.with_name(f".{target.name}.part.json")


def _fetch(url: str, target: Path, expected: str | None) -> None:
    """Download (or continue downloading) ``url`` into a partial file, check it, and move it into place."""
    part, meta = _part_path(target), _part_meta_path(target)
    for attempt in (1, 2):
        digest, resumed_from = _stream(url, part, meta, expected)
        if expected is None or digest == expected:
            try:
                check_format(part, target.name, url)
            except ValueError:
                part.unlink(missing_ok=True)  # never cached: the next call asks the server again
                meta.unlink(missing_ok=True)
                raise
        if expected is not None and digest != expected:
            part.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
            if resumed_from and attempt == 1:
                # The old partial bytes may be the bad ones (e.g. written by another version of the file).
                log.warning("%s: resumed download does not match sha256 %s; downloading it again whole", url, expected)
                continue
            raise _mismatch(url, expected, digest, "nothing was kept in the cache")
        break
    os.replace(part, target)
    meta.unlink(missing_ok=True)


def _stream(url: str, part: Path, meta: Path, expected: str | None) -> tuple[str, int]:
    """Fill ``part`` with the whole file (appending to what it holds when the server allows it).

    Returns:
        ``(hex digest of the whole file, byte offset the download continued from)``.

    Raises:
        OSError: the server is unreachable or answers an error, or the transfer ended early (``part`` is kept so
            the next call continues it).
        FileNotFoundError: HTTP 404/410.
    """
    from mert.progress import is_terminal, progress_bar

    offset = part.stat().st_size if part.is_file() else 0
    validator = _read_validator(meta, url) if offset else None
    if offset and validator is None and expected is None:
        offset = 0  # nothing could tell a stale partial file from a good one: start over
    headers = {"User-Agent": "mert"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator is not None:  # the server sends the whole file instead if it changed since the partial one
            headers["If-Range"] = validator
    try:
        opener = urllib.request.build_opener(_CheckedRedirect(pinned=expected is not None))
        response = opener.open(urllib.request.Request(url, headers=headers), timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the partial file is not a prefix of this file: start over
            part.unlink()
            meta.unlink(missing_ok=True)
            return _stream(url, part, meta, expected)
        kind = FileNotFoundError if err.code in (404, 410) else OSError
        raise kind(f"could not download {url}: HTTP {err.code} {err.reason}") from err
    except _RefusedRedirect as err:
        raise ValueError(f"could not download {url}: {err.reason}") from None
    except urllib.error.URLError as err:
        raise OSError(f"could not reach {url}: {err.reason}; check the address and the network") from err
    except OSError as err:  # e.g. a timeout before the headers arrived
        raise OSError(f"could not download {url}: {err}; check the address and the network") from err

    if response.status == 206 and _range_start(response) != offset:
        response.close()  # a range other than the one asked for: unusable
        if not offset:
            raise OSError(f"could not download {url}: the server sent part of the file without being asked to")
        part.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        return _stream(url, part, meta, expected)
    with response:
        _check_content_type(url, response.headers.get("Content-Type"), part.name[1 : -len(".part")])
        length = response.headers.get("Content-Length")
        remaining = int(length) if length else None
        if offset and response.status != 206:  # no range support, or If-Range saw a changed file
            log.info("%s: the server sent the whole file (HTTP %d); downloading from the start", url, response.status)
            offset = 0
        elif offset:
            log.info("%s: continuing a partial download at byte %d", url, offset)
        total = _range_total(response) if offset else None
        if total is None and remaining is not None:
            total = offset + remaining
        _write_meta(meta, url, response.headers, total)
        digest = hashlib.sha256()
        if offset:
            with open(part, "rb") as f:  # the digest covers the whole file, old bytes included
                for block in iter(lambda: f.read(_CHUNK_BYTES), b""):
                    digest.update(block)
        received, cut_short, error = offset, False, None
        show = is_terminal(sys.stderr) or (total or 0) >= _PROGRESS_MIN_BYTES
        name = part.name[1 : -len(".part")]
        with (
            open(part, "ab" if offset else "wb") as out,
            progress_bar(total=total, initial=offset, desc=name, unit="B", unit_scale=True, disable=not show) as bar,
        ):
            try:
                # read(n) returns b"" when the connection closes early: the byte count is compared below.
                while block := response.read(_CHUNK_BYTES):
                    out.write(block)
                    digest.update(block)
                    received += len(block)
                    bar.update(len(block))
            except http.client.IncompleteRead as err:  # chunked responses (and newer Pythons) report it this way
                out.write(err.partial)
                digest.update(err.partial)
                received, cut_short = received + len(err.partial), True
            except OSError as err:  # connection reset, timeout: what arrived is kept for the next call
                cut_short, error = True, err
            out.flush()
            os.fsync(out.fileno())
    if cut_short or (total is not None and received != total):
        why = f" ({error})" if error is not None else ""
        raise OSError(
            f"download of {url} is truncated: received {received} of {total or '?'} bytes{why}; run the same call "
            "again to continue it"
        )
    return digest.hexdigest(), offset


class _RefusedRedirect(urllib.error.URLError):
    """A redirect to a scheme a download may not take (raised inside urllib, turned into a ValueError)."""


class _CheckedRedirect(urllib.request.HTTPRedirectHandler):
    """Follows redirects only to http(s), and from https only to https unless the file's digest is pinned.

    urllib's own handler follows https -> http and -> ftp, which would let one redirect remove the transport
    security that an unpinned https:// source relies on.
    """

    def __init__(self, pinned: bool) -> None:
        super().__init__()
        self.pinned = pinned

    def http_error_302(self, req, fp, code, msg, headers):  # noqa: ANN001, ANN201 (urllib's signature)
        # Checked before urllib's own scheme check, whose HTTPError would read like a server failure.
        if newurl := headers.get("location") or headers.get("uri"):
            self._check(req, urllib.parse.urljoin(req.full_url, newurl))
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201 (urllib's signature)
        self._check(req, urllib.parse.urljoin(req.full_url, newurl))
        return super().redirect_request(req, fp, code, msg, headers, newurl)

    def _check(self, req: urllib.request.Request, newurl: str) -> None:
        old_scheme = urllib.parse.urlsplit(req.full_url).scheme.lower()
        new_scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if new_scheme not in ("http", "https"):
            raise _RefusedRedirect(
                f"refusing the redirect from {req.full_url} to {newurl}: only http(s) downloads are allowed"
            )
        if old_scheme == "https" and new_scheme == "http" and not self.pinned:
            raise _RefusedRedirect(
                f"refusing the redirect from {req.full_url} to plain-http {newurl}: nothing would vouch for what "
                "arrives; pin the file with sha256= or a '#sha256=<hex>' fragment, or use the https address"
            )


# What a file's first bytes must look like, by the ending of its name (tar: "ustar" at byte 257).
_MAGIC: dict[str, tuple[str, tuple[bytes, ...]]] = {
    ".tar.gz": ("gzip", (b"\x1f\x8b",)),
    ".tgz": ("gzip", (b"\x1f\x8b",)),
    ".tar.xz": ("xz", (b"\xfd7zXZ\x00",)),
    ".tar.bz2": ("bzip2", (b"BZh",)),
    ".zip": ("zip", (b"PK\x03\x04", b"PK\x05\x06")),
    # torch.save writes a zip; older files and plain pickles start with the pickle PROTO opcode.
    ".bin": ("PyTorch (zip or pickle)", (b"PK\x03\x04", b"\x80")),
    ".pt": ("PyTorch (zip or pickle)", (b"PK\x03\x04", b"\x80")),
    ".pth": ("PyTorch (zip or pickle)", (b"PK\x03\x04", b"\x80")),
    ".ckpt": ("PyTorch (zip or pickle)", (b"PK\x03\x04", b"\x80")),
    ".th": ("PyTorch (zip or pickle)", (b"PK\x03\x04", b"\x80")),
}


def is_safetensors(path: str | os.PathLike) -> bool:
    """True when ``path`` starts with a safetensors header: an 8-byte little-endian length, then a JSON object
    that fits in the file. The name of the file plays no part (a URL's last segment may be anything)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    length = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 2 <= length <= size - 8


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:15].lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml"))


def check_format(path: Path, name: str, source: str) -> None:
    """Refuse a downloaded file whose first bytes do not fit its name: an HTML page (a login or error page served
    with status 200), a ``.safetensors`` without a safetensors header, an archive or ``.bin`` of another kind.

    Raises:
        ValueError: naming ``source`` and what the bytes look like instead.
    """
    with open(path, "rb") as f:
        head = f.read(512)
    lower = name.lower()
    what = None
    if _looks_like_html(head) and not lower.endswith((".html", ".htm", ".xml")):
        what = "an HTML/XML page"
    elif lower.endswith(".safetensors") and not is_safetensors(path):
        what = "not a safetensors file (no safetensors header)"
    elif lower.endswith(".tar"):
        what = None if head[257:262] == b"ustar" else "not a tar archive"
    else:
        for suffix, (kind, magics) in _MAGIC.items():
            # A safetensors file under a torch-ish name loads all the same (the loader reads the header).
            torch_name = kind.startswith("PyTorch")
            if lower.endswith(suffix) and not head.startswith(magics) and not (torch_name and is_safetensors(path)):
                what = f"not a {kind} file"
                break
    if what is not None:
        raise ValueError(
            f"download of {source} is {what} (first bytes {head[:16]!r}); it was not cached. Check the address: "
            "servers answer some failures (a login or error page) with status 200"
        )


def _check_content_type(url: str, content_type: str | None, name: str) -> None:
    """An HTML answer is never a checkpoint: refuse it before reading the body."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind in ("text/html", "application/xhtml+xml") and not name.lower().endswith((".html", ".htm")):
        raise OSError(
            f"could not download {url}: the server answered with an HTML page (Content-Type {kind}), not a file; "
            "check the address (it may need a login or point at a web page about the file)"
        )


def _range_start(response) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range") or "")
    return int(match.group(1)) if match else None


def _range_total(response) -> int | None:
    match = re.match(r"bytes \d+-\d+/(\d+)", response.headers.get("Content-Range") or "")
    return int(match.group(1)) if match else None


def _read_validator(meta: Path, url: str) -> str | None:
    """The ``ETag`` (strong only) or ``Last-Modified`` recorded when the partial download of ``url`` began."""
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("url") != url:
        return None
    return info.get("validator") or None


def _write_meta(meta: Path, url: str, headers, total: int | None) -> None:
    etag = headers.get("ETag")
    validator = etag if etag and not etag.startswith("W/") else headers.get("Last-Modified")  # If-Range needs strong
    meta.write_text(json.dumps({"url": url, "validator": validator, "total": total}))


def unpack_if_archive(file: Path) -> Path:
    """``file`` itself, or, for an archive (``.tar``, ``.tar.gz``, ``.tgz``, ``.zip``...), the folder it was
    unpacked into once (see :func:`_extract`)."""
    return _extract(file) if file.name.lower().endswith(_ARCHIVES) else file


def _extract(archive: Path) -> Path:
    """Unpack ``archive`` once into a sibling folder; return it, or the lone top-level folder inside it."""
    suffix = next(s for s in _ARCHIVES if archive.name.lower().endswith(s))
    dest = archive.with_name(archive.name[: -len(suffix)] or "extracted")
    from filelock import FileLock

    if not dest.is_dir():
        with FileLock(archive.parent / _LOCK_NAME):
            if not dest.is_dir():  # another process may have unpacked it while we waited for the lock
                # Unpack into a temporary folder and rename it, so a crash never leaves a half-extracted checkpoint.
                tmp = Path(tempfile.mkdtemp(dir=archive.parent, prefix=".extract-"))
                try:
                    _unpack(archive, tmp)
                    os.rename(tmp, dest)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)  # no-op after the rename
    entries = list(dest.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return dest


def _unpack(archive: Path, dest: Path) -> None:
    """Extract a zip or tar archive, refusing members (and link targets) that would land outside ``dest``.

    Raises:
        ValueError: a damaged or truncated archive (naming it: tarfile and gzip raise a bare ``EOFError`` or
            ``ReadError``), or a member that would land outside ``dest``.
    """
    try:
        _unpack_checked(archive, dest)
    except (EOFError, tarfile.TarError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, OSError) as e:
        if isinstance(e, OSError) and not isinstance(e, gzip.BadGzipFile) and e.errno is not None:
            raise  # a real I/O error (disk full, permissions): not the archive's fault
        raise ValueError(
            f"{str(archive)!r} is damaged or truncated ({type(e).__name__}: {e or 'unexpected end of data'}); "
            f"delete it and download it again"
        ) from None


def _unpack_checked(archive: Path, dest: Path) -> None:
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                _check_inside(name, archive, name)
            zf.extractall(dest)  # zipfile writes links as plain files, so names are all there is to check
        return
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for member in members:
            _check_inside(member.name, archive, member.name)
            if member.issym():  # relative to the link's own folder
                _check_inside(posixpath.join(posixpath.dirname(member.name), member.linkname), archive, member.name)
            elif member.islnk():  # relative to the archive root
                _check_inside(member.linkname, archive, member.name)
            elif not (member.isfile() or member.isdir()):
                raise ValueError(f"refusing to extract {archive}: {member.name!r} is a device or fifo")
        # Python versions with extraction filters get the "data" filter as a second line of defence.
        tf.extractall(dest, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))


def _check_inside(name: str, archive: Path, member: str) -> None:
    path = posixpath.normpath(name.replace("\\", "/"))
    if path.startswith("/") or path == ".." or path.startswith("../") or re.match(r"^[A-Za-z]:", path):
        raise ValueError(f"refusing to extract {archive}: member {member!r} points outside the extraction folder")

"""Checkpoint sources: a local path, an http(s) URL or a Hugging Face repo id, turned into a local path.

URL downloads live in ``$MERT_CACHE`` (default ``~/.cache/mert``) under ``urls/<key>/<file name>``, ``key`` being
derived from the URL. Each one is written to a temporary file and moved into place under a file lock, so several
processes starting at once (DDP ranks) download once and nobody ever sees a partial file. Hub repos go through
``huggingface_hub`` and its cache. Nothing heavy is imported until a download is needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
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
import zipfile
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # first one the repo has wins
_HUB_OPTIONAL = ("preprocessor_config.json", "meta.json")
_ARCHIVES = (".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".tar", ".zip")
_LOCK_NAME = ".lock"
_CHUNK_BYTES = 1 << 20
_PROGRESS_MIN_BYTES = 64 << 20  # outside a terminal, only downloads this large are worth a progress bar
_TIMEOUT_S = 60.0


def default_cache_dir() -> Path:
    """The download cache: ``$MERT_CACHE`` if set, else ``~/.cache/mert``."""
    return Path(os.environ.get("MERT_CACHE") or "~/.cache/mert").expanduser()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_source(
    source: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    sha256: str | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    endpoint: str | None = None,
) -> Path:
    """Turn a checkpoint source into a local path (a folder or a single weights file).

    Tried in order: an existing local path (``~`` expanded) is returned resolved; an ``http(s)://`` URL is
    downloaded with :func:`download_url` and, if it is an archive (``.tar``, ``.tar.gz``, ``.tgz``, ``.zip``...),
    safely unpacked next to it (a lone top-level folder in the archive is returned itself); an ``owner/name``
    string is fetched from the Hugging Face Hub (``config.json``, the first of ``model.safetensors`` and
    ``pytorch_model.bin`` the repo has, and ``preprocessor_config.json``/``meta.json`` when present).

    Args:
        source: local file or folder, http(s) URL (optionally ending in ``#sha256=<hex>``) or hub repo id.
        revision: branch, tag or commit of a hub repo (default ``main``).
        cache_dir: download cache (default :func:`default_cache_dir`); hub files go to ``<cache_dir>/hf``,
            or to huggingface_hub's own cache when no ``cache_dir`` is given.
        sha256: expected hex digest of the file the source names: a local file, a URL's download (the archive
            itself for archives) or a hub repo's weights file.
        local_files_only: never touch the network; only cached files are used.
        token: Hugging Face token for private or gated repos (``True``: the saved login).
        endpoint: Hub address (default ``$HF_ENDPOINT``, else huggingface.co).

    Returns:
        The local folder (or single file) holding the checkpoint.

    Raises:
        FileNotFoundError: the source does not exist, is not cached while offline, or has no weights.
        ValueError: a digest mismatch, a malformed digest, or an archive member escaping its folder.
        OSError: a failed or truncated download.
    """
    path = Path(source).expanduser()
    if path.exists():
        path = path.resolve()
        if sha256 is not None and path.is_dir():
            raise ValueError(f"sha256= checks a single file, but {path} is a folder")
        if sha256 is not None:
            _check_file(path, sha256, str(path), "check the file and the digest")
        return path
    if not isinstance(source, str):  # a path object is meant as a path, never as a URL or repo id
        raise FileNotFoundError(f"checkpoint path {path} does not exist")
    if urllib.parse.urlsplit(source).scheme.lower() in ("http", "https"):
        file = download_url(source, cache_dir=cache_dir, sha256=sha256, local_files_only=local_files_only)
        return _extract(file) if file.name.lower().endswith(_ARCHIVES) else file
    if _HUB_ID.match(source):
        return _from_hub(
            source,
            revision=revision,
            cache_dir=cache_dir,
            sha256=sha256,
            local_files_only=local_files_only,
            token=token,
            endpoint=endpoint or os.environ.get("HF_ENDPOINT"),
        )
    raise FileNotFoundError(
        f"checkpoint source {source!r} is neither an existing path, nor an http(s) URL, "
        "nor a Hugging Face repo id of the form owner/name"
    )


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
    again. A new download is checked against ``Content-Length`` and the digest before it is moved into place.

    Args:
        url: ``http(s)://`` address, optionally ending in ``#sha256=<hex>``.
        cache_dir: download cache (default :func:`default_cache_dir`).
        sha256: expected hex digest of the file.
        local_files_only: raise instead of downloading when the file is not cached.

    Returns:
        The cached file, named like the URL's last path component.

    Raises:
        FileNotFoundError: not cached with ``local_files_only``, or the server answers 404/410.
        ValueError: the file does not match the expected digest (nothing is left in the cache).
        OSError: the server cannot be reached, answers an error, or sends fewer bytes than announced.
    """
    base, _, fragment = url.partition("#")
    expected = _expected_digest(url, fragment, sha256)
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(base).path)).name
    if name in ("", ".", "..", _LOCK_NAME):
        name = "download"
    folder = Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser()
    folder = folder / "urls" / hashlib.sha256(base.encode()).hexdigest()[:16]
    target = folder / name

    # Files only ever appear complete (os.replace), so a cached copy can be trusted without taking the lock.
    if target.is_file() and (expected is None or sha256_file(target) == expected):
        return target
    if local_files_only and not target.is_file():
        raise FileNotFoundError(
            f"{base} is not in the download cache ({target}) and local_files_only=True; download it once with "
            "network access (the same call without local_files_only), copy the file there, or pass a local path"
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
                raise _mismatch(base, expected, actual, "the cached copy was deleted; download it again")
            log.warning("cached %s does not match sha256 %s; downloading it again", target, expected)
        _clear(folder)  # partial files of killed downloads, and what was unpacked from a stale copy
        _fetch(base, target, expected)
    return target


def _expected_digest(url: str, fragment: str, sha256: str | None) -> str | None:
    """The digest to check: from ``sha256=`` and/or the URL's ``#sha256=`` fragment, which must agree."""
    from_url = fragment[len("sha256=") :] if fragment.startswith("sha256=") else None
    digests = {_normalise_digest(d, url) for d in (sha256, from_url) if d}
    if len(digests) > 1:
        raise ValueError(f"{url}: sha256={sha256} disagrees with the URL's #sha256= fragment")
    return digests.pop() if digests else None


def _normalise_digest(digest: str, what: str) -> str:
    if not _SHA256.match(digest.lower()):
        raise ValueError(f"{what}: {digest!r} is not a SHA-256 digest (64 hex characters)")
    return digest.lower()


def _mismatch(what: str, expected: str | None, actual: str | None, hint: str) -> ValueError:
    return ValueError(
        f"sha256 mismatch for {what}: expected {expected}, got {actual}; the file is corrupt or changed, or the "
        f"expected digest is wrong ({hint})"
    )


def _check_file(path: Path, sha256: str, what: str, hint: str) -> None:
    expected = _normalise_digest(sha256, what)
    if (actual := sha256_file(path)) != expected:
        raise _mismatch(what, expected, actual, hint)


def _clear(folder: Path) -> None:
    """Empty a URL's cache folder, except for its lock file."""
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.name != _LOCK_NAME:
            entry.unlink()


def _fetch(url: str, target: Path, expected: str | None) -> None:
    """Stream ``url`` into a temporary file next to ``target``, check it, and move it into place."""
    from tqdm import tqdm

    log.info("downloading %s to %s", url, target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        digest, received, total, cut_short = hashlib.sha256(), 0, None, False
        with os.fdopen(fd, "wb") as out:
            try:
                request = urllib.request.Request(url, headers={"User-Agent": "mert"})
                with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
                    total = int(response.headers["Content-Length"]) if response.headers["Content-Length"] else None
                    show = (sys.stderr is not None and sys.stderr.isatty()) or (total or 0) >= _PROGRESS_MIN_BYTES
                    with tqdm(total=total, desc=target.name, unit="B", unit_scale=True, disable=not show) as bar:
                        # read(n) returns b"" when the connection closes early: the byte count is compared below.
                        while block := response.read(_CHUNK_BYTES):
                            out.write(block)
                            digest.update(block)
                            received += len(block)
                            bar.update(len(block))
            except urllib.error.HTTPError as err:
                kind = FileNotFoundError if err.code in (404, 410) else OSError
                raise kind(f"could not download {url}: HTTP {err.code} {err.reason}") from err
            except urllib.error.URLError as err:
                raise OSError(f"could not reach {url}: {err.reason}; check the address and the network") from err
            except http.client.IncompleteRead as err:  # chunked responses (and newer Pythons) report it this way
                received, cut_short = received + len(err.partial), True
            if cut_short or (total is not None and received != total):
                raise OSError(f"download of {url} is truncated: received {received} of {total or '?'} bytes; retry it")
            out.flush()
            os.fsync(out.fileno())
        if expected is not None and digest.hexdigest() != expected:
            raise _mismatch(url, expected, digest.hexdigest(), "nothing was kept in the cache")
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)  # no-op after os.replace


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
    """Extract a zip or tar archive, refusing members (and link targets) that would land outside ``dest``."""
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


def _from_hub(
    repo_id: str,
    *,
    revision: str | None,
    cache_dir: str | os.PathLike | None,
    sha256: str | None,
    local_files_only: bool,
    token: str | bool | None,
    endpoint: str | None,
) -> Path:
    """Fetch a checkpoint's files from a Hugging Face repo; return the snapshot folder holding them."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    hf_cache = Path(cache_dir).expanduser() / "hf" if cache_dir is not None else None
    where = f"Hugging Face repo {repo_id!r} (revision {revision or 'main'!r})"
    tried: list[str] = []

    def get(filename: str, at: str | None) -> Path:
        tried.append(filename)
        kwargs = dict(cache_dir=hf_cache, token=token, local_files_only=local_files_only, endpoint=endpoint)
        return Path(hf_hub_download(repo_id, filename, revision=at, **kwargs))

    try:
        folder = get("config.json", revision).parent
        # The snapshot folder is named by the commit: pinning it keeps every file from the same commit.
        commit = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else revision
        for name in _HUB_WEIGHTS:
            try:
                weights = get(name, commit)
                break
            except EntryNotFoundError as err:  # not in the repo, or (offline) not in the cache
                missing = err
        else:
            if isinstance(missing, LocalEntryNotFoundError):
                raise missing
            raise FileNotFoundError(f"{where} has no weights file (tried {', '.join(tried)})")
        for name in _HUB_OPTIONAL:
            with contextlib.suppress(EntryNotFoundError):
                get(name, commit)
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(
            f"{where} is not in the cache ({hf_cache or 'the default Hugging Face cache'}) and cannot be downloaded "
            "now (offline, local_files_only=True, HF_HUB_OFFLINE=1 or the Hub is unreachable). Download it once on a "
            f"machine with internet access (e.g. `hf download {repo_id}`) and copy the cache over, or pass cache_dir= "
            "pointing at a cache that holds it."
        ) from err
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as err:
        # EntryNotFoundError can only be config.json's here: the other files handle their own.
        if isinstance(err, RevisionNotFoundError):
            problem = "was not found: the repo has no such branch, tag or commit"
        elif isinstance(err, GatedRepoError):  # a subclass of RepositoryNotFoundError: say what to do instead
            problem = "is gated: accept its terms on the Hub with your account, then pass token= (or log in)"
        elif isinstance(err, RepositoryNotFoundError):  # also private repos without a token
            problem = (
                f"was not found, and there is no local path {repo_id!r} either (check the name or the path; pass "
                "token= if the repo is private)"
            )
        else:
            problem = "has no config.json, so it is not a checkpoint this library can load"
        raise FileNotFoundError(f"{where} {problem} (tried {', '.join(tried)})") from err
    if sha256 is not None:
        _check_file(weights, sha256, f"{repo_id}/{weights.name}", "pin revision= to the commit you checked")
    return folder

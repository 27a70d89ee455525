"""Checkpoint sources: what a source string names (a registry name, a local path, an http(s) URL or a Hugging Face
repo id) and the local path that holds it.

Names (``MERT-v1-95M``, ``MERT-v1-330M`` and the user's own, see :mod:`mert.registry`) are looked up first and
bring their pinned revision and digest. URLs are fetched by :mod:`mert.download` (cache, resume, digests, locks,
unpacking); this module calls it and never the other way round. Hub repos go through ``huggingface_hub``, into
``<cache_dir>/hf``, ``$MERT_CACHE/hf`` when that is set, or huggingface_hub's own cache. Offline
(``MERT_OFFLINE=1``, ``HF_HUB_OFFLINE=1``, ``local_files_only=True``) only the caches are used. Nothing heavy is
imported until a download is needed. The ``mert download`` command is :mod:`mert.cli.download`.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import re
from pathlib import Path

from mert.download import (
    check_sha256,
    default_cache_dir,
    fetch_url,
    offline_mode,
    unpack_if_archive,
)
from mert.registry import HUB_ID as _HUB_ID
from mert.registry import (
    WEIGHT_FILES,
    CheckpointEntry,
    builtin_checkpoints,
    is_url,
    known_names,
    lookup_checkpoint,
    normalise_sha256,
)

__all__ = ["resolve_source"]

log = logging.getLogger(__name__)

_HUB_OPTIONAL = ("preprocessor_config.json", "meta.json")


def _hub_cache_dir(cache_dir: str | os.PathLike | None) -> Path | None:
    """``<cache_dir>/hf``, else ``$MERT_CACHE/hf`` when set, else None (huggingface_hub's own cache)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser() / "hf"
    return default_cache_dir() / "hf" if os.environ.get("MERT_CACHE") else None


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

    Tried in order: an existing local path (``~`` expanded) is returned resolved; a registry name (see
    :mod:`mert.registry`: ``MERT-v1-95M``, ``mert-v1-330m``, ``m-a-p/MERT-v1-95M``, or a user entry) is replaced
    by its source, revision and digest; an ``http(s)://`` URL is downloaded by :mod:`mert.download` and, if it
    is an archive (``.tar``, ``.tar.gz``, ``.tgz``, ``.zip``...), safely unpacked next to it (a lone top-level
    folder in the archive is returned itself); an ``owner/name`` string is fetched from the Hugging Face Hub
    (``config.json``, the first of ``model.safetensors`` and ``pytorch_model.bin`` the repo has, and
    ``preprocessor_config.json``/``meta.json`` when present).

    Args:
        source: local file or folder, registry name, http(s) URL (optionally ending in ``#sha256=<hex>``) or hub
            repo id.
        revision: branch, tag or commit of a hub repo; default: the registry entry's pinned commit, else ``main``.
        cache_dir: download cache (default :func:`default_cache_dir`); hub files go to ``<cache_dir>/hf``, or,
            without ``cache_dir``, to ``$MERT_CACHE/hf`` when ``MERT_CACHE`` is set, else to huggingface_hub's
            own cache.
        sha256: expected hex digest of the file the source names: a local file, a URL's download (the archive
            itself for archives) or a hub repo's weights file. A registry entry's digest is used when not given.
        local_files_only: never touch the network; only cached files are used. Also on when ``MERT_OFFLINE`` or
            ``HF_HUB_OFFLINE`` is set.
        token: Hugging Face token for private or gated repos (``True``: the saved login).
        endpoint: Hub address (default ``$HF_ENDPOINT``, else huggingface.co).

    Returns:
        The local folder (or single file) holding the checkpoint.

    Raises:
        FileNotFoundError: the source does not exist (the message lists the registry names), is not cached while
            offline (the message says how to fetch it and where to put it), or has no weights.
        ValueError: a digest mismatch, a malformed digest, an invalid registry file, or an archive member escaping
            its folder.
        OSError: a failed or truncated download (a truncated one is resumed by the next call).
    """
    path = Path(source).expanduser()
    if path.exists():
        path = path.resolve()
        if sha256 is not None and path.is_dir():
            raise ValueError(f"sha256= checks a single file, but {path} is a folder")
        if sha256 is not None:
            check_sha256(path, sha256, str(path), "check the file and the digest")
        return path
    if not isinstance(source, str):  # a path object is meant as a path, never as a URL or repo id
        raise FileNotFoundError(f"checkpoint path {path} does not exist")
    local_files_only = local_files_only or offline_mode()
    endpoint = endpoint or os.environ.get("HF_ENDPOINT")
    # ``label`` is what `mert download` needs on another machine; ``what`` names a registry entry in errors.
    label, what = source, None
    entry = lookup_checkpoint(source)
    if entry is not None:
        revision, sha256, label = _apply_entry(entry, revision, sha256)
        source, what, from_url = entry.source, f"checkpoint {entry.name!r}", entry.is_url
    elif not is_url(source) and _looks_local(source):
        raise _missing_path(source)
    elif is_url(source) or _HUB_ID.match(source):
        from_url = is_url(source)
    else:
        raise _unknown_source(source)
    if from_url:
        file = fetch_url(
            source, cache_dir=cache_dir, sha256=sha256, local_files_only=local_files_only, label=label, what=what
        )
        return unpack_if_archive(file)
    return _from_hub(
        source,
        revision=revision,
        cache_dir=cache_dir,
        sha256=sha256,
        local_files_only=local_files_only,
        token=token,
        endpoint=endpoint,
        label=label,
        what=what,
    )


def _apply_entry(
    entry: CheckpointEntry, revision: str | None, sha256: str | None
) -> tuple[str | None, str | None, str]:
    """A registry entry's pinned revision and digest, unless the caller overrides them, and its `mert download` label.

    Returns:
        ``(revision, sha256, label)`` to fetch ``entry.source`` with.
    """
    if sha256 is not None and entry.sha256 is not None and normalise_sha256(sha256, entry.name) != entry.sha256:
        raise ValueError(
            f"sha256={sha256} disagrees with the digest registered for checkpoint {entry.name!r} ({entry.sha256})"
        )
    digest = sha256 or entry.sha256
    if revision is not None and entry.revision is not None and revision != entry.revision:
        log.info("checkpoint %s: using revision %s instead of the registered %s", entry.name, revision, entry.revision)
    revision = revision or entry.revision
    if entry.is_url:
        # A user entry exists only in this machine's registry: the hint names what works anywhere.
        label = entry.name if entry.builtin else f"'{entry.source}#sha256={digest}'"
    else:
        label = entry.name if entry.builtin and revision == entry.revision else f"{entry.source} --revision {revision}"
    return revision, digest, label


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".onnx", ".json")


def _looks_local(source: str) -> bool:
    """True for a string meant as a local path, which must never be sent to the Hub as a repo id.

    That is: an absolute, home-relative (``~``) or dot-relative path, Windows separators, more than one ``/``,
    a weights-file ending, or ``owner/name`` whose ``owner`` is an existing local folder (``runs/exprot`` typed
    for ``runs/export``).
    """
    if re.match(r"^[A-Za-z][\w+.-]*://", source):  # an address of some scheme, not a path
        return False
    if source.startswith(("/", "./", "../", "~", ".\\", "..\\")) or "\\" in source or re.match(r"^[A-Za-z]:", source):
        return True
    if source.count("/") > 1 or source.lower().endswith(_WEIGHT_SUFFIXES):
        return True
    first = source.split("/", 1)[0]
    return "/" in source and Path(first).expanduser().is_dir()


def _missing_path(source: str) -> FileNotFoundError:
    """The error for a local path that does not exist, with the closest name in its parent folder."""
    path = Path(source).expanduser()
    parent = path.parent if str(path.parent) else Path(".")
    hint = ""
    with contextlib.suppress(OSError):
        if parent.is_dir():
            close = difflib.get_close_matches(path.name, [p.name for p in parent.iterdir()], n=1, cutoff=0.6)
            hint = f"; did you mean {str(parent / close[0])!r}?" if close else ""
        else:
            hint = f"; its folder {str(parent)!r} does not exist either"
    return FileNotFoundError(
        f"checkpoint path {source!r} does not exist (looked for {str(path.absolute())!r}); it looks like a local "
        f"path, so it was not looked up on the Hugging Face Hub{hint}"
    )


_PROBE_TIMEOUT_S = 3.0


def _unreachable(endpoint: str) -> str | None:
    """None when a TCP connection to the Hub (or the proxy that reaches it) opens within a few seconds, else why.

    One quick connection attempt instead of huggingface_hub's retries with back-off (1+2+4+8+8 s) when the
    machine is offline or the endpoint is wrong; a Hub that answers slowly or with errors is left to
    huggingface_hub.
    """
    import socket
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(endpoint)
    proxy = None if urllib.request.proxy_bypass(parts.hostname or "") else urllib.request.getproxies().get(parts.scheme)
    target = urllib.parse.urlsplit(proxy if "://" in (proxy or "") else f"http://{proxy}") if proxy else parts
    host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    if not host:
        return None
    try:
        socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as err:
        via = f" through the proxy {proxy}" if proxy else ""
        return f"the Hub at {endpoint} cannot be reached{via}: {err.strerror or err}"
    return None


def _unknown_source(source: str) -> FileNotFoundError:
    """The error for a string that is no path, URL, hub id or name; it lists the names and suggests a close one."""
    try:
        names, unreadable = known_names(), ""
    except ValueError as err:  # a broken user registry must not hide the real problem
        names, unreadable = [e.name for e in builtin_checkpoints()], f"; the user registry was not read: {err}"
    folded = [n.casefold() for n in names]
    close = difflib.get_close_matches(source.casefold(), folded, n=1, cutoff=0.75)
    hint = f"; did you mean {names[folded.index(close[0])]!r}?" if close else ""
    return FileNotFoundError(
        f"checkpoint source {source!r} is neither an existing path, nor an http(s) URL, nor a Hugging Face repo id "
        f"of the form owner/name, nor a registered checkpoint name (known: {', '.join(names)}; `mert download "
        f"--list` shows them){hint}{unreadable}"
    )


def _from_hub(
    repo_id: str,
    *,
    revision: str | None,
    cache_dir: str | os.PathLike | None,
    sha256: str | None,
    local_files_only: bool,
    token: str | bool | None,
    endpoint: str | None,
    label: str,
    what: str | None = None,
) -> Path:
    """Fetch a checkpoint's files from a Hugging Face repo; return the snapshot folder holding them.

    ``label`` is what ``mert download`` needs to fetch it on another machine; ``what`` names it in errors.
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    hf_cache = _hub_cache_dir(cache_dir)
    unreachable = None if local_files_only else _unreachable(endpoint or constants.ENDPOINT)
    if unreachable is not None:  # huggingface_hub would retry for ~25 s before the same answer: use the cache
        log.info("%s; using the local cache only", unreachable)
        local_files_only = True
    where = f"Hugging Face repo {repo_id!r} (revision {revision or 'main'!r})"
    if what is not None:
        where = f"{what} ({where})"
    tried: list[str] = []

    def get(filename: str, at: str | None) -> Path:
        tried.append(filename)
        kwargs = dict(cache_dir=hf_cache, token=token, local_files_only=local_files_only, endpoint=endpoint)
        return Path(hf_hub_download(repo_id, filename, revision=at, **kwargs))

    try:
        folder = get("config.json", revision).parent
        # The snapshot folder is named by the commit: pinning it keeps every file from the same commit.
        commit = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else revision
        for name in WEIGHT_FILES:  # the first one the repo has wins
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
        cache = hf_cache if hf_cache is not None else Path(constants.HF_HUB_CACHE)
        repo_folder = cache / f"models--{repo_id.replace('/', '--')}"
        why = unreachable or (
            "offline: --offline, local_files_only=True, MERT_OFFLINE=1 or HF_HUB_OFFLINE=1; or the Hub is unreachable"
        )
        raise FileNotFoundError(
            f"{where} is not in the cache ({repo_folder} has no {tried[-1]}) and cannot be downloaded now "
            f"({why}). On a machine with internet access run `mert download {label} --cache-dir DIR`, copy DIR "
            "here (keeping its symlinks, e.g. `cp -a` or `rsync -a`) and set MERT_CACHE to it or pass cache_dir=; "
            f"DIR/hf/models--{repo_id.replace('/', '--')} then holds the files."
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
        check_sha256(weights, sha256, f"{repo_id}/{weights.name}", "pin revision= to the commit you checked")
    return folder

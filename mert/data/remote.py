"""Where shards live when they are not a local folder: URL tests, fetching whole objects and uploading files.

fsspec opens every URL scheme (s3fs for ``s3://``, gcsfs for ``gs://``, aiohttp for ``http(s)://``); webdataset's
``gopen`` runs ``pipe:CMD`` sources. Imported lazily, so local training needs neither.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["fetch_bytes", "filesystem", "is_url", "upload", "url_join"]


def is_url(source: Any) -> bool:
    """Whether ``source`` names shards by URL (``scheme://...`` or ``pipe:CMD``) rather than a local path."""
    return isinstance(source, str) and ("://" in source or source.startswith("pipe:"))


def url_join(base: str, name: str) -> str:
    """``base/name`` for a folder URL or path (no double slashes, no URL-unsafe normalisation)."""
    return base.rstrip("/") + "/" + name


def filesystem(url: str, storage_options: Mapping[str, Any]) -> tuple[Any, str]:
    import fsspec

    try:
        return fsspec.core.url_to_fs(url, **dict(storage_options))
    except ImportError as e:  # s3fs, gcsfs, aiohttp: the protocol's package is missing
        hint = "pip install 'mert[stream]'" + (" gcsfs" if url.startswith(("gs://", "gcs://")) else "")
        raise ImportError(f"reading {url} needs fsspec's package for its scheme ({e}); {hint}") from e


def fetch_bytes(url: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    """The whole content of ``url``: a local path, any fsspec URL, or ``pipe:CMD`` (CMD's standard output).

    Raises:
        FileNotFoundError: the object does not exist. OSError, RuntimeError: the transfer or the command failed.
    """
    if url.startswith("pipe:"):
        from webdataset.gopen import gopen

        stream = gopen(url, "rb")
        try:
            data = stream.read()
        finally:
            stream.close()  # raises when the command exited with an error: a truncated stream is not a shard
        return data
    if "://" not in url:
        with open(url, "rb") as f:
            return f.read()
    fs, path = filesystem(url, storage_options or {})
    return fs.cat_file(path)


def upload(local_path: str | os.PathLike, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Copy a finished local file to ``url`` (one object: readers see all of it or nothing)."""
    fs, path = filesystem(url, storage_options or {})
    fs.put_file(os.fspath(local_path), path)

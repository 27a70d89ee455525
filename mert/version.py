"""The package version, read from the installed distribution's metadata (``pyproject.toml`` holds the only copy).

A module of its own, importing nothing from ``mert``, so that ``mert/__init__.py`` and code that writes the
version into files (``mert.models.checkpoint``) both read it without importing one another.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = ["__version__"]


def _version() -> str:
    try:
        return version("mert")
    except PackageNotFoundError:
        pass
    # Not installed (a checkout on PYTHONPATH): read the version from the checkout's pyproject.toml by hand,
    # as tomllib needs Python 3.11 and we support 3.10.
    try:
        text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    except OSError:
        return "0+unknown"
    project = re.search(r"^\[project\]$(.*?)(?=^\[|\Z)", text, flags=re.M | re.S)
    found = project and re.search(r'^version\s*=\s*"([^"]+)"', project.group(1), flags=re.M)
    return found.group(1) if found else "0+unknown"


__version__ = _version()

"""File-writing helpers shared by everything that publishes files (release folders, embeddings).

Why: safetensors writes its files with mode 0600 whatever the umask, while ``config.json`` next to it gets the
usual 0644, so a release folder shared on a cluster was readable to its owner only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["make_shareable", "write_json_atomic"]


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide, so setting it races other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_shareable(path: str | os.PathLike) -> None:
    """Give a file the mode a plain ``open(path, "w")`` would have: ``0o666`` less the umask (0644 usually)."""
    os.chmod(path, 0o666 & ~_umask())


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to a temporary file and rename it into place: a run killed mid-write leaves
    the previous complete file, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def torch_save_atomic(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` to a temporary file renamed into place (folders created): never half a file at ``path``."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)

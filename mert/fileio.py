"""One way to write files: every command that publishes a file goes through :func:`atomic_path`.

Why one primitive: writing ``OUT/.name.tmp`` and renaming it was repeated in a dozen places, each with its own
predictable temporary name. A predictable name in a folder someone else can write to is a symlink attack (a
link planted at the temp name makes us overwrite, and re-mode, a file outside the output folder), and a copy
that forgets ``fsync`` or the rename leaves half a file under the real name after a crash. Here:

- the temporary file is created by :func:`tempfile.mkstemp` (``O_CREAT | O_EXCL``, random name) in the target's
  own folder, so the final :func:`os.replace` is a same-filesystem atomic rename and never follows a link;
- the target itself may not be a symlink whose real path leaves the folder it is written into (``root``);
- the file gets an explicit mode (``0o666`` less the umask by default, what ``open(path, "w")`` would give),
  because ``mkstemp`` and safetensors create files 0600;
- a failure removes the temporary file and leaves the previous complete file, if any, in place.

:func:`atomic_dir` does the same for a whole folder (release exports): build in a temporary sibling, then swap.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "UnsafeOutputError",
    "atomic_dir",
    "atomic_path",
    "check_outputs",
    "check_target",
    "default_mode",
    "describe_write_error",
    "make_shareable",
    "open_atomic",
    "torch_save_atomic",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


class UnsafeOutputError(ValueError):
    """An output path that would write somewhere the caller did not ask for (through a symlink, over an input)."""


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


def _temp_prefix(path: Path) -> str:
    """``.NAME.`` cut to 100 bytes (on a character boundary): a 255-byte name plus a temp suffix is too long."""
    head = path.name.encode("utf-8", "surrogateescape")[:100].decode("utf-8", "ignore")
    return f".{head}."


def default_mode() -> int:
    """``0o666`` less the umask: the mode a plain ``open(path, "w")`` gives (0644 usually)."""
    return 0o666 & ~_umask()


def make_shareable(path: str | os.PathLike) -> None:
    """Give a file the mode a plain ``open(path, "w")`` would have: ``0o666`` less the umask (0644 usually)."""
    os.chmod(path, default_mode())


def describe_write_error(error: OSError, path: str | os.PathLike) -> str:
    """Why a write to ``path`` failed, in words: ``strerror`` ("No space left on device"), and for writers that
    report a short write without an errno (NumPy: "7104 requested and 2016 written"), whether the disk is full."""
    if error.strerror:
        return error.strerror
    try:
        st = os.statvfs(Path(path).parent)
        free = st.f_bavail * st.f_frsize
    except OSError:
        return str(error)
    return f"{error}: no space left on the device ({free} bytes free)" if free < (1 << 20) else str(error)


def check_target(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Refuse a target that is a symlink leaving ``root`` (default: the target's own folder); return ``path``.

    A symlink whose real path stays inside ``root`` is allowed (it is replaced by the new file, not written
    through); a dangling link or one pointing elsewhere raises :class:`UnsafeOutputError` naming both paths.
    """
    path = Path(path)
    if path.is_symlink():
        folder = Path(root) if root is not None else path.parent
        real_root = folder.resolve()
        real = path.resolve()
        if not real.is_relative_to(real_root):
            raise UnsafeOutputError(
                f"refusing to write {path}: it is a symlink to {real}, outside the output folder {real_root}; "
                "remove the link or choose another output"
            )
    return path


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike, *, mode: int | None = None, root: str | os.PathLike | None = None, suffix: str = ""
) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; on a clean exit it is renamed onto ``path``.

    For writers that want a file name (``torch.save``, safetensors, ONNX, ``np.save`` with ``suffix=".npy"``).
    The parent folder is created. ``mode`` defaults to :func:`default_mode`. On an exception the temporary file
    is removed and ``path`` keeps its previous content.
    """
    path = check_target(path, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=f"{suffix}.tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, default_mode() if mode is None else mode)
        check_target(path, root)  # the target may have been swapped for a link while we wrote
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def open_atomic(
    path: str | os.PathLike,
    text: bool = True,
    *,
    mode: int | None = None,
    root: str | os.PathLike | None = None,
    encoding: str = "utf-8",
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing (text or binary); flushed, fsynced and renamed on exit."""
    with atomic_path(path, mode=mode, root=root) as tmp:
        f = open(tmp, "w", encoding=encoding, newline=newline) if text else open(tmp, "wb")  # noqa: SIM115
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_bytes_atomic(path: str | os.PathLike, data: bytes, **kwargs: Any) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`open_atomic`)."""
    with open_atomic(path, text=False, **kwargs) as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str, **kwargs: Any) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`open_atomic`)."""
    with open_atomic(path, text=True, **kwargs) as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, obj: Any, **kwargs: Any) -> None:
    """Write ``obj`` as indented JSON atomically: a run killed mid-write leaves the previous complete file."""
    write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n", **kwargs)


def torch_save_atomic(path: str | os.PathLike, obj: Any, **kwargs: Any) -> None:
    """``torch.save`` to a temporary file renamed into place (folders created): never half a file at ``path``."""
    import torch

    with atomic_path(path, **kwargs) as tmp:
        torch.save(obj, tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on a clean exit it replaces ``path`` whole.

    An existing ``path`` is moved aside first and deleted only after the new folder is in place, so a crash
    leaves either the old folder or the new one, never a mix of two models' files. Whether an existing folder
    may be replaced at all is the caller's decision (``--overwrite``), made before calling this.
    """
    path = Path(path)
    if path.is_symlink():
        raise UnsafeOutputError(f"refusing to replace {path}: it is a symlink to {path.resolve()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".old"))
            os.replace(path, old / "previous")
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_outputs(
    outputs: Iterable[str | os.PathLike],
    inputs: Iterable[str | os.PathLike] = (),
    *,
    scanned: Iterable[str | os.PathLike] = (),
    scanned_extensions: Iterable[str] | None = None,
    what: str = "output",
) -> None:
    """Refuse, before any work starts, an output that would overwrite one of the command's own inputs.

    Args:
        outputs: files or folders the command will write.
        inputs: files the command reads (an output whose real path equals one is refused).
        scanned: folders the command scans for inputs (an output inside one, which a later scan would read as
            input, is refused).
        scanned_extensions: if given, only outputs with one of these endings (the ones a scan reads, e.g.
            :data:`mert.audio.AUDIO_EXTENSIONS`) are refused inside a scanned folder; a ``train.tsv`` beside
            the audio it lists is fine.
        what: how the error names the output (``"--out"``, ``"--valid-out"``).
    Raises:
        UnsafeOutputError: naming the output and the input it collides with. Two outputs that resolve to the
            same path are refused as well (one would silently replace the other).
    """
    outs = [Path(o) for o in outputs]
    real_outs = [Path(os.path.realpath(o)) for o in outs]
    real_ins = {Path(os.path.realpath(i)): Path(i) for i in inputs}
    exts = None if scanned_extensions is None else {e.lower() for e in scanned_extensions}
    scanned = list(scanned)
    for out, real in zip(outs, real_outs):
        if real in real_ins:
            raise UnsafeOutputError(
                f"{what} {out} is the input {real_ins[real]}: writing it would destroy the input; choose another path"
            )
        for folder in scanned if exts is None or out.suffix.lower() in exts or real.suffix.lower() in exts else ():
            real_folder = Path(os.path.realpath(folder))
            if real.is_relative_to(real_folder) and real != real_folder:
                raise UnsafeOutputError(
                    f"{what} {out} lies inside the input folder {folder}, which is scanned for inputs; "
                    "write it elsewhere"
                )
    seen: dict[Path, Path] = {}
    for out, real in zip(outs, real_outs):
        if real in seen:
            raise UnsafeOutputError(f"two outputs are the same file: {seen[real]} and {out}; give them different paths")
        seen[real] = out

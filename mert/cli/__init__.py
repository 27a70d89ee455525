"""The ``mert`` command: one console entry point, one module per command group.

    mert embed FILES... --model SOURCE [--layers all] [--pool mean] [--out DIR]   (mert.cli.embed)
    mert export RUN_DIR_OR_CKPT OUT_DIR [--format mert|hf|onnx]                    (mert.cli.export)
    mert pretrain [hydra overrides]                        (mert.cli.pretrain; needs the train extra)
    mert probe encoder=... data.manifest=... | compare RUNS... | manifest LAYOUT ROOT   (mert.cli.probe)
    mert demo [--max-steps N] [--out DIR]                                         (mert.cli.demo)
    mert data manifest AUDIO_DIR --out train.tsv | shard MANIFEST --out DIR       (mert.cli.data)
    mert synth OUT.wav [--seconds 10] [--seed 0]                                  (mert.cli.data)
    mert targets fit-kmeans AUDIO_DIR --out km.pt | fit-rvq SOURCE --out rvq.pt  (mert.cli.targets)
    mert download NAME_OR_ID_OR_URL                                               (mert.cli.download)

Each module parses its arguments and calls library functions; none holds library logic. Subcommands import
their heavy dependencies lazily so ``mert --help`` is instant.

Messages: the library logs through ``logging.getLogger(__name__)`` and never prints; this entry point gives the
``mert`` logger one console handler (stderr): info and above by default, ``mert -q ...`` warnings only,
``mert -v ...`` debug too.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Sequence

from mert.cli import data, embed, export

__all__ = ["build_parser", "main", "setup_logging"]


class _ConsoleHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (test captures and redirections replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {text}"
        return text


def setup_logging(verbosity: int = 0) -> None:
    """One console handler on the ``mert`` logger: info by default, debug at ``verbosity > 0``, warnings only at
    ``verbosity < 0``. Calling it again replaces the handler (never two)."""
    logger = logging.getLogger("mert")
    for h in [h for h in logger.handlers if isinstance(h, _ConsoleHandler)]:
        logger.removeHandler(h)
    handler = _ConsoleHandler()
    handler.setFormatter(_Format("%(message)s"))
    handler.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO if verbosity == 0 else logging.WARNING)
    logger.addHandler(handler)
    # The logger passes info on even with -q: a run folder's log file keeps it; only the console is quieter.
    logger.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)


def _verbosity(argv: list[str]) -> tuple[int, list[str]]:
    """Leading ``-v``/``--verbose``/``-q``/``--quiet`` flags (before the command) and the rest of ``argv``."""
    level, i = 0, 0
    while i < len(argv) and argv[i] in ("-v", "--verbose", "-q", "--quiet", "-vv", "-qq"):
        level += {"-v": 1, "--verbose": 1, "-vv": 2, "-q": -1, "--quiet": -1, "-qq": -2}[argv[i]]
        i += 1
    return level, argv[i:]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: embed, export and synth parse here; the others are listed for ``--help`` only."""
    from mert.version import __version__

    parser = argparse.ArgumentParser(prog="mert", description="MERT-style music audio representations.")
    parser.add_argument("--version", action="version", version=f"mert {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more messages (debug); before the command")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="warnings and errors only; before the command")
    sub = parser.add_subparsers(dest="command", required=True)
    embed.add_parser(sub)
    export.add_parser(sub)
    # Listed for --help; parsed by their own modules (see _DELEGATED).
    sub.add_parser("pretrain", help="pretrain an encoder: mert pretrain [hydra overrides] (see docs/pretraining.md)")
    sub.add_parser("demo", help="synthetic corpus -> pretraining -> export -> probe, on CPU in minutes")
    sub.add_parser(
        "probe",
        help="probe an encoder on a labelled manifest: mert probe encoder=... data.manifest=... [task=...]; "
        "`mert probe compare RUN_DIRS...`; `mert probe manifest LAYOUT ROOT --out FILE` (see docs/probing.md)",
    )
    p = sub.add_parser("data", help="data preparation: `mert data manifest`, `mert data shard`")
    p.add_argument("action", choices=["manifest", "shard"])
    p = sub.add_parser("targets", help="teachers: `mert targets fit-kmeans`, `mert targets fit-rvq`")
    p.add_argument("action", choices=["fit-kmeans", "fit-rvq"])
    sub.add_parser("download", help="fetch a named checkpoint (MERT-v1-95M...), hub id or URL; print its path")
    data.add_synth_parser(sub)
    return parser


# Subcommands with their own argument parsing (Hydra overrides, or nested commands).
_DELEGATED = {
    "pretrain": ("mert.cli.pretrain", "main"),
    "demo": ("mert.cli.demo", "main"),
    "probe": ("mert.cli.probe", "main"),
    ("data", "manifest"): ("mert.cli.data", "manifest_cli"),
    ("data", "shard"): ("mert.cli.data", "shard_cli"),
    ("targets", "fit-kmeans"): ("mert.cli.targets", "fit_kmeans_cli"),
    ("targets", "fit-rvq"): ("mert.cli.targets", "fit_rvq_cli"),
    "download": ("mert.cli.download", "download_cli"),
}


def _delegate(argv: list[str]) -> int | None:
    import importlib

    if any(a.startswith("hydra.job.name=train_ddp_process_") for a in argv):
        # Lightning re-launching the other DDP ranks of `python -m mert.cli pretrain ...` without "pretrain".
        argv = ["pretrain", *argv]

    for key, (module, func) in _DELEGATED.items():
        words = (key,) if isinstance(key, str) else key
        if tuple(argv[: len(words)]) == words:
            return int(getattr(importlib.import_module(module), func)(argv[len(words) :]) or 0)
    return None


# The file system refusing a write (full disk, quota, read-only, permissions, a name too long): the user's to fix,
# so one line naming the file, exit status 2, instead of a traceback from wherever the write happened.
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.EFBIG,
}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mert`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbosity, argv = _verbosity(argv)
    setup_logging(verbosity)
    try:
        delegated = _delegate(argv)
        if delegated is not None:
            return delegated
        args = build_parser().parse_args(argv)
        if getattr(args, "pool", None) == "none":
            args.pool = None
        return int(args.func(args) or 0)
    except (OSError, ValueError) as e:
        from mert.fileio import UnsafeOutputError

        if not isinstance(e, UnsafeOutputError) and getattr(e, "errno", None) not in _ENVIRONMENT_ERRNOS:
            raise
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        command = " ".join(argv[:2] if argv[:1] in (["data"], ["targets"]) else argv[:1])
        print(f"mert {command}: error: {getattr(e, 'strerror', None) or e}{where}", file=sys.stderr)
        return 2

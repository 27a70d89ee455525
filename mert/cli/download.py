"""``mert download``: fetch a checkpoint into the cache and print its path; list, add or remove named ones.

mert download MERT-v1-95M            (prints the local folder; $(mert download ...) works)
mert download --list | --add NAME SOURCE [--sha256 HEX] | --remove NAME
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mert.hub import resolve_source
from mert.registry import CheckpointEntry, lookup_checkpoint

__all__ = ["download_cli"]


def download_cli(argv: list[str]) -> int:
    """``mert download``: fetch a checkpoint into the cache and print its local path; list or edit the registry.

    ``mert download NAME_OR_SOURCE`` prints only the path on stdout (so ``$(mert download MERT-v1-95M)`` works);
    progress and the licence go to stderr. Returns 0 on success, 1 with a one-line error on stderr otherwise.
    Only argument parsing and printing live here; the work is :func:`resolve_source` and :mod:`mert.registry`'s.
    """
    from mert.registry import list_checkpoints, register_checkpoint, registry_path, unregister_checkpoint

    parser = _download_parser()
    args = parser.parse_args(argv)
    if args.source is not None and (args.list or args.add or args.remove):
        parser.error("give a checkpoint to download, or one of --list/--add/--remove, not both")
    if args.source is None and not (args.list or args.add or args.remove):
        parser.error("name a checkpoint to download (see `mert download --list`)")

    try:
        if args.list:
            _print_registry(list_checkpoints(), registry_path())
        elif args.add:
            name, source = args.add
            kw = dict(revision=args.revision, sha256=args.sha256, licence=args.licence, description=args.description)
            entry = register_checkpoint(name, source, overwrite=args.force, **kw)
            print(f"mert download: registered {entry.name!r} -> {entry.source} in {registry_path()}", file=sys.stderr)
        elif args.remove:
            entry = unregister_checkpoint(args.remove)
            print(f"mert download: removed {entry.name!r} from {registry_path()}", file=sys.stderr)
        else:
            entry = lookup_checkpoint(args.source) if not Path(args.source).expanduser().exists() else None
            path = resolve_source(
                args.source,
                revision=args.revision,
                cache_dir=args.cache_dir,
                sha256=args.sha256,
                local_files_only=args.offline,
            )
            if entry is not None:
                print(f"mert download: {entry.name} ({entry.source}), licence {entry.licence}", file=sys.stderr)
            print(path)
    except (OSError, ValueError, KeyError) as err:  # FileNotFoundError is an OSError
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"mert download: {' '.join(str(message).split())}", file=sys.stderr)
        return 1
    return 0


def _print_registry(entries: list[CheckpointEntry], user_file: Path) -> None:
    rows = [("NAME", "SOURCE", "REVISION / SHA256", "LICENCE", "FROM")]
    for e in entries:
        version = e.revision or "main (not pinned)"
        if e.is_url:
            version = f"sha256:{e.sha256[:16]}..." if e.sha256 else "-"
        rows.append((e.name, e.source, version, e.licence, "built-in" if e.builtin else "user"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    print(f"\nuser entries: {user_file}" + ("" if user_file.is_file() else " (none yet)"))


def _download_parser():
    """The argument parser of ``mert download``."""
    parser = argparse.ArgumentParser(
        prog="mert download",
        description="Download a checkpoint into the cache and print its local path, or list/add/remove named "
        "checkpoints (see docs/checkpoints.md).",
    )
    parser.add_argument("source", nargs="?", help="registry name (see --list), Hugging Face repo id, URL or path")
    parser.add_argument("--revision", help="branch, tag or commit of a hub repo (default: the registry's pin)")
    parser.add_argument("--sha256", help="expected digest of the file (URL entries: required with --add)")
    parser.add_argument(
        "--cache-dir",
        help="download cache (default $MERT_CACHE; unset: ~/.cache/mert for URLs, the Hugging Face cache for repos)",
    )
    parser.add_argument("--offline", action="store_true", help="use the cache only; fail if the files are missing")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--list", action="store_true", help="show the named checkpoints")
    action.add_argument("--add", nargs=2, metavar=("NAME", "SOURCE"), help="register a URL or hub id under NAME")
    action.add_argument("--remove", metavar="NAME", help="remove a user entry")
    parser.add_argument("--licence", "--license", dest="licence", help="licence of the weights (with --add)")
    parser.add_argument("--description", help="one line for --list (with --add)")
    parser.add_argument("--force", action="store_true", help="with --add: replace a user entry of the same name")
    return parser

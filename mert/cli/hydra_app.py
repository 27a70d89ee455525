"""Running a Hydra entry point as a `mert` subcommand: exit codes instead of exits, one-line errors.

Hydra's own errors (an unknown config group option such as ``task=instrument``, an override of a key that does
not exist, an unparsable override) and our own checks (``ValueError``/``FileNotFoundError`` with a message
that says what to do) are printed as ``PROG: error: ...`` without a traceback; set ``MERT_TRACEBACK=1`` to get
the traceback instead. Imports Hydra only when called, so ``import mert`` stays free of it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["run_hydra"]


def _config_message(e: BaseException) -> str:
    # Hydra appends the config search path to a missing-config message; the options list before it is the help.
    text = str(e).split("\nConfig search path", 1)[0].strip()
    return text or type(e).__name__


def _groups(config_name: str) -> dict[str, list[str]]:
    """The config groups ``conf/<config_name>.yaml`` chooses from (its defaults list), each with its options."""
    from importlib.resources import files

    import yaml

    conf = files("mert.conf")
    defaults = yaml.safe_load(conf.joinpath(f"{config_name}.yaml").read_text()).get("defaults", [])
    out = {}
    for entry in defaults:
        if not isinstance(entry, dict):
            continue
        ((key, _),) = entry.items()
        if key.startswith("override "):
            continue
        group = key.split("@", 1)[0].lstrip("/")
        folder = conf.joinpath(group)
        if folder.is_dir():
            out[group] = sorted(f.name[: -len(".yaml")] for f in folder.iterdir() if f.name.endswith(".yaml"))
    return out


def command_help(config_name: str, prog: str, usage: str, overrides: Sequence[str] = ()) -> str:
    """``PROG --help``: the command's usage, its own config groups with their options, and its composed settings
    (with ``overrides`` applied); never the groups of another command."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    lines = [usage.rstrip(), "", "Config groups (choose with GROUP=OPTION):"]
    for group, options in _groups(config_name).items():
        lines.append(f"  {group}: {', '.join(options)}")
    with initialize_config_module("mert.conf", version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides))
    lines += [
        "",
        "Settings (override any with KEY=VALUE; add a new one with +KEY=VALUE):",
        "",
        OmegaConf.to_yaml(cfg).rstrip(),
        "",
        f"`{prog} --cfg job KEY=VALUE ...` prints the settings a command line composes; -m runs a sweep.",
    ]
    return "\n".join(lines) + "\n"


def run_hydra(
    fn: Callable[[Any], None],
    config_name: str,
    argv0: str,
    overrides: Sequence[str],
    prog: str,
    usage: str | None = None,
) -> int:
    """Run ``fn`` under ``hydra.main`` with ``conf/<config_name>.yaml`` and ``overrides``; return an exit code.

    ``argv0`` becomes ``sys.argv[0]`` while it runs (launchers that re-run the script need the real file).
    ``--help``/``-h`` prints :func:`command_help` with ``usage`` (Hydra's own help lists every command's groups).
    """
    if usage is not None and any(a in ("--help", "-h") for a in overrides):
        try:
            print(command_help(config_name, prog, usage, [a for a in overrides if not a.startswith("-")]), end="")
        except Exception as e:  # a bad override beside --help: say so, still show the usage
            print(f"{usage.rstrip()}\n\n{prog}: error: {_config_message(e)}", file=sys.stderr)
            return 2
        return 0
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra re-raises; we decide what the user sees
    errors: list[BaseException] = []

    def task(cfg: Any) -> None:
        # Caught inside the job: an exception leaving it makes Hydra print its own "Error executing job" line
        # first (the error twice), and would end a multirun sweep at its first failed job.
        try:
            fn(cfg)
        except (ValueError, FileNotFoundError, PermissionError) as e:
            if os.environ.get("MERT_TRACEBACK"):
                raise
            errors.append(e)

    entry = hydra.main(config_path="pkg://mert.conf", config_name=config_name, version_base="1.3")(task)
    saved = sys.argv
    sys.argv = [argv0, *overrides]
    try:
        entry()
        for e in errors:
            print(f"{prog}: error: {e}", file=sys.stderr)
        if errors:
            return 1
    except SystemExit as e:  # --help, --cfg and Hydra's own usage errors exit
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    except (ValueError, FileNotFoundError, PermissionError) as e:
        if os.environ.get("MERT_TRACEBACK"):
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except (HydraException, OmegaConfBaseException) as e:
        if os.environ.get("MERT_TRACEBACK"):
            raise
        print(f"{prog}: error: {_config_message(e)}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved
    return 0

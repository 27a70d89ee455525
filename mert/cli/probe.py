"""``mert probe``: probe an encoder on a labelled manifest; compare runs; turn a data set into a manifest.

mert probe encoder=m-a-p/MERT-v1-95M data.manifest=gtzan.csv task=gtzan_genre   (Hydra overrides)
mert probe compare runs/probe/x/*                                              (side-by-side table)
mert probe manifest gtzan ~/data/gtzan --out gtzan.csv                         (a layout -> a manifest)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mert.fileio import write_text_atomic
from mert.probe.layouts import LAYOUTS, MARBLE_VOCALSET_TECHNIQUES
from mert.probe.manifest import write_manifest

__all__ = ["compare_cli", "main", "manifest_cli"]


def main(argv: Sequence[str] | None = None) -> int:
    """``mert probe [hydra overrides]``, ``mert probe compare RUN_DIRS...``, ``mert probe manifest ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        return compare_cli(argv[1:])
    if argv[:1] == ["manifest"]:
        return int(manifest_cli(argv[1:]) or 0)
    try:
        import hydra  # noqa: F401
    except ImportError:
        print("mert probe needs hydra-core: pip install 'mert[train]'", file=sys.stderr)
        return 2
    from mert.cli.hydra_app import run_hydra
    from mert.probe.run import hydra_entry

    return run_hydra(hydra_entry, "probe", sys.argv[0], _rewrite(argv), "mert probe")


def compare_cli(argv: Sequence[str]) -> int:
    """``mert probe compare RUN_DIRS... [--out table.md]``: 0, or 1 with a one-line error."""
    ap = argparse.ArgumentParser(prog="mert probe compare", description="side-by-side table of probe runs")
    ap.add_argument("runs", nargs="+", help="run directories (or results.json files) of `mert probe`")
    ap.add_argument("--out", help="also write the table to this Markdown file")
    args = ap.parse_args(list(argv))
    from mert.fileio import check_outputs
    from mert.probe.run import compare_runs

    try:
        if args.out:  # before reading: a table written over a run's results.json destroys that run's results
            if Path(args.out).name == "results.json":
                raise ValueError(f"--out {args.out} would replace a probe run's results.json; choose another name")
            dirs = [r for r in args.runs if Path(r).is_dir()]
            inputs = [*args.runs, *(Path(d) / "results.json" for d in dirs)]
            check_outputs([args.out], inputs, scanned=dirs, what="--out")  # a run folder holds that run's results
        table = compare_runs(args.runs)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"mert probe compare: error: {e}", file=sys.stderr)
        return 1
    print(table, end="")
    if args.out:
        write_text_atomic(args.out, table)
    return 0


# `task=gtzan_genre` and `protocol=quick` are the documented spellings of Hydra's package overrides.
_ALIASES = {"task": "probe_task@task", "protocol": "probe_protocol@probe"}


def _rewrite(argv: Sequence[str]) -> list[str]:
    out = []
    for a in argv:
        key, sep, value = a.partition("=")
        out.append(f"{_ALIASES[key]}={value}" if sep and key in _ALIASES else a)
    return out


def manifest_cli(argv: list[str] | None = None) -> int:
    """``mert probe manifest LAYOUT ROOT --out FILE [--task T] [--seed S] ...``.

    Returns:
        0 when a manifest was written, 1 when the folder does not match the layout or yields no clip.
    """
    ap = argparse.ArgumentParser(
        prog="mert probe manifest",
        description="Turn a probing data set, as downloaded, into a labelled manifest (path,label,split).",
    )
    ap.add_argument("layout", choices=sorted(LAYOUTS), help="the data set's on-disk layout")
    ap.add_argument("root", help="the data set's folder")
    ap.add_argument("--out", required=True, help="manifest to write (.csv or .tsv)")
    ap.add_argument("--task", help="nsynth: instrument|pitch; vocalset: technique|singer (default: the first)")
    ap.add_argument("--seed", type=int, default=0, help="seed of seeded splits and subsampling (default 0)")
    ap.add_argument("--max-per-class", type=int, help="nsynth: at most this many train clips per class")
    ap.add_argument("--split", choices=["train", "test"], help="giantsteps: which split this checkout is")
    ap.add_argument("--split-dir", help="mtt: folder with Won et al.'s train.npy/valid.npy/test.npy")
    ap.add_argument("--techniques", help="vocalset technique: comma-separated folders to keep, or 'marble'")
    ap.add_argument("--report", help="also write the skipped items (item, reason) to this TSV file")
    args = ap.parse_args(argv)
    prog = "mert probe manifest"

    fn, tasks, accepted = LAYOUTS[args.layout]
    given = {
        "max_per_class": args.max_per_class,
        "split": args.split,
        "split_dir": args.split_dir,
        "techniques": args.techniques,
    }
    for name, value in given.items():
        if value is not None and name not in accepted:
            ap.error(f"--{name.replace('_', '-')} does not apply to the {args.layout} layout")
    kwargs = {k: v for k, v in given.items() if v is not None}
    if "seed" in accepted:
        kwargs["seed"] = args.seed
    if "techniques" in kwargs:
        t = kwargs["techniques"]
        kwargs["techniques"] = list(MARBLE_VOCALSET_TECHNIQUES) if t == "marble" else [x for x in t.split(",") if x]
    task = next(iter(tasks))
    if args.task is not None:
        short = {v: k for k, v in tasks.items()}.get(args.task, args.task)
        if short not in tasks:
            ap.error(f"--task for {args.layout} must be one of {sorted(tasks) + sorted(tasks.values())}")
        task = short
    if len(tasks) > 1:
        kwargs["task"] = task
        if "techniques" in kwargs and task != "technique":
            ap.error("--techniques applies to the vocalset technique task only")

    try:
        from mert.audio import AUDIO_EXTENSIONS
        from mert.fileio import check_outputs

        outs = [o for o in (args.out, args.report) if o]
        check_outputs(outs, scanned=[args.root], scanned_extensions=AUDIO_EXTENSIONS, what="--out/--report")
        result = fn(args.root, **kwargs)
        check_outputs(outs, [r.path for r in result.rows], what="--out/--report")  # never over a listed file
        out = write_manifest(args.out, result.rows)
    except (FileNotFoundError, ValueError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    if args.report:  # files first, so a closed stdout (| head) cannot lose them
        lines = ["item\treason"] + [f"{i}\t{' '.join(r.split())}" for i, r in result.skipped]
        write_text_atomic(args.report, "\n".join(lines) + "\n")
    print(result.report())
    print(f"wrote {out}\nnext: mert probe task={result.task} data.manifest={out}")
    return 0

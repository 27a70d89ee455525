"""``mert probe``: probe an encoder on a labelled manifest; compare runs; turn a data set into a manifest.

mert probe encoder=m-a-p/MERT-v1-95M data.manifest=gtzan.csv task=gtzan_genre   (Hydra overrides)
mert probe compare runs/probe/x/*                                              (side-by-side table)
mert probe manifest gtzan ~/data/gtzan --out gtzan.csv                         (a layout -> a manifest)
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from mert.fileio import write_text_atomic
from mert.probe.layouts import LAYOUTS, MARBLE_VOCALSET_TECHNIQUES
from mert.probe.manifest import write_manifest

__all__ = ["compare_cli", "main", "manifest_cli"]

log = logging.getLogger(__name__)


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

    return run_hydra(hydra_entry, "probe", sys.argv[0], _rewrite(argv), "mert probe", usage=USAGE)


USAGE = """\
usage: mert probe encoder=SOURCE data.manifest=FILE [task=NAME] [protocol=NAME] [KEY=VALUE ...]
       mert probe compare RUNS... [--out table.md|.csv|.json] [--plot-hours hours.png]
       mert probe manifest LAYOUT ROOT --out FILE

Probe an encoder's hidden states on a labelled manifest (docs/probing.md). Results go to
runs/probe/<manifest>-<digest>-<task>/<encoder>/<protocol>[-<settings given>]/results.json."""


def compare_cli(argv: Sequence[str]) -> int:
    """``mert probe compare RUNS... [--out table.md|.csv|.json] [--plot-hours x.png]``: 0, or 1 with a one-line
    error."""
    ap = argparse.ArgumentParser(prog="mert probe compare", description="side-by-side table of probe runs")
    ap.add_argument("runs", nargs="+", help="run folders, folders holding runs, or results.json files of `mert probe`")
    ap.add_argument("--out", help="also write the table to this file: .md (Markdown), .csv or .json")
    ap.add_argument(
        "--plot-hours",
        metavar="PNG",
        help="also plot the best layer's score against audio-hours seen in pretraining (log x axis)",
    )
    args = ap.parse_args(list(argv))
    from mert.fileio import UnsafeOutputError, check_outputs, write_json_atomic, write_text_atomic
    from mert.probe.run import compare_csv, compare_markdown, compare_table, find_results, load_results, plot_hours

    prog = "mert probe compare"
    formats = {".md": "md", ".markdown": "md", ".csv": "csv", ".json": "json"}
    if args.out and Path(args.out).suffix.lower() not in formats:
        print(f"{prog}: error: --out {args.out}: use a .md, .csv or .json file name", file=sys.stderr)
        return 1
    try:
        files = find_results(args.runs)
        outputs = [(o, w) for o, w in ((args.out, "--out"), (args.plot_hours, "--plot-hours")) if o]
        for out, what in outputs:
            # a run folder holds that run's results and plots: a table written there would pass for one
            check_outputs([out], files, scanned=[Path(f).parent for f in files], what=what)
            if Path(out).name == "results.json":
                raise UnsafeOutputError(
                    f"{what} {out}: a file named results.json is a probe run's result; use another name"
                )
        check_outputs([o for o, _ in outputs])
        results = [load_results(f) for f in files]
        manifests = [r["data"]["manifest"] for r in results if Path(str(r["data"]["manifest"])).exists()]
        for out, what in outputs:
            check_outputs([out], manifests, what=what)  # a run's manifest is data too
            _check_replaceable(Path(out), what)
        table = compare_table(results)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    md = compare_markdown(table)
    print(md, end="")
    try:
        if args.out:
            kind = formats[Path(args.out).suffix.lower()]
            if kind == "json":
                write_json_atomic(args.out, {**table, "runs": [str(f) for f in files]})
            else:
                write_text_atomic(args.out, md if kind == "md" else compare_csv(table))
        if args.plot_hours:
            for msg in plot_hours(results, args.plot_hours):
                log.warning("%s: %s", prog, msg)
    except (OSError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    return 0


def _check_replaceable(out: Path, what: str) -> None:
    """An existing output is replaced only when it is what this command writes (a table, a PNG plot)."""
    from mert.fileio import UnsafeOutputError

    if not out.exists():
        return
    if not out.is_file():
        raise UnsafeOutputError(f"{what} {out} exists and is not a file; choose another name")
    head = out.open("rb").read(64)
    ours = (
        head.startswith(b"\x89PNG")
        if what == "--plot-hours"
        else head.startswith((b"| data: task |", b"data,metric,", b'{\n  "columns"'))
    )
    if not ours:
        raise UnsafeOutputError(
            f"{what} {out} exists and was not written by `mert probe compare`: refusing to replace it; "
            "choose another name or remove it first"
        )


# Earlier spellings of the `task` and `protocol` config groups, still accepted.
_ALIASES = {
    "probe_task": "task",
    "probe_task@task": "task",
    "probe_protocol": "protocol",
    "probe_protocol@probe": "protocol",
}


def _rewrite(argv: Sequence[str]) -> list[str]:
    # Hydra's parser takes -m/--multirun only before the overrides; users put it anywhere.
    flags = [a for a in argv if a in ("-m", "--multirun")]
    out = list(dict.fromkeys(flags))
    for a in (a for a in argv if a not in flags):
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

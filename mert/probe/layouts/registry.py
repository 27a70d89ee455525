"""The registry of layouts and ``mert probe manifest``, the command that runs one and writes its manifest.

Shape legend: none (no tensors here).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from mert.probe.layouts._emo import emo
from mert.probe.layouts._folders import folders
from mert.probe.layouts._giantsteps import giantsteps
from mert.probe.layouts._gtzan import gtzan
from mert.probe.layouts._gtzan_beat import gtzan_beat
from mert.probe.layouts._mtt import mtt
from mert.probe.layouts._nsynth import nsynth
from mert.probe.layouts._vocalset import MARBLE_VOCALSET_TECHNIQUES, vocalset
from mert.probe.layouts.common import LayoutResult
from mert.probe.manifest import write_manifest

__all__ = ["LAYOUTS", "manifest_cli"]

# layout -> (function, {short task name: probe task name}, CLI options it accepts)
LAYOUTS: dict[str, tuple[Callable[..., LayoutResult], dict[str, str], tuple[str, ...]]] = {
    "folders": (folders, {"multiclass": "multiclass"}, ("seed",)),
    "gtzan": (gtzan, {"genre": "gtzan_genre"}, ("seed",)),
    "gtzan-beat": (gtzan_beat, {"beat": "gtzan_beat"}, ("seed",)),
    "nsynth": (nsynth, {"instrument": "nsynth_instrument", "pitch": "nsynth_pitch"}, ("seed", "max_per_class")),
    "giantsteps": (giantsteps, {"key": "giantsteps_key"}, ("seed", "split")),
    "mtt": (mtt, {"tagging": "mtt_tagging"}, ("split_dir",)),
    "emo": (emo, {"regression": "emo_regression"}, ("seed",)),
    "vocalset": (
        vocalset,
        {"technique": "vocalset_technique", "singer": "vocalset_singer"},
        ("seed", "techniques"),
    ),
}


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
        result = fn(args.root, **kwargs)
        out = write_manifest(args.out, result.rows)
    except (FileNotFoundError, ValueError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    if args.report:  # files first, so a closed stdout (| head) cannot lose them
        rep = Path(args.report)
        rep.parent.mkdir(parents=True, exist_ok=True)
        lines = ["item\treason"] + [f"{i}\t{' '.join(r.split())}" for i, r in result.skipped]
        rep.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(result.report())
    print(f"wrote {out}\nnext: mert probe task={result.task} data.manifest={out}")
    return 0

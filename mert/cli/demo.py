"""``mert demo``: the whole loop on one CPU, nothing downloaded (what it runs: :mod:`mert.demo`).

mert demo [--experiment conformer_kmeans|demo_cpu|...] [--max-steps N] [--out mert-demo]
          [--teacher kmeans|rvq|random_projection] [--strict] [hydra overrides]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``mert demo [options] [hydra overrides]``: 0 when the loop ran (the table and a one-line verdict say where
    the pretrained encoder stands); with ``--strict``, 1 when it is not ahead of the random encoder on the mean
    (:func:`mert.demo.verdict`); 2 on usage errors or without the train extra."""
    from mert import demo

    d = demo.DemoOptions()  # the defaults live there, once
    ap = argparse.ArgumentParser(
        prog="mert demo", description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default=d.out, help="output folder (default ./%(default)s)")
    ap.add_argument(
        "--max-steps",
        type=int,
        default=d.max_steps,
        help="pretraining steps, run to the end (default: the experiment's, 500 for conformer_kmeans)",
    )
    ap.add_argument(
        "--experiment",
        choices=list(demo.DEMO_EXPERIMENTS),
        default=d.experiment,
        help="pretraining recipe: "
        + "; ".join(f"{k} ({v})" for k, v in demo.DEMO_EXPERIMENTS.items())
        + " (default %(default)s)",
    )
    ap.add_argument(
        "--corpus-clips", type=int, default=d.corpus_clips, help="clips in the pretraining corpus (default %(default)s)"
    )
    ap.add_argument(
        "--probe-clips", type=int, default=d.probe_clips, help="held-out clips per probe task (default %(default)s)"
    )
    ap.add_argument(
        "--seconds", type=float, default=d.seconds, help="length of corpus and music probe clips (default %(default)g)"
    )
    ap.add_argument(
        "--note-seconds",
        type=float,
        default=d.note_seconds,
        help="length of note and chord probe clips (default %(default)g)",
    )
    ap.add_argument(
        "--segment-seconds", type=float, default=d.segment_seconds, help="length of the pretraining segments"
    )
    ap.add_argument(
        "--model", default=d.model, help="model config group (default: the experiment's, small or conformer_small)"
    )
    ap.add_argument(
        "--teacher",
        choices=list(demo.DEMO_TEACHERS),
        default=None,
        help="acoustic teacher next to the CQT (default: the experiment's, kmeans for most): kmeans (MFCC + chroma), "
        "rvq (a residual VQ fitted on the corpus's log-mel frames) or random_projection (BEST-RQ); docs/teachers.md "
        "compares them",
    )
    ap.add_argument(
        "--rvq-input",
        choices=["logmel", "cqt"],
        default=d.rvq_input,
        help="frames the --teacher rvq quantises: 128-band log-mel (default) or 84-bin log-CQT",
    )
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when the pretrained encoder is not ahead of the random one on the mean (default: exit 0 "
        "whenever the loop ran)",
    )
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for the pretraining run, e.g. optim.lr=3e-3")
    args = ap.parse_args(argv)
    strict = vars(args).pop("strict")
    try:
        options = demo.DemoOptions(**vars(args))
    except ValueError as e:
        ap.error(str(e))
    try:
        import hydra  # noqa: F401
        import lightning  # noqa: F401
    except ImportError:
        print("mert demo needs the train extra: pip install 'mert[train]'", file=sys.stderr)
        return 2
    results = demo.run_demo(options)
    summary, paths = results["pretraining"], results["paths"]
    print(
        f"\nPretraining: {summary['steps']} steps, {summary['audio_hours'] * 60:.1f} min of audio, final loss "
        f"{summary['final_loss']}.\nLinear probes on held-out synthetic clips ({options.probe_clips} per task, "
        "split 60/20/20 within each class; layer and hand-crafted features chosen on validation; test accuracy):"
        f"\n\n{results['table']}\n\nWritten: {paths['results']}, {paths['table']}"
        + (f", {paths['plot']}" if "plot" in paths else " (pip install matplotlib for the plot)")
        + f"; encoder: {paths['encoder']}"
    )
    print(f"\nmert demo: {results['verdict']}.")
    if strict and results["failures"]:
        print("mert demo: FAILED (--strict): " + "; ".join(results["failures"]) + ".", file=sys.stderr)
        return 1
    return 0

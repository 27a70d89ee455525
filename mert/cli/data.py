"""``mert data manifest``, ``mert data shard`` and ``mert synth``: prepare a corpus for pretraining.

    mert data manifest AUDIO_DIR --out train.tsv [--min-seconds 3] [--valid-percent 1 --valid-out valid.tsv]
    mert data shard train.tsv --out shards/ (or s3://bucket/prefix) [--code-teacher NAME] [--feature-teacher NAME]
        [--teacher-arg K=V]

    mert synth OUT.wav [--seconds 10] [--seed 0]

The first two return 0 when at least one file was usable (skipped files are listed on stderr) and 1 when none was.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_synth_parser", "manifest_cli", "shard_cli", "synth"]

ROLES = {"code": "codes", "feature": "features"}  # CLI option prefix -> target role the trainer reads


# `mert data ACTION`: (description, (input argument, its help), help of --out)
_ACTIONS = {
    "manifest": (
        "Scan a folder for audio files (headers only) and write a TSV manifest for training.",
        ("audio_dir", "folder searched recursively for audio files"),
        "manifest to write, e.g. train.tsv",
    ),
    "shard": (
        "Write WebDataset-format tar shards of fixed audio segments, optionally with teacher targets.",
        ("manifest", "manifest TSV (from `mert data manifest`)"),
        "output folder, or an object-store URL (s3://bucket/prefix), for shard-NNNNNN.tar and index.json",
    ),
}


def _parser(action: str) -> argparse.ArgumentParser:
    """``mert data ACTION``'s parser with what both actions take: an input, ``--out``, ``--report``, ``--quiet``."""
    description, (source, source_help), out_help = _ACTIONS[action]
    ap = argparse.ArgumentParser(prog=f"mert data {action}", description=description)
    ap.add_argument(source, help=source_help)
    ap.add_argument("--out", required=True, help=out_help)
    ap.add_argument("--report", help="also write the skipped files (path, reason) to this TSV file")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def _report_skipped(prog: str, skipped: list[tuple[str, str]], report: str | None) -> None:
    """List skipped files on stderr and, if asked, in a ``path<TAB>reason`` TSV file."""
    if skipped:
        print(f"{prog}: {len(skipped)} file(s) skipped:", file=sys.stderr)
        for path, reason in skipped:
            print(f"  {path}: {reason}", file=sys.stderr)
    if report:
        from mert.fileio import write_text_atomic

        lines = ["path\treason"] + [f"{p}\t{' '.join(r.split())}" for p, r in skipped]
        write_text_atomic(report, "\n".join(lines) + "\n")


def manifest_cli(argv: list[str] | None = None) -> int:
    """Scan a folder of audio and write a manifest (and optionally a validation split).

    Returns:
        0 if at least one file is usable, 1 if none is (or the folder does not exist).
    """
    ap = _parser("manifest")
    ap.add_argument("--min-seconds", type=float, default=3.0, help="skip shorter files (default 3, as MERT-v1)")
    ap.add_argument("--valid-percent", type=float, default=0.0, help="percent of files held out (default 0)")
    ap.add_argument("--valid-out", help="manifest of the held-out files (needed with --valid-percent)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    ap.add_argument(
        "--max-seconds", type=float, default=None, help="skip longer files (default $MERT_MAX_AUDIO_SECONDS or 4 h)"
    )
    args = ap.parse_args(argv)
    if not 0.0 <= args.valid_percent < 100.0:
        ap.error("--valid-percent must be in [0, 100)")
    if args.valid_percent > 0 and not args.valid_out:
        ap.error("--valid-percent needs --valid-out")

    from mert.audio import AUDIO_EXTENSIONS
    from mert.data.manifest import hold_out, scan_audio, write_manifest
    from mert.fileio import UnsafeOutputError, check_outputs

    prog = "mert data manifest"
    outs = {"--out": args.out, "--valid-out": args.valid_out, "--report": args.report}
    outs = {k: v for k, v in outs.items() if v}
    try:  # before the scan: an output inside the scanned folder, or two outputs on one file, loses data
        for flag, out in outs.items():
            check_outputs(
                [out], [args.audio_dir], scanned=[args.audio_dir], scanned_extensions=AUDIO_EXTENSIONS, what=flag
            )
        check_outputs(list(outs.values()), what="output")
    except UnsafeOutputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    try:
        scan = scan_audio(
            args.audio_dir, min_seconds=args.min_seconds, progress=not args.quiet, max_seconds=args.max_seconds
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    _report_skipped(prog, scan.skipped, args.report)
    entries = scan.entries
    if not entries:
        print(f"{prog}: no usable audio files in {args.audio_dir}; nothing written", file=sys.stderr)
        return 1
    train, valid = hold_out(entries, args.valid_percent, args.seed)
    if args.valid_percent > 0:
        write_manifest(args.valid_out, valid)
    write_manifest(args.out, train)
    hours = sum(e.seconds for e in train) / 3600
    print(f"{prog}: {len(train)} files, {hours:.3f} h -> {args.out}")
    if args.valid_percent > 0:
        print(f"{prog}: {len(valid)} files, {sum(e.seconds for e in valid) / 3600:.3f} h -> {args.valid_out}")
    if scan.skipped:
        print(f"{prog}: {len(scan.skipped)} file(s) skipped (listed on stderr)")
    return 0


def _parse_value(text: str) -> Any:
    """``6.0`` -> float, ``8`` -> int, ``true`` -> bool, ``[1,2]`` -> list; anything else stays a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _teacher_kwargs(pairs: list[str], roles: list[str]) -> dict[str, dict[str, Any]]:
    """``KEY=VALUE`` applies to every teacher, ``ROLE.KEY=VALUE`` (``codes.path=km.pt``) to one."""
    out: dict[str, dict[str, Any]] = {r: {} for r in roles}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name:
            raise ValueError(f"--teacher-arg expects KEY=VALUE or ROLE.KEY=VALUE, got {pair!r}")
        role, dot, key = name.partition(".")
        targets = [role] if dot else roles
        if dot and role not in out:
            raise ValueError(f"--teacher-arg {pair!r}: no teacher with role {role!r} (roles: {roles})")
        for r in targets:
            out[r][key if dot else name] = _parse_value(value)
    return out


def shard_cli(argv: list[str] | None = None) -> int:
    """Cut the files of a manifest into fixed segments and write tar shards, with cached teacher targets.

    Returns:
        0 if at least one segment was written, 1 if none (or the manifest or a teacher could not be loaded).
    """
    ap = _parser("shard")
    ap.add_argument("--sample-rate", type=int, default=24000, help="audio rate of the shards (default 24000)")
    ap.add_argument("--segment-seconds", type=float, default=5.0, help="segment length (default 5, as MERT-v1)")
    ap.add_argument("--min-seconds", type=float, default=3.0, help="shortest segment kept (default 3)")
    ap.add_argument("--shard-size", type=int, default=256, help="segments per tar file (default 256)")
    ap.add_argument("--batch-size", type=int, default=8, help="segments per teacher call (default 8)")
    ap.add_argument("--code-teacher", help="teacher stored as role 'codes': encodec, kmeans, random_projection")
    ap.add_argument("--feature-teacher", help="teacher stored as role 'features': cqt")
    ap.add_argument(
        "--teacher-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="teacher constructor argument, for every teacher or one (codes.path=km.pt); repeatable",
    )
    ap.add_argument("--device", default="cpu", help="where teachers run (cpu, cuda)")
    ap.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    ap.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec option for an --out URL (endpoint_url=http://host:9000); credentials: the environment",
    )
    args = ap.parse_args(argv)

    from mert.data.manifest import read_manifest
    from mert.data.remote import is_url
    from mert.data.shards import write_shards

    prog = "mert data shard"
    names = {"codes": args.code_teacher, "features": args.feature_teacher}
    names = {role: name for role, name in names.items() if name}
    try:
        entries = read_manifest(args.manifest)
        kwargs = _teacher_kwargs(args.teacher_arg, sorted(names))
        teachers = {}
        if names:
            from mert.targets import build_teacher  # loads teacher dependencies only when asked for

            for role, name in names.items():
                teachers[role] = build_teacher(name, **kwargs[role]).to(args.device)
    except (FileNotFoundError, ValueError, TypeError, ImportError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    from mert.fileio import UnsafeOutputError, check_outputs

    inputs = [args.manifest, *(e.path for e in entries)]
    inputs += [v for kw in kwargs.values() for v in kw.values() if isinstance(v, str) and Path(v).is_file()]
    storage_options = {}
    for option in args.storage_option:
        key, eq, value = option.partition("=")
        if not eq or not key:
            print(f"{prog}: error: --storage-option {option!r} is not KEY=VALUE", file=sys.stderr)
            return 2
        storage_options[key] = value
    outs = {"--out": args.out, "--report": args.report}
    try:  # before any work: shards or a report written over the manifest, an audio file or a teacher lose it
        for flag, out in outs.items():
            if out and not (flag == "--out" and is_url(out)):  # a bucket cannot overwrite a local input
                check_outputs([out, Path(out) / "index.json"] if flag == "--out" else [out], inputs, what=flag)
        check_outputs([o for o in outs.values() if o and not is_url(o)])
    except UnsafeOutputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    try:
        result = write_shards(
            entries, args.out, sample_rate=args.sample_rate, segment_seconds=args.segment_seconds,
            min_seconds=args.min_seconds, shard_size=args.shard_size, teachers=teachers, batch_size=args.batch_size,
            device=args.device, overwrite=args.overwrite, progress=not args.quiet, storage_options=storage_options,
        )  # fmt: skip
    except (FileExistsError, ValueError, OSError, ImportError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    _report_skipped(prog, result.skipped, args.report)
    if not result.num_samples_written:
        print(f"{prog}: no usable audio in {args.manifest}; no shards written", file=sys.stderr)
        return 1
    roles = ", ".join(result.roles) or "none"
    print(
        f"{prog}: {result.num_samples_written} segments from {result.num_files} files "
        f"({result.seconds_written / 3600:.3f} h) in {result.num_shards} shard(s) -> {result.out_dir} "
        f"(targets: {roles})"
    )
    return 0


def add_synth_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``mert synth`` on the top-level parser's subcommands."""
    p = sub.add_parser("synth", help="write synthetic music clips (chords, melody, drums) as audio files")
    p.add_argument("out", nargs="+", help="output file(s), e.g. demo.wav")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--sample-rate", type=int, default=24000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=synth)


def synth(args: argparse.Namespace) -> int:
    """`mert synth OUT.wav...`: synthetic clips with their labels printed as JSON."""
    import soundfile as sf

    from mert.data.synthetic import render_clip
    from mert.fileio import atomic_path

    outs = [Path(p) for p in args.out]
    for i, path in enumerate(outs):
        wav, labels = render_clip(args.seconds, args.sample_rate, args.seed + i)
        with atomic_path(path) as tmp:
            sf.write(str(tmp), wav, args.sample_rate, format=path.suffix.lstrip(".").upper() or "WAV")
        print(f"mert synth: {path} ({args.seconds:g} s at {args.sample_rate} Hz) {json.dumps(labels.to_dict())}")
    return 0

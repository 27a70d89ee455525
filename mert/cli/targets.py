"""``mert targets fit-kmeans`` and ``mert targets fit-rvq``: fit a teacher on your audio and save it.

    mert targets fit-kmeans AUDIO_DIR --out km.pt [--clusters 100] [--features mfcc,chroma]
    mert targets fit-kmeans AUDIO_DIR --out km2.pt --from-encoder RUN_OR_EXPORT --layer K [--clusters 500]
    mert targets fit-rvq AUDIO_DIR_OR_MANIFEST --out rvq.pt [--rvq-input logmel|cqt] [--codebooks 8]

Both return 0 on success (also when some files were skipped; they are listed on stderr), 1 when nothing could
be used, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import random
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from mert.audio import AUDIO_EXTENSIONS, find_audio
from mert.fileio import check_outputs

__all__ = ["fit_kmeans_cli", "fit_rvq_cli"]


def _fit_parser(
    prog: str,
    description: str,
    *,
    source: tuple[str, str],
    out_example: str,
    max_frames: tuple[int, str],
    sample_rate: int,
) -> argparse.ArgumentParser:
    """The options every teacher fit takes: where the audio is, where the teacher goes, how much is read."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("source", metavar=source[0], help=source[1])
    parser.add_argument("--out", required=True, help=f"output file, e.g. {out_example}")
    parser.add_argument("--max-files", type=int, default=None, help="read a random subset of this many files")
    parser.add_argument("--max-frames", type=int, default=max_frames[0], help=max_frames[1])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-rate", type=int, default=sample_rate, help="Hz; files are resampled to it")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _fit_inputs(prog: str, args: argparse.Namespace, *, manifests: bool) -> list[Path] | int:
    """The files a fit reads: the audio under ``args.source`` (or, with ``manifests``, the files of a
    ``mert data manifest`` file given instead), a seeded random subset of ``--max-files`` of them, sorted (a
    spread of the corpus, not its first N); or, after saying why on stderr, the exit status: 2 for a source that
    is not there (or not a folder), 1 for one without audio."""
    source = Path(args.source).expanduser()
    if not (source.exists() if manifests else source.is_dir()):
        print(f"{prog}: {str(source)!r} {'does not exist' if manifests else 'is not a folder'}", file=sys.stderr)
        return 2
    scan_skipped: list[tuple[str, str]] = []
    try:
        files = _inputs(source, scan_skipped) if manifests else find_audio(source, skipped=scan_skipped)
        # Before any work: a teacher written over an audio file or the manifest destroys it.
        check_outputs(
            [args.out], [source, *files], scanned=[source] if source.is_dir() else [],
            scanned_extensions=AUDIO_EXTENSIONS, what="--out",
        )  # fmt: skip
    except (OSError, ValueError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    if scan_skipped:
        print(f"{prog}: the scan of {str(source)!r} left out {len(scan_skipped)} path(s):", file=sys.stderr)
        for name, reason in scan_skipped:
            print(f"  {name}: {reason}", file=sys.stderr)
    if not files:
        print(f"{prog}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in {str(source)!r}", file=sys.stderr)
        return 1
    if args.max_files is None or args.max_files >= len(files):
        return files
    return sorted(random.Random(args.seed).sample(files, args.max_files))


def _report_skipped(prog: str, skipped: Sequence[tuple[str, str]]) -> None:
    if skipped:
        print(f"{prog}: skipped {len(skipped)} unreadable file(s):", file=sys.stderr)
        for name, reason in skipped:
            print(f"  {name}: {reason}", file=sys.stderr)


def fit_kmeans_cli(argv: list[str] | None = None) -> int:
    """``mert targets fit-kmeans AUDIO_DIR --out km.pt [--clusters N] [--features mfcc,chroma] ...``.

    Returns:
        0 on success (also when some files were skipped; they are listed on stderr), 1 when no file could be
        used, 2 on usage errors.
    """
    from mert.targets.features import FEATURE_SETS
    from mert.targets.kmeans import KMeansTargets

    parser = _fit_parser(
        "mert targets fit-kmeans",
        "Fit a k-means teacher (MERT-v0 style) on a folder of audio and save it for build_teacher('kmeans', path=...).",
        source=("audio_dir", "folder searched recursively for audio files"),
        out_example="km.pt",
        max_frames=(200_000, "frames sampled for k-means"),
        sample_rate=24000,
    )
    parser.add_argument("--clusters", type=int, default=100, help="clusters per feature set (default 100)")
    parser.add_argument(
        "--features",
        default=None,
        help=f"comma-separated feature sets among {','.join(FEATURE_SETS)} (default mfcc,chroma)",
    )
    parser.add_argument("--iters", type=int, default=50, help="maximum k-means iterations")
    parser.add_argument(
        "--hop-length",
        type=int,
        default=320,
        help="samples per frame: the encoder's hop (320 for 75 Hz encoders, 960 for the 25 Hz mel family)",
    )
    parser.add_argument(
        "--from-encoder",
        metavar="RUN_OR_EXPORT",
        default=None,
        help="cluster this encoder's own layer features instead (a second iteration): a pretraining run folder, a "
        ".ckpt, or an exported folder; the file then holds the encoder, and only an encoder with the same front end "
        "can train on its codes (audio is read at the encoder's sample rate; --sample-rate is not used)",
    )
    parser.add_argument("--layer", type=int, default=None, help="with --from-encoder: the hidden state to cluster")
    args = parser.parse_args(argv)

    prog = parser.prog
    if args.from_encoder is not None or args.layer is not None:
        if args.from_encoder is None or args.layer is None:
            parser.error("--from-encoder and --layer go together")
        if args.features is not None:
            parser.error("--features does not apply with --from-encoder (the encoder's layer is the feature)")
    files = _fit_inputs(prog, args, manifests=False)
    if isinstance(files, int):
        return files
    if args.from_encoder is not None:
        return _fit_encoder_kmeans(prog, args, files)
    sets = [s.strip() for s in (args.features or "mfcc,chroma").split(",") if s.strip()]
    # The teacher serves any encoder with this hop (load() takes the encoder's own kernels and strides).
    hop = args.hop_length
    grid = {} if hop == 320 else {"conv_kernel": (hop,), "conv_stride": (hop,)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # skips are reported below, in full
            teacher = KMeansTargets.fit(
                files,
                feature_sets=sets,
                num_clusters=args.clusters,
                max_frames=args.max_frames,
                iters=args.iters,
                seed=args.seed,
                progress=not args.quiet,
                sample_rate=args.sample_rate,
                **grid,
            )
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    _report_skipped(prog, teacher.skipped_files)
    out = teacher.save(args.out)
    info = teacher.fit_info
    print(
        f"{prog}: {info['num_files']} file(s), {info['num_frames']} frames ({info['num_frames_used']} clustered), "
        f"{len(teacher.skipped_files)} skipped; {teacher.num_codebooks} codebook(s) "
        f"({','.join(teacher.feature_sets)}) x {teacher.codebook_size} clusters -> {out}"
    )
    return 0


def _fit_encoder_kmeans(prog: str, args: argparse.Namespace, files: list[Path]) -> int:
    """``fit-kmeans --from-encoder``: k-means on an encoder's layer ``--layer`` (HuBERT's second iteration)."""
    from mert.pretrain.reload import load_run_encoder
    from mert.targets.encoder_kmeans import EncoderKMeansTargets

    try:
        encoder, identity = load_run_encoder(args.from_encoder)
    except (OSError, ValueError) as e:
        print(f"{prog}: cannot load encoder {args.from_encoder!r}: {e}", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # skips are reported below, in full
            teacher = EncoderKMeansTargets.fit(
                encoder,
                files,
                layer=args.layer,
                num_clusters=args.clusters,
                max_frames=args.max_frames,
                iters=args.iters,
                seed=args.seed,
                progress=not args.quiet,
                identity=identity,
            )
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    _report_skipped(prog, teacher.skipped_files)
    out = teacher.save(args.out)
    info, grid = teacher.fit_info, teacher.grid
    print(
        f"{prog}: {info['num_files']} file(s), {info['num_frames']} frames ({info['num_frames_used']} clustered), "
        f"{len(teacher.skipped_files)} skipped; layer {teacher.layer} of {identity['name']} "
        f"({teacher.encoder_sha256[:12]}) x {teacher.codebook_size} clusters on its {grid['frame_rate']:g} Hz grid "
        f"-> {out}\n  train on it: targets=encoder_kmeans_cqt targets.code_teacher.path={out}"
    )
    return 0


def _inputs(source: Path, skipped: list[tuple[str, str]] | None = None) -> list[Path]:
    """Audio files of a folder (what the scan left out is added to ``skipped``), or a manifest's paths."""
    if source.is_dir():
        return find_audio(source, skipped=skipped)
    from mert.data.manifest import read_manifest

    return [Path(e.path) for e in read_manifest(source)]


def fit_rvq_cli(argv: list[str] | None = None) -> int:
    """``mert targets fit-rvq AUDIO_DIR_OR_MANIFEST --out rvq.pt [--input logmel|cqt] ...``.

    Returns:
        0 on success (also when some files were skipped; they are listed on stderr), 1 when nothing could be
        used or the codebooks collapsed, 2 on usage errors.
    """
    from mert.targets.rvq import INPUTS, RVQConfig, fit_rvq

    d = RVQConfig()
    parser = _fit_parser(
        "mert targets fit-rvq",
        "Train a residual-VQ acoustic teacher on log-mel or log-CQT frames of your audio and save it for "
        "`targets=rvq_cqt targets.code_teacher.path=...`. Rerunning with the same arguments resumes an "
        "interrupted fit.",
        source=("source", "folder searched recursively for audio files, or a `mert data manifest` file"),
        out_example="rvq.pt",
        max_frames=(300_000, "frames sampled from the corpus"),
        sample_rate=d.sample_rate,
    )
    parser.add_argument(
        "--input", "--rvq-input", dest="input", choices=INPUTS, default=d.input, help=f"frames (default {d.input})"
    )
    parser.add_argument("--n-mels", type=int, default=d.n_mels, help=f"log-mel bands (default {d.n_mels})")
    parser.add_argument("--context", type=int, default=d.context, help="frames stacked on each side (default 0)")
    parser.add_argument("--dim", type=int, default=d.dim, help=f"latent size (default {d.dim})")
    parser.add_argument("--hidden", type=int, default=d.hidden, help="MLP hidden width; 0 = linear (default)")
    parser.add_argument("--codebooks", type=int, default=d.num_codebooks, help=f"default {d.num_codebooks}")
    parser.add_argument("--codebook-size", type=int, default=d.codebook_size, help=f"default {d.codebook_size}")
    parser.add_argument("--steps", type=int, default=1000, help="optimiser steps (default 1000)")
    parser.add_argument("--batch-frames", type=int, default=4096, help="frames per step (default 4096)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--min-usage", type=float, default=0.02, help="collapse threshold (perplexity / codes)")
    parser.add_argument("--hop-length", type=int, default=d.hop_length, help="samples per frame: the encoder's hop")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    args = parser.parse_args(argv)

    prog = parser.prog
    files = _fit_inputs(prog, args, manifests=True)
    if isinstance(files, int):
        return files
    try:
        config = RVQConfig(
            input=args.input, n_mels=args.n_mels, context=args.context, dim=args.dim, hidden=args.hidden,
            num_codebooks=args.codebooks, codebook_size=args.codebook_size, sample_rate=args.sample_rate,
            hop_length=args.hop_length,
        )  # fmt: skip
        out = Path(args.out).expanduser()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # skips are reported below, in full
            teacher = fit_rvq(
                files, config, steps=args.steps, batch_frames=args.batch_frames, lr=args.lr,
                max_frames=args.max_frames, min_usage=args.min_usage, seed=args.seed,
                checkpoint=out.with_name(out.name + ".partial"), device=args.device, progress=not args.quiet,
                conv_kernel=(args.hop_length,), conv_stride=(args.hop_length,),
            )  # fmt: skip
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    _report_skipped(prog, teacher.skipped_files)
    path = teacher.save(out)
    info = teacher.fit_info
    print(
        f"{prog}: {info['num_files']} file(s), {info['num_frames']} frames ({info['num_frames_used']} sampled), "
        f"{len(teacher.skipped_files)} skipped; {config.num_codebooks} x {config.codebook_size} codes on "
        f"{config.input}; held-out reconstruction MSE {info['held_out_mse']:.3f} (standardised frames), "
        f"perplexity per codebook {', '.join(f'{p:.0f}' for p in info['perplexity'])}; "
        f"{info['seconds']:.0f} s -> {path}"
    )
    return 0

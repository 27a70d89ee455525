"""The ``mert`` command: one console entry point with subcommands.

    mert embed FILES... --model SOURCE [--layers all] [--pool mean] [--out DIR] [--format npy|safetensors]
    mert pretrain [hydra overrides]            (needs the train extra)
    mert export RUN_DIR_OR_CKPT OUT_DIR
    mert demo [--max-steps N] [--out DIR]
    mert data manifest AUDIO_DIR --out train.tsv
    mert data shard MANIFEST --out DIR
    mert targets fit-kmeans AUDIO_DIR --out km.pt
    mert targets fit-rvq AUDIO_DIR_OR_MANIFEST --out rvq.pt
    mert synth OUT.wav [--seconds 10] [--seed 0]

Subcommands import their heavy dependencies lazily so ``mert --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mert.audio import find_audio

__all__ = ["main"]


def _expand_inputs(items: Sequence[str]) -> list[Path]:
    """Files as given; folders are searched recursively for audio files (sorted, for reproducible runs)."""
    out: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            out.extend(find_audio(p))
        else:
            out.append(p)  # a missing file is reported per file, not fatal for the rest
    return out


def _output_names(files: list[Path]) -> list[str]:
    """One distinct output stem per input: the file stem when unique; else the path relative to the common
    folder (``x__song``); inputs that still collide (``clip.wav`` and ``clip.flac`` in one folder) keep their
    extension (``clip.wav``, ``clip.flac``), so no input ever overwrites another's output."""
    stems = [f.stem for f in files]
    if len(set(stems)) == len(stems):
        return stems
    root = Path(os.path.commonpath([str(f.resolve().parent) for f in files]))
    rel = [str(f.resolve().relative_to(root)).replace(os.sep, "__") for f in files]
    bare = [str(Path(r).with_suffix("")) for r in rel]
    names = [b if bare.count(b) == 1 else r for b, r in zip(bare, rel)]
    seen: dict[str, int] = {}
    for i, n in enumerate(names):  # the same path given twice
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            names[i] = f"{n}.{seen[n]}"
    return names


class _EmbedError(Exception):
    """A user mistake in `mert embed`: printed as one line, exit status 2."""


def _embed_out_dir(out: str) -> Path:
    out_dir = Path(out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise _EmbedError(f"--out {str(out_dir)!r} is an existing file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _EmbedError(f"cannot create the output folder --out {str(out_dir)!r}: {e.strerror or e}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise _EmbedError(f"the output folder --out {str(out_dir)!r} is not writable")
    return out_dir


def _read_index(path: Path, settings: dict) -> dict[str, dict]:
    """Entries (by input file) of an earlier run into the same folder, which must have used the same settings."""
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text())
        entries = {e["file"]: e for e in old["files"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _EmbedError(f"{str(path)!r} exists but is not a `mert embed` index ({e}); use another --out") from None
    theirs = {k: old.get(k) for k in settings}
    if theirs != settings:
        raise _EmbedError(
            f"{str(path.parent)!r} holds embeddings made with {theirs}, not {settings}; use another --out"
        )
    return entries


def _cmd_embed(args: argparse.Namespace) -> int:
    """`mert embed`: user mistakes are one line (exit 2); per-file failures are listed (exit 1)."""
    try:
        return _embed(args)
    except _EmbedError as e:
        print(f"mert embed: error: {e}", file=sys.stderr)
        return 2


def _embed(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from mert import Encoder, EncoderConfig
    from mert.audio import load_audio
    from mert.fileio import make_shareable, write_json_atomic
    from mert.models.pooling import parse_layers
    from mert.progress import progress_bar

    out_dir = _embed_out_dir(args.out)
    if args.preset:
        torch.manual_seed(args.seed)
        enc = Encoder(EncoderConfig.preset(args.preset)).eval()
        print(f"mert embed: randomly initialised '{args.preset}' encoder (seed {args.seed}), for trying things out")
    else:
        try:
            enc = Encoder.from_pretrained(args.model, revision=args.revision)
        except (OSError, ValueError, RuntimeError) as e:
            raise _EmbedError(
                f"cannot load --model {args.model!r}: {str(e).splitlines()[0] if str(e) else e!r}"
            ) from None
    if args.dtype == "auto":  # bf16 where the hardware computes it natively, else float32 (Encoder.fast)
        enc.to(device=args.device).fast()
    else:
        enc.to(device=args.device, dtype={"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype])
    torch.set_num_threads(max(1, args.threads or torch.get_num_threads()))
    try:
        layers = parse_layers(args.layers, enc.num_layers + 1)
    except ValueError as e:
        raise _EmbedError(f"--layers {args.layers!r}: {e}") from None
    files = _expand_inputs(args.files)
    if not files:
        raise _EmbedError("no audio files found in the given paths")
    names = _output_names(files)
    suffix = "npy" if args.format == "npy" else "safetensors"
    settings = {
        "model": args.preset and f"random:{args.preset}" or args.model,
        "layers": layers,
        "pool": args.pool,
        "format": args.format,
        "frame_rate": enc.frame_rate,
    }
    index_path = out_dir / "index.json"
    done = _read_index(index_path, settings)
    # Resumable: an input already listed, whose output is still there, is not embedded again.
    done = {f: e for f, e in done.items() if (out_dir / e["output"]).is_file()}
    todo = [(p, n) for p, n in zip(files, names) if str(p) not in done]
    taken = {e["output"]: f for f, e in done.items()}
    failed: list[tuple[Path, str]] = []

    def save_index() -> None:
        write_json_atomic(
            index_path,
            {**settings, "files": list(done.values()), "failed": [{"file": str(p), "error": e} for p, e in failed]},
        )

    def read(path: Path):
        # Decoding only (libsndfile, no torch ops): torch ops on this thread would start a second OpenMP team
        # that competes with the encoder's threads for the cores (6 % slower on 2 cores). Mixing down and
        # resampling happen on the main thread, where they cost about 1 % of the encoding.
        try:
            return load_audio(path, mono=False), None
        except (OSError, ValueError) as e:
            return None, str(e)

    if len(todo) < len(files):
        print(f"mert embed: {len(files) - len(todo)} file(s) already in {str(index_path)!r}, skipped")
    stopped: str | None = None
    # Decode the next file on a thread while the encoder runs on the current one.
    with ThreadPoolExecutor(max_workers=1) as pool, torch.inference_mode():
        futures = [pool.submit(read, todo[0][0])] if todo else []
        for i, (path, name) in enumerate(progress_bar(todo, desc="embed", unit="file", disable=args.quiet)):
            if i + 1 < len(todo):
                futures.append(pool.submit(read, todo[i + 1][0]))
            decoded, err = futures[i].result()
            futures[i] = None  # free the decoded audio
            if decoded is None:
                failed.append((path, err))
                continue
            target = out_dir / f"{name}.{suffix}"
            if target.name in taken and taken[target.name] != str(path):
                failed.append((path, f"its output name {target.name!r} belongs to {taken[target.name]!r}"))
                continue
            try:
                # The bounded-memory path of Encoder.embed_file: only the chosen layers are ever kept.
                x = enc.embed(
                    decoded[0].mean(dim=0), decoded[1], layers=layers, pool=args.pool,
                    chunk_seconds=args.chunk_seconds, name=str(path),
                )  # fmt: skip
            except ValueError as e:
                failed.append((path, str(e)))
                continue
            arr = x.float().cpu().numpy()
            tmp = target.with_name(f".{target.name}.tmp")
            try:
                if args.format == "npy":
                    with open(tmp, "wb") as f:
                        np.save(f, arr)
                else:
                    from safetensors.numpy import save_file

                    meta = {"layers": json.dumps(layers), "frame_rate": str(enc.frame_rate), "source": str(path)}
                    save_file({"embeddings": arr}, str(tmp), metadata=meta)
                make_shareable(tmp)
                os.replace(tmp, target)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                stopped = f"writing {str(target)!r} failed: {e.strerror or e}"
                break
            done[str(path)] = {"file": str(path), "output": target.name, "shape": list(arr.shape)}
            taken[target.name] = str(path)
            if i % 16 == 15:
                save_index()  # a killed run keeps what it finished
    save_index()
    print(f"mert embed: {len(done)} file(s) in {out_dir} (layers {args.layers}, pool {args.pool})")
    if stopped:
        print(f"mert embed: error: {stopped}; the index lists the {len(done)} file(s) written", file=sys.stderr)
        return 2
    if failed:
        print(f"mert embed: {len(failed)} file(s) failed and were skipped:", file=sys.stderr)
        for p, e in failed:
            print(f"  {p}: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    import soundfile as sf

    from mert.data.synthetic import render_clip

    outs = [Path(p) for p in args.out]
    for i, path in enumerate(outs):
        wav, labels = render_clip(args.seconds, args.sample_rate, args.seed + i)
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), wav, args.sample_rate)
        print(f"mert synth: {path} ({args.seconds:g} s at {args.sample_rate} Hz) {json.dumps(labels.to_dict())}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mert import __version__

    parser = argparse.ArgumentParser(prog="mert", description="MERT-style music audio representations.")
    parser.add_argument("--version", action="version", version=f"mert {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("embed", help="write embeddings of audio files", description="Embed audio files.")
    p.add_argument("files", nargs="+", help="audio files or folders (searched recursively)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--model", help="checkpoint: folder, weights file, https URL or Hugging Face id (m-a-p/MERT-v1-95M)"
    )
    src.add_argument("--preset", choices=["tiny", "95m", "330m"], help="randomly initialised encoder (for trying out)")
    p.add_argument("--revision", help="branch/tag/commit for Hugging Face ids")
    p.add_argument("--layers", default="all", help="'all', 'last', '7', '0,6,12' or '1-12' (default all)")
    p.add_argument("--pool", choices=["none", "mean"], default="mean", help="mean over time, or keep frames")
    p.add_argument("--out", default="embeddings", help="output folder (default ./embeddings)")
    p.add_argument("--format", choices=["npy", "safetensors"], default="npy")
    p.add_argument("--chunk-seconds", type=float, default=30.0, help="window for long files (default 30 s)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "auto"],
        default="float32",
        help="weights' precision; auto = bf16 where the CPU/GPU computes it natively, else float32 (Encoder.fast)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="seed for --preset")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser("export", help="write a release folder from a training run or checkpoint")
    p.add_argument("run", help="run directory (uses checkpoints/last.ckpt), a .ckpt file, or a release folder")
    p.add_argument("out", help="output folder (config.json, model.safetensors, meta.json)")
    p.add_argument(
        "--format",
        choices=["mert", "hf", "onnx"],
        default="mert",
        help="mert (default); hf: transformers' HuBERT layout, loadable with AutoModel.from_pretrained; "
        "onnx: OUT/model.onnx for onnxruntime (docs/deployment.md)",
    )
    p.add_argument("--layers", default=None, help="onnx only: hidden states to output, e.g. '7' or '0,6,12' (all)")
    p.add_argument("--opset", type=int, default=None, help="onnx only: ONNX opset (default 18)")
    p.set_defaults(func=_cmd_export)

    # Listed for --help; parsed by their own modules (see _DELEGATED).
    sub.add_parser("pretrain", help="pretrain an encoder: mert pretrain [hydra overrides] (see docs/pretraining.md)")
    sub.add_parser("demo", help="synthetic corpus -> pretraining -> export -> probe, on CPU in minutes")
    sub.add_parser(
        "probe",
        help="probe an encoder on a labelled manifest: mert probe encoder=... data.manifest=... [task=...]; "
        "`mert probe compare RUN_DIRS...`; `mert probe manifest LAYOUT ROOT --out FILE` (see docs/probing.md)",
    )
    data = sub.add_parser("data", help="data preparation: `mert data manifest`, `mert data shard`")
    data.add_argument("action", choices=["manifest", "shard"])
    targets = sub.add_parser("targets", help="teachers: `mert targets fit-kmeans`, `mert targets fit-rvq`")
    targets.add_argument("action", choices=["fit-kmeans", "fit-rvq"])
    sub.add_parser("download", help="fetch a named checkpoint (MERT-v1-95M...), hub id or URL; print its path")

    p = sub.add_parser("synth", help="write synthetic music clips (chords, melody, drums) as audio files")
    p.add_argument("out", nargs="+", help="output file(s), e.g. demo.wav")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--sample-rate", type=int, default=24000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_synth)
    return parser


def _cmd_export(args: argparse.Namespace) -> int:
    from mert.pretrain.export import export_run

    try:
        out = export_run(args.run, args.out, format=args.format, layers=args.layers, opset=args.opset)
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as e:
        print(f"mert export: {e}", file=sys.stderr)
        return 1
    if args.format == "onnx":
        print(f"mert export: wrote {out / 'model.onnx'} (checked against the encoder with onnxruntime if installed)")
        return 0
    also = " or transformers.AutoModel.from_pretrained" if args.format == "hf" else ""
    print(f"mert export: wrote {out} (load with Encoder.from_pretrained({str(out)!r}){also})")
    return 0


# Subcommands with their own argument parsing (Hydra overrides, or nested commands).
_DELEGATED = {
    "pretrain": ("mert.lightning.train", "main"),
    "demo": ("mert.demo", "main"),
    "probe": ("mert.probe.run", "main"),
    ("data", "manifest"): ("mert.data.cli", "manifest_cli"),
    ("data", "shard"): ("mert.data.cli", "shard_cli"),
    ("targets", "fit-kmeans"): ("mert.targets.kmeans", "fit_kmeans_cli"),
    ("targets", "fit-rvq"): ("mert.targets.rvq", "fit_rvq_cli"),
    "download": ("mert.hub", "download_cli"),
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mert`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    delegated = _delegate(argv)
    if delegated is not None:
        return delegated
    args = build_parser().parse_args(argv)
    if getattr(args, "pool", None) == "none":
        args.pool = None
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

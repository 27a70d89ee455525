"""``mert embed FILES... --model SOURCE``: embeddings of audio files, one output file per input, resumable.

    mert embed FILES... --model SOURCE [--layers all] [--pool mean] [--out DIR] [--format npy|safetensors]

Shape legend: ``n`` chosen layers, ``t`` frames, ``d`` width; an output is ``(n, d)`` pooled or ``(n, t, d)``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mert.audio import find_audio

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``mert embed`` on the top-level parser's subcommands."""
    p = sub.add_parser("embed", help="write embeddings of audio files", description="Embed audio files.")
    p.add_argument("files", nargs="+", help="audio files or folders (searched recursively)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--model", help="checkpoint: folder, weights file, https URL or Hugging Face id (m-a-p/MERT-v1-95M)"
    )
    presets = ["tiny", "95m", "330m", "conformer_tiny", "conformer_small", "mert_v2", "muq_large"]  # PRESETS' names
    src.add_argument("--preset", choices=presets, help="randomly initialised encoder (for trying out)")
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
    p.set_defaults(func=run)


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


class EmbedError(Exception):
    """A user mistake in `mert embed`: printed as one line, exit status 2."""


def _embed_out_dir(out: str) -> Path:
    out_dir = Path(out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise EmbedError(f"--out {str(out_dir)!r} is an existing file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EmbedError(f"cannot create the output folder --out {str(out_dir)!r}: {e.strerror or e}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise EmbedError(f"the output folder --out {str(out_dir)!r} is not writable")
    return out_dir


def _read_index(path: Path, settings: dict) -> dict[str, dict]:
    """Entries (by input file) of an earlier run into the same folder, which must have used the same settings."""
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text())
        entries = {e["file"]: e for e in old["files"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EmbedError(f"{str(path)!r} exists but is not a `mert embed` index ({e}); use another --out") from None
    theirs = {k: old.get(k) for k in settings}
    if theirs != settings:
        raise EmbedError(f"{str(path.parent)!r} holds embeddings made with {theirs}, not {settings}; use another --out")
    return entries


def run(args: argparse.Namespace) -> int:
    """`mert embed`: user mistakes are one line (exit 2); per-file failures are listed (exit 1)."""
    try:
        return _embed(args)
    except EmbedError as e:
        print(f"mert embed: error: {e}", file=sys.stderr)
        return 2


def _embed(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from mert import Encoder, EncoderConfig
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
            raise EmbedError(
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
        raise EmbedError(f"--layers {args.layers!r}: {e}") from None
    files = _expand_inputs(args.files)
    if not files:
        raise EmbedError("no audio files found in the given paths")
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

    if len(todo) < len(files):
        print(f"mert embed: {len(files) - len(todo)} file(s) already in {str(index_path)!r}, skipped")
    stopped: str | None = None
    with torch.inference_mode():
        for i, (path, name) in enumerate(progress_bar(todo, desc="embed", unit="file", disable=args.quiet)):
            target = out_dir / f"{name}.{suffix}"
            if target.name in taken and taken[target.name] != str(path):
                failed.append((path, f"its output name {target.name!r} belongs to {taken[target.name]!r}"))
                continue
            try:
                # Encoder.embed_file's bounded-memory path: only the chosen layers are ever kept. (Decoding the
                # next file on a thread meanwhile measured 1.00x: benchmarks/embed_folder.py.)
                x = enc.embed_file(path, layers=layers, pool=args.pool, chunk_seconds=args.chunk_seconds)
            except (OSError, ValueError) as e:
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

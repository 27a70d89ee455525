"""``mert embed FILES... --model SOURCE``: embeddings of audio files, one output file per input, resumable.

    mert embed FILES... --model SOURCE [--layers all] [--pool mean] [--out DIR] [--format npy|safetensors]
               [--device auto|cpu|cuda] [--batch-size N] [--matrix all.npy]

Resuming: ``OUT/index.json`` records, per input, its real path, size, mtime and a content digest (SHA-256 of the
whole file up to 1 MiB, else of its first and last 64 KiB and its size); a rerun skips inputs whose record still
matches and embeds changed ones again. The same file reached by two paths (``./a.wav``, ``a.wav``, a symlink) is
one input. Output names are the input stems, made unique and at most 150 bytes long (a digest of the path is
appended when a name is shortened or taken).

Shape legend: ``b`` files in a batch, ``n`` chosen layers, ``t`` frames, ``d`` width, ``N`` rows of the matrix;
an output is ``(n, d)`` pooled or ``(n, t, d)``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mert.audio import AUDIO_EXTENSIONS, find_audio
from mert.fileio import describe_write_error

__all__ = ["add_parser", "run"]

NAME_BYTES = 150  # output stems longer than this are shortened (file names may have 255 bytes, temp names add more)
_BLOCK = 64 << 10
_FULL_HASH_BYTES = 1 << 20


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
    p.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N, or auto (default: cuda when available, else cpu)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="files per forward pass (default 16 on cuda, 4 on cpu); results equal one file at a time",
    )
    p.add_argument("--matrix", help="also write all pooled embeddings as one .npy matrix (rows in MATRIX.rows.tsv)")
    p.add_argument(
        "--max-seconds", type=float, default=None, help="refuse longer files (default $MERT_MAX_AUDIO_SECONDS or 4 h)"
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "auto"],
        default="float32",
        help="weights' precision; auto = bf16 where the CPU/GPU computes it natively, else float32 (Encoder.fast)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="run the encoder through torch.compile (pays off on many files; the first batches compile)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for --preset")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _expand_inputs(items: Sequence[str], skipped: list[tuple[str, str]]) -> tuple[list[Path], int]:
    """Files as given; folders are searched recursively (sorted, for reproducible runs). A file reached again
    by another path (``./a.wav`` and ``a.wav``, a symlink) is kept once; returns ``(files, repeats dropped)``."""
    out: list[Path] = []
    seen: set[str] = set()
    repeats = 0
    for item in items:
        p = Path(item).expanduser()
        for f in find_audio(p, skipped=skipped) if p.is_dir() else [p]:  # a missing file fails per file
            real = os.path.realpath(f)
            if real in seen:
                repeats += 1
                continue
            seen.add(real)
            out.append(f)
    return out, repeats


def _shorten(name: str, key: str) -> str:
    """``name`` if it fits :data:`NAME_BYTES`, else its head (cut on a character boundary) plus a digest of
    ``key``, so two long names sharing their first 140 bytes still differ."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= NAME_BYTES:
        return name
    head = raw[: NAME_BYTES - 13].decode("utf-8", "ignore")
    return f"{head}-{hashlib.sha256(key.encode('utf-8', 'surrogateescape')).hexdigest()[:12]}"


def _output_names(files: list[Path]) -> list[str]:
    """One distinct output stem per input: the file stem when unique; else the path relative to the common
    folder (``x__song``); inputs that still collide (``clip.wav`` and ``clip.flac`` in one folder) keep their
    extension (``clip.wav``, ``clip.flac``). Names longer than :data:`NAME_BYTES` are shortened with a digest
    of the input's real path, so no input ever overwrites another's output and no name is too long to write."""
    reals = [os.path.realpath(f) for f in files]
    stems = [f.stem for f in files]
    if len(set(stems)) == len(stems):
        names = stems
    else:
        root = Path(os.path.commonpath([str(Path(r).parent) for r in reals]))
        rel = [str(Path(r).relative_to(root)).replace(os.sep, "__") for r in reals]
        bare = [str(Path(r).with_suffix("")) for r in rel]
        names = [b if bare.count(b) == 1 else r for b, r in zip(bare, rel)]
    names = [_shorten(n, r) for n, r in zip(names, reals)]
    seen: dict[str, int] = {}
    for i, n in enumerate(names):  # cannot happen after de-duplication by real path; kept as a guard
        seen[n] = seen.get(n, 0) + 1
        if seen[n] > 1:
            names[i] = f"{n}.{seen[n]}"
    return names


def _identity(path: Path) -> dict[str, Any] | None:
    """What a resume compares: real path, size, mtime and a content digest; None if the file cannot be read."""
    try:
        st = path.stat()
        h = hashlib.sha256()
        with open(path, "rb") as f:
            if st.st_size <= _FULL_HASH_BYTES:
                h.update(f.read())
                kind = "sha256"
            else:  # an edit or re-encode changes the ends or the size; 128 KiB a file keeps resumes quick
                h.update(f.read(_BLOCK))
                f.seek(st.st_size - _BLOCK)
                h.update(f.read(_BLOCK))
                h.update(str(st.st_size).encode())
                kind = "sha256-ends"
    except OSError:
        return None
    return {"real": os.path.realpath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, f"{kind}": h.hexdigest()}


def _same_content(entry: dict[str, Any], ident: dict[str, Any]) -> bool:
    return all(entry.get(k) == v for k, v in ident.items())


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
    """Entries (by the input's real path) of an earlier run into the same folder, which must have used the same
    settings. Entries of older indexes, without a digest, never match an input, so those files are redone."""
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text())
        entries = {e.get("real") or os.path.realpath(e["file"]): e for e in old["files"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise EmbedError(f"{str(path)!r} exists but is not a `mert embed` index ({e}); use another --out") from None
    theirs = {k: old.get(k) for k in settings}
    if theirs != settings:
        raise EmbedError(f"{str(path.parent)!r} holds embeddings made with {theirs}, not {settings}; use another --out")
    return entries


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise EmbedError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EmbedError(f"--device {name!r}: no CUDA device is available here; use --device cpu (or auto)")
    return name


def run(args: argparse.Namespace) -> int:
    """`mert embed`: user mistakes are one line (exit 2); per-file failures are listed (exit 1)."""
    try:
        return _embed(args)
    except EmbedError as e:
        print(f"mert embed: error: {e}", file=sys.stderr)
        return 2


def _embed(args: argparse.Namespace) -> int:
    import torch

    from mert import Encoder, EncoderConfig
    from mert.fileio import UnsafeOutputError, check_outputs
    from mert.models.pooling import parse_layers

    device = _device(args.device)
    batch_size = args.batch_size if args.batch_size is not None else (16 if device.startswith("cuda") else 4)
    if batch_size < 1:
        raise EmbedError(f"--batch-size must be at least 1, got {batch_size}")
    if args.matrix and args.pool != "mean":
        raise EmbedError("--matrix needs --pool mean (one row per file)")
    if args.matrix and not args.matrix.endswith(".npy"):
        raise EmbedError(f"--matrix {args.matrix!r}: write a .npy file (NumPy matrix, rows in .rows.tsv)")
    if args.max_seconds is not None and not args.max_seconds > 0:
        raise EmbedError(f"--max-seconds must be positive, got {args.max_seconds}")
    scan_skipped: list[tuple[str, str]] = []
    files, repeats = _expand_inputs(args.files, scan_skipped)
    if not files:
        for p, reason in scan_skipped:
            print(f"  {p}: {reason}", file=sys.stderr)
        raise EmbedError("no audio files found in the given paths")
    out_dir = Path(args.out).expanduser()
    matrix = Path(args.matrix).expanduser() if args.matrix else None
    outputs = [out_dir / "index.json", *([matrix, matrix.with_suffix(".rows.tsv")] if matrix else [])]
    try:  # before any work: no output may land on an input or where the scan would read it back
        check_outputs(
            [out_dir, *outputs], files, scanned=[f for f in args.files if Path(f).is_dir()],
            scanned_extensions=AUDIO_EXTENSIONS, what="output",
        )  # fmt: skip
    except UnsafeOutputError as e:
        raise EmbedError(str(e)) from None
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
        enc.to(device=device).fast()
    else:
        enc.to(device=device, dtype={"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype])
    torch.set_num_threads(max(1, args.threads or torch.get_num_threads()))
    if args.compile:
        enc.compile()
    try:
        layers = parse_layers(args.layers, enc.num_layers + 1)
    except ValueError as e:
        raise EmbedError(f"--layers {args.layers!r}: {e}") from None
    settings = {
        "model": args.preset and f"random:{args.preset}" or args.model,
        "layers": layers,
        "pool": args.pool,
        "format": args.format,
        "frame_rate": enc.frame_rate,
    }
    if enc.strict_mert_compat:  # the reference front end does not ignore padding: one file per pass
        batch_size = 1
    job = _Job(args, enc, layers, settings, out_dir, batch_size)
    return job.run(files, _output_names(files), repeats, scan_skipped, matrix)


class _Job:
    """One `mert embed` run: what is done (the index), what to do, and writing each result as it comes."""

    def __init__(
        self, args: argparse.Namespace, enc: Any, layers: list[int], settings: dict, out_dir: Path, batch_size: int
    ):
        self.args, self.enc, self.layers, self.settings = args, enc, layers, settings
        self.out_dir, self.batch_size = out_dir, batch_size
        self.suffix = "npy" if args.format == "npy" else "safetensors"
        self.index_path = out_dir / "index.json"
        done = _read_index(self.index_path, settings)
        self.done = {r: e for r, e in done.items() if (out_dir / e["output"]).is_file()}  # by real path
        self.failed: list[tuple[Path, str]] = []

    def save_index(self) -> None:
        from mert.fileio import write_json_atomic

        failed = [{"file": str(p), "error": e} for p, e in self.failed]
        write_json_atomic(self.index_path, {**self.settings, "files": list(self.done.values()), "failed": failed})

    def run(
        self,
        files: list[Path],
        names: list[str],
        repeats: int,
        scan_skipped: list[tuple[str, str]],
        matrix: Path | None,
    ) -> int:
        import torch

        from mert.progress import progress_bar

        todo: list[tuple[Path, str, dict | None]] = []
        unchanged = changed = 0
        taken = {e["output"]: r for r, e in self.done.items()}
        for path, name in zip(files, names):
            ident = _identity(path)
            old = self.done.get(ident["real"]) if ident else None
            if old is not None and _same_content(old, ident):
                unchanged += 1
                continue
            if old is not None:  # the same input, edited or replaced since: its old output is overwritten
                changed += 1
                name = str(Path(old["output"]).name)[: -len(self.suffix) - 1]
            elif f"{name}.{self.suffix}" in taken:  # another input had this name in an earlier run
                name = _shorten(f"{name}-{hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:12]}", name)
            taken[f"{name}.{self.suffix}"] = ident["real"] if ident else str(path)
            todo.append((path, name, ident))
        if unchanged:
            print(f"mert embed: {unchanged} file(s) already in {str(self.index_path)!r} and unchanged, skipped")
        if changed:
            print(f"mert embed: {changed} file(s) changed since the last run, embedded again")
        if repeats:
            print(f"mert embed: {repeats} path(s) name a file already listed (same real path), embedded once")
        stopped: str | None = None
        bar = progress_bar(total=len(todo), desc="embed", unit="file", disable=self.args.quiet)
        try:
            with torch.inference_mode():
                for k in range(0, len(todo), self.batch_size):
                    group = todo[k : k + self.batch_size]
                    for (path, name, ident), result in zip(group, self._embed_group([p for p, _, _ in group])):
                        bar.update(1)
                        if isinstance(result, str):
                            self.failed.append((path, result))
                            continue
                        stopped = self._write(path, name, ident, result)
                        if stopped:
                            break
                    if stopped:
                        break
                    if k // self.batch_size % 16 == 15:
                        with_index = self._try_save_index()  # a killed run keeps what it finished
                        if with_index:
                            stopped = with_index
                            break
        finally:
            bar.close()
        index_error = self._try_save_index()
        if matrix is not None and not stopped and not index_error:
            stopped = self._write_matrix(matrix, files)
        out = self.out_dir
        print(f"mert embed: {len(self.done)} file(s) in {out} (layers {self.args.layers}, pool {self.args.pool})")
        status = 0
        unreadable = [(p, r) for p, r in scan_skipped if r.startswith("unreadable")]
        if scan_skipped:
            print(f"mert embed: the folder scan left out {len(scan_skipped)} path(s):", file=sys.stderr)
            for p, r in scan_skipped:
                print(f"  {p}: {r}", file=sys.stderr)
            status = 1 if unreadable else 0
        if self.failed:
            print(f"mert embed: {len(self.failed)} file(s) failed and were skipped:", file=sys.stderr)
            for p, e in self.failed:
                print(f"  {p}: {e}", file=sys.stderr)
            status = 1
        if stopped or index_error:
            parts = [m for m in (stopped, index_error) if m]
            parts.append(
                f"the index lists the {len(self.done)} file(s) written" if not index_error
                else f"the outputs written so far are in {out}; run the same command again once there is room"
            )  # fmt: skip
            print(f"mert embed: error: {'; '.join(parts)}", file=sys.stderr)
            return 2
        return status

    def _try_save_index(self) -> str | None:
        try:
            self.save_index()
        except OSError as e:
            return f"writing {str(self.index_path)!r} failed: {describe_write_error(e, self.index_path)}"
        return None

    def _embed_group(self, paths: list[Path]) -> list[Any]:
        """Embeddings ``(n, d)``/``(n, t, d)`` (numpy float32) or the reason, for each of ``paths``.

        Files that fit one window are encoded together, right-padded with their lengths (the encoder ignores
        padding, so each result equals that file embedded alone); longer files go through the windowed path.
        """
        import torch

        from mert.audio import load_audio, resample
        from mert.models.pooling import mean_pool

        enc, args = self.enc, self.args
        results: list[Any] = [None] * len(paths)
        wavs: dict[int, Any] = {}
        for i, path in enumerate(paths):
            try:
                wav, sr = load_audio(path, max_seconds=args.max_seconds)
                if len(paths) > 1:
                    wav = resample(wav, sr, enc.sample_rate)
                    sr = enc.sample_rate
                    window = None if args.chunk_seconds is None else args.chunk_seconds * enc.sample_rate
                    if window is not None and 0 < window < wav.shape[-1] or wav.shape[-1] < 400:
                        results[i] = self._embed_one(wav, sr, path)
                        continue
                    wavs[i] = wav
                else:
                    results[i] = self._embed_one(wav, sr, path)
            except (OSError, ValueError, RuntimeError, MemoryError) as e:
                results[i] = str(e)
        if wavs:
            idx = list(wavs)
            try:
                lengths = torch.tensor([wavs[i].shape[-1] for i in idx])
                batch = torch.nn.utils.rnn.pad_sequence([wavs[i] for i in idx], batch_first=True)
                out = enc(batch, lengths, sample_rate=enc.sample_rate, layers=self.layers)
                states = out.stacked(self.layers)  # (b, n, t, d)
                if args.pool == "mean":
                    pooled = mean_pool(states.float(), out.lengths).to(enc.mask_emb.dtype)  # (b, n, d)
                    items = [pooled[r] for r in range(len(idx))]
                else:
                    items = [states[r, :, : int(out.lengths[r])] for r in range(len(idx))]
                for r, i in enumerate(idx):
                    if not bool(torch.isfinite(items[r]).all()):
                        raise ValueError("non-finite")
                    results[i] = items[r].float().cpu().numpy()
            except (ValueError, RuntimeError, MemoryError):  # find the culprit: each file on its own
                for i in idx:
                    try:
                        results[i] = self._embed_one(wavs[i], enc.sample_rate, paths[i])
                    except (ValueError, RuntimeError, MemoryError) as e:
                        results[i] = str(e)
        return results

    def _embed_one(self, wav: Any, sr: int, path: Path) -> Any:
        # Encoder.embed's bounded-memory path: only the chosen layers are ever kept. (Decoding the next file on
        # a thread meanwhile measured 1.00x: benchmarks/embed_folder.py.)
        x = self.enc.embed(
            wav, sr, layers=self.layers, pool=self.args.pool if self.args.pool != "none" else None,
            chunk_seconds=self.args.chunk_seconds, name=str(path),
        )  # fmt: skip
        return x.float().cpu().numpy()

    def _write(self, path: Path, name: str, ident: dict | None, arr: Any) -> str | None:
        """Write one output atomically and record it; the reason to stop (a write error), else None."""
        import numpy as np

        from mert.fileio import UnsafeOutputError, atomic_path, open_atomic

        target = self.out_dir / f"{name}.{self.suffix}"
        try:
            if self.args.format == "npy":
                with open_atomic(target, text=False, root=self.out_dir) as f:
                    np.save(f, arr)
            else:
                from safetensors.numpy import save_file

                meta = {"layers": json.dumps(self.layers), "frame_rate": str(self.enc.frame_rate), "source": str(path)}
                with atomic_path(target, root=self.out_dir) as tmp:
                    save_file({"embeddings": arr}, str(tmp), metadata=meta)
        except UnsafeOutputError as e:  # a link planted at the output name: that file fails, nothing is written
            self.failed.append((path, str(e)))
            return None
        except OSError as e:
            return f"writing {str(target)!r} failed: {describe_write_error(e, target)}"
        real = ident["real"] if ident else os.path.realpath(path)
        self.done[real] = {"file": str(path), **(ident or {"real": real}), "output": target.name,
                           "shape": list(arr.shape)}  # fmt: skip
        return None

    def _write_matrix(self, matrix: Path, files: list[Path]) -> str | None:
        """All pooled embeddings of this run's inputs as one ``(N, d)`` matrix (``(N, n, d)`` for several
        layers), rows in input order, and ``MATRIX.rows.tsv`` naming each row's file; the reason on failure."""
        import numpy as np

        from mert.fileio import open_atomic, write_text_atomic

        rows, names = [], []
        for f in files:
            entry = self.done.get(os.path.realpath(f))
            if entry is None:
                continue
            path = self.out_dir / entry["output"]
            if self.suffix == "npy":
                arr = np.load(path)
            else:
                from safetensors.numpy import load_file

                arr = load_file(str(path))["embeddings"]
            rows.append(arr[0] if arr.shape[0] == 1 else arr)
            names.append(str(f))
        if not rows:
            return None
        try:
            with open_atomic(matrix, text=False) as f:
                np.save(f, np.stack(rows))
            lines = ["row\tfile"] + [f"{i}\t{n}" for i, n in enumerate(names)]
            write_text_atomic(matrix.with_suffix(".rows.tsv"), "\n".join(lines) + "\n")
        except OSError as e:
            return f"writing {str(matrix)!r} failed: {describe_write_error(e, matrix)}"
        print(f"mert embed: {len(rows)} row(s) -> {matrix} ({matrix.with_suffix('.rows.tsv').name} names them)")
        return None

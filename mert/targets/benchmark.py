"""Throughput of each teacher on CPU, in multiples of real time.

    python -m mert.targets.benchmark [--threads 2] [--batch 8] [--seconds 5] [--repeats 3]

Runs offline on synthetic music. EnCodec is timed with a randomly initialised 24 kHz model whose codebooks
are filled with random vectors: the same network and the same 1024-way searches as the published weights,
so the same cost. Prints one line per teacher: build time, median time per batch, x real time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from mert.data.synthetic import render_clip
from mert.targets.base import Teacher

__all__ = ["main"]


def _encodec_weights(folder: Path) -> Path:
    """A state dict of the EnCodec 24 kHz architecture with non-empty codebooks."""
    from encodec import EncodecModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = EncodecModel.encodec_model_24khz(pretrained=False)
    gen = torch.Generator().manual_seed(0)
    for layer in model.quantizer.vq.layers:
        layer._codebook.embed.copy_(torch.randn(layer._codebook.embed.shape, generator=gen))
        layer._codebook.inited.fill_(1)
    path = folder / "encodec_24khz.th"
    torch.save(model.state_dict(), path)
    return path


def _builders(folder: Path, sample_rate: int, fit_wavs: list[torch.Tensor]) -> dict[str, Callable[[], Teacher]]:
    from mert.targets import CQTTargets, EncodecTargets, KMeansTargets, RandomProjectionTargets

    return {
        "encodec": lambda: EncodecTargets(weights=_encodec_weights(folder), check_codes=False),
        "cqt": lambda: CQTTargets(sample_rate=sample_rate),
        "random_projection": lambda: RandomProjectionTargets(sample_rate=sample_rate),
        "kmeans": lambda: KMeansTargets.fit(fit_wavs, num_clusters=100, sample_rate=sample_rate, progress=False),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mert.targets.benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch", type=int, default=8, help="clips per batch")
    parser.add_argument("--seconds", type=float, default=5.0, help="clip length")
    parser.add_argument("--repeats", type=int, default=3, help="timed batches (after one warm-up)")
    parser.add_argument("--teachers", default="encodec,cqt,random_projection,kmeans")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    sr = 24000
    wav = torch.stack([torch.from_numpy(render_clip(args.seconds, sr, seed)[0]) for seed in range(args.batch)])
    audio_seconds = args.batch * args.seconds
    print(f"batch {args.batch} x {args.seconds:g} s, {args.threads} thread(s), torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        builders = _builders(Path(tmp), sr, list(wav))
        for name in args.teachers.split(","):
            start = time.perf_counter()
            teacher: Teacher = builders[name]()
            built = time.perf_counter() - start
            teacher(wav)  # warm-up: allocator, lazy kernels
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                teacher(wav)
                times.append(time.perf_counter() - start)
            per_batch = statistics.median(times)
            print(
                f"{name:18s} build {built:5.2f} s   {per_batch:6.3f} s/batch   "
                f"{audio_seconds / per_batch:7.1f} x real time"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

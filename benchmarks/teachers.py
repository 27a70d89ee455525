"""Teachers on CPU: throughput of each (x realtime, one clip and batched) and the cost of caching their targets
into shards once vs computing them in every training step.

    python benchmarks/teachers.py [--batch 8] [--seconds 5] [--repeats 3] [--shard-minutes 4]

Runs offline on synthetic music. EnCodec is timed with a randomly initialised 24 kHz model whose codebooks are
filled with random vectors: the same network and the same 1024-way searches as the published weights, so the
same cost. The shard part runs `mert data shard` with EnCodec codes and CQT features on ``--shard-minutes`` of
audio and reports seconds per audio hour, with and without targets (the difference is the caching cost).
Compare it with the teacher share of a training step in `benchmarks/train_step.py`. Takes about 3 minutes
on 2 cores. (Formerly `python -m mert.targets.benchmark`.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import machine_line  # noqa: E402
from mert.data.synthetic import render_clip  # noqa: E402
from mert.targets.base import Teacher  # noqa: E402


def encodec_weights(folder: Path) -> Path:
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


def builders(folder: Path, sample_rate: int, fit_wavs: list[torch.Tensor]) -> dict[str, Callable[[], Teacher]]:
    from mert.targets import CQTTargets, EncodecTargets, KMeansTargets, RandomProjectionTargets, RVQConfig, fit_rvq

    return {
        "encodec": lambda: EncodecTargets(weights=encodec_weights(folder), check_codes=False),
        "cqt": lambda: CQTTargets(sample_rate=sample_rate),
        "random_projection": lambda: RandomProjectionTargets(sample_rate=sample_rate),
        "kmeans": lambda: KMeansTargets.fit(fit_wavs, num_clusters=100, sample_rate=sample_rate, progress=False),
        # The default teacher's size (8 x 1024 codes of 128-band log-mel); its cost does not depend on the fit.
        "rvq": lambda: fit_rvq(
            fit_wavs, RVQConfig(sample_rate=sample_rate), steps=5, batch_frames=1024, min_usage=0.0, progress=False
        ),
    }


def shard_seconds(folder: Path, minutes: float, teachers: bool, weights: Path) -> float:
    """Wall time of `mert data shard` over ``minutes`` of 30 s files, with EnCodec + CQT targets or none."""
    from mert.cli.data import manifest_cli, shard_cli

    audio = folder / "audio"
    if not audio.exists():
        audio.mkdir()
        for i in range(max(1, int(minutes * 2))):
            sf.write(audio / f"song{i:03d}.wav", render_clip(30.0, 24000, i)[0], 24000)
        manifest_cli([str(audio), "--out", str(folder / "train.tsv"), "--quiet"])
    out = folder / ("shards_targets" if teachers else "shards_plain")
    argv = [str(folder / "train.tsv"), "--out", str(out), "--overwrite", "--quiet"]
    if teachers:
        argv += ["--code-teacher", "encodec", "--feature-teacher", "cqt"]
        argv += ["--teacher-arg", f"codes.weights={weights}", "--teacher-arg", "codes.check_codes=false"]
    start = time.perf_counter()
    if shard_cli(argv) != 0:
        raise RuntimeError(f"mert data shard failed: {argv}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    ap.add_argument("--batch", type=int, default=8, help="clips per batch")
    ap.add_argument("--seconds", type=float, default=5.0, help="clip length")
    ap.add_argument("--repeats", type=int, default=3, help="timed batches (after one warm-up); best is kept")
    ap.add_argument("--teachers", default="encodec,cqt,random_projection,kmeans,rvq")
    ap.add_argument("--shard-minutes", type=float, default=4.0, help="audio for the shard timing (0: skip)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    sr = 24000
    wav = torch.stack([torch.from_numpy(render_clip(args.seconds, sr, seed)[0]) for seed in range(args.batch)])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make = builders(tmp, sr, list(wav))
        for name in args.teachers.split(","):
            teacher: Teacher = make[name]()
            for b in sorted({1, args.batch}):
                x = wav[:b]
                teacher(x)  # warm-up: allocator, lazy kernels
                best = float("inf")
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    teacher(x)
                    best = min(best, time.perf_counter() - start)
                rows.append((name, b, best, b * args.seconds / best))
        shard = {}
        if args.shard_minutes > 0:
            weights = encodec_weights(tmp)
            for with_targets in (False, True):
                shard[with_targets] = shard_seconds(tmp, args.shard_minutes, with_targets, weights)

    print(f"# Teachers, clips of {args.seconds:g} s\n\n{machine_line()}\n")
    print("| teacher | batch | s/batch | x realtime |\n|---|---|---|---|")
    for name, b, t, xrt in rows:
        print(f"| {name} | {b} | {t:.3f} | {xrt:.1f} |")
    if shard:
        hours = max(1, int(args.shard_minutes * 2)) * 30 / 3600
        plain, full = shard[False] / hours, shard[True] / hours
        print(f"\n`mert data shard` over {hours * 60:g} min of audio, per audio hour:\n")
        print("| shards | s per audio hour |\n|---|---|")
        print(f"| audio only | {plain:.0f} |\n| with EnCodec codes + CQT features | {full:.0f} |")
        print(f"| caching cost of the targets | {full - plain:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How much audio one loader worker delivers, against what a GPU training MERT-95M consumes.

    python benchmarks/loader.py                      # local shards and a local S3 server, in this process
    python benchmarks/loader.py --workers 2 --batches 20
    python benchmarks/loader.py --no-s3              # without moto installed

Shards of synthetic 5 s segments are written twice, with cached targets (random-projection codes + CQT
features, as `mert data shard --code-teacher random_projection --feature-teacher cqt` writes them) and without,
then read by a DataLoader in three ways: the local folder by random access (`ShardDataset`, what
`data.shards=/path` does), the local folder streamed (`data.streaming=true`), and the same shards from moto's
S3 server, run as its own process on a loopback port (`data.shards=s3://...`). Throughput is audio-seconds
delivered per wall second, divided by the number of workers, after two warm-up batches; with `--workers 0` (the
default) the loading runs in this process and is also timed in CPU seconds, which is what one idle core delivers
however busy the machine is. Without cached targets the loader only reads
audio, and the trainer runs the teachers inside its step (on the GPU in a GPU run): the table also gives what
the teachers cost per audio-second on this CPU, which is what computing targets in the loader would cost.

The demand side is arithmetic, not a measurement: the 95M training step's FLOPs per 5 s clip (the analytic count
of benchmarks/common.py, forward x 3 for forward + backward, plus the prediction heads) divided into an H100's
published dense bf16 peak (989 TFLOP/s, NVIDIA's H100 SXM datasheet) at an assumed model-FLOPs utilisation of
30-50 %. It stays marked as such until `benchmarks/gpu_check.py` measures a GPU step.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import encoder_flops, machine_line  # noqa: E402
from mert import EncoderConfig  # noqa: E402
from mert.models.config import frame_lengths  # noqa: E402

H100_BF16_DENSE_TFLOPS = 989.0  # NVIDIA H100 SXM datasheet, dense (no sparsity)


def _shards(root: Path, segments: int, seconds: float, shard_size: int) -> dict[str, Path]:
    from mert.data.manifest import scan_audio, write_manifest
    from mert.data.shards import write_shards
    from mert.data.synthetic import write_synthetic_corpus
    from mert.targets import CQTTargets, RandomProjectionTargets

    clips = write_synthetic_corpus(root / "clips", segments, seconds=seconds, seed=0)
    write_manifest(root / "m.tsv", scan_audio(clips, progress=False).entries)
    common = dict(segment_seconds=seconds, min_seconds=seconds, shard_size=shard_size, progress=False)
    teachers = {"codes": RandomProjectionTargets(seed=0), "features": CQTTargets()}
    write_shards(root / "m.tsv", root / "cached", teachers=teachers, **common)
    write_shards(root / "m.tsv", root / "plain", **common)
    return {"cached": root / "cached", "plain": root / "plain"}


def _throughput(loader_factory, batches: int, workers: int, sample_rate: int) -> tuple[float, float | None]:
    """(audio-seconds per wall second per worker, audio-seconds per CPU-second of this process) over ``batches``
    after 2 warm-up ones; the CPU figure only with ``workers=0`` (the loading then runs in this process)."""
    loader = loader_factory()
    it = iter(loader)
    for _ in range(2):
        next(it)
    audio = 0.0
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        batch = next(it)
        audio += float(batch["lengths"].sum()) / sample_rate
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    del it, loader
    return audio / wall / max(1, workers), (audio / cpu if workers == 0 else None)


class _S3Server:
    """moto's S3 server in its own process on a loopback port (its CPU is not the loader's)."""

    def __enter__(self) -> dict[str, str]:
        import socket
        import subprocess
        import urllib.request

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.update(
            {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
        )
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        return {"endpoint_url": url}

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait()


def _teacher_cost(seconds: float, sample_rate: int) -> dict[str, float]:
    """Audio-seconds per CPU-second of each teacher on a 16-clip batch (one process, all its threads)."""
    from mert.targets import CQTTargets, RandomProjectionTargets

    wav = torch.randn(16, int(seconds * sample_rate)) * 0.1
    out = {}
    for name, teacher in {"CQT": CQTTargets(), "random projection": RandomProjectionTargets(seed=0)}.items():
        with torch.inference_mode():
            teacher(wav)
            t0 = time.process_time()
            for _ in range(3):
                teacher(wav)
            cpu = (time.process_time() - t0) / 3
        out[name] = 16 * seconds / cpu
    return out


def _stream(dataset, micro: int, workers: int) -> DataLoader:
    dataset.plan(micro_batch_size=micro, seed=0)
    return DataLoader(dataset, batch_size=None, num_workers=workers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segments", type=int, default=96, help="5 s segments written (default 96)")
    ap.add_argument("--segment-seconds", type=float, default=5.0)
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=10, help="timed micro-batches per case (after 2 warm-up)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: in this process, CPU-timed)")
    ap.add_argument("--no-s3", action="store_true", help="skip the S3 cases (moto not installed)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from mert.data.datasets import collate_audio
    from mert.data.shards import ShardDataset
    from mert.data.streaming import StreamingShards

    sr = 24000
    rows = []
    with tempfile.TemporaryDirectory(prefix="mert-loader-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        t0 = time.perf_counter()
        folders = _shards(root, args.segments, args.segment_seconds, args.shard_size)
        print(f"wrote {args.segments} segments x 2 in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        options = None
        if not args.no_s3:
            import s3fs

            options = stack.enter_context(_S3Server())
            fs = s3fs.S3FileSystem(**options)
            fs.mkdir("bench")
            for kind, folder in folders.items():
                fs.put(str(folder) + "/", f"bench/{kind}/", recursive=True)
        for kind, folder in folders.items():
            cases = {
                "local folder, random access": lambda f=folder: DataLoader(
                    ShardDataset(f, sample_rate=sr),
                    batch_size=args.micro_batch,
                    collate_fn=collate_audio,
                    sampler=RandomSampler(range(args.segments), replacement=True, num_samples=10**6),
                    num_workers=args.workers,
                ),
                "local folder, streamed": lambda f=folder: _stream(
                    StreamingShards(f, sample_rate=sr), args.micro_batch, args.workers
                ),
            }
            if options is not None:
                cases["S3 server (loopback), streamed"] = lambda k=kind: _stream(
                    StreamingShards(f"s3://bench/{k}", sample_rate=sr, storage_options=options),
                    args.micro_batch,
                    args.workers,
                )
            for name, factory in cases.items():
                per_worker, per_cpu = _throughput(factory, args.batches, args.workers, sr)
                rows.append((name, kind, per_worker, per_cpu))
                print(f"{name:34s} {kind:7s} {per_worker:8.0f} audio-s/s per worker", file=sys.stderr)
    teachers = _teacher_cost(args.segment_seconds, sr)

    # Demand: MERT-95M's training step, arithmetic from the published H100 peak.
    cfg = EncoderConfig.preset("95m")
    clip = int(5.0 * sr)
    fwd = encoder_flops(cfg, clip)["total"]
    frames = int(frame_lengths(clip))
    heads = 2 * frames * cfg.hidden_size * (8 * 1024 + 336)  # code head (8 x 1024 classes) + CQT head
    train = 3 * (fwd + heads)
    demand = {mfu: H100_BF16_DENSE_TFLOPS * 1e12 * mfu / train * 5.0 for mfu in (0.3, 0.4, 0.5)}

    print(machine_line())
    print()
    print(
        f"Loader throughput ({args.workers} worker(s), micro-batch {args.micro_batch} x {args.segment_seconds:g} s, "
        f"{args.segments} segments in shards of {args.shard_size}; one torch thread):"
    )
    print()
    print("| source | targets | audio-s per wall-s per worker | audio-s per CPU-s (one idle core) |")
    print("|---|---|---|---|")
    for name, kind, per_worker, per_cpu in rows:
        label = "cached in the shards" if kind == "cached" else "none (teachers in the step)"
        cpu = f"{per_cpu:,.0f}" if per_cpu is not None else "(use --workers 0)"
        print(f"| {name} | {label} | {per_worker:,.0f} | {cpu} |")
    print()
    print("Teachers on this CPU (what computing the targets in the loader would deliver per worker):")
    print()
    for name, rate in teachers.items():
        print(f"- {name}: {rate:,.0f} audio-s per CPU-s")
    print()
    print(
        f"Demand (arithmetic, not measured): MERT-95M trains on {train / 1e12:.2f} TFLOP per 5 s clip "
        f"(3 x the forward pass: encoder {fwd / 1e12:.3f}, heads {heads / 1e12:.3f}); "
        f"an H100 at {H100_BF16_DENSE_TFLOPS:g} TFLOP/s dense bf16:"
    )
    print()
    # Workers per GPU from the idle-core figure when it was measured (--workers 0), else from the wall clock.
    cached = [(name, cpu if cpu is not None else wall) for name, kind, wall, cpu in rows if kind == "cached"]
    print(
        "| model-FLOPs utilisation | audio-s per s per GPU | per 8-GPU node |"
        + "".join(f" workers per GPU, {name} |" for name, _ in cached)
    )
    print("|---|---|---|" + "---|" * len(cached))
    for mfu, need in demand.items():
        cells = "".join(f" {need / rate:.1f} |" for _, rate in cached)
        print(f"| {mfu:.0%} | {need:,.0f} | {8 * need:,.0f} |{cells}")


if __name__ == "__main__":
    main()

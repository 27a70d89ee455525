"""How long the probes take on cached features of a MERT-v1-95M-sized encoder, and what batching heads buys.

    python benchmarks/probe_speed.py --clips 2000 --classes 10

Features are random with a class signal in one layer (13 hidden states x 768, as the 95M model's cache holds),
split 70/15/15. Prints wall time of the full MARBLE protocol (MLP 512, six learning rates, three seeds, every
layer plus the weighted sum: 14 x 6 heads per seed) and of the quick protocol, plus the speed-up of training the
heads side by side over one head at a time (measured on one seed of the linear sweep, the same heads either way).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mert.probe.probes import ProbeConfig, ProbeData, run_probes, scorer  # noqa: E402


def _data(n: int, layers: int, d: int, classes: int) -> ProbeData:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    x = torch.randn(n, layers, d, generator=g)
    x[:, 7] += 0.3 * torch.randn(classes, d, generator=g)[y]
    cut = [0, int(0.7 * n), int(0.85 * n), n]
    split = {s: slice(cut[i], cut[i + 1]) for i, s in enumerate(("train", "valid", "test"))}
    ys = {s: y[sl] for s, sl in split.items()}
    metrics = ("accuracy", "macro_f1")
    return ProbeData(
        {s: x[sl] for s, sl in split.items()},
        ys,
        "multiclass",
        classes,
        metrics,
        scorer("multiclass", {s: v.numpy() for s, v in ys.items()}, metrics),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=2000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--layers", type=int, default=13)
    ap.add_argument("--dim", type=int, default=768)
    args = ap.parse_args()
    data = _data(args.clips, args.layers, args.dim, args.classes)
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    print(f"{platform.machine()} {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{args.clips} clips x {args.layers} layers x {args.dim}, {args.classes} classes\n")
    print("| protocol | heads per seed | seeds | wall s | best layer | test accuracy |")
    print("|---|---|---|---|---|---|")
    for name, cfg in [
        ("marble (MLP 512, 6 LRs)", ProbeConfig()),
        (
            "quick (linear, 2 LRs)",
            ProbeConfig(head="linear", lrs=(1e-3, 1e-2), seeds=(0, 1), max_epochs=40, patience=6),
        ),  # noqa: E501
    ]:
        t0 = time.perf_counter()
        res = run_probes(data, args.layers, cfg)
        dt = time.perf_counter() - t0
        acc = res.candidates[res.best].test_mean_std("accuracy")
        heads = (args.layers + 1) * len(cfg.lrs)
        score = f"{100 * acc[0]:.1f} +- {100 * acc[1]:.1f}"
        print(f"| {name} | {heads} | {len(cfg.seeds)} | {dt:.1f} | {res.best} | {score} |")

    sweep = ProbeConfig(head="linear", layers="sweep", lrs=(1e-3,), seeds=(0,), max_epochs=10, patience=10)
    times = {}
    for label, parallel in (("side by side", 96), ("one at a time", 1)):
        t0 = time.perf_counter()
        run_probes(data, args.layers, ProbeConfig(**{**sweep.__dict__, "max_parallel": parallel}))
        times[label] = time.perf_counter() - t0
    print(
        f"\nlinear sweep, {args.layers} heads x 10 epochs: side by side {times['side by side']:.2f} s, one at a time "
        f"{times['one at a time']:.2f} s: {times['one at a time'] / times['side by side']:.2f}x"
    )


if __name__ == "__main__":
    main()

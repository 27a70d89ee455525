"""Attention kernels on CPU at the 95M encoder's shape: torch's flash attention vs `shifted_attention`.

    python benchmarks/attention.py [--frames 2250] [--repeats 5]

One layer's attention (12 heads x 64, ``--frames`` keys and queries; 2250 = 30 s at 75 Hz) on random inputs,
with flat attention (q ~ N(0, 1)) and peaked attention (q ~ N(0, 36)). For each kernel: milliseconds (best of
the repeats), effective GFLOP/s (4 t^2 d per head), and the error to a float64 reference: the largest absolute
difference and the smallest cosine similarity of an output row. Kernels:

* flash fp32 / flash bf16: `F.scaled_dot_product_attention` (the flash kernel on CPU);
* shifted bf16: `mert.models.fast_path.shifted_attention`, what bf16 inference uses;
* plain bf16: per-head GEMMs with the scores rounded to bf16 before the softmax (no shift), for contrast;
* plain fp32: the same in float32.

Takes about 20 s.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine_line  # noqa: E402
from mert.models.fast_path import shifted_attention  # noqa: E402


def plain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-head softmax(q k^T / sqrt(e)) v in the inputs' dtype: ``(b, h, t, e)`` -> ``(b, t, h, e)``."""
    b, h, t, e = q.shape
    out = q.new_empty(b, t, h, e)
    kt = (k * e**-0.5).transpose(-1, -2).contiguous()
    for i in range(b):
        for j in range(h):
            out[i, :, j] = torch.softmax(q[i, j] @ kt[i, j], dim=-1) @ v[i, j]
    return out


def best_ms(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=2250)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    t, h, e = args.frames, args.heads, args.head_dim
    flops = 4 * h * t * t * e
    print(f"# One attention layer, {h} heads x {e}, {t} frames\n\n{machine_line()}\n")
    print("| attention | kernel | ms | GFLOP/s | max abs error | min row cosine |\n|---|---|---|---|---|---|")
    for label, peak in (("flat", 1.0), ("peaked", 6.0)):
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, h, t, e, generator=g) * s for s in (peak, 1.0, 1.0))
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double()).transpose(1, 2).float()
        qb, kb, vb = (x.bfloat16() for x in (q, k, v))

        def flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)

        kernels = {
            "flash fp32": (flash, (q, k, v)),
            "flash bf16": (flash, (qb, kb, vb)),
            "shifted bf16": (shifted_attention, (qb, kb, vb)),
            "plain bf16": (plain, (qb, kb, vb)),
            "plain fp32": (plain, (q, k, v)),
        }
        with torch.inference_mode():
            for name, (fn, inputs) in kernels.items():
                ms, y = best_ms(lambda fn=fn, inputs=inputs: fn(*inputs), args.repeats)
                y = y.float()
                err = (y - ref).abs().max().item()
                cos = F.cosine_similarity(y, ref, dim=-1).min().item()
                print(f"| {label} | {name} | {ms:.1f} | {flops / ms / 1e6:.0f} | {err:.4f} | {cos:.5f} |")


if __name__ == "__main__":
    main()

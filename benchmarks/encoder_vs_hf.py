"""Time `mert.Encoder` against transformers' `HubertModel` holding the same weights, side by side in one run.

    python benchmarks/encoder_vs_hf.py --layout 95m --seconds 30 --repeats 3

Both models get identical random weights (a HubertModel with MERT-v1's config, saved in the HF layout and
loaded through `Encoder.from_pretrained`). Runs alternate between the two models so drifts in machine load
hit both equally. Prints seconds per pass, realtime factor, the throughput ratio and the largest difference
between any pair of hidden states.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mert import Encoder  # noqa: E402
from tests.conftest import hf_config, music_like, perturbed_hf_model, save_hf_folder  # noqa: E402


def _time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layout", choices=["95m", "330m"], default="95m")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16 (autocast)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    hf = perturbed_hf_model(hf_config(args.layout, size="full"))
    with tempfile.TemporaryDirectory() as tmp:
        enc = Encoder.from_pretrained(save_hf_folder(hf, Path(tmp) / "ckpt"))
    sr = 24000
    wav = music_like(int(args.seconds * sr), sr=sr, seed=0)
    print(
        f"# {args.layout} encoder, {args.seconds:g} s clip, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}"
    )
    print(
        "| precision | HubertModel s/pass | mert s/pass | HF x realtime | mert x realtime | speed-up | max abs diff |"
    )
    print("|---|---|---|---|---|---|---|")
    for prec in args.precisions.split(","):
        ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if prec == "bf16" else torch.no_grad

        def run_hf(ctx=ctx):
            with torch.inference_mode(), ctx():
                o = hf(wav, output_hidden_states=True)
                return (*o.hidden_states[:-1], o.last_hidden_state)

        def run_mert(ctx=ctx):
            with torch.inference_mode(), ctx():
                return enc(wav, sample_rate=sr).hidden_states

        run_hf(), run_mert()  # warm-up: allocator, oneDNN primitive caches
        t_hf, t_me = float("inf"), float("inf")
        for _ in range(args.repeats):
            a, ref = _time(run_hf, 1)
            b, out = _time(run_mert, 1)
            t_hf, t_me = min(t_hf, a), min(t_me, b)
        diff = max((x.float() - y.float()).abs().max().item() for x, y in zip(out, ref))
        print(
            f"| {prec} | {t_hf:.2f} | {t_me:.2f} | {args.seconds / t_hf:.2f} | {args.seconds / t_me:.2f} | "
            f"{t_hf / t_me:.2f}x | {diff:.2e} |"
        )


if __name__ == "__main__":
    main()

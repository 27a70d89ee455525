"""Time an experiment's optimiser step as it trains from cached shards: its model and objective, 16 x 2 s clips.

    python benchmarks/recipe_step.py --experiment demo_cpu --threads 1 --steps 10
    python benchmarks/recipe_step.py --experiment conformer_kmeans --threads 1 --steps 10

Targets are computed once before timing (the recipes read them from shards), so a step is the objective's forward
and backward plus AdamW. Prints the median wall time and the median CPU time (all threads of this process) per
step: on a busy machine the CPU time is the better estimate of an idle core's wall time. The sizes of the
`cpu_hour` experiments come from these numbers (docs/notes/2026-12-07-cpu-recipes.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from benchmarks.common import recipe_objective  # noqa: E402
from tests.helpers import music_like  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", default="demo_cpu", help="a conf/experiment entry with a k-means + CQT teacher")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10, help="timed steps (the first two are not counted)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = [f"experiment={args.experiment}", "data.shards=x", "targets.code_teacher.path=x"]
    objective = recipe_objective(overrides)
    enc = objective.encoder
    opt = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-3)
    wav = music_like(int(24000 * args.seconds), batch=args.batch)
    with torch.no_grad():
        targets = objective.compute_targets(wav)
    wall, cpu = [], []
    for i in range(args.steps + 2):
        t0, c0 = time.perf_counter(), time.process_time()
        out = objective(wav, targets=targets, generator=torch.Generator().manual_seed(i))
        (out.loss_sum / out.n_masked.clamp(min=1)).backward()
        opt.step()
        opt.zero_grad()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    w, c = statistics.median(wall[2:]), statistics.median(cpu[2:])
    audio = args.batch * args.seconds
    print(
        f"{args.experiment} ({enc.config.name}, {enc.config.frame_rate:g} Hz), {args.threads} thread(s), "
        f"{args.batch} x {args.seconds:g} s: {w:.3f} s wall / {c:.3f} CPU-s per step (median of {args.steps}); "
        f"{audio / c:.0f} audio-seconds per CPU-second"
    )


if __name__ == "__main__":
    main()

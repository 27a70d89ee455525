"""Eager against `torch.compile`: a training step and an inference pass, both model families, side by side.

    python benchmarks/compile.py --threads 1
    python benchmarks/compile.py --threads 1 --models tiny conformer_tiny --steps 6
    python benchmarks/compile.py --device cuda --threads 8          # the same on a GPU

For each model group (``conf/model/NAME.yaml``) it builds one objective as ``benchmarks/recipe_step.py`` does
(k-means + CQT teachers, the ``tiny`` objective settings, 16 x 2 s of music-like audio, targets computed once
before timing, as the recipes read them from shards), copies it, compiles the copy (``MERTObjective.compile``,
what ``model.compile=true`` does), and times a step (forward + backward + AdamW) of the two in turn, so load on a
shared machine hits both alike. Then the same for inference (``Encoder.forward`` under ``inference_mode``, eval
mode: the eager one takes the library's CPU fast path). Printed per model: compile time (the first compiled
calls less a compiled step), median wall and process CPU time per step (all threads of this process: on a busy
machine CPU time is the better estimate of an idle core's wall time), the ratio compiled / eager, how many
graphs dynamo made, recompilations and graph breaks. On a GPU the clock is read after ``torch.cuda.synchronize``.
Compile times are cold (a fresh inductor cache) unless ``--warm-cache``: a rerun with a warm cache compiles in a
fraction of the time.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from benchmarks.common import gemm_peaks, machine_line, recipe_objective  # noqa: E402
from mert import Encoder  # noqa: E402
from mert.pretrain import MERTObjective  # noqa: E402
from tests.helpers import music_like  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Wall and process CPU seconds of one call, the device's queue drained before each clock read."""
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def _dynamo_counts() -> dict[str, int]:
    """Frames dynamo compiled (a function compiled again counts again), graphs, graph breaks, so far."""
    from torch._dynamo.utils import counters

    return {
        "frames": int(counters["frames"]["ok"]),
        "graphs": int(counters["stats"]["unique_graphs"]),
        "breaks": int(sum(counters["graph_break"].values())),
    }


def _build(name: str, batch: int, seconds: float, device: torch.device) -> tuple[MERTObjective, torch.Tensor, dict]:
    objective = recipe_objective([f"model={name}"]).to(device)
    wav = music_like(int(24000 * seconds), batch=batch).to(device)
    with torch.no_grad():
        targets = objective.compute_targets(wav)
    return objective, wav, targets


def _row(label: str, eager: list[tuple[float, float]], compiled: list[tuple[float, float]], first: float) -> str:
    ew, ec = statistics.median(w for w, _ in eager), statistics.median(c for _, c in eager)
    cw, cc = statistics.median(w for w, _ in compiled), statistics.median(c for _, c in compiled)
    return (
        f"| {label} | {first:.1f} | {ew * 1000:.0f} / {ec * 1000:.0f} | {cw * 1000:.0f} / {cc * 1000:.0f} | "
        f"{cw / ew:.2f} / {cc / ec:.2f} |"
    )


def bench(name: str, args: argparse.Namespace, device: torch.device) -> list[str]:
    torch._dynamo.reset()  # each model compiles from scratch (the heads' code is shared between models)
    eager, wav, targets = _build(name, args.batch, args.seconds, device)
    compiled = copy.deepcopy(eager).compile(mode=args.mode)
    rows = []

    # ---- training step
    def step(objective: MERTObjective, opt: torch.optim.Optimizer, i: int) -> Callable[[], None]:
        def run() -> None:
            out = objective(wav, targets=targets, generator=torch.Generator().manual_seed(i))
            (out.loss_sum / out.n_masked.clamp(min=1)).backward()
            opt.step()
            opt.zero_grad()

        return run

    opts = {
        k: torch.optim.AdamW([p for p in o.parameters() if p.requires_grad], lr=1e-3)
        for k, o in (("eager", eager), ("compiled", compiled))
    }
    before = _dynamo_counts()
    first = sum(_timed(step(compiled, opts["compiled"], i), device)[0] for i in range(2))  # compiles
    _timed(step(eager, opts["eager"], 0), device)  # warm-up
    _timed(step(eager, opts["eager"], 1), device)
    times: dict[str, list[tuple[float, float]]] = {"eager": [], "compiled": []}
    for i in range(2, args.steps + 2):
        times["eager"].append(_timed(step(eager, opts["eager"], i), device))
        times["compiled"].append(_timed(step(compiled, opts["compiled"], i), device))
    compile_s = first - 2 * statistics.median(w for w, _ in times["compiled"])
    after = _dynamo_counts()
    counts = {k: after[k] - before[k] for k in after}
    # Three functions compile (the encoder's pass, two heads): frames past three are recompilations.
    rows.append(_row(f"{name} train step", times["eager"], times["compiled"], compile_s) + f" {_fmt(counts, 3)} |")

    # ---- inference (eval mode, inference_mode), the same batch
    enc_e, enc_c = eager.encoder.eval(), compiled.encoder.eval()
    lengths = torch.full((wav.shape[0],), wav.shape[1], dtype=torch.long)

    def infer(enc: Encoder) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                enc(wav, lengths, sample_rate=enc.sample_rate)

        return run

    before = _dynamo_counts()
    first = _timed(infer(enc_c), device)[0]
    _timed(infer(enc_e), device)
    times = {"eager": [], "compiled": []}
    for _ in range(args.steps):
        times["eager"].append(_timed(infer(enc_e), device))
        times["compiled"].append(_timed(infer(enc_c), device))
    compile_s = first - statistics.median(w for w, _ in times["compiled"])
    after = _dynamo_counts()
    counts = {k: after[k] - before[k] for k in after}
    # The encoder's pass compiles again for inference (no autograd, eval mode): one frame, no recompilation.
    rows.append(_row(f"{name} inference", times["eager"], times["compiled"], compile_s) + f" {_fmt(counts, 1)} |")
    return rows


def _fmt(counts: dict[str, int], functions: int) -> str:
    return f"{counts['graphs']} / {counts['frames'] - functions} / {counts['breaks']}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["tiny", "conformer_tiny", "small", "conformer_small"],
                    help="conf/model groups (default: both families, tiny and small)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8, help="timed steps of each (after two warm-up steps)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--mode", default=None, help="torch.compile mode (default: torch's)")
    ap.add_argument(
        "--warm-cache", action="store_true", help="use inductor's on-disk cache (default: a fresh one: cold compiles)"
    )
    args = ap.parse_args()
    if not args.warm_cache:  # read when inductor first compiles; kernels compiled by earlier runs would be reused
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="mert-compile-bench-")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(machine_line())
    if device.type == "cpu":
        peak = gemm_peaks(n=1024, repeats=5)
        print("*GEMM peak (1024^3): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items()) + ".*")
    else:
        print(f"*Device: {torch.cuda.get_device_name(device)}.*")
    cache = "warm on-disk cache" if args.warm_cache else "cold inductor cache"
    print(f"*{args.batch} x {args.seconds:g} s per step, mode {args.mode or 'default'}, {args.steps} timed steps, "
          f"{cache}.*")  # fmt: skip
    print()
    print("| model, pass | compile s | eager ms (wall / CPU) | compiled ms (wall / CPU) | compiled / eager "
          "(wall / CPU) | graphs / recompiles / breaks |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---|")
    for name in args.models:
        for row in bench(name, args, device):
            print(row, flush=True)


if __name__ == "__main__":
    main()

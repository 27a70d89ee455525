"""Time one pretraining step (objective forward + backward + AdamW) and its teachers, side by side.

    python benchmarks/train_step.py --models tiny,95m --batch 4 --seconds 5 --repeats 2

For each model and precision (fp32, bf16-mixed autocast): seconds per step with cached targets, audio seconds
per second, and the achieved FLOP/s, counted analytically as 3x the encoder's forward FLOPs (forward +
backward; `benchmarks/common.py`; the prediction heads are under 1 %), as a share of this machine's 2048^3
GEMM peak in the same precision (measured here through oneDNN). Then the cost of computing the same batch's
targets on the fly (CQT features plus the code teacher), as a share of a step with them: the case for caching
targets in shards (`benchmarks/teachers.py` has the caching cost). Takes about 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import best_of, encoder_flops, gemm_peaks, machine_line  # noqa: E402
from mert import Encoder, EncoderConfig  # noqa: E402
from mert.pretrain import MERTObjective  # noqa: E402
from mert.targets import CQTTargets, RandomProjectionTargets  # noqa: E402
from tests.helpers import music_like  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,95m")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    sr = 24000
    wav = music_like(int(args.seconds * sr), batch=args.batch, seed=0)
    audio = args.batch * args.seconds
    rp, cqt = RandomProjectionTargets(), CQTTargets()
    peaks = gemm_peaks()
    rows, step_times = [], {}
    for name in args.models.split(","):
        config = EncoderConfig.preset(name)
        flops = 3 * encoder_flops(config, wav.shape[1], batch=args.batch)["total"]
        torch.manual_seed(0)
        objective = MERTObjective(Encoder(config), rp, cqt).train()
        targets = objective.compute_targets(wav)
        opt = torch.optim.AdamW(objective.parameters(), lr=1e-4)
        for prec in ("fp32", "bf16"):

            def step(prec=prec, objective=objective, targets=targets, opt=opt):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
                    out = objective(wav, targets=targets, generator=torch.Generator().manual_seed(0))
                opt.zero_grad()
                out.loss.backward()
                opt.step()

            t = best_of(step, args.repeats)
            step_times[(name, prec)] = t
            peak = peaks["fp32 oneDNN" if prec == "fp32" else "bf16 oneDNN"]
            rows.append((name, prec, t, audio / t, flops / t / 1e9, 100 * flops / t / 1e9 / peak))

    teachers = {"random projection (codes)": rp, "CQT (features)": cqt}
    try:
        from mert.targets import EncodecTargets
        from tests.helpers import filled_encodec  # a random EnCodec with usable codebooks

        with tempfile.TemporaryDirectory() as tmp:
            torch.save(filled_encodec().state_dict(), f"{tmp}/encodec_24khz.th")
            teachers["EnCodec 6 kbps (codes)"] = EncodecTargets(weights=f"{tmp}/encodec_24khz.th")
    except Exception as e:  # informative only: the rest of the table stands
        print(f"(EnCodec skipped: {e})")
    teacher_times = {label: best_of(lambda t=t: t(wav), args.repeats) for label, t in teachers.items()}
    # Peaks again after the runs, keeping the best: a busy moment at the start must not inflate the shares.
    again = gemm_peaks()
    for i, (name, prec, t, aps, gf, _) in enumerate(rows):
        peaks = {k: max(v, again[k]) for k, v in peaks.items()}
        rows[i] = (name, prec, t, aps, gf, 100 * gf / peaks["fp32 oneDNN" if prec == "fp32" else "bf16 oneDNN"])

    print(f"# One pretraining step, batch {args.batch} x {args.seconds:g} s, cached targets\n")
    print(machine_line() + "\n")
    print(", ".join(f"GEMM 2048^3 {k}: {v:.0f} GFLOP/s" for k, v in peaks.items()) + "\n")
    print("| model | precision | s/step | audio-s/s | GFLOP/s (3x forward) | % of GEMM peak |")
    print("|---|---|---|---|---|---|")
    for name, prec, t, aps, gf, pct in rows:
        print(f"| {name} | {prec} | {t:.3f} | {aps:.1f} | {gf:.0f} | {pct:.0f} % |")
    print("\n| teacher (on the fly) | s/batch | x realtime |\n|---|---|---|")
    for label, t in teacher_times.items():
        print(f"| {label} | {t:.3f} | {audio / t:.1f} |")
    # MERT-v1 pairs EnCodec codes with CQT features; fall back to the random projection if EnCodec is missing.
    codes = teacher_times.get("EnCodec 6 kbps (codes)", teacher_times["random projection (codes)"])
    on_the_fly = codes + teacher_times["CQT (features)"]
    print("\n| model | precision | step with cached targets s | teachers on the fly s | teacher share of the step |")
    print("|---|---|---|---|---|")
    for (name, prec), t in step_times.items():
        print(f"| {name} | {prec} | {t:.3f} | {on_the_fly:.3f} | {100 * on_the_fly / (t + on_the_fly):.0f} % |")


if __name__ == "__main__":
    main()

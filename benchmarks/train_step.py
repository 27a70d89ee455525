"""Time one pretraining step (objective forward + backward + AdamW) and the teachers, side by side.

    python benchmarks/train_step.py --models tiny,95m --batch 4 --seconds 5

For each model: seconds per step with cached targets, in fp32 and under bf16 autocast, and the throughput in
seconds of audio per second; then the cost of computing the same batch's targets on the fly (random
projection, CQT, and EnCodec with random weights whose codebooks are filled, which costs what the real
weights cost), as a share of the step.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mert import Encoder, EncoderConfig  # noqa: E402
from mert.pretrain import MERTObjective  # noqa: E402
from mert.targets import CQTTargets, RandomProjectionTargets  # noqa: E402
from tests.conftest import music_like  # noqa: E402


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny,95m")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sr = 24000
    wav = music_like(int(args.seconds * sr), batch=args.batch, seed=0)
    audio = args.batch * args.seconds
    rp, cqt = RandomProjectionTargets(), CQTTargets()
    print(
        f"# batch {args.batch} x {args.seconds:g} s, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{platform.machine()}"
    )
    print("| model | precision | s/step | audio-s/s |")
    print("|---|---|---|---|")
    step_times = {}
    for name in args.models.split(","):
        torch.manual_seed(0)
        objective = MERTObjective(Encoder(EncoderConfig.preset(name)), rp, cqt).train()
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
            print(f"| {name} | {prec} | {t:.3f} | {audio / t:.1f} |")
    print("\n| teacher (on the fly) | s/batch | x realtime |")
    print("|---|---|---|")
    teachers = {"random projection": rp, "CQT": cqt}
    try:
        import tempfile

        from mert.targets import EncodecTargets
        from tests.test_targets import filled_encodec  # a random EnCodec with usable codebooks

        with tempfile.TemporaryDirectory() as tmp:
            torch.save(filled_encodec().state_dict(), f"{tmp}/encodec_24khz.th")
            teachers["EnCodec 6 kbps"] = EncodecTargets(weights=f"{tmp}/encodec_24khz.th")
    except Exception as e:  # informative only: the rest of the table stands
        print(f"(EnCodec skipped: {e})")
    for label, teacher in teachers.items():
        t = best_of(lambda teacher=teacher: teacher(wav), args.repeats)
        print(f"| {label} | {t:.3f} | {audio / t:.1f} |")


if __name__ == "__main__":
    main()

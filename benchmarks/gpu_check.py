"""The GPU check: one script, one table, under 8 minutes on one GPU (run it when a GPU machine is lent).

    python benchmarks/gpu_check.py                 # on a GPU: 95M, bf16, batch 8 x 5 s
    python benchmarks/gpu_check.py --device cpu --model tiny --batch 2 --steps 2 --seconds 2   # dry run on CPU

Rows, each measured in this run:

1. **GEMM peak**: achieved TFLOP/s of an 8192^3 bf16 matmul (4096^3 fp32 on CPU), the denominator of MFU.
2. **Training step, teachers on the fly**: the `MERTObjective` forward + backward + AdamW step of the model under
   bf16 autocast, with a random-projection code teacher and the CQT teacher computed from the batch on the
   device every step (EnCodec needs downloaded weights; `--encodec` uses them when they are cached). Seconds
   per step (best of the timed steps), audio seconds per second, and MFU: 3x the encoder's analytic forward FLOPs
   (`benchmarks/common.py`) per second over the measured GEMM peak. The teachers' share of a step is its own row.
3. **One DDP step and one FSDP step** through `mert pretrain` (`trainer=ddp` / `trainer=fsdp`, one device,
   `experiment=tiny_cpu` data, 2 steps, gradient clipping by norm as every experiment): exit status, seconds,
   final loss. This is the check that FSDP trains (it clips through the sharded model).
4. **Encoder inference against transformers' HubertModel** holding the same weights (HF layout, loaded through
   `Encoder.from_pretrained`): a 30 s clip, fp32 and bf16, seconds per pass (best of 3), speed-up, and the
   largest absolute difference of the last hidden state to HubertModel fp32.

Prints the table as Markdown (for `docs/benchmarks.md`) and writes it to `--out` (default gpu_check.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import encoder_flops  # noqa: E402
from mert import Encoder, EncoderConfig  # noqa: E402
from mert.pretrain import MERTObjective  # noqa: E402
from mert.targets import CQTTargets, RandomProjectionTargets  # noqa: E402
from tests.helpers import hf_config, music_like, perturbed_hf_model, save_hf_folder  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Best wall time of ``repeats`` calls after ``warmup`` untimed ones, in seconds (device synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_peak(device: torch.device) -> tuple[str, float]:
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    t = timed(lambda: a @ b, device, repeats=10, warmup=3)
    return f"{n}^3 {str(dtype).removeprefix('torch.')} matmul", 2 * n**3 / t / 1e12


def training_rows(args, device: torch.device, peak: float) -> list[tuple[str, str]]:
    config = EncoderConfig.preset(args.model)
    torch.manual_seed(0)
    code = RandomProjectionTargets()
    if args.encodec:
        from mert.targets import EncodecTargets

        code = EncodecTargets()
    objective = MERTObjective(Encoder(config), code, CQTTargets()).to(device).train()
    opt = torch.optim.AdamW(
        [p for p in objective.parameters() if p.requires_grad], lr=1e-4, fused=device.type == "cuda"
    )
    wav = music_like(int(args.seconds * 24000), batch=args.batch, seed=0).to(device)
    amp = dict(device_type=device.type, dtype=torch.bfloat16)

    def teachers():
        with torch.no_grad():
            return objective.compute_targets(wav)

    def step():
        targets = teachers()
        with torch.autocast(**amp):
            out = objective(wav, targets=targets, generator=torch.Generator().manual_seed(0))
        loss = out.loss_sum / out.n_masked.clamp(min=1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(objective.parameters(), 10.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t_step = timed(step, device, repeats=args.steps, warmup=2)
    t_teach = timed(teachers, device, repeats=args.steps, warmup=1)
    flops = 3 * encoder_flops(config, wav.shape[1], batch=args.batch)["total"]
    audio = args.batch * args.seconds
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    teacher = "EnCodec" if args.encodec else "random projection"
    return [
        (
            f"training step, {args.model}, bf16 autocast, batch {args.batch} x {args.seconds:g} s, "
            f"{teacher} + CQT teachers on the fly",
            f"{t_step:.3f} s/step; {audio / t_step:.0f} audio s/s; MFU {100 * flops / t_step / 1e12 / peak:.1f} % "
            f"of the measured peak; peak memory {mem:.1f} GiB",
        ),
        ("teachers' share of that step", f"{t_teach:.3f} s ({100 * t_teach / t_step:.0f} %)"),
    ]


def strategy_rows(args, device: torch.device) -> list[tuple[str, str]]:
    rows = []
    accel = "gpu" if device.type == "cuda" else "cpu"
    for strategy in ("ddp", "fsdp"):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                sys.executable, "-m", "mert.cli", "pretrain", "experiment=tiny_cpu", f"trainer={strategy}",
                f"trainer.accelerator={accel}", "trainer.devices=1", "trainer.num_nodes=1", "trainer.max_steps=2",
                "trainer.precision=bf16-mixed" if device.type == "cuda" else "trainer.precision=32-true",
                "model.layerdrop=0", "logger=csv", "data.dataset.num_clips=16", "data.dataset.seconds=2",
                "data.num_workers=0", f"run_dir={tmp}/run",
            ]  # fmt: skip
            t0 = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
            secs = time.perf_counter() - t0
            summary = Path(tmp) / "run" / "summary.json"
            if res.returncode == 0 and summary.is_file():
                s = json.loads(summary.read_text())
                text = f"exit 0, {s['steps']} steps, final loss {s['final_loss']:.3f}, {secs:.0f} s (with start-up)"
            else:
                lines = (res.stderr or res.stdout).strip().splitlines() or ["(no output)"]
                at = next((i for i, ln in enumerate(lines) if ln.startswith("mert pretrain: error")), len(lines) - 1)
                why = " ".join(lines[at : at + 2])
                text = f"FAILED (exit {res.returncode}): {why.replace('|', '/')[:300]}"
        rows.append((f"`mert pretrain trainer={strategy}`, one device, 2 steps, clip by norm", text))
    return rows


def inference_rows(args, device: torch.device) -> list[tuple[str, str]]:
    layout = "330m" if args.model == "330m" else "95m"
    hf = perturbed_hf_model(hf_config(layout, size="full")).eval()
    with tempfile.TemporaryDirectory() as tmp:
        enc = Encoder.from_pretrained(save_hf_folder(hf.cpu(), Path(tmp) / "ckpt")).to(device).eval()
    hf = hf.to(device)
    wav = music_like(int(args.infer_seconds * 24000), seed=1).to(device)
    rows, ref = [], None
    for dtype in (torch.float32, torch.bfloat16):
        h, e = hf.to(dtype), enc.to(dtype)
        x = wav.to(dtype)
        with torch.inference_mode():
            t_hf = timed(lambda h=h, x=x: h(x), device, repeats=3)
            t_mert = timed(lambda e=e, x=x: e(x, sample_rate=24000), device, repeats=3)
            out = e(x, sample_rate=24000).last_hidden_state.float()
            if ref is None:
                ref = h(x).last_hidden_state.float()
        name = str(dtype).removeprefix("torch.")
        rows.append(
            (
                f"inference, {layout}, {args.infer_seconds:g} s clip, {name}",
                f"HubertModel {t_hf:.3f} s, mert {t_mert:.3f} s ({t_hf / t_mert:.2f}x); max abs(mert - HF fp32) "
                f"{(out - ref).abs().max().item():.2e}",
            )
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="95m", choices=["tiny", "95m", "330m"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--steps", type=int, default=5, help="timed training steps (after 2 warm-up steps)")
    ap.add_argument("--infer-seconds", type=float, default=30.0)
    ap.add_argument("--encodec", action="store_true", help="EnCodec code teacher (weights must be cached)")
    ap.add_argument("--timeout", type=int, default=240, help="seconds per `mert pretrain` run")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: train, strategies, inference")
    ap.add_argument("--out", default="gpu_check.md")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    skip = set(filter(None, args.skip.split(",")))
    t0 = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak_what, peak = gemm_peak(device)
    rows = [("GEMM peak", f"{peak:.1f} TFLOP/s ({peak_what})")]
    if "train" not in skip:
        rows += training_rows(args, device, peak)
    if "strategies" not in skip:
        rows += strategy_rows(args, device)
    if "inference" not in skip:
        rows += inference_rows(args, device)
    lines = [
        f"*{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, {time.strftime('%Y-%m-%d')}; "
        f"the check took {time.perf_counter() - t0:.0f} s.*",
        "",
        "| check | result |",
        "|---|---|",
        *(f"| {a} | {b} |" for a, b in rows),
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text + "\n")
    failed = any(b.startswith("FAILED") for _, b in rows)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

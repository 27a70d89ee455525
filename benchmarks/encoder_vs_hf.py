"""Time `mert.Encoder` against transformers' `HubertModel` holding the same weights, side by side in one run.

    python benchmarks/encoder_vs_hf.py --layout 95m --seconds 30 --repeats 3

Both models get identical random weights (a HubertModel with MERT-v1's config, saved in the HF layout and
loaded through `Encoder.from_pretrained`). Runs alternate between the systems so drifts in machine load hit
all equally; each figure is the best of the repeats. Prints, as Markdown:

* the GEMM peaks of this machine (2048^3, fp32 through torch.mm/MKL and oneDNN, bf16 through oneDNN);
* per system: seconds per pass, x realtime, speed-up over HubertModel fp32, achieved GFLOP/s (analytic count,
  see `benchmarks/common.py`) as a share of the matching GEMM peak, and the agreement with the fp32 result:
  the largest absolute difference to HubertModel fp32, and for reduced precision the smallest per-layer
  cosine similarity (mean over frames) to mert fp32.

Systems: `fp32` (both models), `packed` (mert fp32 with `mert.models.fast_path.PACK_WEIGHTS`: faster, 4 bytes
per parameter more memory), `autocast` (both under bf16 autocast), `bf16` (mert with bf16 weights, the
documented fast path: `Encoder.from_pretrained(..., dtype=torch.bfloat16)`), `early` (mert fp32 and bf16 asked
for one hidden state, `--layer`, default 7: `enc(wav, layers=7)` stops the transformer there; its FLOPs, speed-up
and agreement count only what it computes), `int8` (`Encoder.quantize_int8()`: the linear layers as dynamic int8
GEMMs, the rest float32), `onnx` (the encoder exported with `mert.models.onnx_export.export_onnx`,
all hidden states, run by onnxruntime's CPU provider with as many threads as torch; the export itself takes a few
minutes and is not timed). Takes about 2 minutes for the default 30 s clip on 2 cores, plus the export.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mert.models.fast_path as fast_path  # noqa: E402
from benchmarks.common import encoder_flops, gemm_peaks, interleaved, machine_line  # noqa: E402
from mert import Encoder  # noqa: E402
from tests.helpers import hf_config, music_like, perturbed_hf_model, save_hf_folder  # noqa: E402


def layer_cosines(out: tuple[torch.Tensor, ...], ref: tuple[torch.Tensor, ...]) -> list[float]:
    """Mean over frames of the cosine similarity, per hidden state."""
    return [
        F.cosine_similarity(a.float().flatten(0, 1), b.float().flatten(0, 1), dim=-1).mean().item()
        for a, b in zip(out, ref)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layout", choices=["95m", "330m"], default="95m")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's, the core count)")
    ap.add_argument(
        "--systems",
        default="fp32,packed,bf16,autocast,early",
        help="comma list of fp32, packed, bf16, autocast, early, int8, onnx",
    )
    ap.add_argument("--layer", type=int, default=7, help="the hidden state the early-exit rows ask for (default 7)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*sample_rate.*")

    hf = perturbed_hf_model(hf_config(args.layout, size="full"))
    with tempfile.TemporaryDirectory() as tmp:
        enc = Encoder.from_pretrained(save_hf_folder(hf, Path(tmp) / "ckpt"))
    sr = 24000
    wav = music_like(int(args.seconds * sr), sr=sr, seed=0)
    systems = args.systems.split(",")
    flops = encoder_flops(enc.config, wav.shape[1])["total"]
    early_flops = encoder_flops(enc.config, wav.shape[1], num_layers=args.layer)["total"]

    def hf_states(ctx):
        with torch.inference_mode(), ctx():
            o = hf(wav, output_hidden_states=True)
            return (*o.hidden_states[:-1], o.last_hidden_state)

    def mert_states(model, ctx, layers=None):
        with torch.inference_mode(), ctx():
            states = model(wav, sample_rate=sr, layers=layers).hidden_states
        return tuple(s for s in states if s is not None)  # an early exit returns the states it computed

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    fns = {"HubertModel fp32": lambda: hf_states(torch.no_grad), "mert fp32": lambda: mert_states(enc, torch.no_grad)}
    if "packed" in systems:
        enc_packed = copy.deepcopy(enc)

        def packed():
            fast_path.PACK_WEIGHTS = True
            try:
                return mert_states(enc_packed, torch.no_grad)
            finally:
                fast_path.PACK_WEIGHTS = False

        fns["mert fp32 packed weights"] = packed
    if "autocast" in systems:
        fns["HubertModel bf16 autocast"] = lambda: hf_states(autocast)
        fns["mert bf16 autocast"] = lambda: mert_states(enc, autocast)
    if "bf16" in systems:
        enc_bf16 = copy.deepcopy(enc).to(torch.bfloat16)
        fns["mert bf16 weights"] = lambda: mert_states(enc_bf16, torch.no_grad)
    if "early" in systems:
        fns[f"mert fp32 layers={args.layer}"] = lambda: mert_states(enc, torch.no_grad, layers=args.layer)
        if "bf16" in systems:
            fns[f"mert bf16 weights layers={args.layer}"] = lambda: mert_states(
                enc_bf16, torch.no_grad, layers=args.layer
            )
    if "int8" in systems:
        enc_int8 = copy.deepcopy(enc).quantize_int8()
        fns["mert int8 linears"] = lambda: mert_states(enc_int8, torch.no_grad)
    if "onnx" in systems:
        import onnxruntime as ort

        from mert.models.onnx_export import export_onnx

        onnx_dir = tempfile.TemporaryDirectory()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(
            str(export_onnx(enc, Path(onnx_dir.name) / "m.onnx", check=False)), opts, providers=["CPUExecutionProvider"]
        )
        feed = {"wav": wav.numpy(), "lengths": torch.tensor([wav.shape[1]]).numpy()}
        fns["onnxruntime fp32"] = lambda: tuple(torch.from_numpy(a) for a in session.run(None, feed)[:-1])
    if "fp32" not in systems:
        raise SystemExit("--systems must include fp32 (the reference of every ratio)")

    # Peaks before and after the runs, keeping the best: a busy moment must not make the encoder look >100 %.
    peaks = gemm_peaks()
    outputs = {k: fn() for k, fn in fns.items()}
    times = interleaved(fns, args.repeats)
    peaks = {k: max(v, w) for (k, v), w in zip(peaks.items(), gemm_peaks().values())}
    ref_hf, ref_mert = outputs["HubertModel fp32"], outputs["mert fp32"]

    print(f"# {args.layout} encoder, one {args.seconds:g} s clip, all hidden states\n")
    print(machine_line() + "\n")
    print("| GEMM 2048^3 | GFLOP/s |\n|---|---|")
    for k, v in peaks.items():
        print(f"| {k} | {v:.0f} |")
    print(f"\nAnalytic forward cost: {flops / 1e12:.3f} TFLOP.\n")
    print(
        "| system | s/pass | x realtime | speed-up vs HF fp32 | GFLOP/s | % of GEMM peak | max abs diff to HF fp32 "
        "| min layer cosine to mert fp32 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    t_ref = times["HubertModel fp32"]
    for name, t in times.items():
        peak = peaks["bf16 oneDNN"] if "bf16" in name else peaks["fp32 oneDNN"]  # int8 and ONNX: against fp32
        work = early_flops if "layers=" in name else flops
        # zip stops at the states an early exit computed; HF's last entry is compared only for full passes.
        diff = max((a.float() - b).abs().max().item() for a, b in zip(outputs[name], ref_hf))
        reduced = "bf16" in name or "int8" in name
        cos = min(layer_cosines(outputs[name], ref_mert)) if reduced else float("nan")
        cos_s = f"{cos:.5f}" if cos == cos else "-"
        print(
            f"| {name} | {t:.2f} | {args.seconds / t:.2f} | {t_ref / t:.2f}x | {work / t / 1e9:.0f} | "
            f"{100 * work / t / 1e9 / peak:.0f} % | {diff:.2e} | {cos_s} |"
        )
    bound = t_ref / (flops / (peaks["fp32 oneDNN"] * 1e9))
    print(
        f"\nIf every FLOP ran at the fp32 oneDNN GEMM peak, fp32 could be at most {bound:.2f}x HubertModel fp32; "
        f"at the bf16 peak, {t_ref / (flops / (peaks['bf16 oneDNN'] * 1e9)):.2f}x."
    )
    if "bf16" in systems:
        print(
            "\nPer-layer cosine, mert bf16 weights vs mert fp32: "
            + ", ".join(f"{c:.5f}" for c in layer_cosines(outputs["mert bf16 weights"], ref_mert))
        )


if __name__ == "__main__":
    main()

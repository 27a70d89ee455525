"""``mert export SRC OUT``: a release folder (mert or transformers' HuBERT layout) or an ONNX graph from a run.

mert export RUN_DIR_OR_CKPT OUT_DIR [--format mert|hf|onnx] [--layers 7] [--opset 18]
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``mert export`` on the top-level parser's subcommands."""
    p = sub.add_parser("export", help="write a release folder from a training run or checkpoint")
    p.add_argument("run", help="run directory (uses checkpoints/last.ckpt), a .ckpt file, or a release folder")
    p.add_argument("out", help="output folder (config.json, model.safetensors, meta.json)")
    p.add_argument(
        "--format",
        choices=["mert", "hf", "onnx"],
        default="mert",
        help="mert (default); hf: transformers' HuBERT layout, loadable with AutoModel.from_pretrained; "
        "onnx: OUT/model.onnx for onnxruntime (docs/deployment.md)",
    )
    p.add_argument("--layers", default=None, help="onnx only: hidden states to output, e.g. '7' or '0,6,12' (all)")
    p.add_argument("--opset", type=int, default=None, help="onnx only: ONNX opset, 18 or newer (default 18)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """`mert export`: 0 on success, 1 with a one-line reason otherwise."""
    from mert.pretrain.export import export_run

    try:
        out = export_run(args.run, args.out, format=args.format, layers=args.layers, opset=args.opset)
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as e:
        print(f"mert export: {e}", file=sys.stderr)
        return 1
    if args.format == "onnx":
        print(f"mert export: wrote {out / 'model.onnx'} (checked against the encoder with onnxruntime if installed)")
        return 0
    also = " or transformers.AutoModel.from_pretrained" if args.format == "hf" else ""
    print(f"mert export: wrote {out} (load with Encoder.from_pretrained({str(out)!r}){also})")
    return 0

"""``mert export SRC OUT``: a release folder (mert or transformers' HuBERT layout) or an ONNX graph from a run.

mert export RUN_DIR_OR_CKPT OUT_DIR [--format mert|hf|onnx] [--layers 7] [--opset 18] [--overwrite]
           [--licence ID] [--probe-results RUN...] [--push-to-hub USER/REPO]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

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
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing OUT_DIR that holds another model or other files (the whole folder)",
    )
    p.add_argument(
        "--licence",
        "--license",
        dest="licence",
        help="licence of weights trained from scratch (e.g. CC-BY-4.0); continued weights inherit init_from's",
    )
    p.add_argument(
        "--probe-results",
        nargs="+",
        default=[],
        metavar="RUN",
        help="`mert probe` run folders (or results.json files) whose table goes into the model card",
    )
    p.add_argument(
        "--push-to-hub",
        metavar="REPO",
        help="then upload the folder to this Hugging Face Hub model repo (created if missing; needs a token)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """`mert export`: 0 on success, 1 with a one-line reason otherwise."""
    from mert.pretrain.export import export_run

    try:
        table = None
        if getattr(args, "probe_results", None):  # a bad results file fails before anything is written
            from mert.probe.run import compare_markdown, compare_table, find_results, load_results

            table = compare_markdown(compare_table([load_results(p) for p in find_results(args.probe_results)]))
        out = export_run(
            args.run,
            args.out,
            format=args.format,
            layers=args.layers,
            opset=args.opset,
            overwrite=getattr(args, "overwrite", False),
            licence=getattr(args, "licence", None),
            probe_table=table,
        )
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as e:
        print(f"mert export: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # read-only or missing parent, no space: name the path, not a traceback
        where = e.filename or args.out
        print(f"mert export: cannot write {where}: {e.strerror or e}", file=sys.stderr)
        return 1
    if args.format == "onnx":
        print(f"mert export: wrote {out / 'model.onnx'} (checked against the encoder with onnxruntime if installed)")
    else:
        also = " or transformers.AutoModel.from_pretrained" if args.format == "hf" else ""
        print(f"mert export: wrote {out} (load with Encoder.from_pretrained({str(out)!r}){also})")
    if getattr(args, "push_to_hub", None):
        return push_to_hub(out, args.push_to_hub)
    return 0


def push_to_hub(folder: Path, repo: str) -> int:
    """Upload an export folder to a Hugging Face Hub model repo with ``huggingface_hub``'s upload API.

    Refuses weights whose licence is unknown or unspecified (the model card would publish them without one).
    The endpoint is ``HF_ENDPOINT`` when set; the token is huggingface_hub's (``HF_TOKEN`` or ``hf auth login``).
    """
    import json

    licence = json.loads((folder / "meta.json").read_text(encoding="utf-8")).get("licence")
    if licence in (None, "unknown", "unspecified"):
        print(
            f"mert export: not pushing {folder}: its licence is {licence or 'not recorded'}; "
            "export again with --licence ID (a licence you may publish the weights under)",
            file=sys.stderr,
        )
        return 1
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:
        print("mert export: --push-to-hub needs huggingface-hub: pip install huggingface-hub", file=sys.stderr)
        return 1
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
    try:
        api.create_repo(repo, repo_type="model", exist_ok=True)
        info = api.upload_folder(
            folder_path=str(folder), repo_id=repo, repo_type="model", commit_message=f"mert export of {folder.name}"
        )
    except (HfHubHTTPError, OSError, ValueError, KeyError) as e:  # KeyError: a reply the client cannot parse
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"mert export: could not push {folder} to {repo}: {first}", file=sys.stderr)
        return 1
    print(f"mert export: pushed {folder} to {getattr(info, 'commit_url', None) or repo}")
    return 0

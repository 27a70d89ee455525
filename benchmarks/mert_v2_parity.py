"""Compare `mert`'s MERT-v2 with the published remote-code model, layer by layer, on the same audio.

    pip install "transformers<5"   # a version MERT-v2's remote code runs on (transformers 5 is not one)
    python benchmarks/mert_v2_parity.py --model MERT-v2-FullSong      # the registry's pinned commit d8ba1c7
    python benchmarks/mert_v2_parity.py --model /path/to/downloaded/MERT-v2-30s --seconds 10

Needs network access (or a downloaded folder), the weights (2.5 GB) and a transformers version that runs
MERT-v2's `trust_remote_code` modelling file: it EXECUTES that code, which is why `mert` never does. It loads the
same folder twice, as ``transformers.AutoModel.from_pretrained(..., trust_remote_code=True)`` and as
``mert.Encoder.from_pretrained`` (no code executed), feeds both a music-like clip at 24 kHz (the remote model's
own feature extractor when it has one, else the raw waveform) and prints, per hidden state, the largest absolute
difference and the mean cosine similarity over frames. Agreement to about 1e-4 in float32 means the published
numerics are reproduced; until someone runs this, the MERT-v2 numerics in `mert` are unverified against the
published weights (the layout, names, shapes and parameter count are tested in tests/test_conformer_parity.py).
Exit status 0 when every hidden state agrees within --atol, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mert import Encoder  # noqa: E402
from mert.hub import resolve_source  # noqa: E402
from tests.helpers import music_like  # noqa: E402


def remote_hidden_states(folder: Path, wav: torch.Tensor) -> list[torch.Tensor]:
    """The remote-code model's hidden states for ``wav (1, l)`` at 24 kHz."""
    from transformers import AutoFeatureExtractor, AutoModel

    model = AutoModel.from_pretrained(str(folder), trust_remote_code=True).eval()
    inputs: dict = {"input_values": wav}
    try:
        extractor = AutoFeatureExtractor.from_pretrained(str(folder), trust_remote_code=True)
        inputs = dict(extractor(wav[0].numpy(), sampling_rate=24000, return_tensors="pt"))
    except (OSError, ValueError):
        pass  # no feature extractor: the model takes the waveform (its front end is inside the model)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    return [h.float() for h in out.hidden_states]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="MERT-v2-FullSong", help="registry name, hub id or local folder")
    ap.add_argument("--revision", default=None, help="commit of a hub id (default: the registry's pin)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--atol", type=float, default=1e-4)
    args = ap.parse_args()

    folder = resolve_source(args.model, revision=args.revision)
    wav = music_like(int(args.seconds * 24000), seed=0)
    ours = Encoder.from_pretrained(folder)
    with torch.no_grad():
        mine = [h.float() for h in ours(wav, sample_rate=24000).hidden_states]
    theirs = remote_hidden_states(folder, wav)
    print(f"{args.model}: {len(mine)} hidden states in mert, {len(theirs)} in the remote-code model")
    if len(mine) != len(theirs):
        print("the number of hidden states differs: compare the hidden-state semantics first")
        return 1
    ok = True
    print("| state | mert shape | remote shape | max abs diff | mean cosine |")
    print("|---|---|---|---|---|")
    for i, (a, b) in enumerate(zip(mine, theirs)):
        if a.shape != b.shape:
            print(f"| {i} | {tuple(a.shape)} | {tuple(b.shape)} | - | - |")
            ok = False
            continue
        diff = (a - b).abs().max().item()
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).mean().item()
        ok &= diff <= args.atol
        print(f"| {i} | {tuple(a.shape)} | {tuple(b.shape)} | {diff:.2e} | {cos:.6f} |")
    print("agree" if ok else f"DIFFER (atol {args.atol})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

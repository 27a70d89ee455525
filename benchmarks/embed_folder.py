"""`mert embed` over a folder of short clips against a plain loop: what the CLI's bookkeeping costs.

    python benchmarks/embed_folder.py --clips 32 --seconds 10 --repeats 2

Writes ``--clips`` synthetic stereo clips at 44.1 kHz (so every file is decoded, mixed down and resampled to
24 kHz, as real collections are), then times, in the same process and alternating:

* sequential: build the encoder, then for each file ``load_audio``, the encoder, ``np.save`` (a plain loop);
* ``mert embed``: the CLI's folder path (`mert/cli/embed.py`; it builds the encoder too), which calls
  ``Encoder.embed_file`` per file and adds the output index, atomic writes and resumability. Until 0.1.x it
  decoded the next file on a background thread; that measured 1.00x here, so it calls ``embed_file`` now.

Randomly initialised 95M encoder, fp32, all layers mean-pooled. Prints files/s, audio x realtime and the
ratio. Takes about 3 minutes on 2 cores with the defaults.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import machine_line  # noqa: E402
from mert import Encoder  # noqa: E402
from mert.audio import load_audio  # noqa: E402
from mert.cli import main as mert_main  # noqa: E402
from tests.helpers import music_like  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    sr_file = 44100
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "clips"
        folder.mkdir()
        for i in range(args.clips):
            wav = music_like(int(args.seconds * sr_file), sr=sr_file, seed=i, batch=2).T.numpy()  # (l, 2)
            sf.write(folder / f"clip{i:03d}.flac", wav, sr_file)
        files = sorted(folder.glob("*.flac"))

        def sequential() -> None:
            # The CLI builds its encoder in the timed call, so the loop does too (about 1 s for 95M).
            torch.manual_seed(0)
            enc = Encoder("95m").eval()
            out = Path(tmp) / "seq"
            out.mkdir(exist_ok=True)
            with torch.inference_mode():
                for f in files:
                    wav, _ = load_audio(f, sample_rate=enc.sample_rate, mono=True)
                    x = enc(wav, sample_rate=enc.sample_rate, chunk_seconds=30.0).stacked()[0].mean(dim=1)
                    np.save(out / f"{f.stem}.npy", x.numpy())

        runs = iter(range(args.repeats))

        def cli() -> None:
            # A fresh folder each time: `mert embed` resumes, so a second run into the same one embeds nothing.
            out = Path(tmp) / f"cli{next(runs)}"
            code = mert_main(["embed", str(folder), "--preset", "95m", "--out", str(out), "--quiet"])
            assert code == 0

        best = {"sequential loop": float("inf"), "mert embed": float("inf")}
        for _ in range(args.repeats):
            for name, fn in (("sequential loop", sequential), ("mert embed", cli)):
                t0 = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t0)

    audio = args.clips * args.seconds
    print(f"# `mert embed` over {args.clips} clips of {args.seconds:g} s (44.1 kHz stereo FLAC), 95m, fp32\n")
    print(machine_line() + "\n")
    print("| pipeline | s | files/s | x realtime | speed-up |\n|---|---|---|---|---|")
    ref = best["sequential loop"]
    for name, t in best.items():
        print(f"| {name} | {t:.1f} | {args.clips / t:.2f} | {audio / t:.1f} | {ref / t:.2f}x |")


if __name__ == "__main__":
    main()

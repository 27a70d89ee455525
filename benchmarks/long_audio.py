"""Long audio: time and peak memory of `Encoder.embed_file` on 1-30 minute tracks, vs HubertModel's single pass.

    python benchmarks/long_audio.py --minutes 1,3,10 [--hf-minutes 1,3] [--threads 2]

Each measurement runs in a fresh subprocess, so the peak resident memory (``VmHWM``) is that run's alone; the
table shows the peak and its rise over the process with the model loaded. mert reads a 24 kHz WAV file and
encodes it in 30 s windows (`embed_file`, all 13 layers mean-pooled window by window, the `mert embed --pool
mean` workload). transformers' `HubertModel` (sdpa attention, which is flash attention on CPU: memory linear
in length) encodes the whole track in one pass; where that would not fit, its front-end memory is projected
(the first conv's output and its GroupNorm copy, ``2 x 4 bytes x 512 x samples / 5``, live together).
Random weights (cost does not depend on their values). Takes about 4 minutes on 2 cores for 1, 3, 10
minutes; add 30 for about 7 more.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(system: str, path: str, threads: int) -> None:
    """Encode ``path`` once (after a short warm-up) and print a JSON line with seconds and memory."""
    import warnings

    import soundfile as sf
    import torch

    warnings.filterwarnings("ignore")
    if threads:
        torch.set_num_threads(threads)
    if system == "mert":
        from mert import Encoder

        torch.manual_seed(0)
        model = Encoder("95m").eval()
        with torch.inference_mode():
            model(torch.zeros(24000), sample_rate=24000)  # warm-up outside the timed run

        def run():
            return model.embed_file(path, pool="mean", chunk_seconds=30.0)

    else:
        from tests.helpers import hf_config, perturbed_hf_model

        model = perturbed_hf_model(hf_config("95m", size="full"))

        def run():
            wav = torch.from_numpy(sf.read(path, dtype="float32")[0])[None]
            with torch.inference_mode():
                out = model(wav, output_hidden_states=True)
            return torch.stack([h.mean(dim=1)[0] for h in out.hidden_states])

    base = _rss_mb("VmRSS")
    t0 = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_mb": _rss_mb("VmHWM"), "base_mb": base, "shape": list(out.shape)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", default="1,3,10", help="durations for mert (add 30 if time allows)")
    ap.add_argument("--hf-minutes", default="1,3", help="durations for HubertModel's single pass")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--child", nargs=2, metavar=("SYSTEM", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], args.threads)

    import soundfile as sf

    from benchmarks.common import machine_line
    from tests.helpers import music_like

    mert_minutes = [float(m) for m in args.minutes.split(",") if m]
    hf_minutes = [float(m) for m in args.hf_minutes.split(",") if m]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in sorted(set(mert_minutes) | set(hf_minutes)):
            path = Path(tmp) / f"{minutes:g}min.wav"
            n = int(minutes * 60 * 24000)
            # One 30 s pattern tiled: generating 30 minutes of tones sample by sample would take longer than
            # encoding them, and content does not change the cost.
            block = music_like(30 * 24000, seed=0)[0]
            wav = block.repeat(n // block.numel() + 1)[:n]
            sf.write(path, wav.numpy(), 24000, subtype="PCM_16")
            del wav
            for system in ("mert", "hf"):
                if minutes not in (mert_minutes if system == "mert" else hf_minutes):
                    continue
                cmd = [sys.executable, __file__, "--threads", str(args.threads), "--child", system, str(path)]
                res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                if res.returncode != 0:
                    print(f"{system} {minutes:g} min failed: {res.stderr[-2000:]}", file=sys.stderr)
                    continue
                r = json.loads(res.stdout.strip().splitlines()[-1])
                rows.append((system, minutes, r))
                print(f"done: {system} {minutes:g} min {r['seconds']:.1f} s", file=sys.stderr, flush=True)

    print(f"# Long audio: 95m, fp32, one track\n\n{machine_line()}\n")
    print("| system | minutes | s | x realtime | s per audio minute | peak RSS MB | rise over loaded model MB |")
    print("|---|---|---|---|---|---|---|")
    for system, minutes, r in rows:
        name = "mert embed_file (30 s windows)" if system == "mert" else "HubertModel, one pass"
        print(
            f"| {name} | {minutes:g} | {r['seconds']:.1f} | {minutes * 60 / r['seconds']:.2f} | "
            f"{r['seconds'] / minutes:.1f} | {r['peak_mb']:.0f} | {r['peak_mb'] - r['base_mb']:.0f} |"
        )
    for minutes in (10, 30):
        if minutes not in hf_minutes:
            gb = 2 * 4 * 512 * minutes * 60 * 24000 / 5 / 2**30
            row = f"| HubertModel, one pass (projected) | {minutes} | - | - | - | > {gb * 1024:.0f} (front end alone)"
            print(row + " | - |")


if __name__ == "__main__":
    main()

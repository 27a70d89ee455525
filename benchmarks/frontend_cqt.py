"""How much of the log-CQT and of a note's pitch a front end's features carry, before any training: test R2 of a
ridge regression from each frame's features (front-end output, and the transformer input) to its log-CQT target,
and the test accuracy of a ridge classifier of pitch class (12) from clip-mean-pooled features of single notes.

Why: the demo's CQT head can only learn what the frames it reads let it predict, and a few hundred CPU steps do
not turn a random front end into a filterbank. This prints, side by side on the same synthetic music (the demo's
generator; seeds disjoint from its corpus), the R2 of

- the log-STFT magnitude (a hand-crafted ceiling for a linear map from one 1024-sample window),
- MERT's front-end layout (10-tap first conv, 7 layers) at the small model's width, GroupNorm and LayerNorm,
- the `small` preset's front end (1024-tap first conv, 4 layers, LayerNorm) with a Kaiming or Gabor first conv,
  and with the 95M's GroupNorm.

    python benchmarks/frontend_cqt.py [--clips 96] [--seed 0]

Targets are `CQTTargets(compression="log")` on each front end's own frame grid; 3/4 of the clips fit the ridge,
1/4 score it. The notes are 2 s single notes of the demo's ten instrument families, octaves 2-6, 12 per pitch
class (9 fit, 3 scored). Random-init front ends are averaged over 3 seeds (the Gabor bank is deterministic).
"""

from __future__ import annotations

import argparse
import sys

import torch

from mert import Encoder, EncoderConfig
from mert.targets import CQTTargets


def ridge_r2(x: torch.Tensor, y: torch.Tensor, n_fit: int, lam: float = 1e-2) -> float:
    """``x (N, t, d)``, ``y (N, t, f)``: fit on the first ``n_fit`` clips, R2 on the rest (over all bins)."""
    x = torch.cat([x, torch.ones(*x.shape[:2], 1)], -1).double()
    xf, yf = x[:n_fit].flatten(0, 1), y[:n_fit].flatten(0, 1).double()
    xt, yt = x[n_fit:].flatten(0, 1), y[n_fit:].flatten(0, 1).double()
    w = torch.linalg.solve(xf.T @ xf + lam * torch.eye(x.shape[-1], dtype=torch.double), xf.T @ yf)
    return float(1 - ((xt @ w - yt) ** 2).mean() / yt.var())


def ridge_accuracy(x: torch.Tensor, y: torch.Tensor, fit: torch.Tensor, lam: float = 1e-1) -> float:
    """``x (N, d)`` pooled features, ``y (N,)`` classes: one-hot ridge on standardised ``x[fit]``; accuracy on
    the rest."""
    mu, sd = x[fit].mean(0), x[fit].std(0) + 1e-6
    x = torch.cat([(x - mu) / sd, torch.ones(len(x), 1)], -1).double()
    onehot = torch.nn.functional.one_hot(y).double()
    w = torch.linalg.solve(x[fit].T @ x[fit] + lam * torch.eye(x.shape[1], dtype=torch.double), x[fit].T @ onehot[fit])
    return float(((x[~fit] @ w).argmax(1) == y[~fit]).double().mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from mert.data.synthetic import render_clips

    torch.set_num_threads(max(1, torch.get_num_threads()))
    jobs = [dict(seconds=3.0, sample_rate=24000, seed=7 * 10**12 + args.seed * 10**6 + i, kind="music")
            for i in range(args.clips)]  # fmt: skip
    wav = torch.stack([torch.as_tensor(w, dtype=torch.float32) for w, _ in render_clips(jobs, 1)])
    n_fit = args.clips * 3 // 4
    note_jobs = [
        dict(seconds=2.0, sample_rate=24000, seed=8 * 10**12 + args.seed * 10**6 + i, kind="note", pitch=i % 12)
        for i in range(144)
    ]
    notes = torch.stack([torch.as_tensor(w, dtype=torch.float32) for w, _ in render_clips(note_jobs, 1)])
    pitch = torch.arange(144) % 12
    note_fit = torch.arange(144) < 108

    def target(kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
        return CQTTargets(compression="log", log_floor=0.01, conv_kernel=kernel, conv_stride=stride)(wav)

    rows = []
    y0 = target((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2))
    spec = torch.stft(wav, 1024, 320, window=torch.hann_window(1024), return_complex=True).abs()
    spec = torch.log(spec.transpose(1, 2) + 1e-3)[:, : y0.shape[1]]
    nspec = torch.stft(notes, 1024, 320, window=torch.hann_window(1024), return_complex=True).abs()
    note_acc = ridge_accuracy(torch.log(nspec + 1e-3).mean(-1), pitch, note_fit)
    rows.append(("log-STFT magnitude, 1024-sample window (hand-crafted)", ridge_r2(spec, y0, n_fit), None, note_acc))
    small = dict(conv_dim=(64,) * 4, conv_kernel=(1024, 3, 3, 2), conv_stride=(40, 2, 2, 2))
    mert = dict(conv_dim=(64,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2))
    setups = [
        ("MERT layout (10-tap first conv), GroupNorm, Kaiming", mert, "group", "kaiming"),
        ("MERT layout (10-tap first conv), LayerNorm, Kaiming", mert, "layer", "kaiming"),
        ("small preset layout (1024-tap first conv), LayerNorm, Kaiming", small, "layer", "kaiming"),
        ("small preset layout, GroupNorm, Gabor", small, "group", "gabor"),
        ("small preset layout, LayerNorm, Gabor (the `small` preset)", small, "layer", "gabor"),
    ]
    for name, layout, norm, init in setups:
        y = target(layout["conv_kernel"], layout["conv_stride"])
        feats, inputs, accs = [], [], []
        for seed in range(1 if init == "gabor" else 3):
            torch.manual_seed(seed)
            cfg = EncoderConfig.preset("tiny", hidden_size=96, num_heads=4, pos_conv_groups=4, frontend_norm=norm,
                                       frontend_init=init, **layout)  # fmt: skip
            enc = Encoder(cfg).eval()
            with torch.no_grad():
                out = enc(wav, sample_rate=24000)
            feats.append(ridge_r2(out.features, y, n_fit))
            inputs.append(ridge_r2(out.hidden_states[0], y, n_fit))
            with torch.no_grad():
                pooled = enc(notes, sample_rate=24000).features.mean(1)
            accs.append(ridge_accuracy(pooled, pitch, note_fit))
        rows.append((name, sum(feats) / len(feats), sum(inputs) / len(inputs), sum(accs) / len(accs)))
    print(f"Ridge R2 of the log-CQT (floor 0.01) of {args.clips} synthetic music clips of 3 s (fit on {n_fit}) and "
          "pitch-class accuracy on 144 single notes (fit on 108), fresh front ends:\n")  # fmt: skip
    print("| features | log-CQT R2, front-end output | log-CQT R2, transformer input | note pitch class, accuracy |")
    print("|---|---|---|---|")
    for name, a, b, c in rows:
        print(f"| {name} | {a:.3f} | {'-' if b is None else f'{b:.3f}'} | {100 * c:.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

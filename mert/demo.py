"""`mert demo`: the whole loop on one CPU in minutes, with nothing downloaded.

1. write a synthetic music corpus (chords, melody, drums; labelled) and its manifest;
2. fit an acoustic teacher on it: k-means on MFCC and chroma frames (the MERT-v0 recipe), and cache the
   k-means codes and CQT targets of fixed segments in shards (on 2 CPU cores the CQT would otherwise cost more
   than the encoder's own step);
3. pretrain a small encoder from the shards for 500 steps: masking, in-batch mixing, code and CQT heads;
4. export the encoder as a release folder;
5. probe it and a randomly initialised encoder of the same shape on held-out clips (key, melody timbre,
   tempo), one linear probe per layer, and print/write the table and a per-layer plot.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

TASKS = {  # label field -> ordered class values
    "key": list(range(12)),
    "timbre": ["sine", "organ", "saw", "square", "pluck"],
    "tempo_bpm": [70.0, 90.0, 110.0, 130.0, 150.0],
}


def _probe_clips(n: int, seconds: float, sample_rate: int, seed: int):
    """Held-out labelled clips (seeds disjoint from the corpus), split 60/20/20."""
    from mert.data.synthetic import render_clip

    clips, labels = [], []
    for i in range(n):
        wav, lab = render_clip(seconds, sample_rate, seed=10_000_000 + seed * 100_000 + i)
        clips.append(wav)
        labels.append(lab.to_dict())
    a, b = int(0.6 * n), int(0.8 * n)
    return (clips[:a], labels[:a]), (clips[a:b], labels[a:b]), (clips[b:], labels[b:])


def _plot(results: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(TASKS), figsize=(4 * len(TASKS), 3.2), sharey=True)
    for ax, task in zip(axes, TASKS):
        for name, style in (("pretrained", "-o"), ("random", "--s")):
            per_layer = results[name][task]["per_layer"]
            ax.plot(range(len(per_layer)), [100 * r["test"] for r in per_layer], style, label=name)
        ax.axhline(100 / len(TASKS[task]), color="grey", lw=0.8, ls=":", label="chance")
        ax.set_title(task)
        ax.set_xlabel("layer (0 = transformer input)")
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="mert demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="mert-demo", help="output folder (default ./mert-demo)")
    ap.add_argument("--max-steps", type=int, default=500, help="pretraining steps (default 500, ~5 min on 2 cores)")
    ap.add_argument("--minutes", type=float, default=12.0, help="cap on pretraining time in minutes (default 12)")
    ap.add_argument("--corpus-clips", type=int, default=240)
    ap.add_argument("--probe-clips", type=int, default=600)
    ap.add_argument("--seconds", type=float, default=4.0, help="length of corpus and probe clips")
    ap.add_argument("--segment-seconds", type=float, default=2.0, help="length of the pretraining segments")
    ap.add_argument("--model", default="small", help="model config group (small, tiny)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for the pretraining run, e.g. optim.lr=3e-3")
    args = ap.parse_args(argv)
    try:
        import hydra  # noqa: F401
        import lightning  # noqa: F401
    except ImportError:
        print("mert demo needs the train extra: pip install 'mert[train]'", file=sys.stderr)
        return 2
    import torch
    from hydra import compose, initialize_config_module

    from mert import Encoder
    from mert.data.manifest import scan_audio, write_manifest
    from mert.data.shards import write_shards
    from mert.data.synthetic import write_synthetic_corpus
    from mert.lightning.train import run
    from mert.probe.linear import extract_pooled, probe_layers
    from mert.targets import CQTTargets, KMeansTargets

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sr = 24000
    t0 = time.perf_counter()

    def stage(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", flush=True)

    corpus = out / "corpus"
    if not (corpus / "labels.csv").is_file():
        stage(f"1/5 writing {args.corpus_clips} synthetic clips of {args.seconds:g} s to {corpus}")
        write_synthetic_corpus(corpus, args.corpus_clips, seconds=args.seconds, sample_rate=sr, seed=args.seed)
    manifest = out / "train.tsv"
    write_manifest(manifest, scan_audio(corpus, progress=False).entries)

    km_path = out / "kmeans.pt"
    if not km_path.is_file():
        stage("2/5 fitting the acoustic teacher: k-means on MFCC and chroma frames")
        km = KMeansTargets.fit(sorted(corpus.glob("*.wav")), num_clusters=64, seed=args.seed, progress=False)
        km.save(km_path)
    shards = out / "shards"
    if not (shards / "index.json").is_file():
        stage("    caching k-means codes and CQT targets of fixed segments in shards")
        teachers = {"codes": KMeansTargets.load(km_path), "features": CQTTargets(sample_rate=sr)}
        write_shards(
            manifest,
            shards,
            sample_rate=sr,
            segment_seconds=args.segment_seconds,
            min_seconds=args.segment_seconds,
            teachers=teachers,
            overwrite=True,
            progress=False,
        )

    stage(f"3/5 pretraining a '{args.model}' encoder: {args.max_steps} steps (cached k-means codes + CQT targets)")
    minutes = max(args.minutes, 0.1)
    overrides = [
        "experiment=demo_cpu",
        f"model={args.model}",
        f"targets.code_teacher.path={km_path}",
        f"data.shards={shards}",
        f"trainer.max_steps={args.max_steps}",
        f"+trainer.max_time='00:{int(minutes // 60):02d}:{int(minutes % 60):02d}:{int(minutes * 60 % 60):02d}'",
        f"run_dir={out / 'run'}",
        f"seed={args.seed}",
    ]
    overrides += args.overrides
    if (out / "run").exists():
        # The demo's budget is per invocation: start the pretraining afresh (corpus, teacher and shards are kept).
        shutil.rmtree(out / "run")
    with initialize_config_module("mert.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    summary = run(cfg)

    stage("4/5 exporting the encoder")
    from mert.pretrain.export import export_run

    export_dir = export_run(out / "run", out / "encoder")
    pretrained = Encoder.from_pretrained(export_dir)
    torch.manual_seed(args.seed)
    random = Encoder(pretrained.config).eval()

    stage(f"5/5 probing on {args.probe_clips} held-out clips: linear probe per layer, pretrained vs random")
    splits = _probe_clips(args.probe_clips, args.seconds, sr, args.seed)
    results: dict = {"pretraining": summary}
    for name, enc in (("pretrained", pretrained), ("random", random)):
        feats = [extract_pooled(enc, clips, sr) for clips, _ in splits]
        results[name] = {}
        for task, classes in TASKS.items():
            ys = [torch.tensor([classes.index(lab[task]) for lab in labels]) for _, labels in splits]
            per_layer = probe_layers(feats[0], ys[0], feats[1], ys[1], feats[2], ys[2])
            best = max(per_layer, key=lambda i: per_layer[i].val_accuracy)
            results[name][task] = {
                "best_layer": best,
                "test_accuracy": per_layer[best].test_accuracy,
                "per_layer": [{"val": r.val_accuracy, "test": r.test_accuracy} for r in per_layer.values()],
            }
    lines = [
        "| task (classes) | chance | random encoder | pretrained encoder | margin |",
        "|---|---|---|---|---|",
    ]
    wins = 0
    for task, classes in TASKS.items():
        r, p = results["random"][task], results["pretrained"][task]
        margin = p["test_accuracy"] - r["test_accuracy"]
        wins += margin > 0
        lines.append(
            f"| {task} ({len(classes)}) | {100 / len(classes):.1f}% | {100 * r['test_accuracy']:.1f}% (layer "
            f"{r['best_layer']}) | {100 * p['test_accuracy']:.1f}% (layer {p['best_layer']}) | {100 * margin:+.1f} |"
        )
    mean_r = sum(results["random"][t]["test_accuracy"] for t in TASKS) / len(TASKS)
    mean_p = sum(results["pretrained"][t]["test_accuracy"] for t in TASKS) / len(TASKS)
    lines.append(f"| **mean** | | {100 * mean_r:.1f}% | {100 * mean_p:.1f}% | {100 * (mean_p - mean_r):+.1f} |")
    table = "\n".join(lines)
    results.update({"mean_random": mean_r, "mean_pretrained": mean_p, "tasks_won": wins})
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(table + "\n")
    plotted = _plot(results, out / "probe_layers.png")
    stage("done")
    print(
        f"\nPretraining: {summary['steps']} steps, {summary['audio_hours'] * 60:.1f} min of audio, final loss "
        f"{summary['final_loss']}.\nLinear probes on held-out synthetic clips (best layer chosen on validation, "
        f"test accuracy):\n\n{table}\n\nWritten: {out / 'results.json'}, {out / 'results.md'}"
        + (f", {out / 'probe_layers.png'}" if plotted else " (pip install matplotlib for the plot)")
        + f"; encoder: {export_dir}"
    )
    return 0 if mean_p > mean_r else 1

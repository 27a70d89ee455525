"""`mert demo`: the whole loop on one CPU, with nothing downloaded.

1. write a synthetic corpus (:mod:`mert.data.synthetic`: 70 % music with melody, chords, bass, drums, rooms and
   noise; 15 % single notes; 15 % chords; ten instrument families) and its manifest;
2. fit an acoustic teacher on it: k-means on MFCC and chroma frames (the MERT-v0 recipe), and cache the
   k-means codes and CQT targets of fixed segments in shards (on 2 CPU cores the CQT would otherwise cost more
   than the encoder's own step);
3. pretrain a small encoder from the shards for exactly ``--max-steps`` steps (the ``conformer_kmeans`` recipe:
   mel front end + Conformer at 25 Hz, 0.4 s block masking, code and CQT heads, no in-batch noise mixing;
   ``--experiment demo_cpu`` is MERT-v1's waveform conv family; a slower machine takes longer and prints the
   same table);
4. export the encoder as a release folder;
5. probe it, a randomly initialised encoder of the same shape and hand-crafted features (MFCC, chroma, CQT,
   log-mel, MFCC+chroma+CQT; the best on validation) on held-out clips rendered from seeds the corpus never
   uses: key (12 tonics, music), instrument (10 families, single notes), tempo (5 classes, music with drums),
   pitch (12 pitch classes, single notes of octaves 2-6) and chord quality (6, chords). Each task has its own
   class-balanced clips (music ``--seconds`` long, notes and chords ``--note-seconds``), a seeded split 60/20/20
   within each class (:func:`mert.data.splits.seeded_split`); one linear probe per layer, trained as ``mert
   probe`` trains it (:mod:`mert.probe.probes`), the learning rate and the layer chosen on validation. Every
   clip's features are computed once per encoder. The table, ``results.json`` (every number, per layer),
   ``results.md`` and a per-layer plot are written.

The table has one column per encoder (random, hand-crafted, pretrained), and one line says where the pretrained
encoder stands. Exit status 0 whenever the whole loop ran; with ``--strict``, 1 when the pretrained encoder is
not ahead of the random one on the mean.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mert.data.probe_tasks import TASKS, probe_jobs, split_clips
from mert.fileio import atomic_path, write_text_atomic
from mert.progress import is_terminal

__all__ = [
    "DemoOptions",
    "run_demo",
    "TASKS",
    "HANDCRAFTED_KINDS",
    "format_table",
    "verdict",
    "verdict_line",
    "probe_jobs",
    "split_clips",
    "progress_lines",
]

# Hand-crafted baselines, each a mert.probe.handcrafted.HandcraftedEncoder kind.
HANDCRAFTED_KINDS = ("mfcc", "chroma", "cqt", "mel", "mfcc+chroma+cqt")


def _best_by_val(per: dict[str, dict[str, float]]) -> str:
    """The key whose ``val`` is highest (the first on ties, so the choice never looks at test)."""
    return max(per, key=lambda k: per[k]["val"])


def format_table(results: dict) -> str:
    """The Markdown table of a ``results`` dict (as :func:`main` writes to results.json)."""
    lines = [
        "| task (classes) | chance | random encoder | hand-crafted (which) | pretrained encoder | margin vs random |",
        "|---|---|---|---|---|---|",
    ]
    for task, info in results["tasks"].items():
        r, h, p = results["random"][task], results["handcrafted"][task], results["pretrained"][task]
        margin = p["test_accuracy"] - r["test_accuracy"]
        lines.append(
            f"| {task} ({len(info['classes'])}) | {100 * info['chance']:.1f}% "
            f"| {100 * r['test_accuracy']:.1f}% (layer {r['best_layer']}) "
            f"| {100 * h['test_accuracy']:.1f}% ({h['best']}) "
            f"| {100 * p['test_accuracy']:.1f}% (layer {p['best_layer']}) | {100 * margin:+.1f} |"
        )
    m = results["mean"]
    lines.append(
        f"| **mean** | {100 * m['chance']:.1f}% | {100 * m['random']:.1f}% | {100 * m['handcrafted']:.1f}% "
        f"| {100 * m['pretrained']:.1f}% | {100 * (m['pretrained'] - m['random']):+.1f} |"
    )
    return "\n".join(lines)


def verdict(results: dict) -> list[str]:
    """What fails ``mert demo --strict`` (an empty list: nothing): the pretrained encoder must be ahead of the
    random one on the mean over the tasks."""
    m = results["mean"]
    if m["pretrained"] > m["random"]:
        return []
    return [
        f"the pretrained encoder's mean ({100 * m['pretrained']:.1f}%) is not ahead of the random encoder's "
        f"({100 * m['random']:.1f}%)"
    ]


def verdict_line(results: dict) -> str:
    """One line on where the pretrained encoder stands against the random one and hand-crafted features."""
    m = results["mean"]
    p, r, h = (100 * m[k] for k in ("pretrained", "random", "handcrafted"))
    tasks = list(results["tasks"])
    ahead = sum(results["pretrained"][t]["test_accuracy"] > results["random"][t]["test_accuracy"] for t in tasks)
    vs_random = "ahead of" if p > r else "not ahead of"
    vs_hand = "ahead of" if p > h else "behind"
    return (
        f"pretrained {p:.1f}% on the mean: {vs_random} the random encoder ({r:.1f}%, {p - r:+.1f}; ahead on {ahead} "
        f"of {len(tasks)} tasks), {vs_hand} hand-crafted features ({h:.1f}%, {p - h:+.1f})"
    )


def progress_lines(total_steps: int, lines: int = 10) -> Any:
    """A Lightning callback printing ``lines`` plain progress lines (step, loss, elapsed, ETA) to stderr: the
    demo's progress when stderr is a log file rather than a terminal (a progress bar there is one huge line)."""
    import lightning.pytorch as pl

    class ProgressLines(pl.Callback):
        def __init__(self) -> None:
            self.every = max(1, total_steps // max(1, lines))
            self.t0 = 0.0
            self.step0 = self.last = 0

        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.t0, self.step0 = time.perf_counter(), trainer.global_step
            self.last = self.step0

        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
            step = trainer.global_step
            due = step % self.every == 0 or step == total_steps
            if not trainer.is_global_zero or step == self.last or not due:
                return  # (with gradient accumulation several batches end at one optimiser step)
            self.last = step
            elapsed = time.perf_counter() - self.t0
            eta = elapsed / (step - self.step0) * max(0, total_steps - step)
            loss = trainer.callback_metrics.get("train/loss")
            loss_s = f" | loss {float(loss):.3f}" if loss is not None else ""
            print(
                f"pretrain: step {step}/{total_steps}{loss_s} | {_clock(elapsed)} elapsed | ETA {_clock(eta)}",
                file=sys.stderr,
                flush=True,
            )

    return ProgressLines()


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


def _plot(results: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    tasks = list(results["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.2), sharey=True)
    for ax, task in zip(axes, tasks):
        for name, style in (("pretrained", "-o"), ("random", "--s")):
            per_layer = results[name][task]["per_layer"]
            ax.plot(range(len(per_layer)), [100 * r["test"] for r in per_layer], style, label=f"{name} encoder")
        hand = results["handcrafted"][task]
        ax.axhline(100 * hand["test_accuracy"], color="tab:green", lw=1.0, ls="-.", label="hand-crafted (best)")
        ax.axhline(100 * results["tasks"][task]["chance"], color="grey", lw=0.8, ls=":", label="chance")
        ax.set_xticks(range(len(results["random"][task]["per_layer"])))
        ax.set_title(f"{task} ({len(results['tasks'][task]['classes'])})")
        ax.set_xlabel("layer (0 = transformer input)")
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return True


# The demo's probe: a linear head per layer, trained as `mert probe` trains it (Adam, early stopping on
# validation accuracy), the learning rate and layer chosen on validation; one seed, the clips are few.
DEMO_PROBE = {"head": "linear", "layers": "sweep", "lrs": (1e-3, 5e-3, 1e-2), "seeds": (0,)}


def _linear_probes(x: dict[str, Any], y: dict[str, Any], num_classes: int) -> list[dict[str, float]]:
    """Validation and test accuracy per layer of ``x`` (split -> ``(N, n, d)``), ``y`` split -> ``(N,)`` classes."""
    from mert.probe.probes import ProbeConfig, ProbeData, run_probes, scorer, standardize

    truth = {s: v.numpy() for s, v in y.items()}
    data = ProbeData(
        standardize(x), y, "multiclass", num_classes, ("accuracy",), scorer("multiclass", truth, ["accuracy"])
    )
    res = run_probes(data, x["train"].shape[1], ProbeConfig(**DEMO_PROBE))
    return [{"val": c.val[0], "test": c.test[0]["accuracy"]} for _, c in sorted(res.candidates.items())]


def _probe_all(
    encoders: dict[str, Any], task_splits: dict[str, dict], sample_rate: int, stage: Callable[[str], None]
) -> dict:
    """Features of every probe clip once per encoder, then linear probes per task (and layer); see main()."""
    import torch

    from mert.probe.features import pooled_features
    from mert.probe.handcrafted import HandcraftedEncoder

    # All clips in one list (task by task, split by split) so each encoder sees each clip exactly once.
    order = [(t, s) for t, splits in task_splits.items() for s in ("train", "val", "test")]
    clips = [c for t, s in order for c in task_splits[t][s][0]]
    spans, a = {}, 0
    for t, s in order:
        spans[t, s] = slice(a, a + len(task_splits[t][s][0]))
        a = spans[t, s].stop
    # The probe's split names: "val" is "valid" there.
    names = {"train": "train", "val": "valid", "test": "test"}
    ys = {t: {names[s]: torch.tensor(task_splits[t][s][1]) for s in names} for t in task_splits}
    num_classes = {t: len(TASKS[t].classes) for t in task_splits}
    results: dict[str, Any] = {}
    for name, enc in encoders.items():
        stage(f"    {name} encoder: features of {len(clips)} clips")
        feats = pooled_features(enc, clips, sample_rate)  # (N, n, d)
        results[name] = {}
        for task in task_splits:
            per_layer = _linear_probes({names[s]: feats[spans[task, s]] for s in names}, ys[task], num_classes[task])
            best = max(range(len(per_layer)), key=lambda i: per_layer[i]["val"])  # first on ties
            results[name][task] = {
                "best_layer": best,
                "val_accuracy": per_layer[best]["val"],
                "test_accuracy": per_layer[best]["test"],
                "per_layer": per_layer,
            }
    # Hand-crafted: one pass of every kind (concatenated along d), then each baseline is a slice of it; the
    # pooled mean of a concatenation is the concatenation of the pooled means.
    stage(f"    hand-crafted features ({', '.join(HANDCRAFTED_KINDS)}): {len(clips)} clips")
    hand = HandcraftedEncoder("mfcc+chroma+cqt+mel", sample_rate=sample_rate)
    full = pooled_features(hand, clips, sample_rate)[:, 0]  # (N, d)
    offsets, a = {}, 0
    for kind, d in hand.config.dims.items():
        offsets[kind] = slice(a, a + d)
        a += d
    per_kind_feats = {k: torch.cat([full[:, offsets[p]] for p in k.split("+")], dim=1) for k in HANDCRAFTED_KINDS}
    results["handcrafted"] = {}
    for task in task_splits:
        per_kind = {}
        for kind, f in per_kind_feats.items():
            x = {names[s]: f[spans[task, s], None] for s in names}  # (N, 1, d): one "layer"
            per_kind[kind] = _linear_probes(x, ys[task], num_classes[task])[0]
        best = _best_by_val(per_kind)
        results["handcrafted"][task] = {
            "best": best,
            "val_accuracy": per_kind[best]["val"],
            "test_accuracy": per_kind[best]["test"],
            "per_kind": per_kind,
        }
    return results


# The demo's acoustic teachers (docs/teachers.md, "Which teacher when"), by name and description.
DEMO_TEACHERS = {
    "kmeans": "k-means",
    "rvq": "learned RVQ",
    "kmeans+rvq": "k-means + learned RVQ",
    "random_projection": "random-projection",
}
# The pretraining recipes `mert demo --experiment` runs (conf/experiment/): both read cached targets from shards.
DEMO_EXPERIMENTS = {
    "demo_cpu": "MERT-v1's family (waveform conv + transformer, 75 Hz, span masking): 500 steps",
    "cpu_hour": "the hour: 6000 steps, at most an hour of pretraining on an idle 2-core machine",
    "conformer_kmeans": "the demo: mel + Conformer, 25 Hz, block masking, 500 steps, a few minutes on 2 CPU cores",
    "conformer_melrvq": "conformer_kmeans with Mel-RVQ codes",
    "conformer_rp": "conformer_kmeans with random-projection codes",
    "conformer_cpu_hour": "mel + Conformer: 7000 steps, at most an hour of pretraining on an idle 2-core machine",
}
# The acoustic teacher of an experiment when --teacher is not given.
EXPERIMENT_TEACHERS = {"conformer_melrvq": "rvq", "conformer_rp": "random_projection"}
# The demo-sized RVQ teacher: 4 x 128 codes of 128-band log-mel frames (the corpus has ~72k frames), 600 steps.
DEMO_RVQ = {"num_codebooks": 4, "codebook_size": 128, "dim": 32, "n_mels": 128}
DEMO_RVQ_STEPS = 600


def _teacher_files(settings: Any) -> list[str]:
    """Every ``path`` in a (nested) teacher configuration: the fitted files the cached targets depend on."""
    if isinstance(settings, dict):
        return [p for k, v in settings.items() for p in ([v] if k == "path" and v else _teacher_files(v))]
    if isinstance(settings, list):
        return [p for v in settings for p in _teacher_files(v)]
    return []


def _hop_grid(hop: int) -> dict[str, tuple[int, ...]]:
    """Front-end arguments of a teacher fitted for encoders of this hop (the defaults at 320 samples)."""
    return {} if hop == 320 else {"conv_kernel": (hop,), "conv_stride": (hop,)}


def _hop_name(name: str, hop: int) -> str:
    """A fitted teacher's file name: ``kmeans.pt`` at a 320-sample hop, ``kmeans-hop960.pt`` at 960."""
    return f"{name}.pt" if hop == 320 else f"{name}-hop{hop}.pt"


def _fit_kmeans(path: Path, wavs: list[Path], seed: int, stage: Any, hop: int = 320) -> None:
    from mert.targets import KMeansTargets

    if not path.is_file():
        stage("2/5 fitting the acoustic teacher: k-means on MFCC and chroma frames")
        KMeansTargets.fit(wavs, num_clusters=64, seed=seed, progress=False, **_hop_grid(hop)).save(path)


def _fit_rvq(path: Path, wavs: list[Path], seed: int, stage: Any, config: Any) -> None:
    from mert.targets import RVQTargets, fit_rvq

    if path.is_file():
        try:  # reuse only the same teacher settings (the corpus is checked by corpus_spec.json)
            reuse = RVQTargets.load(path).config == config
        except (OSError, ValueError):
            reuse = False
        if not reuse:
            path.unlink()
    if not path.is_file():
        stage(
            "2/5 fitting the acoustic teacher: residual VQ "
            f"({config.num_codebooks} x {config.codebook_size} codes) on {config.input} frames"
        )
        teacher = fit_rvq(
            wavs, config, steps=DEMO_RVQ_STEPS, batch_frames=2048, seed=seed, progress=False,
            **_hop_grid(config.hop_length),
        )  # fmt: skip
        teacher.save(path)
        ppl = ", ".join(f"{p:.0f}" for p in teacher.fit_info["perplexity"])
        stage(f"    held-out reconstruction MSE {teacher.fit_info['held_out_mse']:.3f}, perplexity {ppl}")


def _fit_teacher(
    name: str, corpus: Path, out: Path, seed: int, stage: Any, *, rvq_input: str = "logmel", hop: int = 320
) -> list[str]:
    """Fit (or reuse) the demo's acoustic teacher for encoders of hop ``hop``; return the Hydra overrides that
    select it."""
    from mert.targets import RVQConfig

    wavs = sorted(corpus.glob("*.wav"))
    km = out / _hop_name("kmeans", hop)
    if name == "kmeans":
        _fit_kmeans(km, wavs, seed, stage, hop)
        return [f"targets.code_teacher.path={km}"]
    if name == "rvq":
        rvq = out / _hop_name("rvq", hop)
        _fit_rvq(rvq, wavs, seed, stage, RVQConfig(**DEMO_RVQ, input=rvq_input, hop_length=hop))
        return ["targets=rvq_cqt", f"targets.code_teacher.path={rvq}"]
    if name == "kmeans+rvq":  # 2 x 64 k-means codes (MFCC, chroma) + 2 x 64 RVQ codes
        _fit_kmeans(km, wavs, seed, stage, hop)
        config = RVQConfig(**{**DEMO_RVQ, "num_codebooks": 2, "codebook_size": 64}, input=rvq_input, hop_length=hop)
        rvq64 = out / _hop_name("rvq64", hop)
        _fit_rvq(rvq64, wavs, seed, stage, config)
        return [
            "targets=kmeans_rvq_cqt",
            f"targets.code_teacher.teachers.0.path={km}",
            f"targets.code_teacher.teachers.1.path={rvq64}",
        ]
    stage("2/5 acoustic teacher: random projections of log-mel frames (BEST-RQ; nothing to fit)")
    return ["targets=rp_cqt"]


@dataclass
class DemoOptions:
    """What ``mert demo`` runs: the defaults are the README's run (``mert demo --help`` explains each)."""

    out: str | os.PathLike = "mert-demo"
    max_steps: int | None = None  # None: the experiment's trainer.max_steps (conformer_kmeans: 500)
    corpus_clips: int = 960
    probe_clips: int = 240
    seconds: float = 4.0
    note_seconds: float = 2.0
    segment_seconds: float = 2.0
    model: str | None = None  # None: the experiment's model (conformer_kmeans: conformer_small)
    teacher: str | None = None  # None: the experiment's (k-means for most)
    rvq_input: str = "logmel"
    seed: int = 0
    # The recipe that scored best on real-instrument probes over three seeds, and ahead of its random encoder in
    # each (docs/notes/2026-12-07-demo-families-real-instruments.md).
    experiment: str = "conformer_kmeans"
    overrides: Sequence[str] = ()

    def __post_init__(self) -> None:
        if (self.max_steps is not None and self.max_steps < 1) or self.corpus_clips < 1:
            raise ValueError("--max-steps and --corpus-clips must be positive")
        if self.experiment not in DEMO_EXPERIMENTS:
            raise ValueError(f"--experiment must be one of {list(DEMO_EXPERIMENTS)}, not {self.experiment!r}")
        most = max(len(t.classes) for t in TASKS.values())
        if self.probe_clips < 4 * most:  # four clips per class: at least 2/1/1 in train/validation/test
            raise ValueError(f"--probe-clips must be at least {4 * most} (four clips per class of every task)")
        if self.teacher is None:
            self.teacher = EXPERIMENT_TEACHERS.get(self.experiment, "kmeans")
        if self.teacher not in DEMO_TEACHERS:
            raise ValueError(f"--teacher must be one of {list(DEMO_TEACHERS)}, not {self.teacher!r}")
        if self.teacher == "kmeans+rvq" and self.experiment.startswith("conformer"):
            # Its two teachers sit under code_teacher.teachers, where the experiment's 25 Hz grid does not reach.
            raise ValueError(f"--teacher kmeans+rvq works with the 75 Hz experiments, not {self.experiment}")


def run_demo(args: DemoOptions) -> dict[str, Any]:
    """Corpus -> teacher -> shards -> pretraining -> export -> probes, printing one line per stage.

    Returns:
        ``results.json``'s content (also written to ``args.out``): per-task splits, the pretraining summary,
        probe scores of the pretrained, random and hand-crafted encoders, their means, ``passed`` and
        ``failures`` (:func:`verdict`: the ``--strict`` rule), ``verdict`` (:func:`verdict_line`), ``seconds``
        per stage and ``table`` (:func:`format_table`), plus the paths written (``paths``).
    Raises:
        ImportError: the train extra (Lightning, Hydra) is not installed.
    """
    import torch
    from hydra import compose, initialize_config_module

    from mert import Encoder, EncoderConfig
    from mert.data.manifest import scan_audio, write_manifest
    from mert.data.shards import write_shards
    from mert.data.synthetic import GENERATOR_VERSION, render_clips, write_synthetic_corpus
    from mert.lightning.train import run

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sr = 24000
    workers = min(4, os.cpu_count() or 1)  # processes rendering synthetic clips (numpy, one core each)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def stage(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", flush=True)

    corpus = out / "corpus"
    # A rerun reuses the corpus, teacher and shards only if they were made from the same corpus settings and
    # generator version; otherwise all three are made afresh (never a silently stale corpus).
    spec = {"clips": args.corpus_clips, "seconds": args.seconds, "seed": args.seed, "sample_rate": sr}
    spec.update(generator=GENERATOR_VERSION, segment_seconds=args.segment_seconds)
    spec_file = out / "corpus_spec.json"
    if not spec_file.is_file() or json.loads(spec_file.read_text()) != spec:
        fitted = [p for pattern in ("kmeans*.pt", "rvq*.pt") for p in out.glob(pattern)]
        for stale in (corpus, out / "shards", *fitted):
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
    if not (corpus / "labels.csv").is_file():
        stage(f"1/5 writing {args.corpus_clips} synthetic clips of {args.seconds:g} s to {corpus}")
        write_synthetic_corpus(
            corpus, args.corpus_clips, seconds=args.seconds, sample_rate=sr, seed=args.seed, workers=workers
        )
        write_text_atomic(spec_file, json.dumps(spec) + "\n")
    manifest = out / "train.tsv"
    write_manifest(manifest, scan_audio(corpus, progress=False).entries)

    # The model's frame grid first: fitted teachers are fitted on its hop (320 samples at 75 Hz, 960 at 25 Hz).
    base = [f"experiment={args.experiment}", *([f"model={args.model}"] if args.model else [])]
    with initialize_config_module("mert.conf", version_base="1.3"):
        model_cfg = compose("train", overrides=[*base, *args.overrides]).model
    from omegaconf import OmegaConf

    grid = EncoderConfig.from_dict(OmegaConf.to_container(model_cfg, resolve=True))
    teacher_overrides = _fit_teacher(
        args.teacher, corpus, out, args.seed, stage, rvq_input=args.rvq_input, hop=grid.hop_length
    )
    # The run's configuration next: the shards cache the targets of the teachers it configures (a CQT with the
    # recipe's compression), and the run refuses shards made by other teachers.
    overrides = [
        *base,
        *teacher_overrides,
        f"data.shards={out / 'shards'}",
        *([f"trainer.max_steps={args.max_steps}"] if args.max_steps is not None else []),
        f"run_dir={out / 'run'}",
        f"seed={args.seed}",
    ]
    with initialize_config_module("mert.conf", version_base="1.3"):
        first = compose("train", overrides=[*overrides, *args.overrides])
    steps = int(first.trainer.max_steps)
    # The recipes decay the LR to 0 at max_steps; the warm-up (a tenth of the steps at most) must fit inside it.
    overrides.append(f"scheduler.warmup_steps={min(int(first.scheduler.warmup_steps), max(1, steps // 10))}")
    if not is_terminal(sys.stderr):  # a log file: ten plain lines instead of a progress bar
        overrides += [
            "~callbacks.progress",
            "+callbacks.progress_lines._target_=mert.demo.progress_lines",
            f"+callbacks.progress_lines.total_steps={steps}",
        ]
    overrides += args.overrides
    with initialize_config_module("mert.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    # One shard folder per teacher configuration, so changing the recipe's targets never reuses stale ones.
    from omegaconf import open_dict

    teacher_key = OmegaConf.to_yaml(cfg.targets, resolve=True) + f"segment={args.segment_seconds}"
    for fitted in _teacher_files(OmegaConf.to_container(cfg.targets.code_teacher, resolve=True)):
        teacher_key += hashlib.sha256(Path(fitted).read_bytes()).hexdigest()  # refitted teachers get new shards
    shards = out / f"shards-{hashlib.sha256(teacher_key.encode()).hexdigest()[:10]}"
    with open_dict(cfg):
        cfg.data.shards = str(shards)
        cfg.data.dataset.path_or_dir_or_list_of_tars = str(shards)
    if not (shards / "index.json").is_file():
        from hydra.utils import instantiate

        stage(f"    caching {DEMO_TEACHERS[args.teacher]} codes and CQT targets of fixed segments in shards")
        teachers = {
            "codes": instantiate(cfg.targets.code_teacher),
            "features": instantiate(cfg.targets.feature_teacher),
        }
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
    timings["data_and_teacher"] = time.perf_counter() - t0

    stage(
        f"3/5 pretraining a '{grid.name}' encoder ({args.experiment}): {steps} steps "
        f"(cached {DEMO_TEACHERS[args.teacher]} codes + CQT targets)"
    )
    t_train = time.perf_counter()
    if (out / "run").exists():
        # Each invocation pretrains afresh (corpus, teacher and shards are kept).
        shutil.rmtree(out / "run")
    summary = run(cfg)
    timings["pretraining"] = time.perf_counter() - t_train

    stage("4/5 exporting the encoder")
    from mert.pretrain.export import export_run

    export_dir = export_run(out / "run", out / "encoder", overwrite=True)  # each invocation trains afresh
    pretrained = Encoder.from_pretrained(export_dir)
    torch.manual_seed(args.seed)
    random = Encoder(pretrained.config).eval()

    t_probe = time.perf_counter()
    stage(
        f"5/5 probing: {args.probe_clips} held-out clips per task ({', '.join(TASKS)}); pretrained, random and "
        "hand-crafted features"
    )
    jobs = {
        name: probe_jobs(task, args.probe_clips, args.seconds if task.kind == "music" else args.note_seconds, sr,
                         args.seed, i)
        for i, (name, task) in enumerate(TASKS.items())
    }  # fmt: skip
    rendered = iter(render_clips([j for js in jobs.values() for j in js], workers))
    task_splits = {name: split_clips(TASKS[name], [next(rendered) for _ in js], args.seed) for name, js in jobs.items()}
    results: dict[str, Any] = {
        "tasks": {
            name: {
                "kind": task.kind,
                "seconds": jobs[name][0]["seconds"],
                "label": task.field,
                "classes": list(task.classes),
                "chance": 1.0 / len(task.classes),
                "split_sizes": {s: len(task_splits[name][s][1]) for s in ("train", "val", "test")},
            }
            for name, task in TASKS.items()
        },
        "pretraining": summary,
    }
    results.update(_probe_all({"pretrained": pretrained, "random": random}, task_splits, sr, stage))
    names = list(TASKS)
    results["mean"] = {
        "chance": sum(results["tasks"][t]["chance"] for t in names) / len(names),
        **{k: sum(results[k][t]["test_accuracy"] for t in names) / len(names) for k in ("random", "pretrained")},
        "handcrafted": sum(results["handcrafted"][t]["test_accuracy"] for t in names) / len(names),
    }
    failures = verdict(results)
    timings["probing"] = time.perf_counter() - t_probe
    timings["total"] = time.perf_counter() - t0
    results.update(passed=not failures, failures=failures, verdict=verdict_line(results), seconds=timings)
    table = format_table(results)
    write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    write_text_atomic(out / "results.md", table + "\n")
    plotted = _plot(results, out / "probe_layers.png")
    stage("done")
    paths = {"results": out / "results.json", "table": out / "results.md", "encoder": export_dir}
    if plotted:
        paths["plot"] = out / "probe_layers.png"
    return {**results, "table": table, "paths": paths}

"""`mert probe`: a labelled manifest + an encoder -> cached features -> probes -> results.json, table, plot.

Shape legend: ``N`` examples, ``n`` layers, ``d`` width, ``t`` label frames, ``P`` heads, ``C`` outputs.

    mert probe encoder=m-a-p/MERT-v1-95M data.manifest=gtzan.csv task=gtzan_genre
    mert probe encoder=random:runs/export data.manifest=x.csv           # a random encoder of that shape
    mert probe encoder=features:mfcc data.manifest=x.csv                # a hand-crafted feature baseline
    mert probe compare runs/probe/x/*                                    # side-by-side table

Hydra composes ``conf/probe.yaml``; everything below the entry point takes plain values. The run directory is
``runs_root/probe/<manifest stem>-<manifest digest>-<task>/<encoder>/<protocol>[-<overrides>]`` unless ``run_dir``
is set (:func:`probe_run_dir`); features live in the shared cache
(``features.cache_dir``, default ``$MERT_CACHE/features``) so a second run of the same encoder and data set
skips extraction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mert.fileio import atomic_path, write_json_atomic, write_text_atomic
from mert.probe import metrics as M
from mert.probe.tasks import ProbeDataset, TaskSpec

log = logging.getLogger(__name__)

__all__ = [
    "audio_hours",
    "build_probe_data",
    "compare_csv",
    "compare_markdown",
    "compare_runs",
    "compare_table",
    "find_results",
    "hydra_entry",
    "load_encoder",
    "load_results",
    "manifest_identity",
    "learning_curve",
    "plot_hours",
    "probe_run_dir",
    "run",
    "settings_fingerprint",
]


def load_encoder(source: str, *, random_seed: int = 0, device: str = "cpu"):
    """An encoder from a source (registry name, hub id, folder, URL), or ``random:<preset or source>``: a
    randomly initialised encoder of that shape (seeded), the baseline a pretrained encoder must beat, or
    ``features:<kind>``: hand-crafted features (``mfcc``, ``chroma``, ``cqt``, ``mel``, ``a+b``, ``all``; see
    :class:`~mert.probe.handcrafted.HandcraftedEncoder`), the baseline MARBLE reports next to every model.

    Raises:
        ValueError: an unknown ``features:`` kind (the message lists the valid ones).
    """
    from mert import Encoder, EncoderConfig
    from mert.models.config import PRESETS

    if source.startswith("features:"):
        from mert.probe.handcrafted import HandcraftedEncoder

        return HandcraftedEncoder(source[len("features:") :]).to(device).eval()
    if source.startswith("random:"):
        shape = source[len("random:") :]
        if shape.lower() in PRESETS:
            config = EncoderConfig.preset(shape)
        else:
            config = Encoder.from_pretrained(shape).config
        torch.manual_seed(random_seed)
        enc = Encoder(config)
    else:
        enc = Encoder.from_pretrained(source)
    return enc.to(device).eval()


def _slug(text: str, limit: int = 60) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.") or "encoder"
    return s if len(s) <= limit else s[: limit - 13] + "-" + hashlib.sha256(text.encode()).hexdigest()[:12]


# Settings that never change a score (where files go, speed, what is printed): left out of run names.
_NOT_SCIENTIFIC = {
    "encoder",
    "data.manifest",
    "run_dir",
    "runs_root",
    "progress",
    "device",
    "overwrite",
    "features.cache_dir",
    "features.batch_size",
    "probe.max_parallel",
    "min_test_items",
    "task",
    "protocol",
}


def manifest_identity(manifest: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """SHA-256 of the manifest's bytes and the folder its relative paths resolve against: two manifests with one
    file name, or one manifest read against two roots, are different data sets."""
    p = Path(manifest)
    h = hashlib.sha256(p.read_bytes())
    h.update(b"\0" + str(Path(root).resolve() if root else p.resolve().parent).encode())
    return h.hexdigest()


def settings_fingerprint(cfg: dict[str, Any], task: TaskSpec, manifest_id: str) -> str:
    """A 12-hex digest of everything that changes a probe's scores: encoder, data, task, features, protocol."""
    fcfg, pcfg = cfg.get("features") or {}, dict(cfg.get("probe") or {})
    pcfg.pop("max_parallel", None)
    data = cfg.get("data") or {}
    settings = {
        "encoder": str(cfg.get("encoder")),
        "random_seed": int(cfg.get("random_seed", 0)) if str(cfg.get("encoder")).startswith("random:") else None,
        "manifest": manifest_id,
        "split": [data.get("split_seed", 0), list(data.get("split_fractions", (0.8, 0.1, 0.1)))],
        "task": {k: v for k, v in task.__dict__.items()},
        "features": {k: fcfg.get(k) for k in ("window_seconds", "min_window_seconds", "layers")},
        "probe": pcfg,
        "bootstrap": cfg.get("bootstrap"),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _stored_fingerprint(folder: Path) -> str | None:
    try:
        return json.loads((folder / "results.json").read_text(encoding="utf-8")).get("settings_fingerprint", "")
    except (OSError, ValueError, AttributeError):
        return None  # no results yet (or unreadable): nothing to lose


def probe_run_dir(cfg: dict[str, Any], task: TaskSpec, manifest_id: str, fingerprint: str) -> Path:
    """Where a probe run writes: ``run_dir`` if set, else
    ``runs_root/probe/<manifest stem>-<manifest digest>-<task>/<encoder>/<protocol>[-<settings given>]``.

    A folder whose ``results.json`` came from other settings is never reused: the default name gets the settings
    digest appended, and an explicit ``run_dir`` is refused unless ``overwrite=true``.
    """
    if cfg.get("run_dir"):
        run_dir = Path(cfg["run_dir"])
        stored = _stored_fingerprint(run_dir)
        if stored is not None and stored != fingerprint and not cfg.get("overwrite"):
            raise ValueError(
                f"run_dir={run_dir} holds the results of a probe with other settings or data "
                f"(settings {stored or 'unknown'}, these {fingerprint}): choose another run_dir or pass overwrite=true"
            )
        return run_dir
    given = [o for o in cfg.get("overrides") or [] if o.partition("=")[0].lstrip("+~") not in _NOT_SCIENTIFIC]
    leaf = str(cfg.get("protocol_name") or "custom") + ("-" + ",".join(sorted(given)) if given else "")
    base = (
        Path(cfg.get("runs_root", "runs"))
        / "probe"
        / f"{_slug(Path(cfg['data']['manifest']).stem, 40)}-{manifest_id[:8]}-{task.name}"
        / _slug(cfg["encoder"])
    )
    run_dir = base / _slug(leaf, 120)
    stored = _stored_fingerprint(run_dir)
    if stored is not None and stored != fingerprint:
        run_dir = base / f"{_slug(leaf, 106)}-{fingerprint}"
    return run_dir


def build_probe_data(ds: ProbeDataset, feats: list[np.ndarray | None], ok: np.ndarray):
    """Turn cached features and parsed labels into a :class:`~mert.probe.probes.ProbeData`."""
    from mert.probe.probes import ProbeData, scorer, standardize

    task = ds.task
    metrics = task.resolved_metrics()
    split_idx = {s: np.array([i for i in ds.indices(s) if ok[i]], dtype=np.int64) for s in ("train", "valid", "test")}
    for s, idx in split_idx.items():
        if len(idx) == 0:
            raise ValueError(f"no usable {s} examples after skipping unreadable files: check skipped.json")
    if not task.frame_level:
        x = {s: torch.from_numpy(np.stack([feats[i] for i in idx])) for s, idx in split_idx.items()}  # (N, n, d)
        if task.type == "multiclass":
            y_np = {s: ds.targets[idx] for s, idx in split_idx.items()}
            y = {s: torch.from_numpy(v) for s, v in y_np.items()}
            kind, c = "multiclass", len(ds.classes)
        elif task.type == "multilabel":
            y_np = {s: ds.targets[idx] for s, idx in split_idx.items()}
            y = {s: torch.from_numpy(v) for s, v in y_np.items()}
            kind, c = "multilabel", len(ds.classes)
        else:
            y_np = {s: ds.targets[idx] for s, idx in split_idx.items()}
            mean, std = y_np["train"].mean(0), y_np["train"].std(0) + 1e-8
            # Standardised targets train well with one LR grid whatever their unit; R2 is unchanged by it.
            y_np = {s: (v - mean) / std for s, v in y_np.items()}
            y = {s: torch.from_numpy(v) for s, v in y_np.items()}
            kind, c = "regression", ds.targets.shape[1]
        score = scorer(kind, y_np, metrics, task.output_names)
        return ProbeData(standardize(x), y, kind, c, metrics, score)

    # Frame level: every frame is an example; scores are computed per clip (beats) or over frames.
    rate = task.frame_rate
    x, y, spans = {}, {}, {}
    for s, idx in split_idx.items():
        xs, ys, bounds, at = [], [], [], 0
        for i in idx:
            f = feats[i]  # (t, n, d)
            xs.append(torch.from_numpy(f))
            ys.append(ds.frame_targets(int(i), f.shape[0]))
            bounds.append((int(i), at, at + f.shape[0]))
            at += f.shape[0]
        x[s] = torch.cat(xs)
        y[s] = torch.from_numpy(np.concatenate(ys))
        spans[s] = bounds
    x = standardize(x)
    if task.type == "frame_multiclass":
        frame_y = {s: v.numpy() for s, v in y.items()}
        names = {"frame_accuracy": "accuracy", "frame_macro_f1": "macro_f1"}
        base = scorer("multiclass", frame_y, [names.get(m, m) for m in metrics])

        def score(split: str, out: torch.Tensor, items: np.ndarray | None = None) -> dict[str, np.ndarray]:
            if items is not None:  # items are clips: their frames, repeated as the clips are
                items = np.concatenate([np.arange(spans[split][k][1], spans[split][k][2]) for k in items])
            got = base(split, out, items)
            return {m: got[names.get(m, m)] for m in metrics}

        return ProbeData(x, y, "multiclass", len(ds.classes), metrics, score, test_items=len(spans["test"]))

    y = {s: v.float()[:, None] for s, v in y.items()}  # (N, 1) event / no event
    positives = float(y["train"].sum())
    pos_weight = torch.tensor([max(1.0, (len(y["train"]) - positives) / max(positives, 1.0))])

    f_measure = M.beat_f_measure if task.type == "beat" else M.onset_f_measure
    # Peaks closer than this are one event: beats are >= 0.25 s apart in music, onsets can be much closer.
    min_gap = 0.1 if task.type == "beat" else max(task.beat_tolerance_seconds, 1.0 / rate)

    # (split, id of the outputs) -> (outputs, (P, clips) F-measures): one resample after another reuses them.
    per_clip: dict[tuple[str, int], tuple[torch.Tensor, np.ndarray]] = {}

    def event_score(split: str, out: torch.Tensor, items: np.ndarray | None = None) -> dict[str, np.ndarray]:
        # The score is a mean over clips, so a bootstrap resample only re-averages the per-clip F-measures.
        key = (split, id(out))
        if key not in per_clip:
            prob = torch.sigmoid(out[..., 0].float()).numpy()  # (P, N)
            f = np.zeros((prob.shape[0], len(spans[split])))
            for k, (i, a, b) in enumerate(spans[split]):
                for p in range(prob.shape[0]):
                    est = M.pick_peaks(prob[p, a:b], rate, min_gap_seconds=min_gap)
                    f[p, k] = f_measure(ds.events[i], est, task.beat_tolerance_seconds)
            if items is None:
                return {metrics[0]: f.mean(1) if f.shape[1] else np.zeros(prob.shape[0])}
            per_clip.clear()
            per_clip[key] = (out, f)  # the tensor is kept so that its id is not reused while cached
        f = per_clip[key][1]
        return {metrics[0]: f[:, items].mean(1)}

    return ProbeData(x, y, "multilabel", 1, metrics, event_score, pos_weight, test_items=len(spans["test"]))


def _chance(ds: ProbeDataset, ok: np.ndarray) -> dict[str, float]:
    """What a predictor without audio scores on test: the majority class, constant scores, the train mean."""
    test = np.array([i for i in ds.indices("test") if ok[i]])
    train = np.array([i for i in ds.indices("train") if ok[i]])
    if ds.task.type == "multiclass" and len(test):
        majority = np.bincount(ds.targets[train]).argmax()
        return {"accuracy": M.accuracy(ds.targets[test], np.full(len(test), majority))}
    if ds.task.type == "multilabel":
        return {"roc_auc": 0.5}
    if ds.task.type == "regression":
        return {"r2": M.r2(ds.targets[test], np.broadcast_to(ds.targets[train].mean(0), ds.targets[test].shape))}
    return {}


def _handcrafted_kind(summary: dict) -> str | None:
    """The feature kind of a ``features:`` run (one feature set, stored as hidden state 0), else None."""
    config = summary["encoder"].get("config") or {}
    return config.get("kind") if config.get("type") == "handcrafted" else None


def _markdown(summary: dict) -> str:
    res = summary["results"]
    metrics = list(summary["task"]["metrics"])
    kind = _handcrafted_kind(summary)
    boot = res.get("bootstrap") or {}
    n_test = summary.get("n_test", summary["data"]["splits"]["test"])
    ci_text = (
        f" [{100 * boot['level']:g}% bootstrap interval over the {n_test} test items, best and weighted rows]"
        if boot
        else ""
    )
    lines = [
        f"# {summary['task']['name']} ({summary['task']['type']}): {summary['encoder']['source']}",
        "",
        "{train}/{valid}/{test} examples (train/valid/test); n_test = ".format(**summary["data"]["splits"])
        + f"{n_test}; {summary['features']['skipped']} skipped; "
        f"head {summary['probe']['head']}; {len(summary['probe']['seeds'])} seeds; test scores mean +- std over "
        f"seeds{ci_text}; learning rate{'' if kind else ' and layer'} chosen on validation "
        f"({res['selection_metric']}).",
        "",
        ("| features | valid " if kind else "| layer | valid ")
        + res["selection_metric"]
        + " | "
        + " | ".join(f"test {m}" for m in metrics)
        + " | LR per seed |",
        "|---|---|" + "---|" * len(metrics) + "---|",
    ]
    for name, r in res["candidates"].items():
        mark = " **(best)**" if name == res["best_candidate"] else ""
        cells = " | ".join(_cell(r["test"][m]) for m in metrics)
        lrs = ", ".join(f"{lr:g}" for lr in r["lr_per_seed"])
        label = kind if kind and name == "0" else name
        lines.append(f"| {label}{mark} | {100 * r['val_mean']:.1f} | {cells} | {lrs} |")
    if summary.get("chance"):
        lines += [
            "",
            "Without audio (majority class / constant / train mean): "
            + ", ".join(f"{m} {100 * v:.1f}" for m, v in summary["chance"].items()),
        ]
    weighted = res["candidates"].get("weighted", {})
    weights = weighted.get("layer_weights_mean")
    if weights:
        ids = weighted.get("layer_weights_layers")  # absent in results.json files written before it existed
        cells = [f"layer {i} {w:.3f}" for i, w in zip(ids, weights)] if ids else [f"{w:.3f}" for w in weights]
        lines += ["", "Learned layer weights (weighted sum, mean over seeds): " + ", ".join(cells)]
    for w in summary.get("warnings", []):
        lines += ["", f"**Warning:** {w}"]
    return "\n".join(lines) + "\n"


def _cell(s: dict) -> str:
    """``mean +- std`` over seeds, then ``[low, high]``, the bootstrap interval over test items, when known."""
    text = f"{100 * s['mean']:.1f} +- {100 * s['std']:.1f}"
    if "ci_low" in s:
        text += f" [{100 * s['ci_low']:.1f}, {100 * s['ci_high']:.1f}]"
    return text


def _warnings(n_test: int, seeds: int, min_test_items: int, ci: dict[str, list[float]]) -> list[str]:
    """What a reader of the table must know before trusting it: few test items, or one seed."""
    out = []
    if n_test < min_test_items:
        widths = ", ".join(f"{m} [{100 * lo:.1f}, {100 * hi:.1f}]" for m, (lo, hi) in ci.items())
        out.append(
            f"only {n_test} test items (fewer than {min_test_items}): one item moves a score by "
            f"{100 / max(n_test, 1):.1f} points, and +- is the spread over head seeds only, not over test data"
            + (
                f"; the bootstrap interval over test items is {widths} (too few items for it to be reliable)"
                if widths
                else ""
            )
            + ". Use a larger test split before comparing encoders."
        )
    if seeds < 2:
        out.append("one seed: +- 0.0 says nothing about the spread over head seeds")
    return out


def _plot(summary: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    res = summary["results"]
    metric = summary["task"]["metrics"][0]
    kind = _handcrafted_kind(summary)
    layers = [(int(k), v) for k, v in res["candidates"].items() if k != "weighted"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if layers:
        xs = [k for k, _ in layers]
        ax.errorbar(
            xs,
            [100 * v["test"][metric]["mean"] for _, v in layers],
            yerr=[100 * v["test"][metric]["std"] for _, v in layers],
            marker="o",
            capsize=3,
            label="test",
        )
        ax.plot(xs, [100 * v["val_mean"] for _, v in layers], "s--", alpha=0.6, label="valid")
        ax.set_xticks(xs)
        if kind:
            ax.set_xticklabels([kind])
            ax.set_xlim(-1, 1)
    if "weighted" in res["candidates"]:
        w = res["candidates"]["weighted"]["test"][metric]["mean"]
        ax.axhline(100 * w, color="C2", linestyle=":", label="weighted sum (test)")
    for m, v in (summary.get("chance") or {}).items():
        if m == metric:
            ax.axhline(100 * v, color="grey", linewidth=0.8, label="no audio")
    ax.set_xlabel("hand-crafted features (one feature set)" if kind else "hidden state (0 = transformer input)")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{summary['task']['name']}: {summary['encoder']['source']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return True


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Probe as configured (a plain mapping shaped like ``conf/probe.yaml``); returns the results summary.

    Messages go to the ``mert.probe.run`` logger and to ``probe.log`` in the run folder.
    """
    t0 = time.time()
    if cfg.get("encoder") in (None, "", "???"):
        raise ValueError(
            "no encoder given: pass encoder=NAME|HUB_ID|FOLDER|URL, encoder=random:<preset|source> or "
            "encoder=features:<mfcc|chroma|cqt|mel|all>"
        )
    if str(cfg["encoder"]).startswith("features:"):  # a misspelt kind is reported before any audio is read
        from mert.probe.handcrafted import parse_kinds

        parse_kinds(cfg["encoder"][len("features:") :])
    _probe_config(cfg)  # a bad protocol setting is reported before any audio is read
    task = TaskSpec(**cfg["task"])
    data_cfg = cfg["data"]
    ds = ProbeDataset.from_manifest(
        data_cfg["manifest"],
        task,
        root=data_cfg.get("root"),
        split_seed=int(data_cfg.get("split_seed", 0)),
        split_fractions=tuple(data_cfg.get("split_fractions", (0.8, 0.1, 0.1))),
    )
    task = ds.task
    device = cfg.get("device") or "cpu"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    manifest_id = manifest_identity(data_cfg["manifest"], data_cfg.get("root"))
    fingerprint = settings_fingerprint(cfg, task, manifest_id)
    run_dir = probe_run_dir(cfg, task, manifest_id, fingerprint)
    encoder = load_encoder(cfg["encoder"], random_seed=int(cfg.get("random_seed", 0)), device=device)
    run_dir.mkdir(parents=True, exist_ok=True)
    # The run's own log: what was printed, kept beside the results (a rerun of the same settings appends).
    log_file = logging.FileHandler(run_dir / "probe.log", encoding="utf-8")
    log_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("mert").addHandler(log_file)
    try:
        return _run_in(cfg, ds, task, encoder, run_dir, device, t0, manifest_id, fingerprint)
    finally:
        logging.getLogger("mert").removeHandler(log_file)
        log_file.close()


def _probe_config(cfg: dict[str, Any]) -> Any:
    from mert.probe.probes import ProbeConfig

    pcfg = dict(cfg.get("probe", {}))
    if isinstance(pcfg.get("layers"), list | tuple):
        pcfg["layers"] = [int(i) for i in pcfg["layers"]]
    return ProbeConfig(**pcfg)


def _run_in(
    cfg: dict[str, Any],
    ds: ProbeDataset,
    task: TaskSpec,
    encoder: Any,
    run_dir: Path,
    device: str,
    t0: float,
    manifest_id: str,
    fingerprint: str,
) -> dict[str, Any]:
    """The part of :func:`run` that writes into ``run_dir`` (its log file attached)."""
    from mert.download import default_cache_dir
    from mert.probe.cache import FeatureCache, FeatureSpec
    from mert.probe.probes import run_probes

    data_cfg = cfg["data"]
    log.info("mert probe: %s -> %s", ds.summary(), run_dir)
    fcfg = cfg.get("features", {})
    spec = FeatureSpec(
        window_seconds=float(fcfg.get("window_seconds", 5.0)),
        min_window_seconds=float(fcfg.get("min_window_seconds", 1.0)),
        frame_rate=task.frame_rate if task.frame_level else None,
        layers=str(fcfg.get("layers", "all")),
    )
    cache_dir = fcfg.get("cache_dir") or default_cache_dir() / "features"
    cache = FeatureCache(cache_dir, encoder, spec, batch_size=int(fcfg.get("batch_size", 8)))
    report = cache.extract(ds, progress=bool(cfg.get("progress", True)))
    log.info("mert probe: features %s (%s)", report, cache.folder)
    feats, ok = cache.load(ds)
    encoder_config = encoder.config.to_dict()
    cache.encoder = encoder = None  # the probes need only the cached features: free the (GPU) memory
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    probe_cfg = _probe_config(cfg)
    data = build_probe_data(ds, feats, ok)
    num_layers = data.x["train"].shape[1]
    bcfg = cfg.get("bootstrap") or {}
    results = run_probes(
        data,
        num_layers,
        probe_cfg,
        progress=lambda m: log.info("mert probe: %s", m),
        layer_ids=cache.layers,
        bootstrap=int(bcfg.get("resamples", 1000)),
        bootstrap_seed=int(bcfg.get("seed", 0)),
        bootstrap_level=float(bcfg.get("level", 0.95)),
    )
    res = results.to_dict()
    best = res["candidates"][res["best_candidate"]]
    headline = {m: best["test"][m] for m in task.resolved_metrics()}
    counts = {s: int(sum(ok[i] for i in ds.indices(s))) for s in ("train", "valid", "test")}
    best_ci = {m: [v["ci_low"], v["ci_high"]] for m, v in best["test"].items() if "ci_low" in v}
    warnings = _warnings(results.n_test, len(probe_cfg.seeds), int(cfg.get("min_test_items", 50)), best_ci)
    for w in warnings:
        log.warning("mert probe: %s", w)
    summary = {
        "mert_probe_version": 1,
        "task": {**task.__dict__, "metrics": list(task.resolved_metrics()), "classes": ds.classes},
        "encoder": {
            "source": cfg["encoder"],
            "fingerprint": cache.fingerprint,
            "config": encoder_config,
            "num_hidden_states": num_layers,
            "audio_hours_seen": audio_hours({"encoder": {"source": cfg["encoder"]}}),
        },
        "data": {
            "manifest": str(data_cfg["manifest"]),
            "manifest_sha256": manifest_id,
            "examples": len(ds.examples),
            "splits": counts,
        },
        "settings_fingerprint": fingerprint,
        "features": {
            "cache": str(cache.folder),
            "spec": spec.__dict__,
            "computed": report.computed,
            "from_cache": report.cached,
            "skipped": int((~ok).sum()),
            "skipped_files": report.skipped,  # file[segment] -> why it could not be read
        },
        "probe": {**probe_cfg.__dict__, "lrs": list(probe_cfg.lrs), "seeds": list(probe_cfg.seeds)},
        "headline": {"candidate": res["best_candidate"], **headline},
        "n_test": results.n_test,
        "warnings": warnings,
        "chance": _chance(ds, ok),
        "results": res,
        "seconds": round(time.time() - t0, 1),
    }
    if report.skipped:
        write_json_atomic(run_dir / "skipped.json", report.skipped)
    write_text_atomic(run_dir / "results.json", json.dumps(summary, indent=2, default=float) + "\n")
    table = _markdown(summary)
    write_text_atomic(run_dir / "results.md", table)
    plotted = _plot(summary, run_dir / "layers.png")
    log.info("%s", table.rstrip("\n"))
    log.info("mert probe: wrote %s, results.md%s", run_dir / "results.json", ", layers.png" if plotted else "")
    return summary


_RESULT_KEYS = ("task", "encoder", "data", "probe", "results")


def find_results(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The ``results.json`` files of ``mert probe`` runs: a file as given, a run folder's own file, or every
    ``results.json`` under a folder (sorted), in the order given.

    Raises:
        FileNotFoundError: a path that does not exist, or a folder with no ``results.json`` under it.
    """
    found: list[Path] = []
    for d in paths:
        p = Path(d)
        if p.is_file():
            found.append(p)
        elif (p / "results.json").is_file():
            found.append(p / "results.json")
        elif p.is_dir():
            under = sorted(q for q in p.rglob("results.json") if q.is_file())
            if not under:
                raise FileNotFoundError(
                    f"{str(d)!r} has no results.json (nor any below it): give `mert probe` run folders"
                )
            found.extend(under)
        else:
            raise FileNotFoundError(
                f"{str(d)!r} has no results.json: give `mert probe` run folders or results.json files"
            )
    return list(dict.fromkeys(found))


def load_results(path: str | os.PathLike) -> dict:
    """Read one ``results.json`` of ``mert probe``.

    Raises:
        ValueError: the file is not JSON, or is JSON of another kind (the message names the file and what is missing).
    """
    p = Path(path)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p} is not a `mert probe` results file: it is not JSON ({e})") from None
    missing = [k for k in _RESULT_KEYS if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise ValueError(
            f"{p} is not a `mert probe` results file: it has no {', '.join(repr(k) for k in missing)} "
            "(give the results.json that `mert probe` writes in its run folder)"
        )
    return obj


def _protocol(r: dict) -> dict[str, Any]:
    """The probe settings that change scores (head, grid, seeds, stopping), without memory knobs."""
    return {k: v for k, v in r["probe"].items() if k != "max_parallel"}


def _protocol_text(r: dict) -> str:
    p = r["probe"]
    return f"{p['head']}, {len(p['lrs'])} LRs, {len(p['seeds'])} seeds, <= {p.get('max_epochs', '?')} epochs"


def compare_table(results: Sequence[dict]) -> dict[str, Any]:
    """The comparison of probe runs as plain data: ``columns`` (one per run) and ``rows``.

    Each row is ``{"data": "manifest: task", "metric": ..., "cells": [...]}``; a score cell is
    ``{"mean", "std"[, "ci_low", "ci_high"]}`` (fractions), other cells are strings or numbers, ``None`` where
    the run has no such row. Rows are keyed by the manifest's identity (its digest when recorded, else its path),
    so two data sets with the same file name never share a row. ``protocols_differ`` is True when the columns
    were probed with different settings (their scores are then not directly comparable).
    """

    def data_id(r: dict) -> tuple[str, str]:
        d = r["data"]
        return (str(d.get("manifest_sha256") or Path(d["manifest"]).resolve()), r["task"]["name"])

    names: dict[tuple[str, str], str] = {}
    for r in results:
        key = data_id(r)
        label = f"{Path(r['data']['manifest']).name}: {r['task']['name']}"
        if key not in names:
            if label in names.values():  # same file name, another data set: say which
                label += f" ({key[0][:8] if r['data'].get('manifest_sha256') else r['data']['manifest']})"
            names[key] = label
    protocols = [_protocol(r) for r in results]
    differ = any(p != protocols[0] for p in protocols)
    columns = [r["encoder"]["source"] + (f" ({_protocol_text(r)})" if differ else "") for r in results]
    rows: list[dict[str, Any]] = [
        {"data": "", "metric": "protocol", "cells": [_protocol_text(r) for r in results]},
    ]
    for key, label in names.items():
        mine = [data_id(r) == key for r in results]
        rows.append(
            {
                "data": label,
                "metric": "n_test",
                "cells": [r.get("n_test", r["data"]["splits"]["test"]) if ok else None for r, ok in zip(results, mine)],
            }
        )
        metrics = list(dict.fromkeys(m for r, ok in zip(results, mine) if ok for m in r["task"]["metrics"]))
        for m in metrics:
            chance = [(r.get("chance") or {}).get(m) if ok else None for r, ok in zip(results, mine)]
            if any(c is not None for c in chance):
                rows.append({"data": label, "metric": f"{m} (chance)", "cells": chance})
            for which in ("best layer", "weighted"):
                cells = []
                for r, ok in zip(results, mine):
                    cands = r["results"]["candidates"]
                    cand = r["results"]["best_candidate"] if which == "best layer" else "weighted"
                    cells.append(cands[cand]["test"][m] if ok and cand in cands and m in cands[cand]["test"] else None)
                if any(c is not None for c in cells):
                    rows.append({"data": label, "metric": f"{m} ({which})", "cells": cells})
        rows.append(
            {
                "data": label,
                "metric": "best layer",
                "cells": [str(r["results"]["best_candidate"]) if ok else None for r, ok in zip(results, mine)],
            }
        )
    return {"columns": columns, "protocols_differ": differ, "rows": rows}


def _text_cell(c: Any) -> str:
    if c is None:
        return "-"
    if isinstance(c, dict):
        return _cell(c)
    if isinstance(c, float):
        return f"{100 * c:.1f}"
    return str(c)


def compare_markdown(table: dict[str, Any]) -> str:
    """The comparison as a Markdown table (scores in %, mean +- std over seeds [bootstrap interval])."""
    lines = [
        "| data: task | metric | " + " | ".join(table["columns"]) + " |",
        "|---|---|" + "---|" * len(table["columns"]),
    ]
    for row in table["rows"]:
        lines.append(f"| {row['data']} | {row['metric']} | " + " | ".join(_text_cell(c) for c in row["cells"]) + " |")
    if table["protocols_differ"]:
        lines += [
            "",
            "**Warning:** the columns were probed with different protocols (see the protocol row): "
            "their scores are not directly comparable.",
        ]
    return "\n".join(lines) + "\n"


def compare_csv(table: dict[str, Any]) -> str:
    """The comparison as CSV: one line per row; a score becomes ``mean``, ``std``, ``ci_low``, ``ci_high`` columns
    per run (fractions, empty where unknown)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    parts = ("mean", "std", "ci_low", "ci_high")
    w.writerow(["data", "metric", *(f"{c} {p}" for c in table["columns"] for p in parts)])
    for row in table["rows"]:
        out = [row["data"], row["metric"]]
        for c in row["cells"]:
            if isinstance(c, dict):
                out += [c.get(p, "") for p in parts]
            else:
                out += ["" if c is None else c, "", "", ""]
        w.writerow(out)
    return buf.getvalue()


def compare_runs(run_dirs: Sequence[str | os.PathLike]) -> str:
    """A Markdown table with one column per run (folders are searched for ``results.json``): per data set and
    task the protocol, n_test, chance level, each metric's test score on the best layer and on the weighted sum
    (mean +- std over seeds, with the bootstrap interval over test items), and the best layer's index."""
    return compare_markdown(compare_table([load_results(p) for p in find_results(run_dirs)]))


def audio_hours(result: dict) -> float | None:
    """Hours of audio the probed encoder saw in pretraining: ``audio_hours_seen`` from its results, or from the
    encoder's export ``meta.json`` / run ``summary.json``; None when unknown (a hub model, a random encoder)."""
    enc = result.get("encoder", {})
    if enc.get("audio_hours_seen") is not None:
        return float(enc["audio_hours_seen"])
    source = str(enc.get("source", ""))
    if source.startswith(("random:", "features:")):  # random weights and hand-crafted features saw no audio
        return None
    return _audio_hours_in(Path(source))


def _audio_hours_in(folder: Path) -> float | None:
    for name in ("meta.json", "summary.json"):
        p = folder / name
        if p.is_file():
            try:
                obj = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            # audio_hours_seen: what pretraining counts; audio_hours: what older exports' meta.json recorded.
            for key in ("audio_hours_seen", "audio_hours"):
                found = _find_key(obj, key)
                if isinstance(found, int | float) and not isinstance(found, bool):
                    return float(found)
    return None


def _find_key(obj: Any, key: str) -> Any:
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for v in obj.values():
            got = _find_key(v, key)
            if got is not None:
                return got
    return None


def _model_label(source: str) -> str:
    """A family label for a curve: the encoder's model name (``config.json``) or the preset after ``random:``."""
    path = source.split(":", 1)[1] if source.startswith("random:") else source
    try:
        name = json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError):
        name = None
    return str(name or (path if source.startswith("random:") else "pretrained"))


def learning_curve(results: Sequence[dict]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """What :func:`plot_hours` draws: per panel, pretrained curves and reference lines.

    Panels: ``"mean over N tasks"`` (an encoder counts when it has a result for every data set and task given)
    and one per task ``"DATA: TASK (METRIC)"``. In each, ``curves[label]`` lists ``(hours, score %)`` of the pretrained
    encoders of one model (each seed a point), and ``references[label]`` holds the score of a random encoder of
    that model (``random MODEL``) or of hand-crafted features (``features: NAME``), averaged over repeats.

    Returns:
        ``(panels, skipped)``: skipped names each pretrained run whose audio-hours are unknown.
    """
    skipped: list[str] = []
    per_encoder: dict[str, dict[tuple[str, str], float]] = {}  # source -> {(data, task): score}
    pairs: list[tuple[str, str]] = []
    panels: dict[str, dict[str, Any]] = {}
    kinds: dict[str, tuple[str, float | None]] = {}

    def add(panel: str, source: str, score: float) -> None:
        label, hours = kinds[source]
        p = panels.setdefault(panel, {"curves": {}, "references": {}})
        if hours is None:
            p["references"].setdefault(label, []).append(score)
        else:
            p["curves"].setdefault(label, []).append((hours, score))

    for r in results:
        source = str(r["encoder"]["source"])
        if source not in kinds:
            if source.startswith("features:"):
                kinds[source] = (f"hand-crafted ({source.split(':', 1)[1]})", None)
            elif source.startswith("random:"):
                kinds[source] = (f"random {_model_label(source)}", None)
            else:
                hours = audio_hours(r)
                if hours is None or hours <= 0:
                    skipped.append(f"{source}: audio-hours seen unknown, left out of the plot")
                    kinds[source] = ("", -1.0)
                else:
                    kinds[source] = (_model_label(source), hours)
        if kinds[source][1] == -1.0:
            continue
        data, task = Path(r["data"]["manifest"]).name, r["task"]["name"]
        m = r["task"]["metrics"][0]
        score = 100 * float(r["results"]["candidates"][r["results"]["best_candidate"]]["test"][m]["mean"])
        add(f"{data}: {task} ({m})", source, score)
        per_encoder.setdefault(source, {})[(data, task)] = score
        if (data, task) not in pairs:
            pairs.append((data, task))
    if len(pairs) > 1:
        for source, scores in per_encoder.items():
            if set(scores) == set(pairs):
                add(f"mean over {len(pairs)} tasks", source, sum(scores.values()) / len(scores))
    for p in panels.values():
        p["references"] = {k: sum(v) / len(v) for k, v in p["references"].items()}
    if not any(p["curves"] for p in panels.values()):
        raise ValueError("no run has known audio-hours (audio_hours_seen in the encoder's meta.json or summary.json)")
    mean_first = sorted(panels, key=lambda k: (not k.startswith("mean over"), k))
    return {k: panels[k] for k in mean_first}, skipped


def plot_hours(results: Sequence[dict], path: str | os.PathLike) -> list[str]:
    """Plot test scores against audio-hours seen in pretraining (log x): the mean over tasks first, then each task.

    Each pretrained model is a curve through the average of its seeds at each budget (every seed a dot); random
    encoders of the same shape and hand-crafted features (``random:...`` and ``features:...`` runs) are
    horizontal reference lines.

    Returns:
        one message per run left out because its audio-hours are unknown.
    Raises:
        ValueError: no run has known audio-hours, or matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        raise ValueError("--plot-hours needs matplotlib: pip install matplotlib") from None
    panels, skipped = learning_curve(results)
    n = len(panels)
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # A model's random encoder shares its colour (dashed); hand-crafted features get colours of their own.
    def family(label: str) -> str:
        return label.removeprefix("random ")

    names = sorted({family(k) for p in panels.values() for k in [*p["curves"], *p["references"]]})
    shade = {k: colours[i % len(colours)] for i, k in enumerate(names)}
    colour = {k: shade[family(k)] for p in panels.values() for k in [*p["curves"], *p["references"]]}
    for ax, (title, panel) in zip(axes.flat, panels.items()):
        for label, pts in panel["curves"].items():
            by_hours: dict[float, list[float]] = {}
            for h, v in pts:
                by_hours.setdefault(h, []).append(v)
            xs = sorted(by_hours)
            ax.scatter([h for h, _ in pts], [v for _, v in pts], s=14, alpha=0.6, color=colour[label])
            ax.plot(xs, [sum(by_hours[x]) / len(by_hours[x]) for x in xs], marker="o", color=colour[label],
                    label=f"{label} (pretrained)")  # fmt: skip
        for label, value in panel["references"].items():
            style = ":" if label.startswith("hand-crafted") else "--"
            ax.axhline(value, linestyle=style, color=colour[label], label=label)
        ax.set_xscale("log")
        # Ticks at 1, 2, 5 x 10^k within the budgets plotted (log axes otherwise label 2x10^1, 3x10^1, ... on top
        # of each other).
        budgets = [h for pts in panel["curves"].values() for h, _ in pts]
        lo, hi = min(budgets) / 1.5, max(budgets) * 1.5
        ticks = [m * 10.0**k for k in range(-3, 7) for m in (1, 2, 5) if lo <= m * 10.0**k <= hi]
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("audio hours seen in pretraining")
        ax.set_ylabel("test score, best layer (%)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path, suffix=Path(path).suffix or ".png") as tmp:
        fig.savefig(tmp, dpi=110, format=(Path(path).suffix.lstrip(".") or "png"))
    plt.close(fig)
    return skipped


def hydra_entry(cfg: Any) -> None:
    """The Hydra task of ``mert probe``: the composed config as plain values, then :func:`run`.

    The protocol chosen and the overrides typed name the run folder (:func:`probe_run_dir`).
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:  # `???` in conf/probe.yaml: encoder= and data.manifest= are required
        raise ValueError(f"missing required setting {e.full_key}=... (docs/probing.md)") from None
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        choices = dict(hc.runtime.choices)
        plain["protocol_name"] = choices.get("protocol")
        plain["overrides"] = list(hc.overrides.task)
    run(plain)

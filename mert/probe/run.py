"""`mert probe`: a labelled manifest + an encoder -> cached features -> probes -> results.json, table, plot.

Shape legend: ``N`` examples, ``n`` layers, ``d`` width, ``t`` label frames, ``P`` heads, ``C`` outputs.

    mert probe encoder=m-a-p/MERT-v1-95M data.manifest=gtzan.csv task=gtzan_genre
    mert probe encoder=random:runs/export data.manifest=x.csv           # a random encoder of that shape
    mert probe encoder=features:mfcc data.manifest=x.csv                # a hand-crafted feature baseline
    mert probe compare runs/probe/x/*                                    # side-by-side table

Hydra composes ``conf/probe.yaml``; everything below the entry point takes plain values. The run directory is
``runs_root/probe/<manifest stem>-<task>/<encoder>`` unless ``run_dir`` is set; features live in the shared cache
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

log = logging.getLogger("mert.probe")

__all__ = ["build_probe_data", "compare_runs", "hydra_entry", "load_encoder", "run"]


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

        def score(split: str, out: torch.Tensor) -> dict[str, np.ndarray]:
            got = base(split, out)
            return {m: got[names.get(m, m)] for m in metrics}

        return ProbeData(x, y, "multiclass", len(ds.classes), metrics, score)

    y = {s: v.float()[:, None] for s, v in y.items()}  # (N, 1) event / no event
    positives = float(y["train"].sum())
    pos_weight = torch.tensor([max(1.0, (len(y["train"]) - positives) / max(positives, 1.0))])

    f_measure = M.beat_f_measure if task.type == "beat" else M.onset_f_measure
    # Peaks closer than this are one event: beats are >= 0.25 s apart in music, onsets can be much closer.
    min_gap = 0.1 if task.type == "beat" else max(task.beat_tolerance_seconds, 1.0 / rate)

    def event_score(split: str, out: torch.Tensor) -> dict[str, np.ndarray]:
        prob = torch.sigmoid(out[..., 0].float()).numpy()  # (P, N)
        res = np.zeros(prob.shape[0])
        for i, a, b in spans[split]:
            for p in range(prob.shape[0]):
                est = M.pick_peaks(prob[p, a:b], rate, min_gap_seconds=min_gap)
                res[p] += f_measure(ds.events[i], est, task.beat_tolerance_seconds)
        return {metrics[0]: res / max(1, len(spans[split]))}

    return ProbeData(x, y, "multilabel", 1, metrics, event_score, pos_weight)


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
    lines = [
        f"# {summary['task']['name']} ({summary['task']['type']}): {summary['encoder']['source']}",
        "",
        "{train}/{valid}/{test} examples (train/valid/test); ".format(**summary["data"]["splits"])
        + f"{summary['features']['skipped']} skipped; "
        f"head {summary['probe']['head']}; {len(summary['probe']['seeds'])} seeds; test scores mean +- std over "
        f"seeds; learning rate{'' if kind else ' and layer'} chosen on validation ({res['selection_metric']}).",
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
        cells = " | ".join(f"{100 * r['test'][m]['mean']:.1f} +- {100 * r['test'][m]['std']:.1f}" for m in metrics)
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
    return "\n".join(lines) + "\n"


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
    """Probe as configured (a plain mapping shaped like ``conf/probe.yaml``); returns the results summary."""
    from mert.download import default_cache_dir
    from mert.probe.cache import FeatureCache, FeatureSpec
    from mert.probe.probes import ProbeConfig, run_probes

    t0 = time.time()
    if cfg.get("encoder") in (None, "", "???"):
        raise ValueError(
            "no encoder given: pass encoder=NAME|HUB_ID|FOLDER|URL, encoder=random:<preset|source> or "
            "encoder=features:<mfcc|chroma|cqt|mel|all>"
        )
    if str(cfg["encoder"]).startswith("features:"):  # a misspelt kind is reported before any audio is read
        from mert.probe.handcrafted import parse_kinds

        parse_kinds(cfg["encoder"][len("features:") :])
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
    run_dir = Path(
        cfg.get("run_dir")
        or Path(cfg.get("runs_root", "runs"))
        / "probe"
        / f"{_slug(Path(data_cfg['manifest']).stem)}-{task.name}"
        / _slug(cfg["encoder"])
    )
    encoder = load_encoder(cfg["encoder"], random_seed=int(cfg.get("random_seed", 0)), device=device)
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"mert probe: {ds.summary()} -> {run_dir}", flush=True)
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
    print(f"mert probe: features {report} ({cache.folder})", flush=True)
    feats, ok = cache.load(ds)
    encoder_config = encoder.config.to_dict()
    cache.encoder = encoder = None  # the probes need only the cached features: free the (GPU) memory
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    pcfg = dict(cfg.get("probe", {}))
    if isinstance(pcfg.get("layers"), list | tuple):
        pcfg["layers"] = [int(i) for i in pcfg["layers"]]
    probe_cfg = ProbeConfig(**pcfg)
    data = build_probe_data(ds, feats, ok)
    num_layers = data.x["train"].shape[1]
    results = run_probes(
        data, num_layers, probe_cfg, progress=lambda m: print(f"mert probe: {m}", flush=True), layer_ids=cache.layers
    )
    res = results.to_dict()
    best = res["candidates"][res["best_candidate"]]
    headline = {m: best["test"][m] for m in task.resolved_metrics()}
    counts = {s: int(sum(ok[i] for i in ds.indices(s))) for s in ("train", "valid", "test")}
    summary = {
        "mert_probe_version": 1,
        "task": {**task.__dict__, "metrics": list(task.resolved_metrics()), "classes": ds.classes},
        "encoder": {
            "source": cfg["encoder"],
            "fingerprint": cache.fingerprint,
            "config": encoder_config,
            "num_hidden_states": num_layers,
        },
        "data": {"manifest": str(data_cfg["manifest"]), "examples": len(ds.examples), "splits": counts},
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
    print(table, flush=True)
    print(f"mert probe: wrote {run_dir / 'results.json'}, results.md" + (", layers.png" if plotted else ""), flush=True)
    return summary


def compare_runs(run_dirs: Sequence[str | os.PathLike]) -> str:
    """A Markdown table with one column per run: per data set and task, each metric's test score on the best
    layer and on the weighted sum (mean +- std over seeds), plus the best layer's index.

    Rows are keyed by (manifest, task), so runs on different data never share a row; columns are named by the
    encoder source, with the head and seeds when runs of one encoder differ in protocol.
    """
    runs = []
    for d in run_dirs:
        p = Path(d)
        p = p / "results.json" if p.is_dir() else p
        if not p.is_file():
            raise FileNotFoundError(f"{str(d)!r} has no results.json: give `mert probe` run directories")
        runs.append(json.loads(p.read_text()))

    def row_key(r: dict) -> str:
        return f"{Path(r['data']['manifest']).name}: {r['task']['name']}"

    def column(r: dict) -> str:
        same_source = [q for q in runs if q["encoder"]["source"] == r["encoder"]["source"]]
        protocols = {(q["probe"]["head"], len(q["probe"]["seeds"]), len(q["probe"]["lrs"])) for q in same_source}
        extra = f" ({r['probe']['head']}, {len(r['probe']['seeds'])} seeds)" if len(protocols) > 1 else ""
        return r["encoder"]["source"] + extra

    header = "| data: task | metric | " + " | ".join(column(r) for r in runs) + " |"
    lines = [header, "|---|---|" + "---|" * len(runs)]
    for t in dict.fromkeys(row_key(r) for r in runs):
        mine = [row_key(r) == t for r in runs]
        metrics = list(dict.fromkeys(m for r, ok in zip(runs, mine) if ok for m in r["task"]["metrics"]))
        for m in metrics:
            for which in ("best layer", "weighted"):
                cells = []
                for r, ok in zip(runs, mine):
                    cands = r["results"]["candidates"]
                    key = r["results"]["best_candidate"] if which == "best layer" else "weighted"
                    if not ok or key not in cands or m not in cands[key]["test"]:
                        cells.append("-")
                        continue
                    s = cands[key]["test"][m]
                    cells.append(f"{100 * s['mean']:.1f} +- {100 * s['std']:.1f}")
                if any(c != "-" for c in cells):
                    lines.append(f"| {t} | {m} ({which}) | " + " | ".join(cells) + " |")
        cells = [str(r["results"]["best_candidate"]) if ok else "-" for r, ok in zip(runs, mine)]
        lines.append(f"| {t} | best layer | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def hydra_entry(cfg: Any) -> None:
    """The Hydra task of ``mert probe``: the composed config as plain values, then :func:`run`."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:  # `???` in conf/probe.yaml: encoder= and data.manifest= are required
        raise ValueError(f"missing required setting {e.full_key}=... (docs/probing.md)") from None
    run(plain)

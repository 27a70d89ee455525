"""Probes on frozen features: linear or one-hidden-layer MLP heads, per layer or on a learned layer mix.

Shape legend: ``N`` examples (clips, or frames for frame-level tasks), ``n`` layers, ``d`` width, ``C`` outputs
(classes, tags or regression targets), ``P`` probes trained side by side, ``B`` batch, ``H`` hidden units.

Protocol (spec 5, MARBLE): for every candidate (a layer, or the softmax-weighted sum of the transformer layers)
and every learning rate of the grid, a head is trained with Adam on mini-batches of 64, ReduceLROnPlateau and
early stopping on the validation score; the best validation state is scored on test. The learning rate is
chosen on validation per (candidate, seed); the best layer is chosen on mean validation score over seeds, so
the test split never takes part in a choice. Results are mean +- std over seeds.

All candidates and learning rates of one seed train together as one batched model (``P`` heads in one
``baddbmm``), with a per-probe Adam step size, so a per-layer sweep costs about one big model's time instead of
``P`` small loops'. Each head's gradient depends only on its own loss, so this is exactly ``P`` independent runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from mert.probe import metrics as M

__all__ = ["ProbeConfig", "ProbeData", "CandidateResult", "ProbeResults", "run_probes", "WEIGHTED"]

WEIGHTED = -1  # candidate id of the learned softmax-weighted sum over layers


@dataclass(frozen=True)
class ProbeConfig:
    """Probe training settings (defaults: spec 5).

    Attributes:
        head: ``mlp`` (hidden layer of ``hidden`` units, ReLU, dropout) or ``linear``.
        layers: candidates: ``all`` (every layer, plus the weighted sum), ``weighted`` (only the weighted sum),
            ``sweep`` (every layer, no weighted sum), or a list of layer indices.
        weighted_layers: layers mixed by the weighted sum; ``transformer`` excludes ``hidden_states[0]`` (spec 5).
        lrs: the learning-rate grid.
        seeds: one full training per seed.
        max_epochs: upper bound on epochs; ``patience`` epochs without a better validation score stop a probe.
        plateau_patience / plateau_factor: ReduceLROnPlateau on the validation score.
        max_parallel: heads trained side by side at most (bounds memory).
    """

    head: str = "mlp"
    hidden: int = 512
    dropout: float = 0.2
    layers: str | Sequence[int] = "all"
    weighted_layers: str = "transformer"
    lrs: tuple[float, ...] = (5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2)
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 64
    max_epochs: int = 100
    patience: int = 10
    plateau_patience: int = 3
    plateau_factor: float = 0.1
    weight_decay: float = 0.0
    max_parallel: int = 96

    def __post_init__(self) -> None:
        if self.head not in ("mlp", "linear"):
            raise ValueError(f"probe head must be 'mlp' or 'linear', got {self.head!r}")
        if not self.lrs or not self.seeds:
            raise ValueError("the probe needs at least one learning rate and one seed")
        object.__setattr__(self, "lrs", tuple(float(x) for x in self.lrs))
        object.__setattr__(self, "seeds", tuple(int(x) for x in self.seeds))


@dataclass
class ProbeData:
    """Features and targets of the three splits, plus how to score outputs.

    Attributes:
        x: split -> ``(N, n, d)`` features (float16 or float32).
        y: split -> targets: ``(N,)`` int64 classes, ``(N, C)`` float multi-hot or ``(N, R)`` float values.
        kind: ``multiclass``, ``multilabel`` (also beat frames: one sigmoid output) or ``regression``.
        num_outputs: ``C``.
        metrics: the metric names ``score`` returns; the first chooses learning rates, states and layers.
        score: ``(split, outputs (P, N, C)) -> {metric: (P,) scores}``; the first metric is the selection one.
        pos_weight: optional ``(C,)`` BCE weights for rare positives (beat frames).
    """

    x: dict[str, Tensor]
    y: dict[str, Tensor]
    kind: str
    num_outputs: int
    metrics: tuple[str, ...]
    score: Callable[[str, Tensor], dict[str, np.ndarray]]
    pos_weight: Tensor | None = None


@dataclass
class CandidateResult:
    """One candidate (a layer or the weighted sum): per seed the chosen LR, its validation and test scores."""

    candidate: int
    lrs: list[float] = field(default_factory=list)
    val: list[float] = field(default_factory=list)
    test: list[dict[str, float]] = field(default_factory=list)
    layer_weights: list[list[float]] = field(default_factory=list)

    def test_mean_std(self, metric: str) -> tuple[float, float]:
        vals = np.array([t[metric] for t in self.test], dtype=np.float64)
        return float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0


@dataclass
class ProbeResults:
    candidates: dict[int, CandidateResult]
    metrics: tuple[str, ...]
    best: int  # candidate with the best mean validation score

    def to_dict(self) -> dict:
        def name(c: int) -> str:
            return "weighted" if c == WEIGHTED else str(c)

        out = {
            "selection_metric": self.metrics[0],
            "best_candidate": name(self.best),
            "candidates": {},
        }
        for c, r in self.candidates.items():
            d = {
                "val_mean": float(np.mean(r.val)),
                "lr_per_seed": r.lrs,
                "test": {m: dict(zip(("mean", "std"), r.test_mean_std(m))) for m in self.metrics},
                "test_per_seed": r.test,
            }
            if r.layer_weights:
                d["layer_weights_mean"] = np.mean(np.array(r.layer_weights), axis=0).round(4).tolist()
            out["candidates"][name(c)] = d
        return out


class _Heads(torch.nn.Module):
    """``P`` independent heads; head ``p`` reads layer ``sources[p]`` or, when it is ``WEIGHTED``, a softmax mix."""

    def __init__(self, sources: list[int], mix_layers: list[int], d: int, c: int, cfg: ProbeConfig, seed: int):
        super().__init__()
        p = len(sources)
        self.register_buffer("sources", torch.tensor(sources))
        self.register_buffer("mix_layers", torch.tensor(mix_layers))
        self.weighted = torch.tensor([s == WEIGHTED for s in sources])
        self.dropout = cfg.dropout if cfg.head == "mlp" else 0.0

        # Each head's initialisation depends only on (seed, its candidate), not on which heads share its group,
        # so chunking by max_parallel changes nothing.
        gens = [torch.Generator().manual_seed(seed * 1_000_003 + src + 1) for src in sources]

        def linear(fan_in: int, fan_out: int) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
            bound = 1 / math.sqrt(fan_in)  # nn.Linear's default initialisation, per head
            w = torch.stack([torch.rand(fan_in, fan_out, generator=g) for g in gens]) * 2 - 1
            b = torch.stack([torch.rand(1, fan_out, generator=g) for g in gens]) * 2 - 1
            return torch.nn.Parameter(w * bound), torch.nn.Parameter(b * bound)

        self.mix = torch.nn.Parameter(torch.zeros(p, len(mix_layers)))  # uniform weights at the start
        if cfg.head == "mlp":
            self.w1, self.b1 = linear(d, cfg.hidden)
            self.w2, self.b2 = linear(cfg.hidden, c)
        else:
            self.w1, self.b1 = linear(d, c)
            self.w2 = self.b2 = None

    def inputs(self, x: Tensor) -> Tensor:
        """``(B, n, d)`` -> ``(P, B, d)``."""
        x = x.float()
        out = rearrange(x[:, self.sources.clamp(min=0)], "b p d -> p b d")
        if self.weighted.any():
            w = self.mix[self.weighted].softmax(-1)  # (p_w, n_mix)
            mixed = torch.einsum("bnd,pn->pbd", x[:, self.mix_layers], w)
            out = out.clone()
            out[self.weighted] = mixed
        return out

    def forward(self, x: Tensor) -> Tensor:
        h = torch.baddbmm(self.b1, self.inputs(x), self.w1)  # (P, B, H or C)
        if self.w2 is None:
            return h
        h = F.dropout(torch.relu(h), self.dropout, self.training)
        return torch.baddbmm(self.b2, h, self.w2)


class _BatchedAdam:
    """Adam with a step size per head (heads are the leading dimension of every parameter)."""

    def __init__(self, params: list[Tensor], lrs: Tensor, weight_decay: float, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lrs, self.wd, self.betas, self.eps = params, lrs.clone(), weight_decay, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            g = p.grad if self.wd == 0 else p.grad + self.wd * p
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            lr = self.lrs.view(-1, *([1] * (p.dim() - 1)))
            p.sub_(lr * (m / c1) / ((v / c2).sqrt_() + self.eps))


def _loss(out: Tensor, y: Tensor, kind: str, pos_weight: Tensor | None) -> Tensor:
    """Sum over heads of each head's mean loss: ``out (P, B, C)``."""
    p = out.shape[0]
    if kind == "multiclass":
        return F.cross_entropy(rearrange(out, "p b c -> (p b) c"), y.repeat(p), reduction="sum") / y.shape[0]
    if kind == "multilabel":
        target = y.expand(p, *y.shape)
        return F.binary_cross_entropy_with_logits(out, target, pos_weight=pos_weight, reduction="sum") / y.shape[0]
    return F.mse_loss(out, y.expand(p, *y.shape), reduction="sum") / y.shape[0]


@torch.no_grad()
def _predict(heads: _Heads, x: Tensor, batch: int = 512) -> Tensor:
    heads.eval()
    return torch.cat([heads(x[i : i + batch]) for i in range(0, x.shape[0], batch)], dim=1)


def _train_group(
    data: ProbeData, sources: list[int], lrs: list[float], mix_layers: list[int], cfg: ProbeConfig, seed: int
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    """Train heads side by side; returns per head the best validation score, test scores and mix weights."""
    x_tr, y_tr = data.x["train"], data.y["train"]
    d = x_tr.shape[-1]
    heads = _Heads(sources, mix_layers, d, data.num_outputs, cfg, seed)
    params = [p for p in (heads.mix, heads.w1, heads.b1, heads.w2, heads.b2) if p is not None]
    opt = _BatchedAdam(params, torch.tensor(lrs), cfg.weight_decay)
    p = len(sources)
    best_val = np.full(p, -np.inf)
    best_state = [t.detach().clone() for t in params]
    bad = np.zeros(p, dtype=np.int64)
    plateau = np.zeros(p, dtype=np.int64)
    plateau_best = np.full(p, -np.inf)
    active = np.ones(p, dtype=bool)
    g = torch.Generator().manual_seed(seed + 1_000_003)  # batch order: differs per seed, shared by the heads
    for _epoch in range(cfg.max_epochs):
        heads.train()
        order = torch.randperm(x_tr.shape[0], generator=g)
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            for t in params:
                t.grad = None
            _loss(heads(x_tr[idx]), y_tr[idx], data.kind, data.pos_weight).backward()
            opt.step()
        scores = data.score("valid", _predict(heads, data.x["valid"]))
        val = np.nan_to_num(scores[data.metrics[0]], nan=-np.inf)
        improved = active & (val > best_val)
        for t, b in zip(params, best_state):
            b[torch.from_numpy(improved)] = t.detach()[torch.from_numpy(improved)]
        best_val = np.where(improved, val, best_val)
        bad = np.where(improved, 0, bad + 1)
        # ReduceLROnPlateau per head, on the same validation score.
        better = val > plateau_best
        plateau_best = np.where(better, val, plateau_best)
        plateau = np.where(better, 0, plateau + 1)
        cut = active & (plateau > cfg.plateau_patience)
        opt.lrs[torch.from_numpy(cut)] *= cfg.plateau_factor
        plateau[cut] = 0
        active &= bad < cfg.patience
        opt.lrs[torch.from_numpy(~active)] = 0.0  # a stopped head keeps its best state; stop moving it
        if not active.any():
            break
    with torch.no_grad():
        for t, b in zip(params, best_state):
            t.copy_(b)
    test = data.score("test", _predict(heads, data.x["test"])) if data.x["test"].shape[0] else {}
    mix = heads.mix.detach().softmax(-1).numpy() if heads.weighted.any() else None
    return best_val, test, mix


def run_probes(
    data: ProbeData, num_layers: int, cfg: ProbeConfig, progress: Callable[[str], None] | None = None
) -> ProbeResults:
    """Train every candidate x learning rate x seed and choose learning rates and the best layer on validation.

    Args:
        data: features ``(N, n, d)`` with ``n == num_layers`` and targets per split.
        num_layers: ``n``, the number of feature layers (hidden states kept in the cache).
    """
    if cfg.layers in ("all", "sweep"):
        candidates = list(range(num_layers)) + ([WEIGHTED] if cfg.layers == "all" and num_layers > 1 else [])
    elif cfg.layers == "weighted":
        candidates = [WEIGHTED]
    else:
        layers = [cfg.layers] if isinstance(cfg.layers, int) else list(cfg.layers)
        candidates = [int(i) for i in layers]
        bad = [i for i in candidates if not (0 <= i < num_layers or i == WEIGHTED)]
        if bad:
            raise ValueError(f"probe layers {bad} are out of range: the features have layers 0..{num_layers - 1}")
    mix_layers = (
        list(range(1, num_layers))
        if cfg.weighted_layers == "transformer" and num_layers > 1
        else list(range(num_layers))
    )
    jobs = [(c, lr) for c in candidates for lr in cfg.lrs]
    results = {c: CandidateResult(c) for c in candidates}
    for seed in cfg.seeds:
        per_job_val = np.empty(len(jobs))
        per_job_test: list[dict[str, float]] = [{} for _ in jobs]
        per_job_mix: list[np.ndarray | None] = [None] * len(jobs)
        for start in range(0, len(jobs), cfg.max_parallel):
            group = jobs[start : start + cfg.max_parallel]
            if progress is not None:
                progress(f"seed {seed}: heads {start + 1}-{start + len(group)} of {len(jobs)}")
            val, test, mix = _train_group(data, [c for c, _ in group], [lr for _, lr in group], mix_layers, cfg, seed)
            per_job_val[start : start + len(group)] = val
            for k in range(len(group)):
                per_job_test[start + k] = {m: float(v[k]) for m, v in test.items()} if test else {}
                if group[k][0] == WEIGHTED and mix is not None:
                    per_job_mix[start + k] = mix[k]
        for c in candidates:
            ids = [i for i, (cc, _) in enumerate(jobs) if cc == c]
            best = ids[int(np.argmax(per_job_val[ids]))]
            r = results[c]
            r.lrs.append(jobs[best][1])
            r.val.append(float(per_job_val[best]))
            r.test.append(per_job_test[best])
            if per_job_mix[best] is not None:
                r.layer_weights.append(per_job_mix[best].tolist())
    best_candidate = max(candidates, key=lambda c: np.mean(results[c].val))
    return ProbeResults(results, data.metrics, best_candidate)


def standardize(x: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-layer, per-dimension standardisation with the train split's statistics: ``(N, n, d)`` each."""
    train = x["train"].float()
    mean, std = train.mean(0), train.std(0).clamp(min=1e-5)
    return {k: ((v.float() - mean) / std) for k, v in x.items()}


def scorer(kind: str, y: dict[str, np.ndarray], metrics: Sequence[str], output_names: Sequence[str] = ()):
    """Build ``score(split, outputs (P, N, C))`` for clip-level tasks from the split targets.

    ``r2_<name>`` scores one regression output, named by ``output_names`` or by its index.
    """
    names = {n: i for i, n in enumerate(output_names)}

    def score(split: str, out: Tensor) -> dict[str, np.ndarray]:
        truth = y[split]
        res: dict[str, list[float]] = {m: [] for m in metrics}
        for o in out.float().numpy():
            for m in metrics:
                if m == "accuracy":
                    res[m].append(M.accuracy(truth, o.argmax(-1)))
                elif m == "macro_f1":
                    res[m].append(M.macro_f1(truth, o.argmax(-1)))
                elif m == "roc_auc":
                    res[m].append(M.roc_auc(truth, o))
                elif m == "average_precision":
                    res[m].append(M.average_precision(truth, o))
                elif m == "r2":
                    res[m].append(M.r2(truth, o))
                elif m.startswith("r2_") and (m[3:] in names or m[3:].isdigit()):
                    j = names[m[3:]] if m[3:] in names else int(m[3:])
                    res[m].append(M.r2(truth[:, j], o[:, j]))
                else:
                    raise ValueError(f"metric {m!r} does not apply to a {kind} task")
        return {m: np.array(v) for m, v in res.items()}

    return score

"""Training-health statistics: cheap signals that show collapse or divergence while a run is going.

Shape legend:
    b  batch
    t  frames (75 Hz)
    n  frames in a sample (valid frames, or masked frames for the heads)
    m  frames kept for the effective rank (at most ``ERANK_MAX_FRAMES``)
    d  width of the signal (model width, or front-end channels)
    k  codebooks
    v  codebook size
    f  feature-teacher bins

Everything here is plain torch and runs under ``torch.no_grad()`` on tensors the objective's forward already
holds, so asking for statistics costs no extra forward pass. :func:`collect_encoder_stats`,
:func:`code_stats` and :func:`feature_stats` return ``{name: 0-dim float32 tensor}`` (names without the
``health/`` prefix the trainer adds); :class:`HealthMonitor` turns logged values into one warning per signal.

Which collapse indicator: ``spread`` (mean per-dimension std across frames / RMS) is cheap, uses every valid
frame, is scale-free and bounded in [0, 1] (0: every frame is the same vector; about 1: zero-mean isotropic
frames), so it is the one we warn on. ``erank`` (effective rank: exp of the entropy of the normalised singular
values of the centred frames) also sees dimensional collapse (frames that still vary, but along a few
directions) which the spread misses; it depends on the width and the sample size, so it warns only relative to
its own first logged value (a fall below a third of it) or when it falls to about one direction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "HealthMonitor",
    "TrainingHealthWarning",
    "code_stats",
    "collect_encoder_stats",
    "effective_rank",
    "feature_stats",
    "frame_spread",
    "perplexity",
    "prediction_entropy",
    "r2_score",
    "rms",
]

# A few hundred frames pin the largest singular values well; the Gram eigen-decomposition is then a
# (m, m) or (d, d) problem per layer: ~0.2 s per 95M layer on 2 busy CPU cores, under 1 ms for the tiny model.
ERANK_MAX_FRAMES = 512
# The softmax over (n, k, v) logits is the costliest statistic (8 x 1024 codes: ~80 ms for 650 frames on 2 CPU
# cores); the mean entropy of 256 evenly spaced frames is within a few hundredths of a nat of all frames'.
ENTROPY_MAX_FRAMES = 256

# Warning thresholds (HealthMonitor). Each says why.
# The projection's LayerNorm (eps 1e-5) only rescales features whose variance is well above its eps: at an RMS
# of 1e-3 (variance 1e-6) its output is down to ~30 % and the transformer input itself shrinks. The front ends
# we measured sit at 0.03-3.
FEATURE_RMS_FLOOR = 1e-3
# A fall (or rise) by more than 100x from the first logged value is a change of regime, not learning: the
# demo's collapsing runs go from ~3 to ~0.01 in front-end RMS (train/feature_penalty 9 -> 1e-4).
RATIO_LIMIT = 100.0
# spread < 0.05: the frames' variation is under 5 % of their magnitude, i.e. nearly every frame is the same
# vector. 40 tiny_cpu steps end at 0.19-0.37 per layer (docs/pretraining.md "Is my run healthy?"); runs
# pushed to collapse reach 0.006.
SPREAD_FLOOR = 0.05
# Fewer than 1.5 effective directions: the frames lie on about a line.
ERANK_FLOOR = 1.5
# Dimensional collapse: a layer's effective rank falls below a third of its first logged value. The frames still
# vary (the spread stays healthy) but along a few directions, and a probe loses what the others carried. Measured
# on `mert demo` (960 clips, 3 seeds each, 2026-12-01), the last layer's lowest erank / its first: CQT teacher
# alone 0.15-0.25 (real-instrument probe mean 41.0 against 49.9 for a random encoder), CQT weighted 4x 0.40-0.48
# (49.0), `demo_cpu` 0.60-0.65 (51.6), codes alone 0.72-0.74 (52.7). A regression loss fits its target's
# largest principal components first and squeezes the representation onto them.
ERANK_FALL_LIMIT = 1 / 3
# Predictions use about one code (perplexity < 1.5) while the targets use at least 8: the head predicts a
# constant. Not checked on the first PERPLEXITY_GRACE logged values (a freshly initialised cosine head may start
# by predicting one code for every frame), and only a collapse that lasts PERPLEXITY_PERSIST logged values in a
# row warns: six demo runs (k-means and RVQ teachers, 2026-12-01) all dipped below 1.5 for 1-3 logged steps
# between steps 29 and 79, the majority-code phase of masked prediction, and recovered to 4-7 by step 120.
PRED_PERPLEXITY_FLOOR = 1.5
TARGET_PERPLEXITY_MIN = 8.0
PERPLEXITY_GRACE = 3
PERPLEXITY_PERSIST = 10


class TrainingHealthWarning(UserWarning):
    """A training-health signal shows collapse or divergence (filter it with ``warnings`` like any other)."""


def _f32(x: Tensor) -> Tensor:
    return x.detach().float()


def rms(x: Tensor) -> Tensor:
    """Root mean square of all entries: ``(n, d) -> ()`` (0 for an empty tensor)."""
    x = _f32(x)
    return x.pow(2).mean().sqrt() if x.numel() else x.new_zeros(())


def frame_spread(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Collapse indicator: mean over dimensions of the std across frames, divided by the RMS.

    Args:
        x: ``(n, d)`` frames.
    Returns:
        ``()`` in [0, 1]: 0 when every frame is the same vector (or fewer than 2 frames), about 1 for zero-mean
        isotropic frames; a constant offset shared by all frames pulls it towards 0.
    """
    x = _f32(x)
    if x.shape[0] < 2:
        return x.new_zeros(())
    std = x.std(dim=0, unbiased=False).mean()  # (d,) -> ()
    return std / rms(x).clamp(min=eps)


def _sample_rows(x: Tensor, max_rows: int) -> Tensor:
    """At most ``max_rows`` evenly spaced rows of ``(n, ...)``: deterministic, so no RNG stream is consumed."""
    n = x.shape[0]
    if n <= max_rows:
        return x
    idx = torch.linspace(0, n - 1, max_rows, device=x.device).round().long()
    return x[idx]


def effective_rank(x: Tensor, max_frames: int = ERANK_MAX_FRAMES, rel_tol: float = 1e-5) -> Tensor:
    """Effective rank (Roy and Vetterli 2007) of the centred frames.

    ``exp(H(p))`` with ``p = s / sum(s)`` over the singular values ``s`` of the centred ``(m, d)`` sample: the
    number of directions the frames vary along, 1 .. min(m, d). Centring keeps a constant offset shared by all
    frames from counting as a direction.

    Args:
        x: ``(n, d)`` frames; at most ``max_frames`` evenly spaced ones are used.
        rel_tol: singular values below ``rel_tol`` times the uncentred frames' norm count as zero (rounding).
    Returns:
        ``()``: the effective rank, or 0 when the frames do not vary at all.
    """
    x = _sample_rows(_f32(x), max_frames)
    if x.shape[0] < 2:
        return x.new_zeros(())
    scale = x.norm()
    xc = x - x.mean(dim=0, keepdim=True)
    # Singular values from the smaller Gram matrix (eigvalsh is ~50x faster than svdvals on CPU), in float64:
    # float32 rounding of the squares would turn zero singular values into ~1e-3 of the largest.
    xc = xc.double()
    gram = xc.mT @ xc if xc.shape[1] <= xc.shape[0] else xc @ xc.mT  # (d, d) or (m, m)
    s = torch.linalg.eigvalsh(gram).clamp(min=0).sqrt()
    s = s[s > rel_tol * scale]
    if s.numel() == 0:
        return x.new_zeros(())
    p = s / s.sum()
    return torch.exp(-(p * p.log()).sum()).float()


def perplexity(codes: Tensor, num_codes: int) -> Tensor:
    """Code usage: ``exp`` of the entropy of each codebook's histogram.

    Args:
        codes: ``(n, k)`` integer codes in ``[0, num_codes)``.
    Returns:
        ``(k,)``: 1 when one code is used, ``num_codes`` when all are used equally often; at most ``n``.
    """
    n, k = codes.shape
    if n == 0:
        return torch.zeros(k, device=codes.device)
    offsets = torch.arange(k, device=codes.device) * num_codes  # one histogram per codebook in one bincount
    counts = torch.bincount((codes.long() + offsets).flatten(), minlength=k * num_codes).view(k, num_codes)
    p = counts.float() / n
    return torch.exp(-torch.special.xlogy(p, p).sum(-1))


def prediction_entropy(logits: Tensor, max_frames: int = ENTROPY_MAX_FRAMES) -> Tensor:
    """Mean softmax entropy (nats) of the predictions: ``(n, k, v) -> (k,)``; log(v) is a uniform guess.

    At most ``max_frames`` evenly spaced frames are used (the mean of a sample; see ``ENTROPY_MAX_FRAMES``).
    """
    logits = _f32(_sample_rows(logits, max_frames))
    if logits.shape[0] == 0:
        return logits.new_zeros(logits.shape[1])
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1).mean(0)


def r2_score(pred: Tensor, target: Tensor, eps: float = 1e-12) -> Tensor:
    """Coefficient of determination over all bins: ``1 - SSE / SST``.

    SST is taken around the per-bin mean of ``target`` over the ``n`` frames, so predicting that mean gives 0,
    a perfect prediction 1, and anything worse than the mean a negative value.

    Args:
        pred, target: ``(n, f)``.
    Returns:
        ``()``; NaN with fewer than 2 frames.
    """
    pred, target = _f32(pred), _f32(target)
    if target.shape[0] < 2:
        return target.new_full((), float("nan"))
    sse = (pred - target).pow(2).sum()
    sst = (target - target.mean(dim=0, keepdim=True)).pow(2).sum()
    return 1 - sse / sst.clamp(min=eps)


@torch.no_grad()
def collect_encoder_stats(features: Tensor | None, hidden_states: Sequence[Tensor], valid: Tensor) -> dict[str, Tensor]:
    """RMS, spread and effective rank of the front end and every hidden state, on valid frames only.

    Args:
        features: ``(b, t, c)`` front-end output, or None.
        hidden_states: ``n`` tensors ``(b, t, d)``: the transformer input (``layer_0``), then one per layer.
        valid: ``(b, t)`` True at real (non-padding) frames.
    Returns:
        ``{rms_features, spread_features, erank_features, rms_layer_{i}, spread_layer_{i}, erank_layer_{i}}``.
    """
    signals = {} if features is None or features.shape[1] != valid.shape[1] else {"features": features}
    signals.update({f"layer_{i}": h for i, h in enumerate(hidden_states)})
    stats: dict[str, Tensor] = {}
    for name, x in signals.items():
        frames = x[valid]  # (n, d)
        stats[f"rms_{name}"] = rms(frames)
        stats[f"spread_{name}"] = frame_spread(frames)
        stats[f"erank_{name}"] = effective_rank(frames)
    return stats


@torch.no_grad()
def code_stats(logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """Prediction entropy and code usage of a code head on the masked frames.

    Args:
        logits: ``(n, k, v)``.
        targets: ``(n, k)`` teacher codes.
    Returns:
        ``code_pred_entropy``, ``code_pred_perplexity`` (of the arg-max predictions), ``code_target_perplexity``
        averaged over codebooks, and the same per codebook with a ``_{i}`` suffix.
    """
    v = logits.shape[-1]
    per_codebook = {
        "code_pred_entropy": prediction_entropy(logits),
        "code_pred_perplexity": perplexity(logits.argmax(-1), v),
        "code_target_perplexity": perplexity(targets, v),
    }
    stats: dict[str, Tensor] = {}
    for name, values in per_codebook.items():
        stats[name] = values.mean()
        stats.update({f"{name}_{i}": value for i, value in enumerate(values)})
    return stats


@torch.no_grad()
def feature_stats(pred: Tensor, target: Tensor) -> dict[str, Tensor]:
    """``{"feature_r2": ()}`` of the feature head on the masked frames: ``pred, target (n, f)``."""
    return {"feature_r2": r2_score(pred, target)}


class HealthMonitor:
    """Turns logged health values into warnings: one per signal per run, naming the value and the step.

    Feed it every logged step with :meth:`check`; it remembers each signal's first value (for the 100x rules)
    and which signals have warned. Its state is plain containers (:meth:`state_dict`), so a resumed run keeps
    the first values and does not warn again about what it already reported.
    """

    def __init__(self) -> None:
        self.first: dict[str, float] = {}
        self.warned: set[str] = set()
        self.messages: list[str] = []
        self.checks = 0
        self.low_perplexity_run = 0  # consecutive logged steps with collapsed code predictions

    def check(self, step: int, values: Mapping[str, float]) -> list[str]:
        """New warnings for optimiser step ``step`` given ``{name: value}`` (health names, plus ``loss``)."""
        new: list[str] = []

        def warn(signal: str, name: str, value: float, what: str) -> None:
            if signal in self.warned:
                return
            self.warned.add(signal)
            new.append(f"training health: {name} = {value:.3g} at step {step}: {what}")

        for name, value in values.items():
            if not math.isfinite(value):
                warn(f"nonfinite:{name}", name, value, "not finite (diverged)")
                continue
            first = self.first.setdefault(name, value)
            growing = name == "loss" or name.startswith("rms_")
            if growing and abs(first) > 0 and abs(value) > RATIO_LIMIT * abs(first):
                warn(f"grew:{name}", name, value, f"grew more than {RATIO_LIMIT:g}x from {first:.3g} (diverging)")

        rms_feat = values.get("rms_features")
        if rms_feat is not None and math.isfinite(rms_feat):
            first = self.first["rms_features"]
            if rms_feat < FEATURE_RMS_FLOOR or rms_feat * RATIO_LIMIT < first:
                warn(
                    "collapse:rms_features",
                    "rms_features",
                    rms_feat,
                    f"front-end features collapsed towards zero (first logged {first:.3g}; floor {FEATURE_RMS_FLOOR:g},"
                    f" or a {RATIO_LIMIT:g}x fall); lower objective.feature_penalty_weight or the learning rate",
                )
        for name, value in values.items():
            if not math.isfinite(value):
                continue
            if name.startswith("spread_") and value < SPREAD_FLOOR:
                warn(f"collapse:{name}", name, value, f"every frame is nearly the same vector (below {SPREAD_FLOOR:g})")
            elif name.startswith("erank_") and value < ERANK_FLOOR:
                warn(f"collapse:{name}", name, value, f"frames vary along about one direction (below {ERANK_FLOOR:g})")
            elif name.startswith("erank_") and value < ERANK_FALL_LIMIT * self.first[name]:
                warn(
                    f"collapse:{name}",
                    name,
                    value,
                    f"the frames' effective rank fell below {ERANK_FALL_LIMIT:.2g} of its first logged value "
                    f"({self.first[name]:.3g}): they vary along a few directions (dimensional collapse; a regression "
                    "target that outweighs the others does this, e.g. lower objective.feature_weight)",
                )

        pred, target = values.get("code_pred_perplexity"), values.get("code_target_perplexity")
        if pred is not None and target is not None:
            low = self.checks >= PERPLEXITY_GRACE and pred < PRED_PERPLEXITY_FLOOR and target >= TARGET_PERPLEXITY_MIN
            self.low_perplexity_run = self.low_perplexity_run + 1 if low else 0
        if self.low_perplexity_run >= PERPLEXITY_PERSIST:
            warn(
                "collapse:code_pred_perplexity",
                "code_pred_perplexity",
                pred,
                f"the code head predicts about one code while the targets use {target:.3g}, for "
                f"{self.low_perplexity_run} logged steps in a row (prediction collapse)",
            )
        self.checks += 1
        self.messages.extend(new)
        return new

    def state_dict(self) -> dict[str, Any]:
        return {
            "first": dict(self.first),
            "warned": sorted(self.warned),
            "messages": list(self.messages),
            "checks": self.checks,
            "low_perplexity_run": self.low_perplexity_run,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.first = {str(k): float(v) for k, v in (state.get("first") or {}).items()}
        self.warned = set(state.get("warned") or [])
        self.messages = list(state.get("messages") or [])
        self.checks = int(state.get("checks", 0))
        self.low_perplexity_run = int(state.get("low_perplexity_run", 0))

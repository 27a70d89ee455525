"""Linear probes on frozen, mean-pooled encoder features: the small core the demo uses.

Shape legend: ``N`` clips, ``n`` hidden-state layers, ``d`` width, ``C`` classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mert.models.encoder import Encoder

__all__ = ["extract_pooled", "LinearProbeResult", "linear_probe", "probe_layers"]


@torch.inference_mode()
def extract_pooled(
    encoder: Encoder, clips: Sequence[np.ndarray | Tensor], sample_rate: int, batch_size: int = 8
) -> Tensor:
    """Mean-pooled hidden states of every layer for each clip: ``(N, n, d)`` float32."""
    out = []
    for i in range(0, len(clips), batch_size):
        chunk = [torch.as_tensor(c, dtype=torch.float32) for c in clips[i : i + batch_size]]
        lengths = torch.tensor([len(c) for c in chunk])
        wav = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True)
        res = encoder(wav, lengths, sample_rate=sample_rate)
        out.append(res.pooled().float().cpu())  # (b, n, d)
    return torch.cat(out)


@dataclass
class LinearProbeResult:
    val_accuracy: float
    test_accuracy: float
    weight_decay: float


def linear_probe(
    x_train: Tensor,
    y_train: Tensor,
    x_val: Tensor,
    y_val: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    *,
    weight_decays: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1),
    steps: int = 300,
    seed: int = 0,
) -> LinearProbeResult:
    """Multinomial logistic regression on standardised features; weight decay chosen on validation.

    Args:
        x_*: ``(N, d)`` features; y_*: ``(N,)`` integer labels.
    """
    mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    xs = [(x - mean) / std for x in (x_train, x_val, x_test)]
    classes = int(max(y_train.max(), y_val.max(), y_test.max())) + 1
    best: LinearProbeResult | None = None
    for wd in weight_decays:
        torch.manual_seed(seed)
        lin = torch.nn.Linear(xs[0].shape[1], classes)
        opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

        def closure(lin=lin, opt=opt, wd=wd) -> Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(lin(xs[0]), y_train) + wd * lin.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            val = (lin(xs[1]).argmax(1) == y_val).float().mean().item()
            test = (lin(xs[2]).argmax(1) == y_test).float().mean().item()
        if best is None or val > best.val_accuracy:
            best = LinearProbeResult(val, test, wd)
    assert best is not None
    return best


def probe_layers(
    feats_train: Tensor,
    y_train: Tensor,
    feats_val: Tensor,
    y_val: Tensor,
    feats_test: Tensor,
    y_test: Tensor,
    layers: Sequence[int] | None = None,
) -> dict[int, LinearProbeResult]:
    """A linear probe per layer of ``(N, n, d)`` features; returns ``{layer: result}``."""
    layers = range(feats_train.shape[1]) if layers is None else layers
    return {
        i: linear_probe(feats_train[:, i], y_train, feats_val[:, i], y_val, feats_test[:, i], y_test) for i in layers
    }

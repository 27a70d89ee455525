"""Clip-level features of in-memory clips: every hidden layer mean-pooled over time.

``mert demo`` and the probe monitor (:mod:`mert.lightning.probe_monitor`) probe clips they render themselves;
``mert probe`` reads files and goes through the feature cache (:mod:`mert.probe.cache`) instead.

Shape legend: ``N`` clips, ``n`` hidden-state layers, ``d`` width, ``b`` batch, ``l`` samples.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["eval_mode", "pooled_features"]


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode inside, then every submodule's own previous mode (frozen parts stay frozen)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def pooled_features(
    encoder: nn.Module, clips: Sequence[Tensor | np.ndarray], sample_rate: int, *, batch_size: int = 16
) -> Tensor:
    """Mean-pooled hidden states of every layer: ``(N, n, d)`` float32 on the CPU.

    ``encoder`` is anything called as ``encoder(wav (b, l), lengths (b,), sample_rate=...)`` that returns an
    :class:`~mert.models.encoder.EncoderOutput` (the encoder, a hand-crafted feature extractor). It runs in
    eval mode under ``inference_mode`` on its own device; its previous modes are restored afterwards. Clips
    are ``(l,)`` waveforms of any lengths (padded per batch; the encoder masks the padding).
    """
    param = next(iter(encoder.parameters()), None)
    param = param if param is not None else next(iter(encoder.buffers()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    out = []
    # bf16-true / fp16-true weights: autocast lets the float32 waveform meet them.
    low_precision = dtype in (torch.bfloat16, torch.float16)
    with eval_mode(encoder), torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=low_precision):
        for i in range(0, len(clips), batch_size):
            chunk = [torch.as_tensor(c, dtype=torch.float32) for c in clips[i : i + batch_size]]
            lengths = torch.tensor([len(c) for c in chunk])
            wav = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True)  # (b, l)
            res = encoder(wav.to(device), lengths.to(device), sample_rate=sample_rate)
            out.append(res.pooled().float().cpu())  # (b, n, d)
    return torch.cat(out)

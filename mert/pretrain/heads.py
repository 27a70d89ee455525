"""Prediction heads of the MERT objective (MERT-v1 targets and loss).

Shape legend: ``n`` masked frames, ``d`` model width, ``k`` codebooks, ``v`` codebook size, ``e`` final_dim,
``f`` feature bins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = ["CodeHead", "FeatureHead"]


class CodeHead(nn.Module):
    """HuBERT-style classifier over discrete codes: one projection per codebook to ``final_dim``, logits =
    cosine(projection, learned code embedding) / ``temperature`` over the codebook's classes.

    Args:
        width: encoder width ``d``.
        num_codebooks: ``k`` (8 EnCodec codebooks at 6 kbps).
        codebook_size: ``v`` (1024).
        final_dim: ``e`` (MERT-v1 targets and loss: 64 for 95M, 128 for 330M).
        temperature: logit temperature (MERT-v1 targets and loss: 0.1).
    """

    def __init__(
        self, width: int, num_codebooks: int, codebook_size: int, *, final_dim: int = 64, temperature: float = 0.1
    ):
        super().__init__()
        self.num_codebooks, self.codebook_size, self.temperature = num_codebooks, codebook_size, temperature
        self.proj = nn.Linear(width, num_codebooks * final_dim)
        # fairseq HuBERT initialises label embeddings uniformly in [0, 1).
        self.code_emb = nn.Parameter(torch.rand(num_codebooks, codebook_size, final_dim))

    def forward(self, x: Tensor) -> Tensor:
        """``(n, d) -> logits (n, k, v)``."""
        p = rearrange(self.proj(x), "n (k e) -> n k e", k=self.num_codebooks)
        cos = torch.einsum("nke,kve->nkv", F.normalize(p.float(), dim=-1), F.normalize(self.code_emb.float(), dim=-1))
        return cos / self.temperature


class FeatureHead(nn.Module):
    """Linear regression of continuous targets (the CQT, MERT-v1 targets and loss): ``(n, d) -> (n, f)``."""

    def __init__(self, width: int, dim: int):
        super().__init__()
        self.linear = nn.Linear(width, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)

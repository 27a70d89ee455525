"""Shared fixtures: tiny configs and encoders. Plain helper functions live in ``tests/helpers.py``."""

from __future__ import annotations

import pytest
import torch

from mert import Encoder, EncoderConfig


@pytest.fixture
def tiny_config() -> EncoderConfig:
    return EncoderConfig.preset("tiny")


@pytest.fixture
def tiny_encoder(tiny_config) -> Encoder:
    torch.manual_seed(0)
    return Encoder(tiny_config).eval()

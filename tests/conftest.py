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


@pytest.fixture
def isolated_hub_env(tmp_path, monkeypatch):
    """Keep every download cache under tmp_path, every request on loopback, and no offline switch inherited."""
    monkeypatch.setenv("MERT_CACHE", str(tmp_path / "mert-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    for var in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "MERT_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

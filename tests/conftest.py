"""Shared fixtures: tiny configs and encoders. Plain helper functions live in ``tests/helpers.py``."""

from __future__ import annotations

import pytest
import soundfile as sf
import torch

from mert import Encoder, EncoderConfig
from tests.helpers import timbre_clip


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


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> dict:
    """36 one-second clips of three timbres: the 30/3/3 split a newcomer meets first."""
    root = tmp_path_factory.mktemp("small_probe")
    (root / "audio").mkdir()
    lines = ["path,label,split"]
    for i in range(36):
        timbre = ("sine", "saw", "pluck")[i % 3]
        sf.write(root / f"audio/c{i:02d}.wav", timbre_clip(1.0, timbre, 120.0, seed=700 + i), 16000)
        split = "train" if i < 30 else ("valid" if i < 33 else "test")
        lines.append(f"audio/c{i:02d}.wav,{timbre},{split}")
    (root / "set.csv").write_text("\n".join(lines) + "\n")
    return {"root": root, "manifest": root / "set.csv"}

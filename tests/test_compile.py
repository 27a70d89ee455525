"""`torch.compile`: `Encoder.compile` and `model.compile=true` give eager's numbers, keep the state dict's keys, and
are not architecture (not in `EncoderConfig`, not in the run folder's name, free to change on resume).

The fast tier traces with dynamo's ``eager`` backend and ``fullgraph=True``: no C++ compiler needed, and a graph
break anywhere in the encoder's pass fails it. The slow tier compiles with inductor, which needs ``g++`` on CPU.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from mert import Encoder, EncoderConfig
from tests.helpers import logged_column


def _needs_cxx() -> None:
    """Inductor compiles C++ on CPU. Skip only where no compiler exists, and never in CI (which must have one)."""
    if shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++"):
        return
    if os.environ.get("CI"):
        pytest.fail("no C++ compiler (g++) on PATH: torch.compile's CPU backend needs one (apt-get install g++)")
    pytest.skip("no C++ compiler (g++) on PATH: torch.compile's CPU backend (inductor) needs one")


def _batch(enc: Encoder, seconds: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    n = int(seconds * enc.sample_rate)
    wav = torch.randn(2, n, generator=gen) * 0.1
    lengths = torch.tensor([n, n * 3 // 4])
    pred_mask = torch.rand(2, int(enc.frame_lengths(n)), generator=gen) < 0.5
    return wav, lengths, pred_mask


@pytest.mark.parametrize("preset", ["tiny", "conformer_tiny"])
def test_encoder_pass_traces_as_one_graph_with_eager_numbers(preset):
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig.preset(preset)).train()
    wav, lengths, pred_mask = _batch(enc)
    ref = enc(wav, lengths, sample_rate=enc.sample_rate, pred_mask=pred_mask)
    keys = list(enc.state_dict())
    # fullgraph=True raises on any graph break (a Python branch on a tensor's value, .tolist(), an opaque kernel).
    assert enc.compile(backend="eager", fullgraph=True) is enc and enc.is_compiled
    got = enc(wav, lengths, sample_rate=enc.sample_rate, pred_mask=pred_mask)
    for a, b in zip(ref.hidden_states, got.hidden_states):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)  # the reference ops instead of the fast path
    got.last_hidden_state.sum().backward()
    assert enc.mask_emb.grad is not None and torch.isfinite(enc.mask_emb.grad).all()
    assert list(enc.state_dict()) == keys  # compiled in place: no `_orig_mod.` prefix
    # A deep copy runs the compiled pass on its own weights, not on the original's.
    twin = copy.deepcopy(enc)
    with torch.no_grad():
        for p in twin.parameters():
            p.zero_()
    mine = enc(wav, lengths, sample_rate=enc.sample_rate, pred_mask=pred_mask).last_hidden_state
    theirs = twin(wav, lengths, sample_rate=enc.sample_rate, pred_mask=pred_mask).last_hidden_state
    torch.testing.assert_close(mine, got.last_hidden_state, rtol=0, atol=0)
    assert not torch.equal(theirs, mine)
    # Pickled (how ddp_spawn hands the module to its ranks): the copy compiles again in its own process.
    clone = pickle.loads(pickle.dumps(enc))
    assert clone.is_compiled and "_compiled_encode" not in clone.__dict__
    again = clone(wav, lengths, sample_rate=enc.sample_rate, pred_mask=pred_mask).last_hidden_state
    torch.testing.assert_close(again, mine, rtol=0, atol=0)
    assert not enc.compile(False).is_compiled


def test_compile_keys_are_not_architecture_nor_scientific():
    pytest.importorskip("hydra")
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from mert.lightning.runfolder import config_changes
    from mert.lightning.train import derive_run_dir, validate_run_config

    with initialize_config_module("mert.conf", version_base="1.3"):
        plain = compose("train", overrides=["experiment=tiny_cpu"])
        on = compose(
            "train", overrides=["experiment=tiny_cpu", "model.compile=true", "model.compile_mode=max-autotune"]
        )
        conformer = compose("train", overrides=["model=conformer_tiny", "model.compile=true"])
    assert plain.model.compile is False and plain.model.compile_mode is None  # every model group has the keys
    assert on.model.compile is True and conformer.model.compile is True
    a = EncoderConfig.from_dict(OmegaConf.to_container(plain.model, resolve=True))
    b = EncoderConfig.from_dict(OmegaConf.to_container(on.model, resolve=True))
    assert a == b and "compile" not in b.to_dict()
    assert config_changes(OmegaConf.to_container(plain, resolve=True), OmegaConf.to_container(on, resolve=True)) == []
    overrides = ["model.compile=true", "model.compile_mode=max-autotune", "model.compile_dynamic=true"]
    assert derive_run_dir("runs", "tiny_cpu", overrides) == Path("runs/tiny_cpu")
    validate_run_config(on)
    with pytest.raises(ValueError, match="^model.compile must be true or false, got 'yes'$"):
        validate_run_config(OmegaConf.merge(plain, {"model": {"compile": "yes"}}))
    with pytest.raises(ValueError, match="^model.compile_mode must be null or one of"):
        validate_run_config(OmegaConf.merge(plain, {"model": {"compile_mode": "fastest"}}))


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny", "conformer_tiny"])
def test_compiled_encoder_inference_equals_eager_without_recompiling_per_length(preset):
    _needs_cxx()
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    enc = Encoder(EncoderConfig.preset(preset)).eval()
    wav, _, _ = _batch(enc, seconds=1.0)
    n = wav.shape[1]
    calls = [(wav, torch.tensor([n, n // 2])), (wav[:, : n - 2000], torch.tensor([n - 2000, n // 3])),
             (wav[:, : n - 4000], torch.tensor([n - 5000, n - 4000])), (wav[:, : n - 6000], None)]  # fmt: skip
    with torch.inference_mode():
        ref = [enc(w, lens, sample_rate=enc.sample_rate) for w, lens in calls]
        enc.compile()
        frames = counters["frames"]["ok"]
        got = [enc(w, lens, sample_rate=enc.sample_rate) for w, lens in calls]
    for r, g in zip(ref, got):
        assert torch.equal(r.lengths, g.lengths)
        for a, b in zip(r.hidden_states, g.hidden_states):
            # Inductor's kernels reorder float sums: eager's numbers to ~1e-6 here (scale of the states: ~3).
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    # One graph for padded batches (static, then once dynamic), one without lengths: no compile per length.
    assert counters["frames"]["ok"] - frames <= 3


@pytest.mark.slow
def test_tiny_cpu_trains_compiled_like_eager_and_resumes(tmp_path):
    _needs_cxx()
    pytest.importorskip("lightning")
    from mert.cli import main as cli

    fast = ["experiment=tiny_cpu", "trainer.log_every_n_steps=1", "logger=csv", "callbacks=default",
            "data.dataset.num_clips=32", "data.dataset.seconds=1.5", f"runs_root={tmp_path / 'runs'}"]  # fmt: skip
    suffix = "data.dataset.num_clips=32,data.dataset.seconds=1.5"
    assert cli(["pretrain", *fast, "name=eager", "trainer.max_steps=4"]) == 0
    eager = logged_column(tmp_path / "runs" / "eager" / suffix)
    # Compiled, stopped after 2 steps, then the same command resumes it to 4 (the flag does not name the folder).
    assert cli(["pretrain", *fast, "name=compiled", "model.compile=true", "trainer.max_steps=2"]) == 0
    run = tmp_path / "runs" / "compiled" / suffix
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not [k for k in ckpt["state_dict"] if "_orig_mod" in k]
    assert not {"compile", "compile_mode", "compile_dynamic"} & set(ckpt["mert"]["encoder_config"])
    # The checkpoint loads into eager code.
    enc = Encoder(EncoderConfig.from_dict(ckpt["mert"]["encoder_config"]))
    prefix = "objective.encoder."
    enc.load_state_dict({k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    assert cli(["pretrain", *fast, "name=compiled", "model.compile=true", "trainer.max_steps=4"]) == 0
    compiled = logged_column(run)
    assert sorted(compiled) == sorted(eager) == [0, 1, 2, 3]
    for step in eager:
        # Compiled kernels sum in another order: the same loss to float32 rounding over a few steps.
        assert abs(compiled[step] - eager[step]) <= 1e-4 * abs(eager[step]), (step, compiled[step], eager[step])
    assert json.loads((run / "summary.json").read_text())["steps"] == 4
    assert "compile: true" in (run / "config.yaml").read_text()  # recorded beside the architecture


@pytest.mark.slow
def test_ddp_spawn_ranks_train_compiled_like_eager(tmp_path):
    _needs_cxx()
    pytest.importorskip("lightning")
    from mert.cli import main as cli

    # ddp_spawn pickles the module into two processes: each compiles its own copy from the settings it carries.
    fast = ["experiment=tiny_cpu", "trainer=ddp_cpu", "trainer.max_steps=2", "trainer.log_every_n_steps=1",
            "logger=csv", "callbacks=default", "data.dataset.num_clips=32", "data.dataset.seconds=1.5"]  # fmt: skip
    assert cli(["pretrain", *fast, f"run_dir={tmp_path / 'eager'}"]) == 0
    assert cli(["pretrain", *fast, "model.compile=true", f"run_dir={tmp_path / 'compiled'}"]) == 0
    eager, compiled = logged_column(tmp_path / "eager"), logged_column(tmp_path / "compiled")
    assert sorted(eager) == sorted(compiled) == [0, 1]
    for step in eager:
        assert abs(compiled[step] - eager[step]) <= 1e-4 * abs(eager[step]), (step, compiled[step], eager[step])

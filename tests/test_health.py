"""Training-health signals: each statistic on tensors with known answers, the warnings, and real tiny runs."""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from mert.pretrain import health
from mert.pretrain.health import HealthMonitor
from tests.helpers import make_objective


# ------------------------------------------------------------------------------------------------- statistics
def test_rms_and_spread():
    assert health.rms(torch.full((10, 4), -3.0)).item() == pytest.approx(3.0)
    same = torch.randn(1, 16).expand(200, 16)
    assert health.frame_spread(same).item() == pytest.approx(0.0, abs=1e-6)  # every frame the same vector
    g = torch.Generator().manual_seed(0)
    iso = torch.randn(4000, 16, generator=g)
    assert health.frame_spread(iso).item() == pytest.approx(1.0, abs=0.03)  # zero-mean isotropic
    assert health.frame_spread(iso * 1e-4).item() == pytest.approx(health.frame_spread(iso).item(), rel=1e-4)
    # A shared offset 10x the variation: spread ~ 1 / sqrt(1 + 100).
    assert health.frame_spread(iso + 10.0).item() == pytest.approx(1 / math.sqrt(101), rel=0.05)
    assert health.frame_spread(torch.randn(1, 8)).item() == 0.0


def test_effective_rank():
    g = torch.Generator().manual_seed(0)
    assert health.effective_rank(torch.randn(1, 32, generator=g).expand(300, 32)).item() == 0.0  # no variation
    line = torch.randn(300, 1, generator=g) * torch.randn(1, 32, generator=g)  # frames on one line
    assert health.effective_rank(line).item() == pytest.approx(1.0, abs=1e-3)
    iso = torch.randn(2000, 32, generator=g)
    assert 28 < health.effective_rank(iso).item() <= 32  # at most 512 evenly spaced frames are used
    two = torch.cat([torch.randn(400, 2, generator=g), torch.zeros(400, 30)], dim=1)
    assert health.effective_rank(two + 5.0).item() == pytest.approx(2.0, abs=0.15)  # offset does not count


def test_perplexity_and_prediction_entropy():
    uniform = torch.arange(64).remainder(16)[:, None].repeat(1, 2)  # (n, k): every code equally often
    assert health.perplexity(uniform, 16).tolist() == pytest.approx([16.0, 16.0])
    one = torch.zeros(50, 3, dtype=torch.long)
    assert health.perplexity(one, 1024).tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert health.prediction_entropy(torch.zeros(10, 2, 8)).tolist() == pytest.approx([math.log(8)] * 2)
    sharp = torch.full((10, 1, 8), -1e4)
    sharp[:, 0, 3] = 0
    assert health.prediction_entropy(sharp).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.zeros(64, 2, 16).scatter_(-1, uniform[..., None], 10.0)
    stats = health.code_stats(logits, one[:64, :2].clone().fill_(0))
    assert stats["code_pred_perplexity"].item() == pytest.approx(16.0)
    assert stats["code_target_perplexity"].item() == pytest.approx(1.0)
    assert set(stats) >= {"code_pred_entropy_0", "code_pred_perplexity_1", "code_target_perplexity_0"}


def test_r2():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(100, 6, generator=g) * torch.arange(1, 7) + 3.0
    assert health.r2_score(y, y).item() == pytest.approx(1.0)
    assert health.r2_score(y.mean(0, keepdim=True).expand_as(y), y).item() == pytest.approx(0.0, abs=1e-6)
    assert health.r2_score(y + 10 * y.std(), y).item() < 0
    assert math.isnan(health.r2_score(y[:1], y[:1]).item())


def test_encoder_stats_use_valid_frames_only():
    x = torch.randn(2, 10, 4)
    x[1, 6:] = 1e6  # padding of item 1
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, 6:] = False
    stats = health.collect_encoder_stats(x, [x, x], valid)
    assert stats["rms_features"].item() == pytest.approx(health.rms(x[valid]).item())
    assert stats["rms_layer_1"].item() < 10
    assert set(stats) == {f"{s}_{n}" for s in ("rms", "spread", "erank") for n in ("features", "layer_0", "layer_1")}


def test_objective_stats_on_request_only_and_empty_output_has_the_same_keys():
    obj = make_objective()
    wav = torch.randn(2, 12000) * 0.1
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = obj(wav, generator=g())
    out = obj(wav, generator=g(), collect_stats=True)
    assert plain.stats == {} and torch.equal(plain.loss_sum, out.loss_sum)  # statistics change nothing
    assert {"rms_features", "rms_layer_2", "spread_layer_0", "erank_layer_1", "feature_r2"} <= set(out.stats)
    assert {"code_pred_perplexity", "code_target_perplexity_1", "code_pred_entropy"} <= set(out.stats)
    assert all(v.dim() == 0 and not v.requires_grad for v in out.stats.values())
    assert set(obj.empty_output(collect_stats=True).stats) == set(out.stats)  # DDP ranks reduce the same keys
    # A head with loss weight 0 (the teacher ablations) is not trained: no statistics of it, so no prediction-
    # collapse warning about a frozen random head; the other head's and the encoder's statistics stay.
    for weights, absent, present in (
        (dict(code_weight=0.0), "code_pred_perplexity", "feature_r2"),
        (dict(feature_weight=0.0), "feature_r2", "code_pred_perplexity"),
    ):
        ablated = make_objective(**weights)
        st = ablated(wav, generator=g(), collect_stats=True).stats
        assert absent not in st and present in st and "erank_layer_1" in st
        assert set(ablated.empty_output(collect_stats=True).stats) == set(st)


# ------------------------------------------------------------------------------------------------- monitor
def test_monitor_rules():
    m = HealthMonitor()
    assert m.check(4, {"loss": 10.0, "rms_features": 2.0, "spread_layer_1": 0.6, "rms_layer_1": 1.0}) == []
    new = m.check(9, {"loss": 10.0, "rms_features": 0.01, "spread_layer_1": 0.6, "rms_layer_1": 1.0})
    assert len(new) == 1 and "rms_features = 0.01 at step 9" in new[0] and "collapsed" in new[0]
    assert m.check(14, {"loss": 10.0, "rms_features": 1e-4, "spread_layer_1": 0.6, "rms_layer_1": 1.0}) == []
    new = m.check(19, {"loss": 2e3, "rms_features": 2.0, "spread_layer_1": 0.01, "rms_layer_1": float("inf")})
    assert len(new) == 3
    assert any("loss = 2e+03 at step 19" in w and "grew" in w for w in new)
    assert any("spread_layer_1 = 0.01 at step 19" in w for w in new)
    assert any("rms_layer_1 = inf at step 19" in w and "not finite" in w for w in new)
    # Prediction collapse: only after the grace period, only when the targets use many codes, and only when it
    # lasts: the early majority-code dip of a healthy run (a few logged steps, then recovery) does not warn.
    p = HealthMonitor()
    collapsed = {"code_pred_perplexity": 1.0, "code_target_perplexity": 40.0}
    assert [p.check(s, collapsed) for s in range(health.PERPLEXITY_GRACE)] == [[]] * health.PERPLEXITY_GRACE
    for s in range(health.PERPLEXITY_PERSIST - 1):
        assert p.check(10 + s, collapsed) == []
    assert p.check(50, {"code_pred_perplexity": 6.0, "code_target_perplexity": 40.0}) == []  # recovered
    for s in range(health.PERPLEXITY_PERSIST - 1):
        assert p.check(60 + s, collapsed) == []
    assert "for 10 logged steps in a row (prediction collapse)" in p.check(99, collapsed)[0]
    # Dimensional collapse: an effective rank that falls below a third of its first value (a CQT-only demo run:
    # 69 -> 16), not one that falls by a third (every healthy demo run: 69 -> 45).
    e = HealthMonitor()
    assert e.check(9, {"erank_layer_4": 69.0, "erank_layer_2": 69.0}) == []
    assert e.check(99, {"erank_layer_4": 45.0, "erank_layer_2": 52.0}) == []
    new = e.check(109, {"erank_layer_4": 22.0, "erank_layer_2": 40.0})
    assert len(new) == 1 and "erank_layer_4 = 22 at step 109" in new[0] and "dimensional collapse" in new[0]
    assert e.check(119, {"erank_layer_4": 16.0, "erank_layer_2": 40.0}) == []  # once per signal
    q = HealthMonitor()
    for s in range(5):
        assert q.check(s, {"code_pred_perplexity": 1.0, "code_target_perplexity": 2.0}) == []
    # State round trip (checkpoints): no second warning after a resume.
    r = HealthMonitor()
    r.load_state_dict(json.loads(json.dumps(m.state_dict())))
    assert r.check(24, {"loss": 1e4, "rms_features": 1e-5, "spread_layer_1": 0.0, "rms_layer_1": 1.0}) == []
    assert r.messages == m.messages


# ------------------------------------------------------------------------------------------------- real runs
def _tiny_run(tmp_path: Path, name: str, *overrides: str) -> Path:
    """A few tiny_cpu steps on 1 s clips (without the held-out probe monitor: not what is tested here)."""
    pytest.importorskip("lightning")
    pytest.importorskip("hydra")
    from hydra import compose, initialize_config_module

    from mert.cli import main as cli

    with initialize_config_module("mert.conf", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=tiny_cpu", f"run_dir={tmp_path}"])
    drop = ["~callbacks.probe_monitor"] if "probe_monitor" in cfg.callbacks else []
    run_dir = tmp_path / name
    common = ["experiment=tiny_cpu", "logger=csv", "data.dataset.num_clips=16", "data.dataset.seconds=1.0"]
    assert cli(["pretrain", *common, *drop, *overrides, f"run_dir={run_dir}"]) == 0
    return run_dir


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(next((run_dir / "csv").glob("version_*/metrics.csv"))) as fh:
        return [r for r in csv.DictReader(fh) if r.get("train/loss")]


def test_tiny_run_logs_health_on_logging_steps_only(tmp_path, monkeypatch):
    from mert.pretrain.objective import MERTObjective

    calls: list[bool] = []
    forward = MERTObjective.forward

    def counting(self, *args, **kwargs):
        calls.append(bool(kwargs.get("collect_stats")))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(MERTObjective, "forward", counting)
    # 4 steps of 2 accumulated micro-batches, logged every 2nd step: statistics on 2 of the 8 forwards.
    overrides = ["data.global_batch_size=4", "data.micro_batch_size=2", "trainer.log_every_n_steps=2"]
    run_dir = _tiny_run(tmp_path, "healthy", *overrides, "trainer.max_steps=4")
    assert calls == [False, False, True, False, False, False, True, False]
    rows = _rows(run_dir)
    assert [int(r["step"]) for r in rows] == [1, 3]
    for key in (
        "rms_features",
        "rms_layer_0",
        "rms_layer_2",
        "spread_layer_2",
        "erank_layer_1",
        "code_pred_perplexity",
        "code_target_perplexity",
        "code_pred_entropy_0",
        "feature_r2",
    ):
        assert all(math.isfinite(float(r[f"health/{key}"])) for r in rows), key
    assert 1 <= float(rows[0]["health/code_target_perplexity"]) <= 1024
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["health_warnings"] == [] and float(rows[-1]["health/warnings"]) == 0


def test_collapsing_run_warns_naming_signal_and_step(tmp_path):
    # A huge feature penalty with a high LR and strong weight decay: the front end's RMS falls > 100x in a
    # few steps (the demo's failure, sped up).
    collapse = [
        "objective.feature_penalty_weight=1e4",
        "optim.lr=0.01",
        "optim.weight_decay=10",
        "scheduler.warmup_steps=0",
        "data.global_batch_size=2",
        "data.micro_batch_size=2",
        "trainer.log_every_n_steps=1",
        "trainer.max_steps=6",
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_dir = _tiny_run(tmp_path, "collapse", *collapse)
    rows = _rows(run_dir)
    rms = {int(r["step"]): float(r["health/rms_features"]) for r in rows}
    step = next(s for s in sorted(rms) if rms[s] < rms[0] / health.RATIO_LIMIT or rms[s] < health.FEATURE_RMS_FLOOR)
    texts = [str(w.message) for w in caught if issubclass(w.category, health.TrainingHealthWarning)]
    mine = [t for t in texts if t.startswith("training health: rms_features")]
    assert len(mine) == 1, texts  # once per signal per run
    assert f"at step {step}:" in mine[0] and "collapsed" in mine[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert mine[0] in summary["health_warnings"]
    assert float(rows[-1]["health/warnings"]) == len(summary["health_warnings"]) >= 1

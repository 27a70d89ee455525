"""Pretraining end to end: config composition, a tiny run, exact resume, DDP equivalence, export, corrupt data."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("hydra")

from hydra import compose, initialize_config_module  # noqa: E402
from hydra.utils import get_class, get_method, instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from mert import Encoder, EncoderConfig  # noqa: E402
from mert.cli import main as cli  # noqa: E402
from mert.lightning.train import derive_run_dir  # noqa: E402
from tests.helpers import logged_column, logged_rows  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
FAST = ["trainer.log_every_n_steps=1", "logger=csv", "data.dataset.num_clips=32", "data.dataset.seconds=1.5"]


def _compose(overrides: list[str]):
    with initialize_config_module("mert.conf", version_base="1.3"):
        return compose("train", overrides=overrides)


def training_rows(run_dir: Path) -> list[dict[str, str]]:
    """Logged training rows of every launch of a run (rows with a train/loss)."""
    return [r for r in logged_rows(run_dir) if r.get("train/loss")]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(experiment, tmp_path):
    extra = {
        "mert_95m": ["data.manifest=x.tsv"],
        "mert_330m": ["data.manifest=x.tsv"],
        "demo_cpu": ["data.shards=x", "targets.code_teacher.path=km.pt"],
        "cpu_hour": ["data.shards=x", "targets.code_teacher.path=km.pt"],
        "conformer_kmeans": ["data.shards=x", "targets.code_teacher.path=km.pt"],
        "conformer_melrvq": ["data.shards=x", "targets.code_teacher.path=rvq.pt"],
        "conformer_rp": ["data.shards=x"],
        "conformer_cpu_hour": ["data.shards=x", "targets.code_teacher.path=km.pt"],
        "gpu_mert_v2_632m": ["data.manifest=x.tsv"],
        "gpu_muq_300m": ["data.manifest=x.tsv"],
    }.get(experiment, [])
    cfg = _compose([f"experiment={experiment}", f"run_dir={tmp_path}", *extra])
    OmegaConf.resolve(cfg)
    model = EncoderConfig.from_dict(OmegaConf.to_container(cfg.model))
    assert model.name in {"tiny", "small", "95m", "330m", "conformer_small", "mert_v2", "muq_large"}
    # Teachers sit on the encoder's frame grid (the mel family's is not its unused conv_kernel/conv_stride).
    for node in (cfg.targets.code_teacher, cfg.targets.feature_teacher):
        if node is not None and "conv_stride" in node:
            assert (tuple(node.conv_kernel), tuple(node.conv_stride)) == (model.frame_kernel, model.frame_stride)
    if experiment.startswith("mert_"):
        preset = EncoderConfig.preset(experiment.split("_")[1])
        assert model.replace(name=preset.name) == preset  # the YAML repeats the Python preset exactly
        assert cfg.optim.lr == {"mert_95m": 5e-4, "mert_330m": 1.5e-3}[experiment]
        assert cfg.trainer.gradient_clip_val == {"mert_95m": 10.0, "mert_330m": 1.0}[experiment]
        assert (cfg.scheduler.warmup_steps, cfg.scheduler.total_steps) == (32000, 400000)
        assert tuple(cfg.optim.betas) == (0.9, 0.98) and cfg.optim.eps == 1e-6 and cfg.optim.weight_decay == 0.01
        assert cfg.data.dataset.crop_seconds == {"mert_95m": 5.0, "mert_330m": 5.12}[experiment]
        assert cfg.trainer.precision == "bf16-mixed"
        assert cfg.targets.code_teacher._target_ == "mert.targets.EncodecTargets"
    # Every _target_ resolves, and trainer keys are real Trainer arguments.
    for node in (cfg.targets.code_teacher, cfg.targets.feature_teacher, cfg.objective, cfg.data.dataset):
        if node is not None:
            target = node._target_
            get_method(target) if target.endswith((".load", "shard_dataset")) else get_class(target)
    import lightning.pytorch as pl

    allowed = set(inspect.signature(pl.Trainer.__init__).parameters)
    assert set(cfg.trainer) - {"_target_"} <= allowed
    big = experiment == "mert_330m" or experiment.startswith("gpu_")
    enc = Encoder(model) if not big else None  # 330M and up are built in the slow tier only
    if enc is not None and experiment in ("tiny_cpu",):
        teachers = instantiate(cfg.targets, _convert_="all")
        objective = instantiate(cfg.objective, encoder=enc, **teachers)
        assert objective.code_head is not None and objective.feature_head is not None
        instantiate(cfg.optim)(list(objective.parameters()))


def test_trainer_options_compose(tmp_path):
    for trainer in ("cpu", "gpu", "ddp", "ddp_cpu", "fsdp"):
        cfg = _compose(["experiment=tiny_cpu", f"trainer={trainer}", f"run_dir={tmp_path}"])
        assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    cfg = _compose(["experiment=tiny_cpu", "trainer=ddp", "trainer.num_nodes=4", f"run_dir={tmp_path}"])
    assert cfg.trainer.devices * cfg.trainer.num_nodes == 32


def test_run_dir_derivation():
    assert derive_run_dir("runs", "tiny_cpu", []) == Path("runs/tiny_cpu")
    a = derive_run_dir("runs", "x", ["trainer.max_steps=5", "optim.lr=0.1", "data.num_workers=3", "seed=1"])
    assert a == Path("runs/x/optim.lr=0.1,seed=1")
    long = derive_run_dir("runs", "x", [f"model.k{i}={i}" for i in range(30)])
    assert len(long.name) <= 80


def test_tiny_cpu_run_resume_and_export(tmp_path):
    common = ["experiment=tiny_cpu", *FAST, f"runs_root={tmp_path / 'runs'}"]
    suffix = "data.dataset.num_clips=32,data.dataset.seconds=1.5"  # derived from the scientific overrides
    # Uninterrupted: 8 steps.
    assert cli(["pretrain", *common, "name=full", "trainer.max_steps=8"]) == 0
    full = logged_column(tmp_path / "runs" / "full" / suffix)
    assert sorted(full) == list(range(8)) and all(math.isfinite(v) for v in full.values())
    # Interrupted after 4 steps, then the same command again with the final step count: resumes at step 4.
    assert cli(["pretrain", *common, "name=resumed", "trainer.max_steps=4"]) == 0
    run = tmp_path / "runs" / "resumed" / suffix
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert cli(["pretrain", *common, "name=resumed", "trainer.max_steps=8"]) == 0
    resumed = logged_column(run)
    assert sorted(resumed) == list(range(8))
    for step in range(4, 8):
        assert abs(resumed[step] - full[step]) <= 1e-6, (step, resumed[step], full[step])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["accumulate_grad_batches"] == 2 and summary["micro_batches"] == 16
    # Audio seen, the learning-curve axis: 8 steps x 8 clips x 1.5 s.
    assert summary["global_batch_size"] == 8 and summary["seconds_per_sample"] == 1.5
    assert summary["audio_hours"] == round(8 * 8 * 1.5 / 3600, 4)

    assert cli(["export", str(run), str(tmp_path / "release")]) == 0
    enc = Encoder.from_pretrained(tmp_path / "release")
    meta = json.loads((tmp_path / "release" / "meta.json").read_text())
    assert meta["training"]["global_step"] == 8
    assert meta["training"]["audio_hours"] == summary["audio_hours"] and meta["training"]["seconds_per_sample"] == 1.5
    assert set(meta["teachers"]) == {"codes", "features"}
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for k, v in enc.state_dict().items():
        assert torch.equal(v, ckpt["state_dict"][f"objective.encoder.{k}"])
    with torch.no_grad():
        out = enc(torch.randn(1, 24000) * 0.1, sample_rate=24000)
    assert out.last_hidden_state.shape == (1, 74, 32)


def test_loss_decreases_on_tiny_cpu(tmp_path):
    assert cli(["pretrain", "experiment=tiny_cpu", *FAST, "trainer.max_steps=30", f"run_dir={tmp_path / 'r'}"]) == 0
    rows = training_rows(tmp_path / "r")

    def mean(key: str, part: slice) -> float:
        values = [float(r[key]) for r in rows[part]]
        return sum(values) / len(values)

    first, last = slice(0, 3), slice(-3, None)
    assert mean("train/loss", last) < 0.9 * mean("train/loss", first)
    assert mean("train/features", last) < 0.6 * mean("train/features", first)  # the CQT regression learns
    # Masked-code cross-entropy falls below the uniform guess over 1024 codes.
    assert mean("train/code_0", last) < math.log(1024) < mean("train/code_0", first)


def test_ddp_cpu_first_step_equals_single_process(tmp_path):
    common = ["experiment=tiny_cpu", *FAST, "objective.mix_prob=0.0", "data.global_batch_size=4", "trainer.max_steps=1"]
    assert cli(["pretrain", *common, "data.micro_batch_size=4", f"run_dir={tmp_path / 'single'}"]) == 0
    assert cli(["pretrain", *common, "trainer=ddp_cpu", "data.micro_batch_size=2", f"run_dir={tmp_path / 'ddp'}"]) == 0
    single, ddp = logged_column(tmp_path / "single"), logged_column(tmp_path / "ddp")
    # Equal up to float32 summation order: a few ulps of a loss of ~65 (linear CQT targets), so relative.
    assert abs(single[0] - ddp[0]) <= 1e-6 * abs(single[0]), (single[0], ddp[0])
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["accumulate_grad_batches"] == 1
    # ddp_spawn trains in child processes: the summary still counts their steps (it said 0 steps, no loss).
    assert summary["steps"] == 1 and summary["samples_seen"] == 4 and summary["final_loss"] == pytest.approx(ddp[0])


def test_corrupt_file_is_skipped_and_counted(tmp_path):
    from mert.data.manifest import scan_audio, write_manifest
    from mert.data.synthetic import write_synthetic_corpus

    corpus = write_synthetic_corpus(tmp_path / "c", 6, seconds=2.0, seed=1)
    entries = scan_audio(corpus, progress=False).entries
    victim = Path(entries[0].path)
    write_manifest(tmp_path / "train.tsv", entries)
    victim.write_bytes(b"RIFF" + bytes(100))  # corrupted after the manifest was made
    args = [
        "experiment=tiny_cpu",
        "trainer.log_every_n_steps=1",
        "logger=csv",
        "data=manifest",
        f"data.manifest={tmp_path / 'train.tsv'}",
        "data.dataset.crop_seconds=1.5",
        "data.dataset.min_seconds=1.0",
        "data.global_batch_size=6",
        "data.micro_batch_size=6",
        "data.num_workers=0",
        "trainer.max_steps=2",
        f"run_dir={tmp_path / 'r'}",
    ]
    assert cli(["pretrain", *args]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["skipped_files"] == 2  # the bad file came up once per step
    assert summary["steps"] == 2


def test_continued_pretraining_starts_from_release(tmp_path):
    torch.manual_seed(3)
    release = Encoder(EncoderConfig.preset("tiny", hidden_dropout=0.1))
    release.save_pretrained(tmp_path / "rel")
    args = [
        "experiment=tiny_cpu",
        *FAST,
        f"init_from={tmp_path / 'rel'}",
        f"run_dir={tmp_path / 'r'}",
        "trainer.max_steps=1",
        "optim.lr=0.0",
    ]
    assert cli(["pretrain", *args]) == 0
    cfg = OmegaConf.load(tmp_path / "r" / "config.yaml")
    assert cfg.model.hidden_dropout == 0.1  # the release's architecture, not the model group's
    ckpt = torch.load(tmp_path / "r" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for k, v in release.state_dict().items():
        assert torch.allclose(ckpt["state_dict"][f"objective.encoder.{k}"], v), k  # lr 0: still the release


def test_cached_targets_train_exactly_like_on_the_fly(tmp_path, capsys):
    """Shards with targets (teachers run once, offline) give the same step as teachers inside the step."""
    from mert.data.manifest import scan_audio, write_manifest
    from mert.data.shards import write_shards
    from mert.data.synthetic import write_synthetic_corpus
    from mert.lightning.train import check_cached_targets
    from mert.targets import CQTTargets, RandomProjectionTargets

    corpus = write_synthetic_corpus(tmp_path / "c", 4, seconds=2.0, seed=2)
    write_manifest(tmp_path / "m.tsv", scan_audio(corpus, progress=False).entries)
    teachers = {"codes": RandomProjectionTargets(seed=0), "features": CQTTargets()}
    write_shards(
        tmp_path / "m.tsv", tmp_path / "cached", segment_seconds=2.0, min_seconds=2.0, teachers=teachers, progress=False
    )
    write_shards(tmp_path / "m.tsv", tmp_path / "plain", segment_seconds=2.0, min_seconds=2.0, progress=False)
    losses = {}
    for name in ("cached", "plain"):
        args = [
            "experiment=tiny_cpu",
            "logger=csv",
            "trainer.log_every_n_steps=1",
            "data=shards",
            f"data.shards={tmp_path / name}",
            "data.global_batch_size=4",
            "data.micro_batch_size=4",
            "data.num_workers=0",
            "trainer.max_steps=2",
            f"run_dir={tmp_path / ('r_' + name)}",
        ]
        assert cli(["pretrain", *args]) == 0
        losses[name] = logged_column(tmp_path / ("r_" + name))
    assert losses["cached"] == losses["plain"]  # bit-identical, both steps

    from mert.data.shards import ShardDataset

    ds = ShardDataset(tmp_path / "cached")
    check_cached_targets(ds, {k: t.settings() for k, t in teachers.items()})
    other = {"codes": RandomProjectionTargets(seed=1).settings(), "features": CQTTargets().settings()}
    with pytest.raises(ValueError, match="cached 'codes' targets were made by"):
        check_cached_targets(ds, other)
    status = cli(
        [
            "pretrain",
            "experiment=tiny_cpu",
            "data=shards",
            f"data.shards={tmp_path / 'cached'}",
            "seed=5",
            f"run_dir={tmp_path / 'r_bad'}",
        ]
    )
    assert status == 1 and "cached 'codes' targets were made by" in capsys.readouterr().err


def test_slurm_launcher_config_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_module("mert.conf", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["experiment=tiny_cpu", "hydra/launcher=mert_slurm", "trainer.devices=8", "trainer.num_nodes=4"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (4, 8, 8)


def test_ddp_subprocess_launch_and_all_corrupt_micro_batch(tmp_path):
    """Plain `ddp` (Lightning re-launches the other rank through the `mert` script) runs, and a rank whose whole
    micro-batch is unreadable still takes part in every collective instead of hanging the job."""
    import shutil
    import subprocess
    import sys

    from mert.data.manifest import scan_audio, write_manifest
    from mert.data.synthetic import write_synthetic_corpus
    from mert.lightning.data import StreamSampler

    corpus = write_synthetic_corpus(tmp_path / "c", 6, seconds=2.0, seed=3)
    entries = scan_audio(corpus, progress=False).entries
    write_manifest(tmp_path / "m.tsv", entries)
    # The two files rank 1 reads in the first step: corrupt both.
    rank1 = StreamSampler(len(entries), micro_batch_size=2, seed=0, rank=1, world_size=2)
    it = iter(rank1)
    for _ in range(2):
        Path(entries[next(it)[0]].path).write_bytes(b"RIFF" + bytes(64))
    exe = shutil.which("mert")
    cmd = [exe] if exe else [sys.executable, "-m", "mert.cli"]
    args = [
        "pretrain",
        "experiment=tiny_cpu",
        "trainer=ddp_cpu",
        "trainer.strategy=ddp",
        "logger=csv",
        "data=manifest",
        f"data.manifest={tmp_path / 'm.tsv'}",
        "data.dataset.crop_seconds=1.5",
        "data.dataset.min_seconds=1.0",
        "data.global_batch_size=4",
        "data.micro_batch_size=2",
        "data.num_workers=0",
        "trainer.max_steps=2",
        f"run_dir={tmp_path / 'r'}",
    ]
    res = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2


def test_resume_with_another_micro_batch_size_continues_the_stream(tmp_path):
    common = ["experiment=tiny_cpu", *FAST, f"run_dir={tmp_path / 'r'}"]
    assert cli(["pretrain", *common, "trainer.max_steps=2", "data.micro_batch_size=4"]) == 0
    assert cli(["pretrain", *common, "trainer.max_steps=4", "data.micro_batch_size=2"]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    # 4 steps of 8 clips: 2 x (2 passes of 4), then 2 x (4 passes of 2); no sample replayed or skipped.
    assert summary["steps"] == 4 and summary["samples_seen"] == 32 and summary["accumulate_grad_batches"] == 4


def test_pretrain_config_mistakes_are_one_line_usage_errors(capsys):
    assert cli(["pretrain", "experiment=nope"]) == 2
    err = capsys.readouterr().err
    assert "mert pretrain: error:" in err and "experiment/nope" in err and "tiny_cpu" in err
    assert "Traceback" not in err
    assert cli(["pretrain", "trainer.max_stepz=3"]) == 2
    assert "trainer.max_stepz" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=fast", "optim.lr must be a number >= 0, got 'fast'"),
        ("model.num_layers=two", "model.num_layers must be a positive integer, got 'two'"),
        ("model.num_layers=-1", "model.num_layers must be a positive integer, got -1"),
        ("data.micro_batch_size=0", "data.micro_batch_size must be an integer > 0, got 0"),
        ("trainer.max_steps=abc", "trainer.max_steps must be an integer >= -1, got 'abc'"),
        ("seed=abc", "seed must be an integer, got 'abc'"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(tmp_path, capsys, override, message):
    assert cli(["pretrain", "experiment=tiny_cpu", override, f"run_dir={tmp_path / 'r'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"mert pretrain: error: {message}", err
    assert not (tmp_path / "r").exists()  # refused before anything was built or written


def test_reruns_keep_one_last_checkpoint_fall_back_past_a_damaged_one_and_refuse_a_new_model(tmp_path, capsys):
    """Bookkeeping of a run folder over several launches: no last-vN.ckpt pile-up, stale partial checkpoints
    removed, a truncated last.ckpt passed over for the newest readable checkpoint (saying so), and a model.*
    override on an existing run refused instead of silently ignored."""
    common = [
        "experiment=tiny_cpu",
        *FAST,
        f"run_dir={tmp_path / 'r'}",
        "callbacks.model_checkpoint.every_n_train_steps=1",
    ]
    ckpts = tmp_path / "r" / "checkpoints"
    assert cli(["pretrain", *common, "trainer.max_steps=2"]) == 0
    assert cli(["pretrain", *common, "trainer.max_steps=2", "ckpt_path=null"]) == 0  # a fresh run, same folder
    assert cli(["pretrain", *common, "trainer.max_steps=3"]) == 0
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step00000003.ckpt"]
    (ckpts / ".last.ckpt.tmp").write_bytes(b"half a checkpoint")
    data = (ckpts / "last.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert cli(["pretrain", *common, "trainer.max_steps=4"]) == 0
    out = capsys.readouterr()
    assert "removed" in out.out and ".last.ckpt.tmp" in out.out
    assert "last.ckpt cannot be loaded" in out.err and "trying step00000003.ckpt" in out.err
    assert "resuming from" in out.out and "step00000003.ckpt" in out.out
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["steps"] == 4
    assert not list(ckpts.glob(".*.tmp"))
    assert cli(["pretrain", *common, "trainer.max_steps=5", "model.num_layers=3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "trained with other settings" in err and "model.num_layers: 2 -> 3" in err


def test_a_manifest_of_missing_files_fails_with_the_count(tmp_path, capsys):
    from mert.data.manifest import ManifestEntry, write_manifest

    write_manifest(
        tmp_path / "m.tsv", [ManifestEntry(str(tmp_path / f"gone{i}.wav"), 120000, 24000, 1) for i in range(3)]
    )
    args = ["experiment=tiny_cpu", "logger=csv", "data=manifest", f"data.manifest={tmp_path / 'm.tsv'}",
            "data.dataset.crop_seconds=1.5", "data.dataset.min_seconds=1.0", "data.global_batch_size=2",
            "data.micro_batch_size=2", "data.num_workers=0", "trainer.max_steps=3",
            f"run_dir={tmp_path / 'r'}"]  # fmt: skip
    assert cli(["pretrain", *args]) == 1
    err = capsys.readouterr().err
    assert "no usable audio: all 4 samples drawn so far (of 3 in the dataset) were skipped" in err
    assert not (tmp_path / "r" / "checkpoints" / "last.ckpt").exists()  # nothing that `mert export` would release

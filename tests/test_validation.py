"""Validation during pretraining: the held-out set's split over ranks, exact and reproducible metrics, the metrics in
metrics.csv and TensorBoard, a best checkpoint by val/loss, training untouched, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("hydra")

from mert.cli import main as cli  # noqa: E402
from mert.lightning.validation import ValidSampler  # noqa: E402
from tests.helpers import logged_column, logged_rows  # noqa: E402

# Tiny runs: synthetic training clips of 1.5 s, no probe monitor, metrics every step.
TINY = [
    "experiment=tiny_cpu",
    "callbacks=default",
    "trainer.log_every_n_steps=1",
    "data.dataset.num_clips=16",
    "data.dataset.seconds=1.5",
]


def _corpus_manifest(root: Path) -> Path:
    from mert.data.manifest import scan_audio, write_manifest
    from mert.data.synthetic import write_synthetic_corpus

    corpus = write_synthetic_corpus(root / "audio", 5, seconds=2.0, seed=11)
    write_manifest(root / "valid.tsv", scan_audio(corpus, progress=False).entries)
    return root / "valid.tsv"


@pytest.fixture(scope="module")
def valid_manifest(tmp_path_factory) -> Path:
    """Five synthetic 2 s files of another seed than training."""
    return _corpus_manifest(tmp_path_factory.mktemp("valid"))


def _shards(manifest: Path, out: Path, **teachers) -> Path:
    from mert.data.shards import write_shards

    write_shards(manifest, out, segment_seconds=2.0, min_seconds=2.0, teachers=teachers, progress=False)
    return out


# ----------------------------------------------------------------------------------------------------- sampler
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("max_items", [None, 4])
def test_valid_sampler_splits_disjointly_with_equal_counts(world, max_items):
    parts = [ValidSampler(7, rank=r, world_size=world, max_items=max_items).indices for r in range(world)]
    assert len({len(p) for p in parts}) == 1  # every rank runs the same number of batches
    items = [i for p in parts for i in p if i != -1]
    assert len(items) == len(set(items)) == (7 if max_items is None else 4)  # disjoint, each item once
    assert sum(p.count(-1) for p in parts) == len(parts[0]) * world - len(items)  # padding only to even the counts
    # The same items whatever the number of ranks (the cut is taken from one fixed order).
    assert set(items) == {i for i in ValidSampler(7, max_items=max_items).indices}
    assert ValidSampler(7, rank=0, world_size=world, max_items=max_items).indices == parts[0]  # fixed order


# ------------------------------------------------------------------------------------ module-level evaluation
def test_evaluation_is_reproducible_and_does_not_depend_on_batching(valid_manifest):
    """Two evaluations of the same weights give the same numbers exactly; another micro-batch size gives the same
    dataset-level ratios (sums and counts, not a mean of batch means); the global RNG is left as it was."""
    import lightning.pytorch as pl

    from mert.data.datasets import CropDataset, SyntheticDataset
    from mert.lightning.data import AudioDataModule
    from mert.lightning.module import PretrainModule
    from mert.lightning.validation import VALID_SEED
    from tests.helpers import make_objective

    module = PretrainModule(make_objective(), lambda p: torch.optim.SGD(p, lr=0.0))
    valid = CropDataset(valid_manifest, crop_seconds=1.0, min_seconds=1.0, seed=VALID_SEED)
    results = []
    for micro in (2, 2, 3):
        data = AudioDataModule(
            SyntheticDataset(4, seconds=1.0), global_batch_size=micro, micro_batch_size=micro, valid_dataset=valid
        )
        trainer = pl.Trainer(
            accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False,
        )  # fmt: skip
        torch.manual_seed(123)
        before = torch.get_rng_state()
        trainer.validate(module, datamodule=data, verbose=False)
        assert torch.equal(torch.get_rng_state(), before)
        results.append({k: float(v) for k, v in trainer.callback_metrics.items()})
    first, again, other = results
    assert first == again
    assert first["val/items"] == 5 and first["val/masked_frames"] > 0
    assert set(first) >= {"val/loss", "val/code_acc", "val/acc_code_0", "val/acc_code_1", "val/code_0", "val/features"}
    assert first["val/code_acc"] == pytest.approx((first["val/acc_code_0"] + first["val/acc_code_1"]) / 2, rel=1e-6)
    assert 0 <= first["val/code_acc"] <= 1
    for key, value in first.items():
        assert other[key] == pytest.approx(value, rel=1e-5), key


# ------------------------------------------------------------------------------------------------ end to end
# The smallest tiny_cpu run that still accumulates (2 micro-batches a step).
SMALL = [*TINY, "data.dataset.seconds=1.0", "data.global_batch_size=2", "data.micro_batch_size=1"]


@pytest.mark.slow
def test_validation_in_csv_tensorboard_and_a_best_checkpoint(tmp_path, valid_manifest):
    args = [
        *SMALL,
        "logger=default",
        "trainer.max_steps=2",
        f"data.valid={valid_manifest}",
        "data.valid_every_n_steps=1",
        "callbacks.model_checkpoint.monitor=val/loss",
        f"run_dir={tmp_path / 'r'}",
    ]
    assert cli(["pretrain", *args]) == 0
    run = tmp_path / "r"
    # After each optimiser step (2 micro-batches), at the step whose weights were evaluated.
    loss = logged_column(run, "val/loss")
    assert sorted(loss) == [1, 2] and loss[1] != loss[2]
    for key in ("val/code_acc", "val/acc_code_7", "val/features", "val/code_0", "val/masked_frames"):
        assert sorted(logged_column(run, key)) == [1, 2], key
    assert set(logged_column(run, "val/items").values()) == {5.0}
    assert sorted(logged_column(run, "train/loss")) == [0, 1]
    latest = json.loads((run / "summary.json").read_text())["validation"]  # the latest evaluation
    assert latest["step"] == 2 and latest["val/loss"] == pytest.approx(loss[2], rel=1e-6)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("val/loss")} == pytest.approx(loss, rel=1e-6)
    assert {"val/code_acc", "train/loss"} <= set(events.Tags()["scalars"])
    # The best of the two by val/loss (save_top_k=1), saved right after its evaluation, and last.ckpt.
    best = min(loss, key=loss.get)
    saved = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert saved == sorted(["last.ckpt", f"step{best:08d}.ckpt"])
    ckpt = torch.load(run / "checkpoints" / f"step{best:08d}.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == best
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert float(state["best_model_score"]) == pytest.approx(loss[best], rel=1e-6)
    # The export carries the latest evaluation into meta.json.
    assert cli(["export", str(run), str(tmp_path / "release")]) == 0
    meta = json.loads((tmp_path / "release" / "meta.json").read_text())
    assert meta["training"]["validation"] == latest


@pytest.mark.slow
def test_training_is_identical_with_and_without_validation(tmp_path, valid_manifest):
    common = [*TINY, "logger=csv", "trainer.max_steps=4"]
    with_valid = [f"data.valid={valid_manifest}", "data.valid_every_n_steps=2"]
    assert cli(["pretrain", *common, *with_valid, f"run_dir={tmp_path / 'v'}"]) == 0
    assert cli(["pretrain", *common, f"run_dir={tmp_path / 'plain'}"]) == 0
    assert sorted(logged_column(tmp_path / "v", "val/loss")) == [2, 4]  # every 2 steps = 4 micro-batches
    train_v, train_plain = logged_column(tmp_path / "v", "train/loss"), logged_column(tmp_path / "plain", "train/loss")
    assert sorted(train_v) == [0, 1, 2, 3] and train_v == train_plain  # bit for bit
    assert not any(k.startswith("val/") and v for r in logged_rows(tmp_path / "plain") for k, v in r.items())
    a = torch.load(tmp_path / "v" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "plain" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())


@pytest.mark.slow
def test_resume_adds_validation_in_the_same_folder_and_keeps_the_steps(tmp_path, valid_manifest):
    """A run started without validation resumes with data.valid added (same folder, not refused), trains as the
    uninterrupted run, and logs every row at its step (a resume at a validation step once shifted them by one)."""
    common = [*SMALL, "logger=csv", f"runs_root={tmp_path / 'runs'}"]
    with_valid = [f"data.valid={valid_manifest}", "data.valid_every_n_steps=2"]
    assert cli(["pretrain", *common, *with_valid, "name=full", "trainer.max_steps=4"]) == 0
    assert cli(["pretrain", *common, "name=res", "trainer.max_steps=2"]) == 0
    assert cli(["pretrain", *common, *with_valid, "name=res", "trainer.max_steps=4"]) == 0
    full_dirs, res_dirs = [sorted((tmp_path / "runs" / n).iterdir()) for n in ("full", "res")]
    assert len(res_dirs) == 1 and [d.name for d in full_dirs] == [d.name for d in res_dirs]
    full, res = full_dirs[0], res_dirs[0]
    assert len(list((res / "csv").glob("version_*"))) == 2  # two launches, one folder
    assert logged_column(res, "train/loss") == logged_column(full, "train/loss")
    assert sorted(logged_column(res, "train/loss")) == [0, 1, 2, 3]
    assert sorted(logged_column(res, "lr-AdamW")) == [0, 1, 2, 3]
    full_val = logged_column(full, "val/loss")
    assert full_val.keys() == {2, 4} and logged_column(res, "val/loss") == {4: full_val[4]}


@pytest.mark.slow
def test_shards_validation_with_cached_targets(tmp_path, valid_manifest):
    """Whole 2 s segments with the teachers' targets cached score as the same audio with targets computed in the
    step."""
    from mert.targets import CQTTargets, RandomProjectionTargets

    cached = _shards(valid_manifest, tmp_path / "cached", codes=RandomProjectionTargets(seed=0), features=CQTTargets())
    plain = _shards(valid_manifest, tmp_path / "plain")
    scores = {}
    for name, shards in (("cached", cached), ("plain", plain)):
        args = [*SMALL, "logger=csv", "trainer.max_steps=1", f"data.valid={shards}", "data.valid_every_n_steps=1",
                "data.valid_max_batches=3"]  # fmt: skip
        assert cli(["pretrain", *args, f"run_dir={tmp_path / ('r_' + name)}"]) == 0
        rows = logged_rows(tmp_path / ("r_" + name))
        scores[name] = {k: float(v) for r in rows for k, v in r.items() if "val/" in k and v}
    assert scores["cached"]["val/items"] == 3  # 3 batches of micro_batch_size 1
    assert scores["cached"] == pytest.approx(scores["plain"], rel=1e-5)


def test_validation_settings_keep_the_run_folder_and_resume(tmp_path):
    from mert.lightning.runfolder import is_scientific
    from mert.lightning.train import derive_run_dir

    overrides = ["data.valid=/data/valid.tsv", "data.valid_every_n_steps=5", "data.valid_max_batches=2"]
    assert derive_run_dir("runs", "x", overrides) == Path("runs/x")
    assert derive_run_dir("runs", "x", ["seed=1", *overrides]) == Path("runs/x/seed=1")
    for key in ("data.valid", "data.valid_every_n_steps", "data.valid_max_batches", "data.valid_crop_seconds"):
        assert not is_scientific(key), key
    assert is_scientific("data.global_batch_size")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.valid=pipe:false", "could not be copied to the local cache"),
        ("data.valid=file:///no/such/folder", "could not be copied to the local cache: no index.json at"),
        ("data.valid=/no/such/valid.tsv", "data.valid=/no/such/valid.tsv does not exist"),
        ("callbacks.model_checkpoint.monitor=val/loss", "needs validation data: set data.valid"),
    ],
)
def test_validation_mistakes_are_one_line_errors(tmp_path, capsys, override, message):
    status = cli(["pretrain", *TINY, override, f"run_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert status != 0 and message in err, err
    assert not (tmp_path / "r").exists()  # refused before the run folder is made


def test_a_monitor_that_validation_does_not_log_is_refused(tmp_path, capsys, valid_manifest):
    args = [*TINY, f"data.valid={valid_manifest}", "callbacks.model_checkpoint.monitor=val/los"]
    status = cli(["pretrain", *args, f"run_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert status != 0 and "monitor=val/los is not a validation metric" in err and "val/code_acc" in err, err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_validation_shards_from_other_teachers_are_refused(tmp_path, capsys, valid_manifest):
    from mert.targets import RandomProjectionTargets

    other = _shards(valid_manifest, tmp_path / "other", codes=RandomProjectionTargets(seed=1))
    status = cli(["pretrain", *TINY, f"data.valid={other}", f"run_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert status != 0 and f"data.valid={other}" in err and "cached 'codes' targets" in err, err


@pytest.mark.slow
def test_ddp_cpu_validation_equals_one_process(tmp_path, valid_manifest):
    """Two ranks evaluate disjoint halves of the five files (one rank pads its last place); the all-reduced sums
    give the one-process numbers."""
    common = [
        *TINY,
        "logger=csv",
        "objective.mix_prob=0.0",
        "data.global_batch_size=4",
        "trainer.max_steps=1",
        f"data.valid={valid_manifest}",
        "data.valid_every_n_steps=1",
    ]
    assert cli(["pretrain", *common, "data.micro_batch_size=4", f"run_dir={tmp_path / 'single'}"]) == 0
    assert cli(["pretrain", *common, "trainer=ddp_cpu", "data.micro_batch_size=2", f"run_dir={tmp_path / 'ddp'}"]) == 0
    single, ddp = logged_rows(tmp_path / "single"), logged_rows(tmp_path / "ddp")
    one = {k: float(v) for r in single for k, v in r.items() if k.startswith("val/") and v}
    two = {k: float(v) for r in ddp for k, v in r.items() if k.startswith("val/") and v}
    assert one["val/items"] == two["val/items"] == 5
    # ddp_spawn trained in child processes: the summary still has their latest evaluation (from the checkpoint).
    latest = json.loads((tmp_path / "ddp" / "summary.json").read_text())["validation"]
    assert latest["step"] == 1 and latest["val/loss"] == pytest.approx(two["val/loss"], rel=1e-6)
    assert set(one) == set(two)
    for key, value in one.items():
        assert two[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key

"""Pretraining run folders over several launches: preflight, the lock, resumes that refuse what changed (or
apply what was allowed), signals, crashes, the launch records and the log file."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("hydra")

import lightning.pytorch as pl  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from mert.cli import main as cli  # noqa: E402
from mert.lightning import runfolder  # noqa: E402
from tests.helpers import logged_column, logged_rows  # noqa: E402

# 2 clips per step in 2 micro-batches of 1 (accumulation 2), 1-s clips: a step takes a fraction of a second.
SMALL = [
    "experiment=tiny_cpu",
    "callbacks=default",
    "logger=csv",
    "trainer.log_every_n_steps=1",
    "data.dataset.num_clips=16",
    "data.dataset.seconds=1.0",
    "data.global_batch_size=2",
    "data.micro_batch_size=1",
    "callbacks.model_checkpoint.every_n_train_steps=1",
]


def _compose(overrides: list[str]):
    with initialize_config_module("mert.conf", version_base="1.3"):
        return compose("train", overrides=overrides)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fake_checkpoint(run_dir: Path, overrides: list[str]) -> Path:
    """A loadable checkpoint whose stored run config is the one these overrides compose (no training needed to
    test what a resume compares)."""
    cfg = _compose([*overrides, f"run_dir={run_dir}"])
    path = run_dir / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    run = OmegaConf.to_container(cfg, resolve=True)
    mert = {"data": {"kind": "SyntheticDataset", "length": 16}}
    torch.save({"state_dict": {}, "hyper_parameters": {"run": run}, "mert": mert}, path)
    return path


# --------------------------------------------------------------------------------------------------- unit level
def test_scientific_keys():
    for key in ["optim.lr", "scheduler.total_steps", "trainer.precision", "trainer.gradient_clip_val",
                "trainer.accumulate_grad_batches", "model.num_layers", "objective.mask_prob",
                "targets.code_teacher.seed",
                "data.global_batch_size", "seed", "frontend_lr_mult"]:  # fmt: skip
        assert runfolder.is_scientific(key), key
    for key in ["trainer.max_steps", "trainer.log_every_n_steps", "trainer.devices", "trainer.enable_progress_bar",
                "data.num_workers", "data.micro_batch_size", "callbacks.model_checkpoint.every_n_train_steps",
                "logger", "run_dir", "resume.allow_changes", "data.manifest", "checkpoint_every_minutes"]:  # fmt: skip
        assert not runfolder.is_scientific(key), key


def test_config_changes_name_scientific_keys_only():
    old = OmegaConf.to_container(_compose(SMALL), resolve=True)
    new = OmegaConf.to_container(
        _compose([*SMALL, "optim.lr=0.05", "trainer.precision=bf16-mixed", "trainer.max_steps=99",
                  "data.num_workers=2", "trainer.log_every_n_steps=3", "+resume.allow_changes=[optim.lr]"]),
        resolve=True,
    )  # fmt: skip
    expected = [("optim.lr", 0.002, 0.05), ("trainer.precision", "32-true", "bf16-mixed")]
    assert runfolder.config_changes(old, new) == expected
    # A stored config holds the model in full (EncoderConfig.to_dict()); the composed one only the group's keys.
    from mert import EncoderConfig

    old["model"] = EncoderConfig.from_dict(old["model"]).to_dict()
    assert runfolder.config_changes(old, OmegaConf.to_container(_compose(SMALL), resolve=True)) == []


def test_data_identity_follows_content_not_path(tmp_path):
    class Dataset:
        def __len__(self):
            return 3

    (tmp_path / "a.tsv").write_text("/x/1.wav\t100\n/x/2.wav\t100\n/x/3.wav\t100\n")
    shutil.copy(tmp_path / "a.tsv", tmp_path / "moved.tsv")
    cfg = OmegaConf.create({"data": {"dataset": {"entries_or_manifest_path": str(tmp_path / "a.tsv")}}})
    moved = OmegaConf.create({"data": {"dataset": {"entries_or_manifest_path": str(tmp_path / "moved.tsv")}}})
    first = runfolder.data_identity(cfg, Dataset())
    assert first["kind"] == "manifest" and first["length"] == 3
    assert runfolder.data_identity(moved, Dataset()) == first
    (tmp_path / "moved.tsv").write_text("/x/1.wav\t100\n/x/2.wav\t100\n/x/4.wav\t100\n")
    edited = runfolder.data_identity(moved, Dataset())
    with pytest.raises(ValueError, match=r"\(data: manifest [0-9a-f]{12} \(3 items\) -> manifest [0-9a-f]{12}"):
        runfolder.check_resume("c.ckpt", {}, {}, first, edited, allow=[])
    assert runfolder.check_resume("c.ckpt", {}, {}, first, edited, allow=["data"]) == ["data"]


def test_settings_newer_than_the_checkpoint_are_reported_unless_this_command_added_them(caplog):
    old = {"optim": {"lr": 0.1}}
    new = {"optim": {"lr": 0.1}, "objective": {"mask_span_seconds": None}, "trainer": {"accumulate_grad_batches": 4}}
    with caplog.at_level("WARNING", logger="mert.pretrain"):
        assert runfolder.check_resume("c.ckpt", old, new, None, None, allow=[]) == []
    assert "c.ckpt predates these settings" in caplog.text and "objective.mask_span_seconds=None" in caplog.text
    with pytest.raises(ValueError, match=r"trainer.accumulate_grad_batches: <unset> -> 4"):
        runfolder.check_resume("c.ckpt", old, new, None, None, allow=[], added=["trainer.accumulate_grad_batches"])


# ------------------------------------------------------------------------------------------- preflight, the lock
@pytest.mark.parametrize(
    "case",
    [
        "run_dir_file",
        "parent_file",
        "checkpoints_file",
        "missing_manifest",
        "empty_manifest",
        "teacher_file",
        "ckpt_folder",
        "init_from_missing",
    ],
)
def test_preflight_refuses_in_one_line_and_creates_nothing(tmp_path, capsys, case):
    run_dir = tmp_path / "run"
    extra = []
    if case == "run_dir_file":
        run_dir.write_text("precious\n")
    elif case == "parent_file":
        (tmp_path / "parent").write_text("precious\n")
        run_dir = tmp_path / "parent" / "run"
    elif case == "checkpoints_file":
        run_dir.mkdir()
        (run_dir / "checkpoints").write_text("x\n")
    elif case == "ckpt_folder":
        (tmp_path / "other" / "checkpoints").mkdir(parents=True)
        extra = [f"ckpt_path={tmp_path / 'other'}"]
    elif case == "init_from_missing":
        extra = [f"init_from={tmp_path / 'release'}"]
    elif case == "teacher_file":
        extra = ["targets=encodec_cqt", f"targets.code_teacher.weights={tmp_path / 'encodec.th'}"]
    else:
        if case == "empty_manifest":
            (tmp_path / "nope.tsv").write_text("")
        extra = ["data=manifest", f"data.manifest={tmp_path / 'nope.tsv'}"]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    args = [a for a in SMALL if not a.startswith("data.dataset.")] if "manifest" in case else SMALL
    assert cli(["pretrain", *args, *extra, "trainer.max_steps=2", f"run_dir={run_dir}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1:]
    assert err[0].startswith("mert pretrain: error: ") and "Traceback" not in err[0], err
    expected = {"run_dir_file": "is a file, not a folder", "parent_file": "is a file, not a folder",
                "checkpoints_file": "holds a file named 'checkpoints'",
                "missing_manifest": "nope.tsv does not exist", "empty_manifest": "nope.tsv is empty, not a manifest",
                "teacher_file": "targets.code_teacher.weights=",
                "ckpt_folder": "is a folder, not a checkpoint file; to resume that run pass run_dir=",
                "init_from_missing": "release does not exist"}[case]  # fmt: skip
    assert expected in err[0], err
    key = {"missing_manifest": "data.manifest=", "empty_manifest": "data.manifest=",
           "teacher_file": "targets.code_teacher.weights=", "ckpt_folder": "ckpt_path=",
           "init_from_missing": "init_from="}.get(case, "run_dir=")  # fmt: skip
    assert key in err[0], err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing created
    if case == "run_dir_file":
        assert run_dir.read_text() == "precious\n"


def test_a_second_process_in_the_same_run_folder_is_refused_naming_the_first(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with runfolder.lock_run_dir(run_dir):
        assert cli(["pretrain", *SMALL, "trainer.max_steps=2", f"run_dir={run_dir}"]) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"run_dir={run_dir} is in use by process {os.getpid()} on " in err, err
    assert not (run_dir / "checkpoints").exists() and not (run_dir / ".lock.owner").exists()


# ---------------------------------------------------------------------------------------- resumes that refuse
def test_resume_refuses_each_changed_scientific_setting_by_name(tmp_path, capsys):
    run_dir = tmp_path / "run"
    ckpt = _fake_checkpoint(run_dir, SMALL)
    digest = _sha(ckpt)
    args = ["pretrain", *SMALL, f"run_dir={run_dir}", "trainer.max_steps=50", "trainer.log_every_n_steps=7"]
    changed = ["trainer.precision=bf16-mixed", "trainer.gradient_clip_val=0.01", "optim.lr=0.05"]
    assert cli([*args, *changed]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    for text in ["optim.lr: 0.002 -> 0.05", "trainer.gradient_clip_val: 10.0 -> 0.01",
                 "trainer.precision: '32-true' -> 'bf16-mixed'",
                 "+resume.allow_changes=[optim.lr,trainer.gradient_clip_val,trainer.precision]"]:  # fmt: skip
        assert text in err, (text, err)
    # Allowing some is not allowing all.
    assert cli([*args, *changed, "+resume.allow_changes=[optim,trainer.precision]"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "trainer.gradient_clip_val: 10.0 -> 0.01" in err and "optim.lr" not in err and "precision" not in err
    assert _sha(ckpt) == digest and not (run_dir / "launches").exists() and not (run_dir / "config.yaml").exists()


# ------------------------------------------------------------------------------------------- end to end (slow)
def _kill_at(step: int, signum: int) -> list[str]:
    return ["+callbacks.kill._target_=tests.callbacks.SignalAt", f"+callbacks.kill.step={step}",
            f"+callbacks.kill.signum={signum}"]  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 4-step run."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    assert cli(["pretrain", *SMALL, "trainer.max_steps=4", f"run_dir={run_dir}"]) == 0
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_a_checkpoint_at_that_step_exits_nonzero_and_the_rerun_continues_exactly(
    tmp_path, capsys, reference, signum, code
):
    run_dir = tmp_path / "run"
    common = ["pretrain", *SMALL, f"run_dir={run_dir}", "trainer.max_steps=4"]
    # As in a terminal (a background job started by a script ignores SIGINT, and so does the run then).
    before = {s: signal.signal(s, h) for s, h in [(signal.SIGINT, signal.default_int_handler),
                                                   (signal.SIGTERM, signal.SIG_DFL)]}  # fmt: skip
    try:
        assert cli([*common, *_kill_at(2, int(signum))]) == code
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back
    finally:
        for s, h in before.items():
            signal.signal(s, h)
    out = capsys.readouterr().out
    last = run_dir / "checkpoints" / "last.ckpt"
    assert f"stopped by {signal.Signals(signum).name} at step 2; checkpoint {last}" in out
    assert torch.load(last, weights_only=True, mmap=True)["global_step"] == 2
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] is False and summary["steps"] == 2
    assert cli(common) == 0
    assert json.loads((run_dir / "summary.json").read_text())["completed"] is True
    resumed, full = logged_column(run_dir), logged_column(reference)
    assert sorted(resumed) == [0, 1, 2, 3]
    for step in (2, 3):
        assert math.isclose(resumed[step], full[step], rel_tol=0, abs_tol=1e-6), (step, resumed[step], full[step])
    launches = sorted(p.name for p in (run_dir / "launches").iterdir())
    assert [n[:4] for n in launches] == ["001-", "002-"]


@pytest.mark.slow
def test_a_failure_mid_step_saves_the_last_complete_step_and_the_rerun_continues_exactly(tmp_path, capsys, reference):
    run_dir = tmp_path / "run"
    common = ["pretrain", *SMALL, f"run_dir={run_dir}", "trainer.max_steps=4",
              "callbacks.model_checkpoint.every_n_train_steps=100"]  # fmt: skip
    with pytest.raises(RuntimeError, match="injected failure"):
        cli([*common, *_kill_at(3, 0)])
    err = capsys.readouterr().err
    last = run_dir / "checkpoints" / "last.ckpt"
    assert f"saved {last} at step 3" in err
    state = torch.load(last, weights_only=True, mmap=True)
    assert state["global_step"] == 3 and state["mert"]["samples_seen"] == 6
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] is False and "injected failure" in summary["error"]
    assert cli(common) == 0
    assert math.isclose(logged_column(run_dir)[3], logged_column(reference)[3], rel_tol=0, abs_tol=1e-6)


@pytest.mark.slow
def test_an_allowed_lr_change_takes_effect_and_is_recorded_per_launch(tmp_path, capsys, reference):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    first_config = (run_dir / "config.yaml").read_text()
    args = ["pretrain", *SMALL, f"run_dir={run_dir}", "trainer.max_steps=6", "optim.lr=1.0e-3"]
    assert cli(args) == 1
    assert "optim.lr: 0.002 -> 0.001" in capsys.readouterr().err
    assert cli([*args, "+resume.allow_changes=[optim.lr]"]) == 0
    assert "continuing with changed settings: optim.lr" in capsys.readouterr().out
    # tiny_cpu: 10 warm-up steps, so the LR of step s is lr * (s + 1) / 10.
    lrs = {int(r["step"]): float(r["lr-AdamW"]) for r in logged_rows(run_dir) if r.get("lr-AdamW")}
    for step in (0, 3):
        assert math.isclose(lrs[step], 2e-3 * (step + 1) / 10, rel_tol=1e-6), (step, lrs[step])
    for step in (4, 5):
        assert math.isclose(lrs[step], 1e-3 * (step + 1) / 10, rel_tol=1e-6), (step, lrs[step])
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)
    assert state["hyper_parameters"]["run"]["optim"]["lr"] == 1e-3
    assert math.isclose(state["optimizer_states"][0]["param_groups"][0]["lr"], 1e-3 * 7 / 10, rel_tol=1e-6)
    assert (run_dir / "config.yaml").read_text() == first_config  # the run's config: the first launch's
    launches = sorted((run_dir / "launches").iterdir())
    assert len(launches) == 2 and "lr: 0.001" in (launches[1] / "config.yaml").read_text()
    assert '"+resume.allow_changes=[optim.lr]"' in (launches[1] / "overrides.yaml").read_text()
    log = (run_dir / "train.log").read_text()
    assert "max_steps=6" in log and "Tip" not in log
    assert "continuing with changed settings: optim.lr" in log and "done at step 6" in log


class LastCheckpointSteps(pl.Callback):
    """Test helper: before each optimiser step, append the step of ``last.ckpt`` (or -1) to ``out``."""

    def __init__(self, last: str, out: str):
        self.last, self.out = Path(last), Path(out)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx % 2 == 0:
            step = torch.load(self.last, weights_only=True, mmap=True)["global_step"] if self.last.exists() else -1
            with open(self.out, "a") as f:
                f.write(f"{trainer.global_step} {step}\n")


@pytest.mark.slow
def test_checkpoint_every_minutes_saves_last_between_periodic_checkpoints(tmp_path):
    run_dir = tmp_path / "run"
    last, out = run_dir / "checkpoints" / "last.ckpt", tmp_path / "seen.txt"
    probe = [f"+callbacks.probe._target_={__name__}.LastCheckpointSteps", f"+callbacks.probe.last={last}",
             f"+callbacks.probe.out={out}"]  # fmt: skip
    common = ["pretrain", *SMALL, f"run_dir={run_dir}", "trainer.max_steps=3", *probe,
              "callbacks.model_checkpoint.every_n_train_steps=100"]  # fmt: skip
    assert cli([*common, "++checkpoint_every_minutes=1.0e-6"]) == 0
    assert out.read_text().split("\n")[:3] == ["0 -1", "1 1", "2 2"]  # saved at every step boundary
    shutil.rmtree(run_dir)
    out.unlink()
    assert cli([*common, "++checkpoint_every_minutes=null"]) == 0
    assert out.read_text().split("\n")[:3] == ["0 -1", "1 -1", "2 -1"]


def test_real_recipes_checkpoint_on_a_clock_by_default():
    train = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "train.yaml")
    assert train.checkpoint_every_minutes == 30
    assert not runfolder.is_scientific("checkpoint_every_minutes")


def test_stop_handlers_keep_an_ignored_sigint_and_put_everything_back():
    from mert.lightning.callbacks import install_stop_handlers, reset_stop, stop_signal

    before = {s: signal.signal(s, h) for s, h in [(signal.SIGINT, signal.SIG_IGN), (signal.SIGTERM, signal.SIG_DFL)]}
    try:
        previous = install_stop_handlers()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # a background job's Ctrl-C stays ignored
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop_signal() == signal.SIGTERM
        reset_stop(previous)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and stop_signal() is None
    finally:
        for s, h in before.items():
            signal.signal(s, h)

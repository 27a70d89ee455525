"""The `mert` command's messages: one console handler, -v/-q, per-command help, errors once, the task group name."""

from __future__ import annotations

import logging

import pytest

from mert.cli import main as cli
from mert.cli import setup_logging
from tests.helpers import QUICK_PROBE_ARGS as ARGS


@pytest.fixture(autouse=True)
def _reset_mert_logger():
    yield
    setup_logging(0)


def test_info_messages_reach_the_console_once_and_q_keeps_warnings_only(capsys):
    setup_logging(0)
    setup_logging(0)  # called by every `mert` command: still one handler
    monitor = logging.getLogger("mert.lightning.probe_monitor")
    monitor.info("monitor: step 10, key 41.0")
    monitor.debug("details")
    assert capsys.readouterr().err == "monitor: step 10, key 41.0\n"
    setup_logging(-1)
    monitor.info("hidden")
    monitor.warning("shown")
    assert capsys.readouterr().err == "warning: shown\n"
    setup_logging(1)
    monitor.debug("details")
    assert capsys.readouterr().err == "details\n"


def test_probe_messages_go_to_the_console_and_probe_log(small_set, tmp_path, capsys):  # noqa: F811
    run_dir = tmp_path / "run"
    args = [f"data.manifest={small_set['manifest']}", f"features.cache_dir={tmp_path / 'cache'}", f"run_dir={run_dir}"]
    assert cli(["-q", "probe", *ARGS, *args]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "mert probe: features" not in err and "warning: mert probe: only 3 test items" in err
    log = (run_dir / "probe.log").read_text()
    assert "INFO mert probe: features 36 computed" in log and "WARNING mert probe: only 3 test items" in log


def test_probe_and_pretrain_help_show_their_own_groups(capsys):
    assert cli(["probe", "--help"]) == 0
    text = capsys.readouterr().out
    assert "usage: mert probe encoder=SOURCE" in text
    assert "\n  task: auto, beat," in text and "\n  protocol: marble, quick" in text
    assert "probe_task" not in text and "\n  model:" not in text and "\n  trainer:" not in text
    assert "encoder: ???" in text  # the settings, with the defaults composed
    assert cli(["probe", "--help", "protocol=quick"]) == 0
    assert "head: linear" in capsys.readouterr().out
    pytest.importorskip("lightning")
    assert cli(["pretrain", "--help"]) == 0
    text = capsys.readouterr().out
    assert "usage: mert pretrain" in text and "\n  model: " in text and "\n  trainer: " in text
    assert "\n  task:" not in text and "\n  protocol:" not in text


def test_task_is_the_group_name_and_probe_task_still_works(capsys):
    for spelling in ("task", "probe_task", "probe_task@task"):
        assert (
            cli(["probe", "encoder=random:tiny", "data.manifest=x.csv", f"{spelling}=gtzan_genre", "--cfg", "job"]) == 0
        )
        assert "name: gtzan_genre" in capsys.readouterr().out, spelling
    assert cli(["probe", "encoder=random:tiny", "data.manifest=x.csv", "task=instrument"]) == 2
    err = capsys.readouterr().err
    assert "Could not find 'task/instrument'" in err and "probe_task" not in err


def test_errors_are_printed_once_in_hydra_keys(tmp_path, capsys):
    assert cli(["probe", "encoder=random:tiny", f"data.manifest={tmp_path / 'none.csv'}", "progress=false"]) == 1
    err = capsys.readouterr().err
    assert err.count("mert probe: error:") == 1 and "Error executing job" not in err and "does not exist" in err
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n" + "".join(f"a{i}.wav,{'xy'[i % 2]}\n" for i in range(6)))
    assert cli(["probe", "encoder=random:tiny", f"data.manifest={manifest}", "probe.head=deep"]) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "probe.head must be 'mlp' or 'linear', got 'deep'" in err


def test_lightning_tips_and_the_resume_checkpoint_warning_are_filtered(capsys, caplog):
    pytest.importorskip("lightning")
    import warnings

    from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

    from mert.lightning.runfolder import quiet_lightning

    quiet_lightning()
    quiet_lightning()  # idempotent
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing litlogger")
        rank_zero_info("GPU available: False")
    assert "Tip" not in caplog.text and "GPU available: False" in caplog.text
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        quiet_lightning()
        rank_zero_warn("Checkpoint directory /runs/x/checkpoints exists and is not empty.")
        rank_zero_warn("something else")
    assert [str(w.message) for w in seen] == ["something else"]

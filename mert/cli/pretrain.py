"""``mert pretrain [hydra overrides]``: pretraining through ``hydra.main`` (multirun and launchers included).

mert pretrain experiment=tiny_cpu trainer.max_steps=100
mert pretrain -m hydra/launcher=mert_slurm ...        (docs/pretraining.md)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["main", "quiet_lightning"]


class _DropTips:
    """Drops Lightning's advertising tips ("💡 Tip: ...litlogger / litmodels"), shown on every start."""

    def filter(self, record) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip:")


def quiet_lightning() -> None:
    """Filter Lightning's messages that say nothing about this run: its product tips, and the warning that the
    checkpoint folder is not empty (it is, by design, whenever a run resumes)."""
    import logging
    import warnings

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def main(argv: Sequence[str] | None = None) -> int:
    """``mert pretrain [hydra overrides]``: runs through ``hydra.main`` (multirun and launchers included)."""
    try:
        import hydra  # noqa: F401
        import lightning  # noqa: F401
    except ImportError:
        print("mert pretrain needs the train extra: pip install 'mert[train]'", file=sys.stderr)
        return 2
    import torch

    from mert.cli.hydra_app import run_hydra
    from mert.lightning import train

    torch.set_float32_matmul_precision("high")
    quiet_lightning()
    # argv[0] is mert/cli/rank_entry.py: Lightning's DDP launcher starts the other ranks by re-running
    # `sys.argv[0]` with the same overrides, and that file runs `main()` as a script. Found by path, not
    # imported: rank_entry imports this module.
    rerun = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rank_entry.py")
    overrides = argv if argv is not None else sys.argv[1:]
    return run_hydra(train.hydra_entry, "train", rerun, overrides, "mert pretrain", usage=USAGE)


USAGE = """\
usage: mert pretrain [experiment=NAME] [GROUP=OPTION ...] [KEY=VALUE ...]
       mert pretrain -m hydra/launcher=mert_slurm ...    (a sweep or a cluster launch)

Pretrain an encoder (docs/pretraining.md); the run folder is run_dir (default runs/<name>[/<settings given>])."""

"""Lightning callbacks the end-to-end tests inject into `mert pretrain` runs through Hydra
(``+callbacks.kill._target_=tests.callbacks.SignalAt``)."""

from __future__ import annotations

import os

import lightning.pytorch as pl


class SignalAt(pl.Callback):
    """Test helper: send this process ``signum`` once ``global_step`` reaches ``step`` (or raise there, mid-step,
    on the second micro-batch, when ``signum`` is 0)."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum, self.sent = step, signum, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and not self.sent and self.signum:
            self.sent = True
            os.kill(os.getpid(), self.signum)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.signum and trainer.global_step == self.step and batch_idx % 2 == 1:
            raise RuntimeError("injected failure")

"""Lightning shell for pretraining. The only package of mert that imports Lightning (and Hydra, in train)."""

from mert.lightning.data import AudioDataModule, StreamSampler, derive_accumulation
from mert.lightning.module import PretrainModule, linear_warmup_decay

__all__ = ["AudioDataModule", "PretrainModule", "StreamSampler", "derive_accumulation", "linear_warmup_decay"]

"""The MERT self-supervised objective as plain nn.Modules: masking, in-batch noise mixing, heads, losses."""

from mert.pretrain.heads import CodeHead, FeatureHead
from mert.pretrain.masking import block_mask, span_mask
from mert.pretrain.mixing import MixedSegment, mix_in_batch
from mert.pretrain.objective import MERTObjective, PretrainOutput

__all__ = [
    "CodeHead",
    "FeatureHead",
    "MERTObjective",
    "MixedSegment",
    "PretrainOutput",
    "block_mask",
    "mix_in_batch",
    "span_mask",
]

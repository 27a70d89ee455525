"""mert: self-supervised music audio representations (MERT-style encoders) in plain PyTorch.

``import mert`` loads only torch-level dependencies; training (Lightning) and configuration (Hydra) are
imported when a training or probing command starts.
"""

from mert.models.config import EncoderConfig, frame_lengths
from mert.models.encoder import Encoder, EncoderOutput
from mert.models.pooling import LayerWeights, mean_pool, parse_layers, pool_frames, select_layers, weighted_layer_sum
from mert.version import __version__

__all__ = [
    "Encoder",
    "EncoderConfig",
    "EncoderOutput",
    "LayerWeights",
    "frame_lengths",
    "mean_pool",
    "parse_layers",
    "pool_frames",
    "select_layers",
    "weighted_layer_sum",
    "__version__",
]

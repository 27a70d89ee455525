"""Pure-PyTorch encoder: configuration, modules, checkpoint conversion, pooling helpers."""

from mert.models.checkpoint import convert_hf_state_dict, hf_config_to_encoder_config, load_checkpoint, save_checkpoint
from mert.models.config import PRESETS, EncoderConfig, frame_lengths
from mert.models.encoder import Encoder, EncoderOutput

__all__ = [
    "PRESETS",
    "Encoder",
    "EncoderConfig",
    "EncoderOutput",
    "convert_hf_state_dict",
    "frame_lengths",
    "hf_config_to_encoder_config",
    "load_checkpoint",
    "save_checkpoint",
]

"""Network architectures only (layer 6): they know nothing of noise schedules or the world."""
from compdiff.nn.conditioning import PositionEmbedding, SetEmbedding, TokenEmbedding, position_bump, set_bump
from compdiff.nn.unet import ConditionalUNet, ModelConfig, build_unet

__all__ = ["ConditionalUNet", "ModelConfig", "build_unet", "PositionEmbedding", "TokenEmbedding",
           "position_bump", "SetEmbedding", "set_bump"]

"""Training (layer 8): the loop on accelerate, EMA, atomic safetensors checkpoints."""
from compdiff.training.loop import TrainConfig, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]

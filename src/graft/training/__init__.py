"""Training: configuration, optimizer/schedule, and the loop that writes run directories and bundles."""

from graft.training.config import TrainConfig, make_config, read_recipe
from graft.training.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "make_config", "read_recipe", "train"]

"""Training: configuration, optimizer/schedule, and the loop that writes run directories and bundles."""

from graft.train.config import TrainConfig, make_config, read_recipe
from graft.train.loop import TrainResult, train
from graft.train.trainer import Callback, Trainer

__all__ = ["Callback", "TrainConfig", "TrainResult", "Trainer", "make_config", "read_recipe", "train"]

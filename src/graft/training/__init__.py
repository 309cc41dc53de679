"""Training: configuration, optimizer/schedule, and the loop that writes run directories and bundles.

The public surface, for users and for the rounds code above: `train` (one call), `Trainer` and `Callback` (arrays,
callbacks, model and history), `TrainConfig` and recipes, and the few facts about runs that others act on.
"""

from graft.training.checkpoint import is_unfinished
from graft.training.config import TrainConfig, make_config, read_recipe
from graft.training.loop import RESUME_MAY_CHANGE, TrainResult
from graft.training.runtime import training_device
from graft.training.trainer import Callback, Trainer, train

__all__ = [
    "RESUME_MAY_CHANGE",
    "Callback",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "is_unfinished",
    "make_config",
    "read_recipe",
    "train",
    "training_device",
]

"""Training: configuration, optimizer/schedule, and the loop that writes run directories and bundles.

The public surface, for users and for the rounds code above: `train` (one call), `Trainer` and `Callback` (arrays,
callbacks, model and history), `TrainConfig` and recipes, and the few facts about runs that others act on.

Names load on first use (graft._lazy): `graft.training.config` (TrainConfig, the source of `graft train`'s
options) needs no torch, so `graft --help` does not import it either.
"""

from typing import TYPE_CHECKING

from graft import _lazy

if TYPE_CHECKING:
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

__getattr__, __dir__ = _lazy.exports(
    __name__,
    {
        "is_unfinished": "graft.training.checkpoint",
        "TrainConfig": "graft.training.config",
        "make_config": "graft.training.config",
        "read_recipe": "graft.training.config",
        "RESUME_MAY_CHANGE": "graft.training.loop",
        "TrainResult": "graft.training.loop",
        "training_device": "graft.training.runtime",
        "Callback": "graft.training.trainer",
        "Trainer": "graft.training.trainer",
        "train": "graft.training.trainer",
    },
)

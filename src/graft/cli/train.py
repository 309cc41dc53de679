"""`graft train`: its options are generated from `TrainConfig`'s fields (graft.cli.options), so a new field, default
or help text needs no change here; only what is not a setting (the recipe, --offline, --resume) is declared below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from graft.cli.options import TRAIN_FLAGS, config_options
from graft.errors import GraftError


@config_options(*TRAIN_FLAGS, before="offline")
def train_command(
    recipe: Annotated[
        Path | None, typer.Argument(help="TOML recipe with any of the settings below; flags override it.")
    ] = None,
    offline: Annotated[
        bool | None, typer.Option("--offline", help="Never download data; fail with the files to provide.")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue an interrupted run from RUN_DIR/checkpoint.pt with its own settings."),
    ] = None,
    **settings: Any,
) -> None:
    """Fine-tune a timm model on a data source and write a bundle (model.safetensors + graft.json).

    Checkpoints are written every epoch and on Ctrl-C/SIGTERM; `--resume RUN_DIR` continues to the same result.
    Under `torchrun --nproc-per-node N -m graft train ...` the processes train data-parallel.

    \b
    Examples:
      graft train --data mnist --model resnet18 --input-mode fold --size 32 --epochs 1
      graft train recipes/mnist-fold-32.toml --epochs 2
    """
    from graft.training import train as run_training

    # `settings` holds every flag field, None where not given: the recipe's value or the field's default applies.
    if offline:
        settings["download"] = False
    if resume is not None:
        if recipe is not None:
            raise GraftError("--resume continues a run with its own settings; give no recipe")
        run_training(resume=resume, **settings)
    else:
        run_training(recipe=recipe, **settings)

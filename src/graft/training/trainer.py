"""`graft.Trainer`: the training run as an object, for when the one-line `graft.train` is not enough.

    trainer = graft.Trainer(data=(x, y), classes=names, test=(x_test, y_test),
                            model="resnet10t", size=32, epochs=3, callbacks=[MyCallback()])
    result = trainer.fit()               # the TrainResult graft.train returns; the same run dir and bundle
    trainer.model, trainer.history, trainer.bundle

Settings are those of `graft.train` (a `TrainConfig`, a recipe, keywords, `resume=`). `data` is a source name as
for graft.train, or in-memory data: `(x, y)` numpy arrays (uint8 images N×H×W or N×H×W×C, integer labels 0..K-1,
optional `classes=` names), an `ImageSet` or a `Splits` (see graft.data.memory). A single set is split into train
and valid by the seeded stratified split graft uses for sources; the test set is only the one given as `test=`:
without it nothing is held out, the run says so, and the bundle's test metrics are None.

Callbacks are objects with any of the `Callback` hooks, called on the main process; `on_epoch_end` returning a true
value, or setting `trainer.stop_training`, ends training after that epoch (the bundle is still written).
`graft.train(...)` is `Trainer(...).fit()`: there is one training path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from torch import nn

from graft.bundle import Bundle
from graft.data.memory import InMemory, describe, in_memory
from graft.errors import GraftError, Interrupted
from graft.io import atomic_write_json
from graft.lock import locked
from graft.progress import console as default_console
from graft.spec import InputSpec
from graft.training import distributed
from graft.training.config import TrainConfig
from graft.training.distributed import world_from_env
from graft.training.loop import TrainResult, _run_dir, _train, run_settings
from graft.training.runtime import resolve_runtime
from graft.training.session import EpochCallback, Session

HOOKS = ("on_train_begin", "on_epoch_end", "on_train_end")
RUN_BUSY = (
    "{directory} is busy: another graft train (process {pid}) is training into it; wait for it to finish, or "
    "train into another --run-dir"
)
DATA_RECORD = "data.json"  # in a run directory: what in-memory data it trained on (resume checks it)


class Callback:
    """Base class for callbacks (optional: any object with some of these methods will do). Called on the main
    process only."""

    def on_train_begin(self, trainer: Trainer) -> None:
        """Before the first epoch (of this session, when resuming); `trainer.model` exists."""

    def on_epoch_end(self, trainer: Trainer, record: dict) -> bool | None:
        """After each epoch is validated and recorded (`record`: epoch, train/valid loss and accuracy, lr, …).
        Return a true value (or set `trainer.stop_training`) to end training after this epoch."""

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None:
        """After the bundle and run directory are written."""


class Trainer:
    """One training run: settings and data checked when built, trained by `fit()` (see the module docstring)."""

    def __init__(
        self,
        config: TrainConfig | None = None,
        *,
        data: Any = None,
        test: Any = None,
        classes: Sequence[str] | None = None,
        callbacks: Sequence[object] = (),
        recipe: str | Path | None = None,
        resume: str | Path | None = None,
        console: Console | None = None,
        on_epoch: EpochCallback | None = None,
        **overrides: Any,
    ) -> None:
        source = data is None or isinstance(data, str)
        if source:
            if test is not None or classes is not None:
                raise GraftError("test= and classes= go with in-memory data; a data source has its own test split")
            overrides["data"] = data
        origin, resumed = run_settings(config, recipe, resume, overrides)
        config = origin.config
        self.memory: InMemory | None = None
        if not source:
            self.memory = in_memory(data, test, classes, valid_fraction=config.valid_fraction, seed=config.seed)
            if resumed is None:
                config = config.model_copy(update={"data": self.memory.label})
                origin = dataclasses.replace(origin, config=config)
        self.origin = origin
        self.config = config
        self.run_dir = resumed or _run_dir(config)
        if resumed is not None:
            _check_resumed_data(resumed, self.memory)
        self.callbacks = list(callbacks)
        for position, callback in enumerate(self.callbacks):
            if not any(callable(getattr(callback, hook, None)) for hook in HOOKS):
                raise GraftError(
                    f"callbacks[{position}] ({type(callback).__name__}) has none of {', '.join(HOOKS)}; "
                    "subclass graft.Callback (a plain function goes in on_epoch=)"
                )
        self.stop_training = False
        self.result: TrainResult | None = None
        self._on_epoch = on_epoch
        self._resuming = resumed is not None
        self._world = world_from_env()
        self._out = console or default_console()
        if not self._world.is_main:
            self._out = Console(quiet=True)
        self._session: Session | None = None

    @property
    def model(self) -> nn.Module | None:
        """The weights being validated (the EMA's with `ema`) while fitting; the bundle's model after. None before."""
        return self._session.evaluated if self._session is not None else None

    @property
    def history(self) -> list[dict]:
        """One record per epoch (those of earlier sessions too, when resumed)."""
        return self._session.history if self._session is not None else []

    @property
    def bundle(self) -> Bundle | None:
        """The bundle `fit()` wrote (None before, and on processes other than the main one)."""
        return self.result.bundle if self.result is not None else None

    def fit(self) -> TrainResult:
        """Train the epochs, write the run directory and bundle, and return what `graft.train` returns."""
        if self.result is not None:
            raise GraftError("this Trainer has already trained; make a new one to train again")
        runtime = resolve_runtime(self.config, self._world)
        # One process trains into a run directory at a time (torchrun's main process holds it for all of them).
        hold = locked(self.run_dir, RUN_BUSY) if self._world.is_main else contextlib.nullcontext()
        distributed.start(self._world, runtime.device)
        try:
            with hold:
                result = _train(
                    self.origin, self.run_dir, self._resuming, self._world, runtime, self._out, self._epoch_end,
                    memory=self.memory, on_session=self._begin,
                )  # fmt: skip
        except Interrupted as error:
            if self.memory is None:
                raise
            where = str(error).split("; continue with")[0]
            raise Interrupted(
                f"{where}; continue with graft.Trainer(resume={str(self.run_dir)!r}, data=<the same data>).fit()",
                signum=error.signum,
            ) from None
        finally:
            distributed.stop(self._world)
        self.result = result
        if self._world.is_main:
            for callback in self.callbacks:
                _hook(callback, "on_train_end")(self, result)
        return result

    def _begin(self, session: Session) -> None:
        self._session = session
        if not self._world.is_main:
            return
        if not self._resuming:  # a fresh run (or a --force re-run): the data record is this run's or none
            if self.memory is not None:
                atomic_write_json(self.run_dir / DATA_RECORD, self.memory.record)
            else:
                (self.run_dir / DATA_RECORD).unlink(missing_ok=True)
        for callback in self.callbacks:
            _hook(callback, "on_train_begin")(self)

    def _epoch_end(self, record: dict, model: nn.Module, spec: InputSpec) -> bool:
        """graft.train's `on_epoch` (every process, as before), then the callbacks (main process); True stops."""
        if self._on_epoch is not None:
            self._on_epoch(record, model, spec)
        if not self.callbacks:
            return False
        asked_by = []
        if self._world.is_main:
            for callback in self.callbacks:
                if _hook(callback, "on_epoch_end")(self, record):  # any true value, numpy's included
                    asked_by.append(type(callback).__name__)
            if self.stop_training and not asked_by:
                asked_by.append("trainer.stop_training")
        assert self._session is not None
        stop = distributed.broadcast_flag(bool(asked_by), self._world, self._session.ctx.runtime.device)
        if stop:
            self.stop_training = True
            if record["epoch"] < self.config.epochs:
                self._out.print(f"stopped by {', '.join(asked_by)} after epoch {record['epoch']}/{self.config.epochs}")
        return stop


def _hook(callback: object, name: str):
    return getattr(callback, name, None) or (lambda *args: None)


def _check_resumed_data(run_dir: Path, memory: InMemory | None) -> None:
    """A run trained on in-memory data continues only with the same data; a source's run only without data=."""
    path = run_dir / DATA_RECORD
    recorded = json.loads(path.read_text()) if path.is_file() else None
    if recorded is None and memory is not None:
        raise GraftError(f"{run_dir} trained on a data source, not in-memory data: resume it without data=")
    if recorded is not None and memory is None:
        raise GraftError(
            f"{run_dir} trained on in-memory data ({describe(recorded)}): resume it from Python with the same "
            f"data, graft.Trainer(resume={str(run_dir)!r}, data=...).fit()"
        )
    if recorded is not None and memory is not None and recorded["digest"] != memory.record["digest"]:
        raise GraftError(
            f"data= is not the data {run_dir} trained on ({describe(recorded)}); resume with the same data"
        )


def train(
    config: TrainConfig | None = None,
    *,
    recipe: str | Path | None = None,
    resume: str | Path | None = None,
    console: Console | None = None,
    on_epoch: EpochCallback | None = None,
    **overrides,
) -> TrainResult:
    """Fine-tune a timm model on a data source and write a bundle: `graft.Trainer(...).fit()` in one call.

    `graft.train(data="mnist", model="resnet18", input_mode="fold", size=32, epochs=1)` is the simple call;
    every field of `TrainConfig` can be given here, in a TOML recipe, or both (keywords win).
    `graft.train(resume="runs/…")` continues an interrupted run from its last checkpoint with its own settings.
    Under `torchrun`, each process trains on its slice of every batch and only rank 0 writes files.
    `on_epoch(record, model, spec)` is called after each epoch with its metrics and the model being evaluated
    (benchmarks use it to follow test accuracy over time). In-memory data, a test set and callbacks are
    `graft.Trainer`'s keywords, accepted here too.
    """
    return Trainer(config, recipe=recipe, resume=resume, console=console, on_epoch=on_epoch, **overrides).fit()

"""One training run's moving parts and what happens to them each epoch.

A `Session` holds the model, optimizer, schedule, EMA, history and best epoch of a run, and does the steps that
change them: restore from a checkpoint, train and validate one epoch, write a checkpoint. `graft.training.loop`
sets a session up, runs its epochs and turns it into a bundle; every piece of state a checkpoint must carry
lives here, in one place, so `save` and `restore` stay each other's mirror.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from timm.utils import ModelEmaV3
from torch import nn

from graft.data.base import ImageSet, Splits
from graft.data.loader import count_batches
from graft.errors import Interrupted
from graft.evaluation import EvalResult, evaluate_model
from graft.io import json_text
from graft.models.weights import TransferReport
from graft.record import Architecture
from graft.spec import InputSpec
from graft.training import distributed
from graft.training.augment import make_augment
from graft.training.cache import cache_features, can_cache, head_on_features
from graft.training.checkpoint import save_checkpoint
from graft.training.config import TrainConfig
from graft.training.distributed import World
from graft.training.optim import make_optimizer, make_schedule
from graft.training.runtime import Runtime, wrap_for_training
from graft.training.signals import StopSignals
from graft.training.steps import (
    EpochProgress,
    StepContext,
    drop_last,
    epoch_record,
    epoch_seed,
    feature_batches,
    image_batches,
    run_epoch,
)
from graft.training.strategy import backbone_frozen, backbone_lr_ratio, set_phase

EpochCallback = Callable[[dict, nn.Module, InputSpec], bool | None]  # True: end the run after this epoch


@dataclass
class FeatureCache:
    """Transfer without augmentation: the head trains on backbone features computed once (see train.cache)."""

    head: nn.Module
    train: torch.Tensor
    valid: torch.Tensor


@dataclass
class Session:
    config: TrainConfig
    run_dir: Path
    world: World
    out: Console
    splits: Splits
    train_set: ImageSet
    model: nn.Module
    arch: Architecture
    spec: InputSpec
    report: TransferReport | None
    steps: int
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    ema: ModelEmaV3 | None
    ctx: StepContext
    stop: StopSignals
    cache: FeatureCache | None
    keep: str  # "best" or "last": which epoch's weights the bundle gets
    history: list[dict] = field(default_factory=list)
    best: dict | None = None  # {"epoch", "valid_acc", "state"} of the best epoch so far (state only to keep it)
    first_epoch: int = 1
    position: EpochProgress = field(default_factory=EpochProgress)
    done: bool = False  # training was over at the checkpoint (last epoch or early stop)
    elapsed_before: float = 0.0  # seconds spent in earlier sessions of this run
    rng: torch.Tensor | None = None  # torch's RNG state at a mid-epoch checkpoint
    started: float = field(default_factory=time.perf_counter)
    wrapped: dict[bool, nn.Module] = field(default_factory=dict)  # the DDP wrapper of the current phase

    @property
    def evaluated(self) -> nn.Module:
        """The weights that are validated and saved: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def restore(self, checkpoint: dict) -> None:
        """Continue where `checkpoint` (written by `save`) left off; the model's weights are already in place."""
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.schedule.load_state_dict(checkpoint["schedule"])
        if self.ema is not None:
            self.ema.module.load_state_dict(checkpoint["ema"])
        self.history = list(checkpoint["history"])
        self.best = checkpoint["best"]
        self.first_epoch = checkpoint["epoch"]
        self.position = EpochProgress(**checkpoint["position"])
        self.done = checkpoint["done"]
        self.elapsed_before = checkpoint["elapsed"]
        self.rng = checkpoint["rng"]
        if checkpoint.get("fell_back"):
            self.ctx.runtime = dataclasses.replace(self.ctx.runtime, bf16=False, fell_back=checkpoint["fell_back"])
        self.out.print(
            f"resuming {self.run_dir} at epoch {min(self.first_epoch, self.config.epochs)}, "
            f"batch {self.position.step}/{self.steps}"
        )

    def save(self, epoch: int, position: EpochProgress, finished: bool = False) -> None:
        """A checkpoint from which `restore` continues exactly: at `position` of `epoch` (main process only)."""
        if not self.world.is_main:
            return
        save_checkpoint(
            self.run_dir,
            {
                "architecture": self.arch.to_dict(),
                "spec": self.spec.to_dict(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "ema": self.ema.module.state_dict() if self.ema is not None else None,
                "history": self.history,
                "best": self.best,
                "epoch": epoch,
                "position": position.to_dict(),
                "rng": torch.get_rng_state(),
                "fell_back": self.ctx.runtime.fell_back,
                "elapsed": self.elapsed(),  # seconds over all sessions
                "done": finished,  # training over (last epoch or early stop): a resume goes to the bundle
            },
        )

    def evaluate(self, images: ImageSet) -> EvalResult:
        """Float32 metrics of the evaluated weights: validation numbers are what the bundle will do."""
        return evaluate_model(
            self.evaluated,
            self.spec,
            images,
            classes=self.splits.classes,
            batch_size=self.config.batch_size,
            workers=self.config.workers,
            console=self.out,
            device=self.ctx.runtime.device,
            channels_last=self.ctx.runtime.channels_last,
        )

    def train_epoch(self, epoch: int, on_epoch: EpochCallback | None = None) -> bool:
        """Train, validate, record and checkpoint one epoch; True when early stopping or `on_epoch` (by returning
        True) ends the run here.

        A stop request (Ctrl-C, SIGTERM) checkpoints the position reached and raises Interrupted.
        """
        config, ctx, model = self.config, self.ctx, self.model
        if epoch > self.first_epoch or self.position.step == 0:
            self.position = EpochProgress()
            torch.manual_seed(epoch_seed(config, epoch))  # dropout and augmentation draws, per epoch
        else:
            torch.set_rng_state(self.rng)
        frozen = backbone_frozen(config, epoch)
        set_phase(model, frozen)
        if config.strategy == "freeze-unfreeze" and epoch == config.head_epochs + 1 and self.position.step == 0:
            self.out.print(f"epoch {epoch}: backbone unfrozen (learning rate × {backbone_lr_ratio(config):g})")
        if frozen not in self.wrapped:  # DDP tracks the parameters that train: one wrapper per phase
            self.wrapped.clear()
            self.wrapped[frozen] = (
                self.cache.head if self.cache else wrap_for_training(model, self.world, ctx.runtime, config)
            )
        ctx.model = self.wrapped[frozen]
        if self.cache:
            batches = feature_batches(self.cache.train, self.train_set.labels, ctx, epoch, self.position.step)
        else:
            batches = image_batches(self.train_set, self.spec, ctx, epoch, self.position.step)
        self.position, interrupted = run_epoch(ctx, epoch, self.steps, self.position, self.out, batches)
        if interrupted:
            self.save(epoch, self.position)
            distributed.barrier(self.world)
            raise Interrupted(
                f"stopped at epoch {epoch}, batch {self.position.step}/{self.steps}; continue with "
                f"`graft train --resume {self.run_dir}`",
                signum=self.stop.requested,
            )
        record, valid = self._validate(epoch)
        self.out.print(
            f"epoch {epoch}/{config.epochs}  loss {record['train_loss']:.4f}  acc {record['train_acc']:.2%}  "
            f"valid loss {valid.loss:.4f}  valid acc {valid.accuracy:.2%}  "
            f"{record['images_per_s']:.0f} img/s  {record['seconds']:.0f}s"
        )
        asked = on_epoch is not None and on_epoch(record, self.evaluated, self.spec) is True
        assert self.best is not None
        stopped_early = config.patience is not None and epoch - self.best["epoch"] >= config.patience
        self.save(epoch + 1, EpochProgress(), finished=stopped_early or asked or epoch == config.epochs)
        if stopped_early:
            self.out.print(
                f"early stop: valid accuracy has not improved for {config.patience} epochs "
                f"(best {self.best['valid_acc']:.2%} at epoch {self.best['epoch']})"
            )
        return stopped_early or asked

    def _validate(self, epoch: int) -> tuple[dict, EvalResult | ReducedResult]:
        """The epoch's record with validation metrics, appended to the history and metrics.jsonl; best updated."""
        head_lr = max(group["lr"] for group in self.optimizer.param_groups if group["role"] == "head")
        record = epoch_record(self.position, epoch, head_lr, self.ctx)
        if self.cache:
            valid = _evaluate_features(self.cache.head, self.cache.valid, self.splits, self.ctx.runtime)
        else:
            valid = evaluate_sharded(self.evaluate, self.splits.valid, self.world, self.ctx.runtime)
        record.update(valid_loss=valid.loss, valid_acc=valid.accuracy)
        self.history.append(record)
        if self.best is None or record["valid_acc"] > self.best["valid_acc"]:
            state = _weights_to_keep(self.evaluated) if self.keep == "best" else None
            self.best = {"epoch": epoch, "valid_acc": record["valid_acc"], "state": state}
        if self.world.is_main:
            with self.metrics_path.open("a") as handle:
                handle.write(json_text(record, indent=None) + "\n")
            _plot_curves(self.history, self.run_dir, self.config)
        return record, valid

    def final_model(self) -> nn.Module:
        """The bundle's model: the kept epoch's weights, float32, contiguous, in eval mode."""
        model = self.evaluated
        if self.keep == "best" and self.best is not None:
            model.load_state_dict(self.best["state"])
            self.out.print(
                f"bundle weights: epoch {self.best['epoch']} (best valid accuracy {self.best['valid_acc']:.2%})"
            )
        return model.float().to(memory_format=torch.contiguous_format).eval()


def start_session(
    config: TrainConfig,
    run_dir: Path,
    world: World,
    runtime: Runtime,
    out: Console,
    *,
    splits: Splits,
    train_set: ImageSet,
    model: nn.Module,
    arch: Architecture,
    spec: InputSpec,
    report: TransferReport | None,
) -> Session:
    """Optimizer, schedule, EMA, stop signals and (for cached transfer) features around a placed model."""
    cache = None
    if can_cache(config, model, world):
        out.print("transfer without augmentation: the backbone runs once, the head trains on cached features")
        cache = FeatureCache(
            head=head_on_features(model),
            train=cache_features(model, spec, train_set, runtime, config, out),
            valid=cache_features(model, spec, splits.valid, runtime, config, out),
        )
    steps = count_batches(len(train_set), config.batch_size, drop_last=drop_last(len(train_set), config))
    optimizer = make_optimizer(model, config)
    schedule = make_schedule(optimizer, config, steps)
    ema = ModelEmaV3(model, decay=config.ema, use_warmup=True) if config.ema else None
    stop = StopSignals()
    ctx = StepContext(
        model=cache.head if cache else model,
        optimizer=optimizer,
        schedule=schedule,
        runtime=runtime,
        config=config,
        world=world,
        should_stop=lambda: distributed.broadcast_flag(stop.requested is not None, world, runtime.device),
        augment=make_augment(config),
        out=out,
    )
    if ema is not None:
        ctx.after_step = lambda: ema.update(model, step=schedule.last_epoch)
    keep = config.keep or ("best" if config.patience is not None else "last")
    return Session(
        config, run_dir, world, out, splits, train_set, model, arch, spec, report, steps,
        optimizer, schedule, ema, ctx, stop, cache, keep,
    )  # fmt: skip


def _weights_to_keep(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}


def _evaluate_features(head: nn.Module, features: torch.Tensor, splits: Splits, runtime: Runtime) -> EvalResult:
    """Valid metrics from cached features (the same numbers the full model gives, without the backbone pass)."""
    head.eval()
    with torch.no_grad():
        logits = head(features.to(runtime.device)).float().cpu()
    labels = torch.from_numpy(splits.valid.labels)
    top, index = logits.softmax(dim=1).max(dim=1)
    return EvalResult(
        classes=list(splits.classes),
        labels=splits.valid.labels,
        predicted=index.numpy(),
        confidence=top.numpy(),
        loss=float(F.cross_entropy(logits, labels)),
    )


def evaluate_sharded(
    evaluate: Callable[[ImageSet], EvalResult], images: ImageSet, world: World, runtime: Runtime
) -> EvalResult | ReducedResult:
    """Each process evaluates its share; loss and accuracy are reduced so every process sees the same numbers."""
    if not world.distributed:
        return evaluate(images)
    share = images.subset(np.arange(world.rank, len(images), world.size))
    result = evaluate(share)
    n = len(share)
    loss_sum, correct, total = distributed.reduce_sums(
        [result.loss * n, float((result.predicted == result.labels).sum()), n], world, runtime.device
    )
    return ReducedResult(loss=loss_sum / max(total, 1), accuracy=correct / max(total, 1))


@dataclass
class ReducedResult:
    loss: float
    accuracy: float


def _plot_curves(history: list[dict], run_dir: Path, config: TrainConfig) -> None:
    """Redrawn after every epoch, so a long run's curves can be watched while it trains."""
    from graft.report.plots import plot_learning_curves

    plot_learning_curves(
        history, run_dir / "curves.png", title=f"{config.model} on {config.data} ({config.input_mode})"
    )

"""One training epoch: batches in a seeded order, optional augmentation, autocast, and a stop flag that is
honoured between steps so that a checkpoint can be taken at the exact position reached."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from graft.data.base import ImageSet
from graft.data.loader import batch_order, iter_batches
from graft.data.preprocess import to_model_input
from graft.errors import GraftError
from graft.progress import LOG_EVERY_S, batch_progress
from graft.spec import InputSpec
from graft.training.augment import Augment
from graft.training.config import TrainConfig
from graft.training.distributed import World, reduce_sums
from graft.training.runtime import Runtime


@dataclass
class EpochProgress:
    """Where an epoch is: batches done and the running sums of this process (checkpointed mid-epoch)."""

    step: int = 0
    seen: int = 0
    correct: int = 0
    loss_sum: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StepContext:
    """What every step needs besides the batch."""

    model: nn.Module  # what runs forward (DDP-wrapped or compiled when asked)
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    runtime: Runtime
    config: TrainConfig
    world: World
    after_step: Callable[[], None] = lambda: None  # EMA update
    should_stop: Callable[[], bool] = lambda: False  # a signal arrived: leave between two steps
    augment: Augment | None = None
    out: Console | None = None

    def fall_back_to_fp32(self, why: str) -> None:
        """Continue the run in float32 (recorded in checkpoints and provenance)."""
        self.runtime = dataclasses.replace(self.runtime, bf16=False, fell_back=why)
        if self.out is not None:
            self.out.print(f"{why} at step {self.schedule.last_epoch + 1}: continuing in float32", style="yellow")


def drop_last(n: int, config: TrainConfig) -> bool:
    """Drop a ragged last batch (a batch of one breaks BatchNorm) unless it is the only batch."""
    return n > config.batch_size


def epoch_seed(config: TrainConfig, epoch: int) -> int:
    return config.seed * 1000 + epoch


def _gradients_finite(optimizer: torch.optim.Optimizer) -> bool:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))


def _step(ctx: StepContext, x: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    with ctx.runtime.autocast():
        logits = ctx.model(x)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=ctx.config.label_smoothing)
    finite = bool(torch.isfinite(loss))
    if finite:
        ctx.optimizer.zero_grad(set_to_none=True)
        loss.backward()
    if ctx.runtime.bf16 and not (finite and _gradients_finite(ctx.optimizer)):
        # Some CPU bfloat16 convolution kernels return non-finite gradients for a few shapes (seen with oneDNN on
        # 1×1 feature maps); float32 gives finite ones for the same step, so the run goes on in float32.
        ctx.fall_back_to_fp32(f"non-finite {'loss' if not finite else 'gradients'} in bfloat16")
        return _step(ctx, x, labels)
    if not finite:
        raise GraftError(
            f"the training loss is {loss.item()} at step {ctx.schedule.last_epoch + 1}: lower --lr"
            + (" or train without --channels-last" if ctx.runtime.channels_last else "")
        )
    ctx.optimizer.step()
    ctx.schedule.step()
    ctx.after_step()
    return loss.item(), int((logits.argmax(dim=1) == labels).sum())


def run_epoch(
    ctx: StepContext,
    epoch: int,
    steps: int,
    progress_state: EpochProgress,
    out: Console,
    batches: object,
) -> tuple[EpochProgress, bool]:
    """Train over `batches` (an iterator of (x, labels) on the device) from `progress_state.step` on.

    Returns the progress and whether the epoch was interrupted by `should_stop`.
    """
    config, state = ctx.config, progress_state
    started = time.perf_counter() - state.seconds
    last_log = state.seconds
    with batch_progress(out) as bar:
        task = bar.add_task(f"epoch {epoch}/{config.epochs}", total=steps, completed=state.step, stats="")
        for x, labels in batches:
            loss, correct = _step(ctx, x, labels)
            n = len(labels)
            state.step += 1
            state.seen += n
            state.loss_sum += loss * n
            state.correct += correct
            elapsed = time.perf_counter() - started
            state.seconds = elapsed
            rate = state.seen * ctx.world.size / max(elapsed, 1e-9)
            stats = f"loss {state.loss_sum / state.seen:.4f} acc {state.correct / state.seen:.2%} {rate:.0f} img/s"
            bar.update(task, advance=1, stats=stats)
            if not out.is_terminal and elapsed - last_log >= LOG_EVERY_S:  # logs get a line now and then
                eta = elapsed / state.step * (steps - state.step)
                out.print(f"  epoch {epoch}: {state.step}/{steps} batches  {stats}  ETA {eta:.0f}s")
                last_log = elapsed
            if state.step < steps and ctx.should_stop():
                return state, True
    return state, False


def image_batches(
    images: ImageSet,
    spec: InputSpec,
    ctx: StepContext,
    epoch: int,
    start: int,
) -> object:
    """(x, labels) on the device for this process: its slice of every global batch, from batch `start` on."""
    config, world, runtime = ctx.config, ctx.world, ctx.runtime
    for images_u8, labels in iter_batches(
        images,
        spec,
        config.batch_size,
        shuffle=True,
        seed=epoch_seed(config, epoch),
        drop_last=drop_last(len(images), config),
        workers=config.workers,
        start=start,
        shard=(world.rank, world.size),
    ):
        if ctx.augment is not None:
            images_u8 = ctx.augment(images_u8)
        yield runtime.to_input(to_model_input(images_u8, spec)), labels.to(runtime.device)


def feature_batches(features: torch.Tensor, labels: np.ndarray, ctx: StepContext, epoch: int, start: int) -> object:
    """The same batch order as `image_batches`, over cached features."""
    config = ctx.config
    label_tensor = torch.from_numpy(labels)
    chunks = batch_order(
        len(features),
        config.batch_size,
        shuffle=True,
        seed=epoch_seed(config, epoch),
        drop_last=drop_last(len(features), config),
    )
    for positions in chunks[start:]:
        index = torch.from_numpy(positions)
        yield features[index].to(ctx.runtime.device), label_tensor[index].to(ctx.runtime.device)


def epoch_record(state: EpochProgress, epoch: int, lr: float, ctx: StepContext) -> dict:
    """The epoch's training metrics, summed over all processes."""
    seen, correct, loss_sum = reduce_sums([state.seen, state.correct, state.loss_sum], ctx.world, ctx.runtime.device)
    return {
        "epoch": epoch,
        "train_loss": loss_sum / max(seen, 1),
        "train_acc": correct / max(seen, 1),
        "lr": lr,
        "seconds": state.seconds,
        "images_per_s": seen / max(state.seconds, 1e-9),
    }

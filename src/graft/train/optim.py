"""Optimizer and per-step learning-rate schedule."""

from __future__ import annotations

import math

import torch
from timm.optim import create_optimizer_v2
from torch import nn

from graft.train.config import TrainConfig


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """timm's factory: no weight decay on biases and norm layers, which matters for small data."""
    name, extra = config.optimizer, {}
    if config.optimizer == "sgd":
        # timm's "sgd" is Nesterov SGD, which torch refuses without momentum; "momentum" is plain SGD.
        name, extra = ("sgd" if config.momentum > 0 else "momentum"), {"momentum": config.momentum}
    return create_optimizer_v2(model, opt=name, lr=config.lr, weight_decay=config.weight_decay, **extra)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at `step` (0-based) of `total` steps.

    - onecycle: cosine rise from 1/25 of the peak over the warmup, then cosine decay to 1/10 000 (the learning-rate
      shape of fastai's fit_one_cycle; momentum is not cycled);
    - cosine: linear warmup from 0, then cosine decay to 0;
    - constant: linear warmup, then flat.
    Written as one function so that any step count works, down to a single step.
    """
    if step < warmup:
        progress = (step + 1) / (warmup + 1)
        if schedule == "onecycle":
            return 1 / 25 + (1 - 1 / 25) * 0.5 * (1 - math.cos(math.pi * progress))
        return progress
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = 1e-4 if schedule == "onecycle" else 0.0
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def make_schedule(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per batch; see `lr_factor` for the shapes."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, config.schedule))

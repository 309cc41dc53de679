"""Optimizer and per-step learning-rate schedule."""

from __future__ import annotations

import math

import torch
from timm.optim import create_optimizer_v2
from torch import nn

from graft.train.config import TrainConfig


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """timm's factory: no weight decay on biases and norm layers, which matters for small data."""
    extra = {"momentum": config.momentum} if config.optimizer == "sgd" else {}  # timm's "sgd" is Nesterov
    return create_optimizer_v2(model, opt=config.optimizer, lr=config.lr, weight_decay=config.weight_decay, **extra)


def make_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """Stepped once per batch: linear warmup, then one-cycle, cosine decay, or constant."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=config.lr,
            total_steps=total,
            pct_start=max(warmup, 1) / total,
            anneal_strategy="cos",
        )

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if config.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

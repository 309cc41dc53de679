"""Optimizer (with parameter groups by role) and per-step learning-rate schedules by phase."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from timm.optim import create_optimizer_v2

from graft.models.factory import GraftModel
from graft.training.config import TrainConfig
from graft.training.strategy import backbone_lr_ratio, parameter_roles, trainable_names


def _no_decay(name: str, param: torch.Tensor, exempt: set[str]) -> bool:
    """timm's rule: biases, norm layers (1-D tensors) and the model's own exemptions get no weight decay."""
    return param.ndim <= 1 or name.endswith(".bias") or name in exempt


def parameter_groups(model: GraftModel, config: TrainConfig) -> list[dict]:
    """Groups by (role, decay); the backbone's learning rate is `lr × backbone_lr_ratio`."""
    roles, keep = parameter_roles(model), trainable_names(config, model)
    exempt = model.no_weight_decay()
    ratio = backbone_lr_ratio(config)
    groups: dict[tuple[str, bool], dict] = {}
    for name, param in model.named_parameters():
        if name not in keep:
            continue
        role, decay = roles[name], not _no_decay(name, param, exempt)
        group = groups.setdefault(
            (role, decay),
            {
                "params": [],
                "role": role,
                "lr": config.lr * (ratio if role == "backbone" else 1.0),
                "weight_decay": config.weight_decay if decay else 0.0,
            },
        )
        group["params"].append(param)
    return list(groups.values())


def make_optimizer(model: GraftModel, config: TrainConfig) -> torch.optim.Optimizer:
    """timm's factory over graft's groups (which already carry their learning rates and weight decay)."""
    name, extra = config.optimizer, {}
    if config.optimizer == "sgd":
        # timm's "sgd" is Nesterov SGD, which torch refuses without momentum; "momentum" is plain SGD.
        name, extra = ("sgd" if config.momentum > 0 else "momentum"), {"momentum": config.momentum}
    return create_optimizer_v2(
        parameter_groups(model, config), opt=name, lr=config.lr, weight_decay=config.weight_decay, **extra
    )


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


def phase_factor(config: TrainConfig, steps_per_epoch: int, first: int, last: int) -> Callable[[int], float]:
    """The schedule of one phase spanning epochs first..last (1-based), restarted at its start; 0 outside it."""
    start, end = (first - 1) * steps_per_epoch, last * steps_per_epoch
    total = max(1, end - start)
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if not start <= step < end:
            return 0.0
        return lr_factor(step - start, total, warmup, config.schedule)

    return factor


def group_factors(config: TrainConfig, steps_per_epoch: int, role: str) -> Callable[[int], float]:
    """freeze-unfreeze: the head runs one schedule over the frozen epochs and another after them, while the
    backbone waits at zero; the other strategies run one schedule over all epochs."""
    if config.strategy != "freeze-unfreeze":
        return phase_factor(config, steps_per_epoch, 1, config.epochs)
    frozen = phase_factor(config, steps_per_epoch, 1, config.head_epochs)
    unfrozen = phase_factor(config, steps_per_epoch, config.head_epochs + 1, config.epochs)
    if role == "backbone":
        return unfrozen
    return lambda step: frozen(step) + unfrozen(step)


def make_schedule(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per batch; see `lr_factor` for the shapes and `group_factors` for the phases."""
    factors = [group_factors(config, steps_per_epoch, group.get("role", "head")) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)

"""Stale BatchNorm statistics after short runs: detect them, re-estimate them, keep the result only if it helps.

BatchNorm's running mean and variance move by `momentum` (0.1) per step from their initial 0 and 1, so after a few
dozen steps of a from-scratch run they still describe the initial network, not the trained one: the model
predicts well with batch statistics (train mode) and badly in eval mode, which is how it is validated, saved and
served. The check compares the two modes on one validation batch; when eval mode lags, the running statistics are
recomputed as a plain average over training images (no augmentation, no gradient), as SWA's `update_bn` does, and
the new statistics are kept only when the whole validation split's accuracy improves, so this can never make the
bundle worse on validation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from graft.data.base import ImageSet
from graft.data.loader import iter_batches
from graft.data.preprocess import to_model_input
from graft.evaluation import EvalResult
from graft.spec import InputSpec

STALE_GAP = 0.05  # batch-statistics accuracy this much above eval-mode accuracy on the check batch: recalibrate
RECALIBRATION_IMAGES = 2048  # training images averaged over (a seeded sample when there are more)
CHECK_IMAGES = 256  # validation images in the check batch (at least the batch size)


@dataclass
class BatchNormCheck:
    """What the check found and what was done; `metrics()` goes into the bundle, `line()` into the run's output."""

    eval_acc: float  # on the check batch, running statistics (eval mode)
    batch_acc: float  # on the same batch, batch statistics
    images: int = 0  # training images the statistics were re-estimated on (0: not tried)
    valid_before: float | None = None
    valid_after: float | None = None
    valid_loss_after: float | None = None
    kept: bool = False

    def metrics(self) -> dict:
        return {
            "bn_check_eval_acc": self.eval_acc,
            "bn_check_batch_stats_acc": self.batch_acc,
            "bn_recalibrated": self.kept,
            **({"valid_acc_before_recalibration": self.valid_before} if self.images else {}),
        }

    def line(self) -> str:
        found = f"BatchNorm check: eval mode {self.eval_acc:.1%} vs batch statistics {self.batch_acc:.1%}"
        if not self.images:
            return f"{found} on a validation batch: statistics fine, nothing changed"
        assert self.valid_before is not None and self.valid_after is not None
        verdict = "kept" if self.kept else "not kept, the trained statistics stay"
        return (
            f"{found}: stale statistics; re-estimated on {self.images} training images, valid accuracy "
            f"{self.valid_before:.2%} → {self.valid_after:.2%} ({verdict})"
        )


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def check_batch(model: nn.Module, spec: InputSpec, valid: ImageSet, device: torch.device) -> tuple[float, float]:
    """(eval-mode accuracy, batch-statistics accuracy) on one seeded batch of validation images; the model's
    buffers and mode are as before afterwards. Only BatchNorm switches to batch statistics (dropout stays off)."""
    x, labels = next(iter_batches(valid, spec, min(len(valid), CHECK_IMAGES), shuffle=True, seed=0, workers=0))
    x, labels = to_model_input(x, spec).to(device), labels.to(device)
    model.eval()
    eval_acc = float((model(x).argmax(1) == labels).float().mean())
    saved = {name: buffer.clone() for name, buffer in model.named_buffers()}
    for layer in batchnorm_layers(model):
        layer.train()
    batch_acc = float((model(x).argmax(1) == labels).float().mean())
    model.eval()
    model.load_state_dict(saved, strict=False)
    return eval_acc, batch_acc


def recalibrate_if_stale(
    model: nn.Module,
    spec: InputSpec,
    train: ImageSet,
    valid: ImageSet,
    *,
    batch_size: int,
    workers: int,
    device: torch.device,
    evaluate: Callable[[nn.Module], EvalResult],
) -> BatchNormCheck | None:
    """Check `model` (in place, on `device`) and recalibrate it when its statistics are stale and that helps;
    None when there is nothing to check (no BatchNorm that tracks statistics, or fewer than 2 validation images)."""
    if not batchnorm_layers(model) or len(valid) < 2:
        return None
    check = BatchNormCheck(*check_batch(model, spec, valid, device))
    if check.batch_acc - check.eval_acc < STALE_GAP:
        return check
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    check.valid_before = evaluate(model).accuracy
    check.images = recalibrate(model, spec, train, batch_size, device, workers)
    after = evaluate(model)
    check.valid_after, check.valid_loss_after = after.accuracy, after.loss
    check.kept = check.valid_after > check.valid_before
    if not check.kept:
        model.load_state_dict(before, strict=False)
    return check


@torch.no_grad()
def recalibrate(
    model: nn.Module, spec: InputSpec, images: ImageSet, batch_size: int, device: torch.device, workers: int = 0
) -> int:
    """Replace every BatchNorm's running statistics by their plain average over (at most RECALIBRATION_IMAGES of)
    `images` in batches of `batch_size`; returns how many images were used. The model is left in eval mode."""
    layers = batchnorm_layers(model)
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative moving average: every batch counts the same
        layer.train()
    used = 0
    batch_size = max(2, min(batch_size, len(images)))
    batches = iter_batches(images, spec, batch_size, shuffle=True, seed=0, drop_last=True, workers=workers)
    for x, _ in batches:
        model(to_model_input(x, spec).to(device))
        used += len(x)
        if used >= RECALIBRATION_IMAGES:
            break
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    model.eval()
    return used

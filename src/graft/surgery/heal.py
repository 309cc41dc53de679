"""Healing: distil the model before surgery into the model after it, on unlabelled images.

An approximate or breaking change (a resampled input size, a transplant into another architecture) leaves a model
that has partly forgotten what the old one computed. Matching the old model's temperature-softened logits
(knowledge distillation, Hinton et al. 2015) brings the new model back towards the old function without a single
label, so the person's unlabelled images are enough; the certificate afterwards says how far it got.

Each model sees every image through its own input spec and the chain's views (certificate.Views), so a 64×64 gray
model teaches a 128×128 colour one on the same pictures. Only classes both models have are distilled: a class the
old model lacks has nothing to learn from it and keeps what surgery gave it (imprinting or zero).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

from graft.bundle import Bundle
from graft.data.base import ImageSet
from graft.errors import GraftError
from graft.progress import batch_progress
from graft.spec import InputSpec
from graft.surgery.certificate import Views, pair_inputs
from graft.surgery.details import HealDetails

STEPS = 200
TEMPERATURE = 2.0
LR = 1e-3
BATCH_SIZE = 32
LOSS_WINDOW = 10  # first/last losses are averaged over this many steps: one batch is noisy


def check_heal_options(steps: int, temperature: float, lr: float, batch_size: int) -> None:
    """A GraftError naming the first setting healing cannot run with; called before any work."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise GraftError(f"--heal-steps must be a whole number ≥ 1, not {steps!r}")
    if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0):
        raise GraftError(f"--heal-temperature must be a finite number > 0, not {temperature!r}")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and 0 < lr <= 1):
        raise GraftError(f"--heal-lr must be a number in (0, 1], not {lr!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise GraftError(
            f"--heal-batch must be a whole number ≥ 2 (BatchNorm trains on batch statistics), not {batch_size!r}"
        )


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over the batch.

    The T² keeps gradient sizes comparable across temperatures (Hinton et al. 2015).
    """
    return (
        F.kl_div(
            F.log_softmax(student / temperature, dim=1),
            F.log_softmax(teacher / temperature, dim=1),
            log_target=True,
            reduction="batchmean",
        )
        * temperature**2
    )


def distil(
    teacher: Bundle,
    student: Bundle,
    images: ImageSet,
    views: Views,
    *,
    steps: int = STEPS,
    temperature: float = TEMPERATURE,
    lr: float = LR,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    console: Console | None = None,
) -> tuple[Bundle, HealDetails]:
    """`student` trained for `steps` batches of `images` to match `teacher`'s logits; labels are never read.

    AdamW with a cosine decay to zero; the student trains in train mode, so its BatchNorm statistics follow the
    new inputs too. The same seed gives the same model (batches and any dropout are seeded; CPU arithmetic).
    """
    check_heal_options(steps, temperature, lr, batch_size)
    shared = [c for c in student.classes if c in teacher.classes]
    if not shared:
        raise GraftError("the new model shares no class with the old one: there is nothing to heal towards")
    if len(images) < 2:
        raise GraftError(f"healing needs at least 2 images; {images.name} has {len(images)}")
    teacher_index = [teacher.classes.index(c) for c in shared]
    student_index = [student.classes.index(c) for c in shared]
    size = max(tuple(teacher.spec.size), tuple(student.spec.size))
    draw_spec = InputSpec(size=size, channels=images.channels)
    batch = min(batch_size, len(images))
    rng = np.random.default_rng(seed)
    order: list[int] = []
    losses: list[float] = []
    teacher_model = teacher.model.eval()
    model = copy.deepcopy(student.model).float().train()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    say: Callable[..., None] = console.print if console is not None else (lambda *_a, **_k: None)
    with torch.random.fork_rng(devices=[]), batch_progress(console, disable=console is None) as progress:
        torch.manual_seed(seed)
        task = progress.add_task("heal", total=steps, stats="")
        for step in range(steps):
            if len(order) < batch:
                order.extend(rng.permutation(len(images)).tolist())
            positions, order = np.array(order[:batch]), order[batch:]
            pixels = images.batch(positions, draw_spec)
            old_input, new_input = pair_inputs(pixels, teacher.spec, student.spec, views)  # as certificates do
            with torch.no_grad():
                target = teacher_model(old_input.float())[:, teacher_index]
            output = model(new_input.float())[:, student_index]
            loss = distillation_loss(output, target, temperature)
            if not torch.isfinite(loss):
                raise GraftError(f"healing diverged at step {step + 1} (loss {float(loss)}); try a lower --heal-lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            progress.update(task, advance=1, stats=f"distillation loss {losses[-1]:.4f}")
    model.eval()
    first, last = float(np.mean(losses[:LOSS_WINDOW])), float(np.mean(losses[-LOSS_WINDOW:]))
    say(
        f"healed: {steps} steps of {batch} {images.name} images, distillation loss {first:.4f} → {last:.4f}",
        markup=False,
        highlight=False,
    )
    details: HealDetails = {
        "source": images.name,
        "images": len(images),
        "steps": steps,
        "temperature": float(temperature),
        "lr": float(lr),
        "batch_size": batch,
        "seed": seed,
        "distilled_classes": len(shared),
        "not_distilled": [c for c in student.classes if c not in teacher.classes],
        "loss_first": first,
        "loss_last": last,
        "claim": "approximate (trained to match the original's logits on these images)",
    }
    return dataclasses.replace(student, model=model, path=None), details

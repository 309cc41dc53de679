"""Training augmentation: random rotation, zoom and shift per image, on uint8 batches at the model's size.

torchvision's v2 `RandomAffine` draws one set of parameters per call, so it is called per image of the batch:
every image gets its own rotation, zoom and shift, as with Keras's ImageDataGenerator in the reference
experiment. It runs on uint8 tensors (no PIL round trip) and draws from torch's global generator, which the
run seeds per epoch and checkpoints, so augmented runs resume exactly. Evaluation never augments.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

from graft.training.config import TrainConfig

Augment = Callable[[torch.Tensor], torch.Tensor]


def make_augment(config: TrainConfig) -> Augment | None:
    """The per-batch augmentation the settings ask for, or None."""
    if config.augment == "none" or (config.rotate == 0 and config.zoom == 0 and config.shift == 0):
        return None
    affine = v2.RandomAffine(
        degrees=config.rotate,
        translate=(config.shift, config.shift),
        scale=(1 - config.zoom, 1 + config.zoom),
        interpolation=v2.InterpolationMode.BILINEAR,
    )

    def augment(images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) → uint8 (N, C, H, W), each image transformed on its own."""
        return torch.stack([affine(image) for image in images])

    return augment

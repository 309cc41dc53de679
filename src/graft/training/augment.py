"""Training augmentation: random rotation, zoom and shift per image, on uint8 batches at the model's size.

Two engines draw the same distribution (each image its own angle, scale and whole-pixel shift, bilinear, zeros
outside), as with Keras's ImageDataGenerator in the reference experiment:

- `per-image`: torchvision's v2 `RandomAffine`, which draws one set of parameters per call, called image by image;
- `batch`: the parameters of every image drawn at once and one `affine_grid`/`grid_sample` over the whole batch,
  with torchvision's own matrix, sampling grid and fill rule. Per-image Python and per-call overhead dominate small
  images (MNIST at 28 px: bench/profile_step.py), so this engine is many times faster there.

Both run on uint8 tensors (no PIL round trip) and draw from torch's global generator, which the run seeds per
epoch and checkpoints, so augmented runs resume exactly. Evaluation never augments.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from graft.training.config import TrainConfig

Augment = Callable[[torch.Tensor], torch.Tensor]


def make_augment(config: TrainConfig) -> Augment | None:
    """The per-batch augmentation the settings ask for, or None."""
    if config.augment == "none" or (config.rotate == 0 and config.zoom == 0 and config.shift == 0):
        return None
    if config.augment_engine == "batch":
        return lambda images: random_affine_batch(images, config.rotate, config.zoom, config.shift)
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


def random_affine_batch(
    images: torch.Tensor, rotate: float, zoom: float, shift: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """uint8 (N, C, H, W) → uint8 (N, C, H, W): every image rotated by U(-rotate, rotate) degrees, scaled by
    U(1-zoom, 1+zoom) and shifted by a whole number of pixels, round(U(-shift, shift) × size), in one pass."""
    n, _, height, width = images.shape
    uniform = lambda low, high: torch.rand(n, generator=generator, dtype=torch.float64) * (high - low) + low  # noqa: E731
    angles = uniform(-rotate, rotate)
    dx = torch.round(uniform(-shift * width, shift * width))
    dy = torch.round(uniform(-shift * height, shift * height))
    scales = uniform(1 - zoom, 1 + zoom)
    return affine_batch(images, angles, torch.stack([dx, dy], dim=1), scales)


def affine_batch(
    images: torch.Tensor, angles: torch.Tensor, shifts: torch.Tensor, scales: torch.Tensor
) -> torch.Tensor:
    """uint8 (N, C, H, W) → uint8: image k rotated by angles[k] degrees about its centre, scaled by scales[k] and
    shifted by shifts[k] = (dx, dy) pixels, as torchvision's `affine` does it (bilinear, 0 outside, rounded)."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise TypeError(f"expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    n, channels, height, width = images.shape
    if n == 0:
        return images
    theta = _inverse_matrices(angles, shifts, scales, height, width).to(torch.float32)
    grid = F.affine_grid(theta, [n, 1, height, width], align_corners=False)
    # torchvision's fill rule: sample a mask of ones beside the image and multiply by it (fill 0).
    pixels = torch.cat([images.float(), torch.ones(n, 1, height, width)], dim=1)
    sampled = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = sampled[:, :channels] * sampled[:, channels:]
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _inverse_matrices(
    angles: torch.Tensor, shifts: torch.Tensor, scales: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """(N, 2, 3) output→input maps in `affine_grid`'s normalised coordinates: torchvision's
    `_get_inverse_affine_matrix` (centre 0, no shear) rescaled from pixels, image by image."""
    radians = angles.to(torch.float64) * (math.pi / 180)
    cos, sin = torch.cos(radians) / scales, torch.sin(radians) / scales
    dx, dy = shifts[:, 0].to(torch.float64), shifts[:, 1].to(torch.float64)
    m02 = -cos * dx - sin * dy
    m12 = sin * dx - cos * dy
    # Pixels → normalised: x_n = x / (w/2), y_n = y / (h/2).
    row0 = torch.stack([cos, sin * height / width, m02 * 2 / width], dim=1)
    row1 = torch.stack([-sin * width / height, cos, m12 * 2 / height], dim=1)
    return torch.stack([row0, row1], dim=1)

"""The single place where images become model input, driven by an `InputSpec`.

Training, eval, predict and serve all call `to_model_input`, so offline and served predictions are identical.
Images stay uint8 until a batch is drawn: resizing is done on uint8 tensors (torchvision's antialiased kernel,
per image even inside a batch), then pixels go to float, to the model's channel count, and are normalised.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from graft.spec import InputSpec

# ITU-R 601-2 luma, the weights PIL's convert("L") and torchvision's rgb_to_grayscale use.
LUMA_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)

_INTERPOLATION = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


def resize_uint8(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Resize uint8 images (..., C, H, W) to `spec.size` by the spec's rule; a no-op when already there."""
    return _resize(images, spec)


def resize_float(pixels: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Float images (..., C, H, W) resized to `spec.size` by exactly the calls `resize_uint8` makes, unrounded.

    torchvision resizes float images with the same kernel in float arithmetic: this is the linear map a size
    stem (graft.models.size_stem) reproduces. The uint8 path rounds its result (bicubic also clips overshoot).
    """
    if not pixels.is_floating_point():
        raise TypeError(f"expected float images, got {pixels.dtype}")
    return _resize(pixels, spec)


def _resize(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    height, width = spec.size
    if tuple(images.shape[-2:]) == (height, width):
        return images
    mode = _INTERPOLATION[spec.interpolation]
    antialias = spec.antialias and spec.interpolation != "nearest"
    if spec.resize == "crop":
        scale = max(height / images.shape[-2], width / images.shape[-1])
        inner = [max(height, round(images.shape[-2] * scale)), max(width, round(images.shape[-1] * scale))]
        images = TF.resize(images, inner, interpolation=mode, antialias=antialias)
        return TF.center_crop(images, [height, width])
    return TF.resize(images, [height, width], interpolation=mode, antialias=antialias)


def resize_matrices(source: tuple[int, int], spec: InputSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(R_h, R_w), float64, with resize_float(x, spec) = R_h · x · R_wᵀ for every (source_h × source_w) image x.

    Read off `resize_float` itself, so they match by construction: an image that is 1 on row i (column j) and 0
    elsewhere resizes to column i of R_h (j of R_w) on every column (row), because the other axis's weights sum
    to 1. Images keep their real size, since the crop rule's inner size depends on both sides (and torch's
    antialiased kernel is wrong on width-1 images). The caller checks the product on random images.
    """
    rows, cols = source
    parts = []
    for axis, count in ((0, rows), (1, cols)):
        columns = []
        for start in range(0, count, 32):
            index = torch.arange(start, min(start + 32, count))
            basis = torch.zeros(len(index), 1, rows, cols, dtype=torch.float64)
            if axis == 0:
                basis[torch.arange(len(index)), 0, index, :] = 1.0
                columns.append(resize_float(basis, spec)[:, 0, :, 0])
            else:
                basis[torch.arange(len(index)), 0, :, index] = 1.0
                columns.append(resize_float(basis, spec)[:, 0, 0, :])
        parts.append(torch.cat(columns).T.contiguous())
    return parts[0], parts[1]


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert float images (N, C, H, W) to `channels` channels by graft's documented rule.

    - same count: unchanged;
    - 1 → k: the gray plane is copied into every channel (the reference "replicate" approach);
    - 3 → 1: ITU-R 601-2 luminance, as PIL's convert("L");
    - c → 1 otherwise: the mean of the channels;
    - anything else (e.g. 4 → 3): refused, because no rule is better than a silent guess.
    """
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1:
        return images.expand(-1, channels, -1, -1)
    if channels == 1:
        if have == 3:
            weights = torch.tensor(LUMA_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
            return (images * weights).sum(dim=1, keepdim=True)
        return images.mean(dim=1, keepdim=True)
    raise ValueError(f"no rule converts {have}-channel images to {channels} channels")


def to_model_input(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 images (N, C, H, W) at any size → normalised float32 (N, spec.channels, *spec.size)."""
    return normalise(to_unit_float(images, spec), spec)


def to_unit_float(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 images (N, C, H, W) → float32 pixels in [0, 1] at `spec.size`, channels untouched."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    return resize_uint8(images, spec).float().div_(255.0)


def normalise(pixels: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Float pixels in [0, 1] at the spec's size → the model's channel count, normalised by the spec's mean/std.

    Split from `to_model_input` so model surgery can certify on exact float images (e.g. a colour image's
    luminance) without rounding them back to uint8.
    """
    x = convert_channels(pixels, spec.channels)
    mean = torch.tensor(spec.mean, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


def hwc_to_tensor(image: np.ndarray) -> torch.Tensor:
    """A decoded HxWxC (or HxW) uint8 array → a (1, C, H, W) uint8 tensor."""
    if image.ndim == 2:
        image = image[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0)

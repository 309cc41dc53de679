"""How one clutter level looks: a digit's coverage mask composited over a background that gets busier level by level.

Pure array work (numpy, and torch for resampling): no files, no folders. `graft.data.clutter` decides which source
images go to which level and writes them; this module only turns masks into pixels (docs/data-for-rounds.md has
the numbers).

- The digit is a coverage mask: the source image's luminance, resized to `size`, scaled so its brightest pixel is
  1 (inverted first for dark-ink sources). It is composited over the background in one colour, never moved.
- The background is a pattern P in [0, 1] mixed from the *ingredients* active at that level (gradient, noise,
  texture), with distractor strokes and fragments of other digits drawn into it, then mapped onto a luminance
  band. The digit's luminance lies outside that band by at least the level's minimum contrast, so the digit
  stays the most salient thing in the image at every level; distractors live inside the band, so they are
  always fainter than the digit, and fragments are small, thin and cut in half so they never read as a digit.
- Ingredient i (0 gradient, 1 noise, 2 texture, 3 distractors, 4 colour) switches on once the level's clutter
  t = (k − 1) / (L − 1) passes i / 5 and grows to full strength at the last level: with 6 levels, level 2 adds
  gradients, 3 noise, 4 textures, 5 distractors, 6 colour. Before colour every image is gray (R = G = B), but
  every level is rendered as RGB so a model trained on level 1 takes level 6's images as they are.
- Every random choice comes from the generator the caller passes, in a fixed order: the same generator state
  gives the same pixels (with the same numpy and torch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from graft.data.base import ImageSet
from graft.data.preprocess import LUMA_WEIGHTS
from graft.spec import InputSpec

INGREDIENTS: tuple[str, ...] = ("gradient", "noise", "texture", "distractors", "colour")

# Full-clutter values (t = 1); each scales linearly with t from the plain level (t = 0).
BAND_WIDTH = 0.55  # luminance range the background spans
CONTRAST_DROP = 0.7  # minimum digit contrast is 1 − 0.7 t: 1.0 at level 1 (white on black), 0.3 at the last
DIGIT_NOISE = 0.1  # the digit's own luminance jitter, taken out of its contrast budget
FLIP_PROBABILITY = 0.5  # dark digit on a light background, with full colour
MAX_STROKES = 6  # random lines and arcs at full distractor strength
_LUMA = np.array(LUMA_WEIGHTS, dtype=np.float32)


@dataclass(frozen=True)
class LevelParams:
    """Everything that differs between levels; written to the manifest as it is."""

    level: int
    clutter: float  # t in [0, 1]
    strengths: dict[str, float]  # per ingredient, 0 = absent
    band_width: float
    min_contrast: float  # luminance gap between the digit's core and any background pixel, guaranteed
    digit_noise: float
    flip_probability: float
    strokes: int
    fragments: int

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()} | {
            "strengths": {k: round(v, 6) for k, v in self.strengths.items()}
        }


def level_params(level: int, levels: int) -> LevelParams:
    """The parameters of `level` (1-based) out of `levels`; see the module docstring."""
    t = (level - 1) / (levels - 1) if levels > 1 else 0.0
    strengths = {}
    for i, name in enumerate(INGREDIENTS):
        onset = i / len(INGREDIENTS)
        strengths[name] = 0.0 if t <= onset + 1e-9 else min(1.0, (t - onset) / (1.0 - onset))
    distract = strengths["distractors"]
    return LevelParams(
        level=level,
        clutter=t,
        strengths=strengths,
        band_width=BAND_WIDTH * t,
        min_contrast=1.0 - CONTRAST_DROP * t,
        digit_noise=DIGIT_NOISE * strengths["noise"],
        flip_probability=FLIP_PROBABILITY * strengths["colour"],
        strokes=round(MAX_STROKES * distract),
        fragments=0 if distract == 0 else (2 if distract >= 1.0 else 1),
    )


# ---------------------------------------------------------------------------------------------- rendering


def render(alpha: np.ndarray, params: LevelParams, rng: np.random.Generator) -> np.ndarray:
    """Digit coverage masks (N, S, S) in [0, 1] → uint8 RGB images (N, S, S, 3) at this level.

    Fragments are cut from the other masks of the same batch, so a batch of one has none.
    """
    n, size = alpha.shape[0], alpha.shape[1]
    pattern = _pattern(n, size, params, rng)
    pattern = _draw_distractors(pattern, alpha, params, rng)
    lo, hi, fg_top, fg_bottom = _luminances(n, params, rng)
    digit_gray = fg_top[:, None, None] - (fg_top - fg_bottom)[:, None, None] * rng.random(alpha.shape, np.float32)
    flip = rng.random(n) < params.flip_probability
    background_gray = lo[:, None, None] + (hi - lo)[:, None, None] * pattern
    background_gray = np.where(flip[:, None, None], 1.0 - background_gray, background_gray)
    digit_gray = np.where(flip[:, None, None], 1.0 - digit_gray, digit_gray)
    saturation = params.strengths["colour"]
    chroma_lo = _chroma(np.where(flip, 1.0 - lo, lo), saturation, rng)
    chroma_hi = _chroma(np.where(flip, 1.0 - hi, hi), saturation, rng)
    top, bottom = np.where(flip, 1.0 - fg_top, fg_top), np.where(flip, 1.0 - fg_bottom, fg_bottom)
    chroma_fg = _chroma(np.stack([top, bottom]), saturation, rng)
    p = pattern[..., None]
    background = background_gray[..., None] + (1.0 - p) * chroma_lo[:, None, None] + p * chroma_hi[:, None, None]
    digit = digit_gray[..., None] + chroma_fg[:, None, None]
    a = alpha[..., None]
    image = background * (1.0 - a) + digit * a
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _luminances(n: int, params: LevelParams, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Per image: background band [lo, hi] and the digit's luminance range [bottom, top], bright-digit case.

    top − hi ≥ contrast ≥ min_contrast + digit_noise, so bottom − hi ≥ min_contrast.
    """
    width, noise = params.band_width, params.digit_noise
    least = params.min_contrast + noise
    contrast = rng.uniform(least, max(least, 1.0 - width), n)
    lo = rng.uniform(0.0, 1.0, n) * np.maximum(0.0, 1.0 - width - contrast)
    hi = lo + width
    top = np.minimum(1.0, hi + contrast)
    return lo, hi, top, top - noise


def _chroma(gray: np.ndarray, saturation: float, rng: np.random.Generator) -> np.ndarray:
    """A random colour offset (N, 3) with zero luminance that keeps gray + offset inside [0, 1]³.

    `gray` is (N,) or (2, N): the offset must fit every luminance in that range. Zero when `saturation` is 0.
    """
    gray = np.atleast_2d(gray)
    n = gray.shape[1]
    direction = rng.normal(size=(n, 3))
    direction -= (direction @ _LUMA)[:, None]  # luminance weights sum to 1: subtracting the luma zeroes it
    strength = rng.uniform(0.5, 1.0, n) * saturation
    if saturation == 0.0:
        return np.zeros((n, 3), np.float32)
    low, high = gray.min(axis=0)[:, None], gray.max(axis=0)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(direction > 0, (1.0 - high) / direction, np.where(direction < 0, low / -direction, np.inf))
    reach = np.nan_to_num(room.min(axis=1), posinf=0.0)
    return (direction * (strength * np.maximum(reach, 0.0))[:, None]).astype(np.float32)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] (x to the right, y down), each (S, S)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    return np.meshgrid(c, c, indexing="xy")


def _minmax(field: np.ndarray) -> np.ndarray:
    """Each image's field stretched to [0, 1]; flat fields become 0."""
    low = field.min(axis=(1, 2), keepdims=True)
    span = field.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 1e-6, (field - low) / np.maximum(span, 1e-6), 0.0).astype(np.float32)


def _pattern(n: int, size: int, params: LevelParams, rng: np.random.Generator) -> np.ndarray:
    """The background pattern before distractors: a random mix of the level's fields, stretched to [0, 1]."""
    makers: dict[str, Callable[[int, int, np.random.Generator], np.ndarray]] = {
        "gradient": _gradient,
        "noise": _noise,
        "texture": _texture,
    }
    mix = np.zeros((n, size, size), np.float32)
    for name, make in makers.items():
        strength = params.strengths[name]
        if strength > 0:
            weight = (strength * rng.uniform(0.5, 1.5, n)).astype(np.float32)
            mix += weight[:, None, None] * make(n, size, rng)
    return _minmax(mix)


def _gradient(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Linear ramps in a random direction, or (30 %) radial ones around a random centre: uneven lighting."""
    x, y = _grid(size)
    angle = rng.uniform(0.0, 2 * math.pi, n).astype(np.float32)[:, None, None]
    linear = x * np.cos(angle) + y * np.sin(angle)
    centre = rng.uniform(-1.0, 1.0, (n, 2)).astype(np.float32)
    radial = np.hypot(x - centre[:, 0, None, None], y - centre[:, 1, None, None])
    use_radial = (rng.random(n) < 0.3)[:, None, None]
    return _minmax(np.where(use_radial, radial, linear))


def _noise(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Per-pixel noise mixed with smooth blobs (a random 4×4 … 8×8 field, upsampled): sensor noise and stains."""
    white = rng.random((n, size, size), np.float32)
    cells = int(rng.integers(4, 9))
    coarse = torch.from_numpy(rng.random((n, 1, cells, cells), np.float32))
    blobs = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[:, 0].numpy()
    share = rng.uniform(0.3, 0.7, n).astype(np.float32)[:, None, None]
    return _minmax(share * white + (1.0 - share) * _minmax(blobs))


def _texture(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sinusoid gratings, plaids (two crossed gratings) or rotated checkerboards, 1.5 to 6 cycles per image."""
    x, y = _grid(size)

    def wave() -> np.ndarray:
        angle = rng.uniform(0.0, math.pi, n).astype(np.float32)[:, None, None]
        cycles = rng.uniform(1.5, 6.0, n).astype(np.float32)[:, None, None]
        phase = rng.uniform(0.0, 2 * math.pi, n).astype(np.float32)[:, None, None]
        return np.sin(math.pi * cycles * (x * np.cos(angle) + y * np.sin(angle)) + phase)

    first, second = wave(), wave()
    kind = rng.integers(0, 3, n)[:, None, None]
    grating = first
    plaid = first * second
    checker = np.sign(first * second)
    return _minmax(np.where(kind == 0, grating, np.where(kind == 1, plaid, checker)))


def _draw_distractors(
    pattern: np.ndarray, alpha: np.ndarray, params: LevelParams, rng: np.random.Generator
) -> np.ndarray:
    """Lines, arcs and fragments of other digits drawn into the pattern at its extremes (0 or 1).

    They stay inside the background band, so they are never as contrasted as the digit; strokes are thinner
    than a digit's (half-width 0.4–0.9 px at 28 px), fragments are 35–55 % size and cut along a random line.
    """
    n, size = pattern.shape[0], pattern.shape[1]
    coverages = [_stroke(n, size, rng) for _ in range(params.strokes)]
    coverages += [_fragment(alpha, rng) for _ in range(params.fragments if n > 1 else 0)]
    for coverage in coverages:
        value = (rng.random(n) < 0.5).astype(np.float32)[:, None, None]
        opacity = rng.uniform(0.6, 1.0, n).astype(np.float32)[:, None, None] * coverage
        pattern = pattern * (1.0 - opacity) + value * opacity
    return pattern


def _stroke(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Anti-aliased coverage (N, S, S) of one random line segment or circular arc per image."""
    x, y = _grid(size)
    pixel = 2.0 / size
    half_width = (rng.uniform(0.4, 0.9, n) * (size / 28.0) * pixel).astype(np.float32)[:, None, None]
    start = rng.uniform(-1.1, 1.1, (n, 2)).astype(np.float32)
    end = rng.uniform(-1.1, 1.1, (n, 2)).astype(np.float32)
    sx, sy = start[:, 0, None, None], start[:, 1, None, None]
    dx, dy = (end - start)[:, 0, None, None], (end - start)[:, 1, None, None]
    along = np.clip(((x - sx) * dx + (y - sy) * dy) / np.maximum(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
    line = np.hypot(x - sx - along * dx, y - sy - along * dy)
    centre = rng.uniform(-0.8, 0.8, (n, 2)).astype(np.float32)
    radius = rng.uniform(0.2, 0.7, n).astype(np.float32)[:, None, None]
    first = rng.uniform(0.0, 2 * math.pi, n).astype(np.float32)[:, None, None]
    span = rng.uniform(math.pi / 3, 4 * math.pi / 3, n).astype(np.float32)[:, None, None]
    cx, cy = x - centre[:, 0, None, None], y - centre[:, 1, None, None]
    inside = np.mod(np.arctan2(cy, cx) - first, 2 * math.pi) <= span
    arc = np.where(inside, np.abs(np.hypot(cx, cy) - radius), np.inf)
    distance = np.where((rng.random(n) < 0.5)[:, None, None], line, arc)
    return np.clip((half_width - distance) / pixel + 0.5, 0.0, 1.0).astype(np.float32)


def _fragment(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Part of another image's digit: shrunk to 35–55 %, turned up to ±45°, moved, and cut along a line."""
    n, size = alpha.shape[0], alpha.shape[1]
    others = np.roll(np.arange(n), int(rng.integers(1, n)))
    scale = rng.uniform(0.35, 0.55, n)
    angle = rng.uniform(-math.pi / 4, math.pi / 4, n)
    centre = rng.uniform(-0.65, 0.65, (n, 2))
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    # affine_grid maps output coordinates to input ones: q = R(−angle) (p − centre) / scale.
    theta = np.stack(
        [
            np.stack([cos, sin, -(cos * centre[:, 0] + sin * centre[:, 1])], axis=1),
            np.stack([-sin, cos, -(-sin * centre[:, 0] + cos * centre[:, 1])], axis=1),
        ],
        axis=1,
    )
    theta_t = torch.from_numpy(theta.astype(np.float32))
    grid = F.affine_grid(theta_t, [n, 1, size, size], align_corners=False)
    source = torch.from_numpy(np.ascontiguousarray(alpha[others]))[:, None]
    moved = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0].numpy()
    x, y = _grid(size)
    cut = rng.uniform(0.0, 2 * math.pi, n).astype(np.float32)[:, None, None]
    offset = (rng.uniform(-0.1, 0.2, n) * scale).astype(np.float32)[:, None, None]
    keep = (x - centre[:, 0, None, None]) * np.cos(cut) + (y - centre[:, 1, None, None]) * np.sin(cut) > offset
    return (moved * keep).astype(np.float32)


# ---------------------------------------------------------------------------------------------- digits


def digit_masks(images: ImageSet, positions: np.ndarray, size: int, invert: bool) -> np.ndarray:
    """Coverage masks (N, S, S) float32 for the images at `positions`: luminance resized, max scaled to 1."""
    spec = InputSpec(size=(size, size), channels=images.channels)
    batch = images.batch(positions, spec).to(torch.float32) / 255.0  # (N, C, S, S), antialiased resize
    gray = batch[:, 0] if batch.shape[1] == 1 else torch.einsum("nchw,c->nhw", batch[:, :3], torch.tensor(_LUMA))
    gray = 1.0 - gray if invert else gray
    peak = gray.amax(dim=(1, 2), keepdim=True)
    return (gray / torch.clamp(peak, min=1e-6)).numpy().astype(np.float32)


def dark_ink(images: ImageSet, sample: int = 500) -> bool:
    """True when the source draws dark on light (its image borders are bright on average)."""
    spec = InputSpec(size=(28, 28), channels=images.channels)
    positions = np.arange(min(sample, len(images)))
    batch = images.batch(positions, spec).to(torch.float32)
    border = torch.cat([batch[..., :2, :].flatten(1), batch[..., -2:, :].flatten(1)], dim=1)
    return bool(border.mean() > 127.5)

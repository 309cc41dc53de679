"""The clutter benchmark: one digit source rendered on ever busier backgrounds, level 1 plain … level L heavy.

It stands in, reproducibly, for photos of the same objects taken against busier and busier surroundings: round k
of `graft rounds` trains on level k, and every round's model is evaluated on every level's test split. Each level
is a data set that the `folder:` source reads as it is (`OUT/level-k/{train,test}/<class>/*.png`).

How a level is made (docs/data-for-rounds.md has the numbers):

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
  all levels are written as RGB so a model trained on level 1 takes level 6's images as they are.
- Every random choice comes from numpy generators seeded by (seed, level, split, chunk), so the same arguments
  give the same pixels and the same PNG bytes (with the same numpy, torch and Pillow).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console

from graft._version import __version__
from graft.data.base import ImageSet
from graft.data.preprocess import LUMA_WEIGHTS
from graft.data.sources import load_source, normalise_source
from graft.data.split import stratified_split
from graft.errors import GraftError
from graft.io import atomic_directory, atomic_write_json
from graft.progress import batch_progress
from graft.spec import InputSpec

INGREDIENTS: tuple[str, ...] = ("gradient", "noise", "texture", "distractors", "colour")
MANIFEST = "clutter.json"
PREVIEW = "preview.png"
SPLITS: tuple[str, ...] = ("train", "test")
CHUNK = 1000  # images rendered together; part of the seed, so changing it changes the pixels

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


# ---------------------------------------------------------------------------------------------- data


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


def level_positions(labels: np.ndarray, levels: int, seed: int, split: str, reuse: bool) -> list[np.ndarray]:
    """Positions of the images each level gets: a seeded partition stratified by class, or all of them."""
    if reuse:
        return [np.arange(len(labels)) for _ in range(levels)]
    rng = np.random.default_rng([seed, 0, SPLITS.index(split)])
    parts: list[list[np.ndarray]] = [[] for _ in range(levels)]
    for shift, label in enumerate(np.unique(labels)):
        members = rng.permutation(np.flatnonzero(labels == label))
        for j, chunk in enumerate(np.array_split(members, levels)):
            parts[(j + shift) % levels].append(chunk)  # rotate who gets the odd ones
    return [np.sort(np.concatenate(p)) for p in parts]


def cap(labels: np.ndarray, positions: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """At most `limit` of `positions`, classes in proportion (seeded)."""
    if limit is None or limit >= len(positions):
        return positions
    _, chosen = stratified_split(labels[positions], limit / len(positions), seed)
    return positions[chosen]


def class_folders(classes: list[str]) -> list[str]:
    """Folder names for class names: slashes replaced, no leading dot (hidden from `folder:`), all distinct."""
    names: list[str] = []
    for name in classes:
        safe = name.replace("/", "-").replace("\\", "-").strip() or "class"
        safe = "_" + safe[1:] if safe.startswith(".") else safe
        while safe in names:
            safe += "_"
        names.append(safe)
    return names


# ---------------------------------------------------------------------------------------------- the command


@dataclass
class ClutterResult:
    """Where the benchmark went, its manifest, and how long it took."""

    path: Path
    manifest: dict
    seconds: float
    counts: list[dict[str, int]] = field(default_factory=list)  # per level: {"train": n, "test": n}

    def sources(self) -> list[str]:
        """`folder:` source names of the levels, in order: what `--data` takes."""
        return [f"folder:{self.path / f'level-{k}'}" for k in range(1, len(self.counts) + 1)]


def make_clutter(
    source: str,
    out: str | Path,
    *,
    levels: int = 6,
    seed: int = 0,
    size: int = 32,
    max_train: int | None = None,
    max_test: int | None = None,
    reuse_images: bool = False,
    data_root: str | Path | None = None,
    download: bool = True,
    overwrite: bool = False,
    preview: bool = True,
    console: Console | None = None,
) -> ClutterResult:
    """Build the clutter benchmark from `source` into `out` (see the module docstring and the docs).

    By default each source image goes to exactly one level (a seeded, class-stratified partition of the train
    and of the test split), so every round trains on images it has never seen, as new videos would be;
    `reuse_images=True` renders every image at every level instead (paired comparisons, L times the files).
    `max_train` / `max_test` cap the images per level and split. The whole directory is written to a temp
    folder and renamed into place, so `out` is either the complete benchmark or untouched.
    """
    started = time.perf_counter()
    _check_args(levels, seed, size, max_train, max_test)
    out = Path(out).expanduser()
    _check_output(out, overwrite)
    source = normalise_source(source)
    train, test = load_source(source, data_root, download=download)
    sets = {"train": train, "test": test}
    invert = dark_ink(train)
    folders = class_folders(train.classes)
    plans = {
        split: [
            cap(images.labels, p, max_train if split == "train" else max_test, seed)
            for p in level_positions(images.labels, levels, seed, split, reuse_images)
        ]
        for split, images in sets.items()
    }
    _check_classes(plans, sets, folders)
    counts = [{split: len(plans[split][k]) for split in SPLITS} for k in range(levels)]
    manifest = _manifest(source, levels, seed, size, max_train, max_test, reuse_images, invert, train, folders, counts)
    total = sum(sum(c.values()) for c in counts)
    with atomic_directory(out, overwrite=True) as tmp, batch_progress(console) as progress:
        task = progress.add_task("clutter", total=total, stats="")
        samples: dict[int, list[tuple[int, np.ndarray]]] = {}
        with ThreadPoolExecutor(max_workers=2) as pool:
            for k in range(1, levels + 1):
                params = level_params(k, levels)
                for split in SPLITS:
                    written = _write_level_split(
                        pool,
                        tmp,
                        sets[split],
                        plans[split][k - 1],
                        params,
                        split,
                        seed,
                        size,
                        invert,
                        folders,
                        lambda count: progress.advance(task, count),
                    )
                    if split == "test":
                        samples[k] = written
        atomic_write_json(tmp / MANIFEST, manifest)
        if preview:
            _preview(tmp / PREVIEW, samples, folders, source)
    return ClutterResult(path=out, manifest=manifest, seconds=time.perf_counter() - started, counts=counts)


def _check_args(levels: int, seed: int, size: int, max_train: int | None, max_test: int | None) -> None:
    if not 1 <= levels <= 50:
        raise GraftError(f"--levels must be between 1 and 50, got {levels}")
    if seed < 0:
        raise GraftError(f"--seed must be 0 or more, got {seed}")
    if size < 8:
        raise GraftError(f"--size must be at least 8 pixels, got {size}")
    for name, value in (("--max-train", max_train), ("--max-test", max_test)):
        if value is not None and value < 1:
            raise GraftError(f"{name} must be at least 1, got {value}")


def _check_output(out: Path, overwrite: bool) -> None:
    """`out` must be new, or (with overwrite) an earlier clutter benchmark or an empty directory."""
    if not out.exists():
        return
    if not out.is_dir():
        raise GraftError(f"{out} exists and is not a directory")
    if not overwrite:
        raise GraftError(f"{out} already exists; use --force to replace it")
    if not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise GraftError(f"{out} is not a clutter benchmark (no {MANIFEST}); --force only replaces those")


def _check_classes(plans: dict[str, list[np.ndarray]], sets: dict[str, ImageSet], folders: list[str]) -> None:
    """Every level needs every class in both splits, or `folder:` would read it as another data set."""
    for split, parts in plans.items():
        labels = sets[split].labels
        for k, positions in enumerate(parts, start=1):
            missing = sorted(set(range(len(folders))) - set(labels[positions].tolist()))
            if missing:
                raise GraftError(
                    f"level {k} would have no {split} image of class {folders[missing[0]]!r}; "
                    "use fewer --levels, a larger --max-train/--max-test, or --reuse-images"
                )


def _write_level_split(
    pool: ThreadPoolExecutor,
    root: Path,
    images: ImageSet,
    positions: np.ndarray,
    params: LevelParams,
    split: str,
    seed: int,
    size: int,
    invert: bool,
    folders: list[str],
    advance: Callable[[int], None],
) -> list[tuple[int, np.ndarray]]:
    """Render and write one level's split; returns the first image of each class (for the preview)."""
    base = root / f"level-{params.level}" / split
    for name in folders:
        (base / name).mkdir(parents=True, exist_ok=True)
    width = len(str(max(len(images) - 1, 0)))
    labels = images.labels
    firsts: dict[int, np.ndarray] = {}
    for chunk, start in enumerate(range(0, len(positions), CHUNK)):
        batch = positions[start : start + CHUNK]
        rng = np.random.default_rng([seed, params.level, SPLITS.index(split), chunk, 1])
        rendered = render(digit_masks(images, batch, size, invert), params, rng)
        paths = [base / folders[labels[i]] / f"{i:0{width}d}.png" for i in batch]
        list(pool.map(_save_png, paths, rendered))
        for i, image in zip(batch, rendered, strict=True):
            firsts.setdefault(int(labels[i]), image)
        advance(len(batch))
    return sorted(firsts.items())


def _save_png(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image, "RGB").save(path, format="PNG")


def _manifest(
    source: str,
    levels: int,
    seed: int,
    size: int,
    max_train: int | None,
    max_test: int | None,
    reuse: bool,
    invert: bool,
    train: ImageSet,
    folders: list[str],
    counts: list[dict[str, int]],
) -> dict:
    """The benchmark's description: enough to rebuild it and to know what each level is. No timestamps, so the
    same arguments give the same bytes."""
    return {
        "format": "graft.clutter",
        "version": 1,
        "graft_version": __version__,
        "source": source,
        "seed": seed,
        "levels": levels,
        "size": size,
        "channels": 3,
        "max_train": max_train,
        "max_test": max_test,
        "reuse_images": reuse,
        "ink": "dark" if invert else "bright",
        "chunk": CHUNK,
        "classes": dict(zip(folders, train.classes, strict=True)),
        "layout": "level-<k>/{train,test}/<class folder>/<index in the source split>.png",
        "ingredients": list(INGREDIENTS),
        "per_level": [
            {**level_params(k, levels).to_dict(), "data": f"level-{k}", **counts[k - 1]} for k in range(1, levels + 1)
        ],
    }


def _preview(path: Path, samples: dict[int, list[tuple[int, np.ndarray]]], folders: list[str], source: str) -> None:
    """One row per level, one column per class (first 10 classes): the benchmark at a glance."""
    from graft.report.plots import plot_image_grid

    columns = min(10, len(folders))
    images, captions = [], []
    for k in sorted(samples):
        by_class = dict(samples[k])
        for label in range(columns):
            images.append(by_class.get(label, np.zeros((8, 8, 3), np.uint8)))
            captions.append(f"level {k} · {folders[label]}")
    plot_image_grid(images, captions, path, title=f"clutter levels from {source}", columns=columns)

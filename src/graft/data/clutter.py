"""The clutter benchmark on disk: one digit source rendered on ever busier backgrounds, level 1 plain … level L heavy.

It stands in, reproducibly, for photos of the same objects taken against busier and busier surroundings: round k
of `graft rounds` trains on level k, and every round's model is evaluated on every level's test split. Each level
is a data set that the `folder:` source reads as it is (`OUT/level-k/{train,test}/<class>/*.png`).

What a level looks like is `graft.data.clutter_render`'s business (its docstring and docs/data-for-rounds.md);
this module decides which source images go to which level and split, and writes the PNGs, the manifest
(`clutter.json`) and a preview. Every random choice comes from numpy generators seeded by (seed, level, split,
chunk), so the same arguments give the same pixels and the same PNG bytes (with the same numpy, torch and Pillow).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from rich.console import Console

from graft._version import __version__
from graft.data.base import ImageSet
from graft.data.clutter_render import INGREDIENTS, LevelParams, dark_ink, digit_masks, level_params, render
from graft.data.sources import load_source, normalise_source
from graft.data.split import stratified_split
from graft.errors import GraftError
from graft.io import atomic_directory, atomic_write_json
from graft.progress import batch_progress

__all__ = [  # the renderer's names are re-exported: callers of the one-file module import them from here
    "CHUNK",
    "INGREDIENTS",
    "MANIFEST",
    "PREVIEW",
    "SPLITS",
    "ClutterResult",
    "LevelParams",
    "cap",
    "class_folders",
    "dark_ink",
    "digit_masks",
    "level_params",
    "level_positions",
    "make_clutter",
    "render",
]

MANIFEST = "clutter.json"
PREVIEW = "preview.png"
SPLITS: tuple[str, ...] = ("train", "test")
CHUNK = 1000  # images rendered together; part of the seed, so changing it changes the pixels


# ---------------------------------------------------------------------------------------------- which images go where


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


# ---------------------------------------------------------------------------------------------- preview

PREVIEW_COLUMNS = 10  # classes shown; more would make the sheet too wide to read
_TILE = 96  # target tile edge in pixels: small images are enlarged by a whole factor, pixels kept square
_GAP = 6
_TEXT = 14  # font size of the labels; the title is a bit larger
_Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def _preview(path: Path, samples: dict[int, list[tuple[int, np.ndarray]]], folders: list[str], source: str) -> None:
    """One row per level, one column per class (first 10): the benchmark at a glance.

    Drawn with Pillow rather than the report's matplotlib grid, so the data layer never imports `graft.report`.
    Images are enlarged by nearest neighbour (no smoothing: the pixels are what a model sees).
    """
    columns = min(PREVIEW_COLUMNS, len(folders))
    size = next((image.shape[0] for row in samples.values() for _, image in row), 8)
    scale = max(1, -(-_TILE // size))
    tile = size * scale
    font, title_font = _font(_TEXT), _font(_TEXT + 4)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    row_labels = {k: f"level {k}" for k in sorted(samples)}
    label_width = max((probe.textlength(text, font=font) for text in row_labels.values()), default=0)
    left = _GAP * 2 + int(label_width)
    title_height, header_height = _TEXT + 4 + _GAP * 2, _TEXT + _GAP * 2
    top = title_height + header_height
    width = left + columns * (tile + _GAP) + _GAP
    height = top + len(row_labels) * (tile + _GAP) + _GAP
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    _label(draw, (width / 2, _GAP), f"clutter levels from {source}", title_font, 0.5, 0.0)
    for c in range(columns):
        x = left + c * (tile + _GAP)
        name = _fit(probe, folders[c], font, tile)
        _label(draw, (x + tile / 2, top - _GAP), name, font, 0.5, 1.0)
    for r, (k, text) in enumerate(row_labels.items()):
        y = top + r * (tile + _GAP)
        _label(draw, (left - _GAP, y + tile / 2), text, font, 1.0, 0.5)
        by_class = dict(samples[k])
        for c in range(columns):
            image = by_class.get(c)
            cell = (
                Image.fromarray(image, "RGB").resize((tile, tile), Image.Resampling.NEAREST)
                if image is not None
                else Image.new("RGB", (tile, tile), (220, 220, 220))  # no test image of that class at this level
            )
            sheet.paste(cell, (left + c * (tile + _GAP), y))
    sheet.save(path, format="PNG")


def _label(
    draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font: _Font, across: float, down: float
) -> None:
    """Black `text` placed so the point (across, down) of its box, in fractions (0 left/top, 1 right/bottom), is at xy.

    The box's height is the font's (of "Ag"), not the text's, so labels in a row share a baseline; placed by hand
    rather than with `anchor=`, which Pillow's bitmap fallback font ignores.
    """
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    _, top, _, bottom = draw.textbbox((0, 0), "Ag", font=font)
    x = xy[0] - left - across * (right - left)
    y = xy[1] - top - down * (bottom - top)
    draw.text((round(x), round(y)), text, fill="black", font=font)


def _font(size: int) -> _Font:
    """Pillow's bundled font at `size`; Pillow < 10.1 only has a fixed-size bitmap one."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: _Font, width: int) -> str:
    """`text`, shortened with an ellipsis until it fits in `width` pixels (long class names).

    Pillow's bitmap fallback font is latin-1 only, so it gets "..." rather than "…".
    """
    if draw.textlength(text, font=font) <= width:
        return text
    dots = "…" if isinstance(font, ImageFont.FreeTypeFont) else "..."
    while len(text) > 1 and draw.textlength(text + dots, font=font) > width:
        text = text[:-1]
    return text + dots

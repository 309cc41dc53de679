"""The `mix:FILE.json` source: several sources joined into one, each optionally sampled, as a replayable string.

Training in rounds trains on the union of several data sets (or the newest one plus a replay sample of the
others). Writing that choice to a small JSON file and naming it as the source keeps the run's config.json
replayable: `graft train --resume` and `graft eval` rebuild the very same images from it. The file:

    {"parts": [{"source": "folder:/data/level-1", "data_root": null, "fraction": 0.2, "seed": 7}, ...]}

Each part's training pool is the source's own (before graft's train/valid split); with `fraction` < 1 a seeded,
stratified sample of round(n × fraction) images of it is kept. The test set is every part's full test set.
Class names are matched by name; the joined class list is the union in first-seen order (the first part's
classes in their order, then each later part's new classes), so earlier classes keep their indices.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graft.data.base import ImageSet
from graft.data.split import stratified_split
from graft.errors import GraftError


@dataclass
class JoinedImages(ImageSet):
    """Views of several image sets as one; gray images are repeated to RGB when any part is in colour."""

    name: str
    parts: list[ImageSet]
    part_of: np.ndarray  # which part each image comes from
    local: np.ndarray  # its position within that part (a view position)
    all_labels: np.ndarray
    classes: list[str]
    index: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.index is None:
            self.index = np.arange(len(self.part_of))
        self.channels = max(part.channels for part in self.parts)

    def groups(self) -> np.ndarray | None:
        """Each part's groups, told apart by part; None when no part has any."""
        named = [part.groups() for part in self.parts]
        if all(groups is None for groups in named):
            return None
        own = [
            np.array([f"{k}:{g}" for g in groups], dtype=object)
            if groups is not None
            else np.array([f"\0{k}:{i}" for i in range(len(part))], dtype=object)
            for k, (part, groups) in enumerate(zip(self.parts, named, strict=True))
        ]
        every = np.array([own[p][j] for p, j in zip(self.part_of, self.local, strict=True)], dtype=object)
        return every[self.index]

    def image(self, i: int) -> np.ndarray:
        k = self.index[i]
        image = self.parts[self.part_of[k]].image(int(self.local[k]))
        if image.shape[2] < self.channels:
            image = np.repeat(image, self.channels, axis=2)
        return image


def union_classes(class_lists: list[list[str]]) -> list[str]:
    """Every class name once, in first-seen order."""
    seen: dict[str, None] = {}
    for names in class_lists:
        seen.update(dict.fromkeys(names))
    return list(seen)


def join(sets: list[ImageSet], name: str, classes: list[str] | None = None) -> JoinedImages:
    """One set of all images of `sets`, labels re-indexed into `classes` (default: their union) by name."""
    classes = classes or union_classes([s.classes for s in sets])
    part_of, local, labels = [], [], []
    for k, images in enumerate(sets):
        remap = np.array([classes.index(c) for c in images.classes], dtype=np.int64)
        part_of.append(np.full(len(images), k, dtype=np.int64))
        local.append(np.arange(len(images), dtype=np.int64))
        labels.append(remap[images.labels] if len(images) else np.zeros(0, np.int64))
    return JoinedImages(
        name, list(sets), np.concatenate(part_of), np.concatenate(local), np.concatenate(labels), classes
    )


def sample(images: ImageSet, fraction: float, seed: int) -> ImageSet:
    """A seeded, stratified sample of round(n × fraction) images (all of them when fraction is 1)."""
    if fraction >= 1.0:
        return images
    _, kept = stratified_split(images.labels, fraction, seed)
    return images.subset(kept)


def read_mix(path: str | Path) -> list[dict]:
    """The parts of a mix file, checked: each has a source, and a fraction in (0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise GraftError(f"mix source file not found: {path}")
    try:
        parts = json.loads(path.read_text())["parts"]
    except (ValueError, KeyError, TypeError):
        raise GraftError(f"{path} is not a mix file (JSON with a 'parts' list)") from None
    if not isinstance(parts, list) or not parts:
        raise GraftError(f"{path}: 'parts' must be a non-empty list")
    for part in parts:
        if not isinstance(part, dict) or not isinstance(part.get("source"), str):
            raise GraftError(f"{path}: every part needs a 'source' string")
        fraction = part.get("fraction", 1.0)
        if not isinstance(fraction, int | float) or not 0 < fraction <= 1:
            raise GraftError(f"{path}: fraction must be in (0, 1], got {fraction!r}")
        if part["source"].startswith("mix:"):
            raise GraftError(f"{path}: a mix cannot contain another mix")
    return parts

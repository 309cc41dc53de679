"""The images an export is calibrated and certified on: the bundle's own data, split as it was trained.

Calibration draws from the training split, the certificate from the test split, both as seeded stratified
samples (every class represented), both preprocessed by graft.data.preprocess — the one path training, eval and
serve share — so that int8 ranges and measured agreement are about the inputs the model really gets.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from graft.bundle import Bundle
from graft.data.base import ImageSet, Splits
from graft.data.preprocess import to_model_input
from graft.data.sources import load_splits, source_label
from graft.data.split import stratified_sample
from graft.errors import GraftError
from graft.record import DEFAULT_VALID_FRACTION

CHUNK = 64  # images preprocessed at once: a 224×224 colour sample never sits in memory whole


@dataclass(frozen=True)
class Sample:
    """Some images of one split, in the model's class order, ready to be fed in chunks."""

    images: ImageSet
    labels: np.ndarray  # the model's class indices
    description: str

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, spec, chunk: int = CHUNK) -> Iterator[torch.Tensor]:
        """Normalised float32 model inputs, `chunk` images at a time."""
        for start in range(0, len(self.images), chunk):
            positions = np.arange(start, min(start + chunk, len(self.images)))
            yield to_model_input(self.images.batch(positions, spec), spec)


def bundle_splits(
    bundle: Bundle, data: str | None = None, data_root: str | None = None, *, download: bool = False
) -> tuple[Splits, str]:
    """The bundle's train/valid/test splits (its recorded source, split fraction and seed) and the source's name.

    `data` overrides the recorded source (the same classes, by name, are required later).
    """
    recorded = bundle.provenance.data
    source = data or (recorded.source if recorded is not None else None)
    if not source:
        if recorded is not None and recorded.in_memory:
            raise GraftError("this bundle was trained on in-memory arrays, which it does not keep; pass --data")
        raise GraftError("this bundle does not record the data it was trained on; pass --data")
    splits = load_splits(
        source,
        data_root or (recorded.data_root if recorded is not None else None),
        valid_fraction=recorded.valid_fraction if recorded is not None else DEFAULT_VALID_FRACTION,
        seed=recorded.split_seed if recorded is not None else 0,
        download=download,
        group_by=recorded.group_by if recorded is not None else "none",
    )
    return splits, source_label(source)


def sample(images: ImageSet, model_classes: list[str], limit: int, seed: int, what: str) -> Sample:
    """At most `limit` images of `images`, stratified and seeded; labels mapped to the model's classes by name."""
    unknown = [c for c in images.classes if c not in model_classes]
    if unknown:
        raise GraftError(f"the {what} images have classes the model does not know: {', '.join(unknown[:5])}")
    if len(images) == 0:
        raise GraftError(f"there are no {what} images")
    mapping = np.array([model_classes.index(c) for c in images.classes], dtype=np.int64)
    positions = np.sort(stratified_sample(images.labels, limit, seed))
    chosen = images.subset(positions)
    drawn = "all" if len(positions) == len(images) else f"a stratified sample (seed {seed})"
    return Sample(chosen, mapping[chosen.labels], f"{drawn} of {len(images)} {what} images of {images.name}")

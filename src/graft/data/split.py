"""Deterministic, stratified splits: the same seed gives the same split on every machine."""

from __future__ import annotations

import numpy as np

from graft.data.base import ImageSet
from graft.errors import GraftError


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions kept and held out: round(n × fraction) in all, shared among classes in proportion to their size
    (largest remainders get the odd ones), each class's share chosen by a seeded permutation.

    Written with numpy rather than scikit-learn's train_test_split: importing scikit-learn costs ~75 MB of
    resident memory in every training process, for a dozen lines of work.
    """
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(labels, return_counts=True)
    exact = sizes * fraction
    counts = np.floor(exact).astype(int)
    short = round(len(labels) * fraction) - counts.sum()
    counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    counts = np.minimum(counts, np.maximum(sizes - 1, 0))  # every class keeps at least one image
    held = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, counts, strict=True)]
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    return np.setdiff1d(np.arange(len(labels)), held_out), held_out


def split_train_valid(pool: ImageSet, valid_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Stratified train/valid split of `pool` (positions within it), seeded."""
    if not 0.0 < valid_fraction < 1.0:
        raise GraftError(f"valid fraction must be between 0 and 1 (exclusive), got {valid_fraction}")
    train, valid = stratified_split(pool.labels, valid_fraction, seed)
    return pool.subset(train, f"{pool.name}-train"), pool.subset(valid, f"{pool.name}-valid")

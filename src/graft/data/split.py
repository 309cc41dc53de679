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


def grouped_split(
    labels: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Like `stratified_split`, but whole groups are held out (frames of one video stay on one side).

    Per class (a group counts for its most common class), groups are taken in a seeded order while that brings
    the held-out count closer to round(n_class × fraction); at least one is held out and one kept whenever the
    class has two. A class with a single group (one video) cannot be held out by group: its last round(n ×
    fraction) images in file order (the end of the video) are held out instead, the least similar frames to the
    rest, and callers warn that its validation reads high. Without groups, or when every image is a group of its
    own, this is exactly `stratified_split`, so splits of ungrouped data did not change.
    """
    if groups is None or len(labels) == 0 or len(np.unique(groups)) == len(labels):
        return stratified_split(labels, fraction, seed)
    rng = np.random.default_rng(seed)
    _, group_ids = np.unique(groups, return_inverse=True)
    n_groups, n_classes = int(group_ids.max()) + 1, int(labels.max()) + 1
    sizes = np.bincount(group_ids, minlength=n_groups)
    majority = np.bincount(group_ids * n_classes + labels, minlength=n_groups * n_classes)
    majority = majority.reshape(n_groups, n_classes).argmax(axis=1)
    held_groups: list[int] = []
    tails: list[np.ndarray] = [np.zeros(0, np.int64)]
    for c in np.unique(labels):
        candidates = rng.permutation(np.flatnonzero(majority == c))
        if len(candidates) == 1:  # one video: hold out its end
            members = np.flatnonzero((group_ids == candidates[0]) & (labels == c))
            count = min(round(len(members) * fraction), len(members) - 1)
            tails.append(members[len(members) - count :])
            continue
        target, taken = fraction * sizes[candidates].sum(), 0
        for g in candidates[:-1]:  # the last candidate always stays in training
            if taken == 0 or abs(taken + sizes[g] - target) < abs(taken - target):
                held_groups.append(int(g))
                taken += sizes[g]
            if taken >= target:
                break
    held_out = np.union1d(np.flatnonzero(np.isin(group_ids, held_groups)), np.concatenate(tails))
    return np.setdiff1d(np.arange(len(labels)), held_out), held_out


def split_train_valid(pool: ImageSet, valid_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Stratified train/valid split of `pool` (positions within it), seeded; grouped images stay together."""
    if not 0.0 < valid_fraction < 1.0:
        raise GraftError(f"valid fraction must be between 0 and 1 (exclusive), got {valid_fraction}")
    train, valid = grouped_split(pool.labels, pool.groups(), valid_fraction, seed)
    return pool.subset(train, f"{pool.name}-train"), pool.subset(valid, f"{pool.name}-valid")

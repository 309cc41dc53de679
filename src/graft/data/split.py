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
    counts = _apportion(sizes * fraction, round(len(labels) * fraction))
    counts = np.minimum(counts, np.maximum(sizes - 1, 0))  # every class keeps at least one image
    held_out = _draw(labels, classes, counts, rng)
    return np.setdiff1d(np.arange(len(labels)), held_out), held_out


def _apportion(exact: np.ndarray, total: int) -> np.ndarray:
    """Whole counts summing to `total` from real shares `exact`: floors, then the largest remainders get one more."""
    counts = np.floor(exact).astype(int)
    short = total - int(counts.sum())
    counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    return counts


def _draw(labels: np.ndarray, classes: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions: `counts[i]` of class `classes[i]`, each class's chosen by a seeded permutation."""
    taken = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, counts, strict=True)]
    return np.sort(np.concatenate(taken)) if taken else np.zeros(0, np.int64)


def grouped_split(
    labels: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Like `stratified_split`, but whole groups are held out (frames of one video stay on one side).

    A group is split by class first (a folder name shared by several class folders is several groups), so every
    class is held out from its own groups. Per class, groups are taken in a seeded order when that brings the
    held-out count closer to round(n_class × fraction) and leaves training at least half of its share
    (n_class × (1 − fraction) / 2); one group always stays in training. When no group fits (every one is too big),
    the smallest that leaves training its half is held out. A class with a single group (one video), or whose
    groups are all too big, cannot be held out by group: its largest group's last round(n × fraction) images in
    file order (the end of the video) are held out instead, the frames least like the rest, and callers warn that
    its validation reads high. Without groups, or when every image is a group of its own, this is exactly
    `stratified_split`, so splits of ungrouped data did not change.
    """
    if groups is None or len(labels) == 0 or len(np.unique(groups)) == len(labels):
        return stratified_split(labels, fraction, seed)
    rng = np.random.default_rng(seed)
    keys = np.array([f"{label}\x00{group}" for label, group in zip(labels.tolist(), groups.tolist(), strict=True)])
    _, group_ids = np.unique(keys, return_inverse=True)
    sizes = np.bincount(group_ids)
    held_groups: list[int] = []
    tails: list[np.ndarray] = [np.zeros(0, np.int64)]
    for c in np.unique(labels):
        candidates = rng.permutation(np.unique(group_ids[labels == c]))
        chosen = _groups_to_hold_out(candidates, sizes, fraction)
        if chosen:
            held_groups += chosen
            continue
        largest = max(candidates, key=lambda g: sizes[g])  # one video, or none small enough: the end of one
        members = np.flatnonzero(group_ids == largest)
        count = min(round(len(members) * fraction), len(members) - 1)
        tails.append(members[len(members) - count :])
    held_out = np.union1d(np.flatnonzero(np.isin(group_ids, held_groups)), np.concatenate(tails))
    return np.setdiff1d(np.arange(len(labels)), held_out), held_out


def _groups_to_hold_out(candidates: np.ndarray, sizes: np.ndarray, fraction: float) -> list[int]:
    """One class's groups to hold out (see `grouped_split`); empty when none can be."""
    if len(candidates) < 2:
        return []
    total = int(sizes[candidates].sum())
    target, train_floor = fraction * total, total * (1 - fraction) / 2
    chosen: list[int] = []
    taken = 0
    for g in candidates:
        if len(chosen) == len(candidates) - 1 or taken >= target:
            break
        fits = total - taken - sizes[g] >= train_floor
        if fits and abs(taken + sizes[g] - target) < abs(taken - target):
            chosen.append(int(g))
            taken += int(sizes[g])
    if not chosen:
        small = [int(g) for g in candidates if total - sizes[g] >= train_floor]
        chosen = [min(small, key=lambda g: sizes[g])] if small else []
    return chosen


def stratified_sample(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Exactly `limit` positions (all when there are fewer), shared among classes in proportion to their size,
    every class getting at least one when `limit` allows: `--max-valid`/`--max-test` never drop a class."""
    if limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(labels, return_counts=True)
    counts = np.zeros(len(classes), int)
    if limit < len(classes):
        counts[rng.choice(len(classes), limit, replace=False)] = 1
    else:
        spare, rest = sizes - 1, limit - len(classes)
        counts = 1 + _apportion(spare * rest / max(int(spare.sum()), 1), rest)
    return _draw(labels, classes, counts, rng)


def split_train_valid(pool: ImageSet, valid_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Stratified train/valid split of `pool` (positions within it), seeded; grouped images stay together."""
    if not 0.0 < valid_fraction < 1.0:
        raise GraftError(f"valid fraction must be between 0 and 1 (exclusive), got {valid_fraction}")
    train, valid = grouped_split(pool.labels, pool.groups(), valid_fraction, seed)
    return pool.subset(train, f"{pool.name}-train"), pool.subset(valid, f"{pool.name}-valid")

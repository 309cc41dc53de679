"""In-memory data for `graft.Trainer`: (x, y) numpy arrays or image sets, checked, split and described.

`(x, y)` becomes an `ArrayImages` (x is not copied when it is already a contiguous uint8 array). A single set
(arrays or an `ImageSet`) is split into train and valid with the seeded stratified split graft uses for data
sources (`split_train_valid`, same fraction and seed); a `Splits` is used as given. The test set is only ever
the one the caller gives: without one, nothing is held out and the run reports no test accuracy.

Nothing on disk can rebuild such data, so the bundle's provenance describes it instead (`record`: kind, shapes,
class count, split seed and a digest of images and labels); `graft eval` then needs `--data`, and resuming the
run needs the same data again (the digest says whether it is).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from graft.data.base import ArrayImages, ImageSet, Splits
from graft.data.split import split_train_valid
from graft.errors import GraftError


@dataclass
class InMemory:
    """Splits built from data handed over in memory, and what the bundle's provenance says about them."""

    label: str  # the run's name for the data (config.data): "arrays", or the image set's name
    splits: Splits
    record: dict


def images_from_arrays(x: object, y: object, classes: Sequence[str] | None = None, *, what: str = "x") -> ArrayImages:
    """uint8 images (N, H, W) or (N, H, W, C) with C 1 or 3, and integer labels 0..K-1, as an image set.

    Every mistake is a one-line GraftError naming `what` ("x", "test x") and what to do about it.
    """
    labels_name = "y" if what == "x" else what.replace("x", "y")
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype != np.uint8:
        hint = " (images in 0..1: (x * 255).round().astype(np.uint8))" if x.dtype.kind == "f" else ""
        raise GraftError(f"{what} must be a uint8 array of images, got dtype {x.dtype}{hint}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        hint = " (channels first? x.transpose(0, 2, 3, 1))" if x.ndim == 4 and x.shape[1] in (1, 3) else ""
        raise GraftError(
            f"{what} must be shaped (N, H, W) or (N, H, W, C) with C 1 or 3, got shape {tuple(x.shape)}{hint}"
        )
    if len(x) == 0 or x.shape[1] == 0 or x.shape[2] == 0:
        raise GraftError(f"{what} holds no images (shape {tuple(x.shape)})")
    if y.ndim != 1 or len(y) != len(x):
        raise GraftError(f"{labels_name} must be one integer label per image: {len(x)} images, labels shaped {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise GraftError(f"{labels_name} must hold integer class indices, got dtype {y.dtype}")
    names = _class_names(y, classes, labels_name)
    if y.min() < 0 or y.max() >= len(names):
        raise GraftError(
            f"{labels_name} must lie in 0..{len(names) - 1} ({len(names)} classes), found {y.min()}..{y.max()}"
        )
    return ArrayImages("arrays", np.ascontiguousarray(x), y.astype(np.int64), names)


def _class_names(y: np.ndarray, classes: Sequence[str] | None, labels_name: str) -> list[str]:
    if classes is None:
        count = int(y.max()) + 1 if len(y) else 0
        if count < 2:
            raise GraftError(f"{labels_name} has {count} class(es); a classifier needs at least 2")
        return [str(k) for k in range(count)]
    if isinstance(classes, str) or not all(isinstance(name, str) and name for name in classes):
        raise GraftError("classes must be a list of non-empty class names (strings), one per label 0..K-1")
    names = list(classes)
    if len(names) < 2 or len(set(names)) != len(names):
        raise GraftError(f"classes must name at least 2 distinct classes, got {names}")
    return names


def in_memory(
    data: object,
    test: object,
    classes: Sequence[str] | None,
    *,
    valid_fraction: float,
    seed: int,
) -> InMemory:
    """`data` (arrays, an ImageSet or a Splits) and `test` (arrays, an ImageSet or None) as splits to train on."""
    if isinstance(data, Splits):
        if test is not None or classes is not None:
            raise GraftError("a Splits brings its own test set and class names; give no test= or classes=")
        splits, kind, label = data, "splits", data.train.name
    else:
        if isinstance(data, ImageSet):
            if classes is not None:
                raise GraftError("an ImageSet has its own class names; give no classes=")
            pool, kind, label = data, "image set", data.name
        elif isinstance(data, tuple | list) and len(data) == 2:
            pool, kind, label = images_from_arrays(*data, classes), "arrays", "arrays"
        else:
            raise GraftError(
                "data must be a source name (e.g. 'digits', 'folder:PATH'), (x, y) numpy arrays, an ImageSet or a "
                f"Splits; got {type(data).__name__}"
            )
        train, valid = split_train_valid(pool, valid_fraction, seed)
        splits = Splits(train, valid, _test_set(test, pool))
    for name in ("valid", "test"):
        part = getattr(splits, name)
        if part.classes != splits.classes or (len(part) and part.channels != splits.train.channels):
            raise GraftError(f"the {name} set must have the training set's classes and channels")
    record = {
        "kind": kind,
        "shape": _shape(data[0] if kind == "arrays" else None),  # type: ignore[index]
        "test_shape": _shape(test[0] if isinstance(test, tuple | list) else None),
        "classes": len(splits.classes),
        "split_seed": seed if kind != "splits" else None,  # None: the caller chose train and valid
        "test": len(splits.test),
        "digest": digest(splits),
    }
    return InMemory(label or "data", splits, record)


def _test_set(test: object, pool: ImageSet) -> ImageSet:
    """The caller's test set, or an empty one: never a hold-out of the training data."""
    if test is None:
        return pool.subset(np.zeros(0, np.int64), f"{pool.name}-test")
    if isinstance(test, ImageSet):
        return test
    if isinstance(test, tuple | list) and len(test) == 2:
        return images_from_arrays(*test, pool.classes, what="test x")
    raise GraftError(f"test must be (x, y) numpy arrays or an ImageSet, got {type(test).__name__}")


def _shape(x: object) -> list[int] | None:
    return None if x is None else list(np.shape(x))


def digest(splits: Splits) -> str:
    """sha256 of the images, labels and class names of the three splits: the same data gives the same digest."""
    h = hashlib.sha256()
    for part in (splits.train, splits.valid, splits.test):
        h.update(repr((part.classes, len(part))).encode())
        h.update(part.labels.tobytes())
        if isinstance(part, ArrayImages):
            whole = len(part.index) == len(part.array) and np.array_equal(part.index, np.arange(len(part.array)))
            h.update((part.array if whole else np.ascontiguousarray(part.array[part.index])).data)
        elif hasattr(part, "paths"):  # files: their paths stand for their contents
            h.update("\n".join(str(part.paths[i]) for i in part.index).encode())  # type: ignore[attr-defined]
    return "sha256:" + h.hexdigest()


def describe(record: dict) -> str:
    """'arrays (1797, 8, 8), 10 classes, split seed 0': the in-memory data of a record, in a few words."""
    shape = f" {tuple(record['shape'])}" if record.get("shape") else ""
    seed = f", split seed {record['split_seed']}" if record.get("split_seed") is not None else ", split given"
    return f"{record['kind']}{shape}, {record['classes']} classes{seed}"

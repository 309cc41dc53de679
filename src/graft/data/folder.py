"""The `folder:PATH` source: the user's own photos, one sub-folder per class.

Two layouts are understood:

- A: `PATH/<class>/...` (graft splits off its own test set later);
- B: `PATH/train/<class>/...` and `PATH/test/<class>/...`, or class folders next to a `test/` folder; the test
  classes must be train classes.

Class folders are walked recursively; hidden entries (starting with ".") are ignored. Every image is decoded
once at scan time, in threads, so broken files are reported up front (in `FolderScan.skipped`, with a reason)
instead of failing an epoch later; only paths are kept, and pixels are decoded again on demand.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graft.data.base import ImageSet
from graft.data.groups import check_group_by, group_of
from graft.data.images import IMAGE_EXTENSIONS, decode_image
from graft.errors import GraftError

NOT_AN_IMAGE = "not a JPEG/PNG/WebP/BMP file"


@dataclass
class FileImages(ImageSet):
    """Labelled image files decoded on demand; `channels` is what every image is converted to (1 or 3)."""

    name: str
    paths: list[Path]
    all_labels: np.ndarray
    classes: list[str]
    channels: int
    index: np.ndarray = field(default=None)  # type: ignore[assignment]
    all_groups: np.ndarray | None = None  # each file's group (graft.data.groups); unique keys for lone images

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.all_labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.all_labels)} labels")
        if self.all_groups is not None and len(self.all_groups) != len(self.paths):
            raise ValueError(f"{len(self.paths)} paths but {len(self.all_groups)} groups")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.index is None:
            self.index = np.arange(len(self.paths))

    def groups(self) -> np.ndarray | None:
        return None if self.all_groups is None else self.all_groups[self.index]

    def image(self, i: int) -> np.ndarray:
        path = self.paths[self.index[i]]
        image = decode_image(path)
        have = image.shape[2]
        if have == self.channels:
            return image
        if have == 1:
            return np.repeat(image, self.channels, axis=2)
        raise GraftError(f"{path}: is a colour image but the folder was scanned as gray; scan it again")


def concat_files(first: FileImages, second: FileImages, name: str) -> FileImages:
    """One set holding the files of both views (paths only; nothing is decoded)."""
    if first.classes != second.classes:
        raise ValueError("can only join sets with the same classes")
    paths = [first.paths[i] for i in first.index] + [second.paths[i] for i in second.index]
    labels = np.concatenate([first.labels, second.labels])
    groups = None
    if first.all_groups is not None and second.all_groups is not None:
        groups = np.concatenate([first.groups(), second.groups()])
    return FileImages(name, paths, labels, first.classes, max(first.channels, second.channels), all_groups=groups)


@dataclass
class FolderScan:
    """What `scan_folder` found: the train set, the folder's own test set (layout B) and the skipped files."""

    train: FileImages
    test: FileImages | None
    skipped: list[tuple[Path, str]]


def scan_folder(root: str | Path, *, workers: int = 4, group_by: str = "auto") -> FolderScan:
    """Find the classes and readable images under `root`; GraftError when they cannot make a dataset.

    Every candidate image is decoded once, `workers` at a time, and dropped: unreadable and non-image files go
    to `skipped` with a one-line reason. `channels` is 1 when every readable image is gray, else 3. `group_by`
    names each image's group (graft.data.groups), which splits keep whole.
    """
    try:
        check_group_by(group_by)
    except ValueError as error:
        raise GraftError(f"--group-by: {error}") from None
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    root = Path(root).expanduser()
    where = f"folder:{root}"
    if not root.exists():
        raise GraftError(f"{where}: no such directory")
    if not root.is_dir():
        raise GraftError(f"{where}: not a directory (give a folder with one sub-folder per class)")

    skipped: list[tuple[Path, str]] = []
    train_dirs, test_dirs = _layout(root, where, skipped)
    if len(train_dirs) < 2:
        found = ", ".join(d.name for d in train_dirs) or "none"
        raise GraftError(f"{where}: needs at least 2 class folders, found {len(train_dirs)} ({found})")
    classes = [d.name for d in train_dirs]
    label_of = {name: label for label, name in enumerate(classes)}
    extra = sorted({d.name for d in test_dirs or []} - set(classes))
    if extra:
        raise GraftError(f"{where}: test classes not in train: {', '.join(extra)}")
    if test_dirs == []:
        raise GraftError(f"{where}: test/ has no class folders")
    class_dirs = [*train_dirs, *(test_dirs or [])]

    candidates = [
        (label_of[class_dir.name], class_dir, path)
        for class_dir in class_dirs
        for path in image_files(class_dir, skipped)
    ]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(_probe, [path for *_, path in candidates]))

    found_in: dict[Path, list[tuple[Path, int]]] = {d: [] for d in class_dirs}
    channel_counts: set[int] = set()
    for (label, class_dir, path), result in zip(candidates, results, strict=True):
        if isinstance(result, str):
            skipped.append((path, result))
        else:
            found_in[class_dir].append((path, label))
            channel_counts.add(result)
    if not channel_counts:
        raise GraftError(f"{where}: no readable images ({len(skipped)} files skipped{_example(skipped, root)})")
    for class_dir, items in found_in.items():
        if not items:
            name = class_dir.relative_to(root)
            raise GraftError(f"{where}: class folder {name} has no readable images{_example(skipped, class_dir)}")

    channels = 1 if channel_counts == {1} else 3
    train = _image_set(f"{root.name}/train", {d: found_in[d] for d in train_dirs}, classes, channels, group_by)
    test = None
    if test_dirs is not None:
        test = _image_set(f"{root.name}/test", {d: found_in[d] for d in test_dirs}, classes, channels, group_by)
    return FolderScan(train=train, test=test, skipped=skipped)


def _layout(root: Path, where: str, skipped: list[tuple[Path, str]]) -> tuple[list[Path], list[Path] | None]:
    """(train class folders, test class folders or None when the folder has no test set)."""
    top = _subdirs(root, skipped)
    names = [d.name for d in top]
    if "train" in names:
        others = [name for name in names if name not in ("train", "test")]
        if others:
            raise GraftError(f"{where}: has train/ and also other folders ({', '.join(others)}); move them into train/")
        train = _subdirs(root / "train", skipped)
    else:
        train = [d for d in top if d.name != "test"]
    test = _subdirs(root / "test", skipped) if "test" in names else None
    return train, test


def _subdirs(parent: Path, skipped: list[tuple[Path, str]]) -> list[Path]:
    """Sorted non-hidden sub-folders of `parent`; loose files there are skipped, as they have no class."""
    dirs = []
    for entry in sorted(parent.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            dirs.append(entry)
        else:
            skipped.append((entry, "not inside a class folder"))
    return dirs


def image_files(folder: Path, skipped: list[tuple[Path, str]]) -> list[Path]:
    """Candidate images under `folder` (by extension), recursively and in a stable order; hidden entries are
    ignored (macOS `._photo.jpg` and `.DS_Store` are not photos), other files go to `skipped` with a reason.

    The one listing of a folder of photos: training's class folders and `graft predict FOLDER` both use it."""
    images = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if filename.startswith("."):
                continue
            path = Path(dirpath) / filename
            if not path.is_file():
                skipped.append((path, "not a regular file"))
            elif path.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append((path, NOT_AN_IMAGE))
            else:
                images.append(path)
    return images


def _probe(path: Path) -> int | str:
    """The decoded channel count, or why the file cannot be read; the pixels are dropped at once."""
    try:
        return int(decode_image(path).shape[2])
    except GraftError as exc:
        return str(exc)


def _example(skipped: list[tuple[Path, str]], under: Path) -> str:
    """ "; e.g. <one skipped file under `under` and why>", or "" when none was skipped there."""
    for path, reason in skipped:
        if path.is_relative_to(under):
            return f"; e.g. {reason if reason.startswith(path.name) else f'{path.name}: {reason}'}"
    return ""


def _image_set(
    name: str, per_class: dict[Path, list[tuple[Path, int]]], classes: list[str], channels: int, group_by: str
) -> FileImages:
    items = [(path, label, class_dir) for class_dir, files in per_class.items() for path, label in files]
    paths = [path for path, _, _ in items]
    labels = np.array([label for _, label, _ in items], dtype=np.int64)
    groups = []
    for path, label, class_dir in items:
        group = group_of(classes[label], path.relative_to(class_dir), group_by)
        groups.append(f"\0{path}" if group is None else group)  # a lone image: a group no name can equal
    return FileImages(name, paths, labels, classes, channels, all_groups=np.array(groups, dtype=object))

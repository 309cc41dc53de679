"""Data sources by name: `mnist`, `fashion-mnist`, `kmnist`, `digits`, `folder:PATH` and `mix:FILE.json`.

MNIST-style sets are read from local files first (`<data root>/<name>/`, gzipped or not, or torchvision's
`<Name>/raw/` layout) and downloaded with torchvision's mirrors and checksums only when missing.
"""

from __future__ import annotations

import difflib
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torchvision import datasets as tvd
from torchvision.datasets.utils import check_integrity, download_url

from graft.data.base import ArrayImages, ImageSet, Splits, concat_arrays
from graft.data.groups import describe as describe_groups
from graft.data.idx import read_idx
from graft.data.root import DATA_ROOT_ENV, data_root
from graft.data.split import grouped_split, split_train_valid
from graft.errors import GraftError, first_line

# The test split of sources that have none is held out with this fixed seed, so that runs with different
# `--seed` values are compared on the same test images.
TEST_HOLDOUT_SEED = 0
TEST_HOLDOUT_FRACTION = 0.2


@dataclass(frozen=True)
class IdxDataset:
    """An MNIST-format data set: its torchvision class (mirrors and md5s) and class names."""

    folder: str
    torchvision_class: type
    classes: tuple[str, ...]


IDX_DATASETS: dict[str, IdxDataset] = {
    "mnist": IdxDataset("mnist", tvd.MNIST, tuple(str(d) for d in range(10))),
    "fashion-mnist": IdxDataset("fashion-mnist", tvd.FashionMNIST, tuple(tvd.FashionMNIST.classes)),
    "kmnist": IdxDataset("kmnist", tvd.KMNIST, tuple(tvd.KMNIST.classes)),
}
NAMED_SOURCES: tuple[str, ...] = (*IDX_DATASETS, "digits")  # sources given by name alone
SOURCE_NAMES: tuple[str, ...] = (*NAMED_SOURCES, "folder:PATH", "mix:FILE.json")


def _find_local(root: Path, info: IdxDataset, filename: str) -> Path | None:
    """The first existing copy of `filename` (or its un-gzipped twin) in graft's or torchvision's layout.

    Never the bare root: MNIST and Fashion-MNIST share file names, so only a named folder says which is which.
    """
    folders = [root / info.folder, root / info.torchvision_class.__name__ / "raw"]
    for folder in folders:
        for name in (filename, filename.removesuffix(".gz")):
            if (folder / name).is_file():
                return folder / name
    return None


def _fetch(root: Path, info: IdxDataset, filename: str, md5: str, download: bool) -> Path:
    local = _find_local(root, info, filename)
    if local is not None:
        if local.suffix == ".gz" and not check_integrity(str(local), md5):
            raise GraftError(f"{local} is corrupt (md5 differs from the published {md5}); delete it")
        return local
    missing = [name for name, _ in info.torchvision_class.resources if _find_local(root, info, name) is None]
    present = len(info.torchvision_class.resources) - len(missing)
    found = f" ({present} of the {len(info.torchvision_class.resources)} files are there)" if present else ""
    where = f"put {', '.join(missing)} in {root / info.folder}{found} or set ${DATA_ROOT_ENV} / --data-root"
    if not download:
        raise GraftError(f"{info.folder} is not on disk and downloads are off: {where}")
    target = root / info.folder
    errors = []
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        for mirror in info.torchvision_class.mirrors:
            try:
                download_url(f"{mirror}{filename}", str(target), filename=filename, md5=md5)
                return target / filename
            except Exception as error:  # any network failure: try the next mirror
                errors.append(f"{type(error).__name__}")
    finally:
        socket.setdefaulttimeout(previous_timeout)
    raise GraftError(f"{info.folder}: {filename} missing and download failed ({', '.join(errors)}): {where}")


def load_idx_source(name: str, root: Path, download: bool = True) -> tuple[ArrayImages, ArrayImages]:
    """The source's own train and test sets as (N, 28, 28, 1) uint8 arrays."""
    info = IDX_DATASETS[name]
    md5s = dict(info.torchvision_class.resources)

    def read(filename: str) -> np.ndarray:
        path = _fetch(root, info, filename, md5s[filename], download)
        try:
            return read_idx(path)
        except (OSError, EOFError, ValueError) as error:
            raise GraftError(f"{path} is damaged ({first_line(error)}); delete it and try again") from None

    def part(prefix: str) -> ArrayImages:
        images = read(f"{prefix}-images-idx3-ubyte.gz")
        labels = read(f"{prefix}-labels-idx1-ubyte.gz")
        if len(images) != len(labels):
            raise GraftError(f"{name}: {len(images)} images but {len(labels)} labels in {root / info.folder}")
        return ArrayImages(f"{name}-{prefix}", images[..., None], labels.astype(np.int64), list(info.classes))

    return part("train"), part("t10k")


def load_digits_source() -> tuple[ArrayImages, ArrayImages]:
    """scikit-learn's 1 797 real 8×8 digits (values 0..16, scaled to 0..255), with a seeded test hold-out."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    full = ArrayImages("digits", images, digits.target.astype(np.int64), [str(d) for d in range(10)])
    return _hold_out(full)


def _hold_out(pool: ImageSet) -> tuple[ImageSet, ImageSet]:
    train, test = grouped_split(pool.labels, pool.groups(), TEST_HOLDOUT_FRACTION, TEST_HOLDOUT_SEED)
    return pool.subset(train, f"{pool.name}-train"), pool.subset(test, f"{pool.name}-test")


_PATH_SOURCES = {
    "folder:": "folder: needs a path, e.g. folder:~/photos (one sub-folder per class)",
    "mix:": "mix: needs a JSON file, e.g. mix:round-3/data.json (see graft.data.mix)",
}


def normalise_source(source: str) -> str:
    """`folder:` and `mix:` sources as absolute paths, so a bundle's provenance still finds them from another
    directory."""
    for prefix, empty in _PATH_SOURCES.items():
        if source.startswith(prefix):
            path = source.removeprefix(prefix)
            if not path.strip():
                raise GraftError(empty)
            return f"{prefix}{Path(path).expanduser().resolve()}"
    return source


def check_source(source: str) -> str:
    """The normalised source, or a GraftError now for one that cannot be there (a missing folder or mix file, an
    unknown name), so a typo is caught when it is written down rather than hours later when it is read."""
    source = normalise_source(source)
    kind, _, path = source.partition(":")
    if kind == "folder" and not Path(path).is_dir():
        raise GraftError(f"{source}: no such folder")
    if kind == "mix" and not Path(path).is_file():
        raise GraftError(f"{source}: no such file")
    if kind not in ("folder", "mix") and source not in NAMED_SOURCES:
        raise _unknown(source)
    return source


def _unknown(source: str) -> GraftError:
    close = difflib.get_close_matches(source, NAMED_SOURCES, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return GraftError(f"unknown data source {source!r}{hint}; known: {', '.join(SOURCE_NAMES)}")


def source_label(source: str) -> str:
    """A short name for file names: the source name, or a folder's (or mix file's folder's) last path component."""
    if source.startswith("mix:"):
        return Path(source.removeprefix("mix:")).parent.name or "mix"
    return source.removeprefix("folder:").rstrip("/").split("/")[-1] or "data"


def _scan(path: str, report: Callable[[str], None] | None, group_by: str = "auto"):
    from graft.data.folder import scan_folder

    scan = scan_folder(path, group_by=group_by)
    if scan.skipped and report is not None:
        first = "; ".join(f"{p.name}: {why}" for p, why in scan.skipped[:3])
        report(f"skipped {len(scan.skipped)} unreadable file(s) in {path} (e.g. {first})")
    return scan


def load_folder_source(
    path: str, report: Callable[[str], None] | None = None, group_by: str = "auto"
) -> tuple[ImageSet, ImageSet]:
    scan = _scan(path, report, group_by)
    if scan.test is not None:
        _warn_shared_groups(scan.train, scan.test, path, group_by, report)
        return scan.train, scan.test
    return _hold_out(scan.train)


def _warn_shared_groups(
    train: ImageSet, test: ImageSet, path: str, group_by: str, report: Callable[[str], None] | None
) -> None:
    """train/ and test/ holding frames of the same video: the test set then measures memory, not new images."""
    named = [groups for groups in (train.groups(), test.groups()) if groups is not None]
    if report is None or len(named) < 2:
        return
    shared = sorted({g for g in named[0] if not g.startswith("\0")} & set(named[1]))
    if shared:
        report(
            f"WARNING: {path}: {len(shared)} {describe_groups(group_by)} have images in both train/ and test/ "
            f"(e.g. {shared[0]}): test accuracy will be too high; keep each video on one side"
        )


def load_mix_source(
    path: str,
    root: str | Path | None,
    *,
    download: bool,
    report: Callable[[str], None] | None,
    group_by: str = "auto",
) -> tuple[ImageSet, ImageSet]:
    """A mix file's joined (train pool, test set): each part loaded as a source, its pool sampled as the file says."""
    from graft.data.mix import join, read_mix, sample, union_classes

    pools, tests = [], []
    for part in read_mix(path):
        pool, test = load_source(
            part["source"], part.get("data_root") or root, download=download, report=report, group_by=group_by
        )
        pools.append(sample(pool, float(part.get("fraction", 1.0)), int(part.get("seed", 0))))
        tests.append(test)
    classes = union_classes([images.classes for images in [*pools, *tests]])
    name = source_label(f"mix:{path}")
    return join(pools, name, classes), join(tests, f"{name}-test", classes)


def load_source(
    source: str,
    root: str | Path | None = None,
    *,
    download: bool = True,
    report: Callable[[str], None] | None = None,
    group_by: str = "auto",
) -> tuple[ImageSet, ImageSet]:
    """A source's (train pool, test set) by name; see SOURCE_NAMES. `group_by` (graft.data.groups) says which
    images of a folder belong together; splits keep those groups whole."""
    if source.startswith("folder:"):
        return load_folder_source(normalise_source(source).removeprefix("folder:"), report, group_by)
    if source.startswith("mix:"):
        path = normalise_source(source).removeprefix("mix:")
        return load_mix_source(path, root, download=download, report=report, group_by=group_by)
    if source in IDX_DATASETS:
        return load_idx_source(source, data_root(root), download)
    if source == "digits":
        return load_digits_source()
    raise _unknown(source)


def load_splits(
    source: str,
    root: str | Path | None = None,
    *,
    valid_fraction: float = 0.2,
    seed: int = 0,
    download: bool = True,
    report: Callable[[str], None] | None = None,
    group_by: str = "auto",
) -> Splits:
    """Train/valid (seeded split of the source's training data, groups kept whole) and the source's test split."""
    pool, test = load_source(source, root, download=download, report=report, group_by=group_by)
    train, valid = split_train_valid(pool, valid_fraction, seed)
    if report is not None:
        _report_groups(pool, train, valid, group_by, report)
    return Splits(train=train, valid=valid, test=test)


def _report_groups(
    pool: ImageSet, train: ImageSet, valid: ImageSet, group_by: str, report: Callable[[str], None]
) -> None:
    """Say how validation was held out when groups decided it, and which classes could not be held out by group."""
    groups = pool.groups()
    if groups is None or len(set(groups)) == len(groups):
        return
    kind = describe_groups(group_by)
    held, kept = set(valid.groups()), set(train.groups())
    report(f"valid split: {len(held - kept)} of {len(held | kept)} {kind} held out whole (--group-by {group_by})")
    split = held & kept
    if split:  # classes filmed in one video: validated on the end of that same video
        names = sorted({pool.classes[c] for c, g in zip(valid.labels, valid.groups(), strict=True) if g in split})
        report(
            f"WARNING: {', '.join(names[:5])}: one of the {kind} each, so their validation images are the last ones "
            "of it, next to training images: validation will read too high; add another video (or photos from "
            "another session) per class"
        )


def load_everything(
    source: str, root: str | Path | None = None, *, download: bool = True, report: Callable[[str], None] | None = None
) -> ImageSet:
    """Every labelled image of a source, train and test together: for evaluating a model on new data."""
    if source.startswith("folder:"):
        from graft.data.folder import concat_files

        scan = _scan(normalise_source(source).removeprefix("folder:"), report)
        return scan.train if scan.test is None else concat_files(scan.train, scan.test, scan.train.name)
    pool, test = load_source(source, root, download=download, report=report)
    if not (isinstance(pool, ArrayImages) and isinstance(test, ArrayImages)):  # a mix: join its two halves
        from graft.data.mix import join

        return join([pool, test], source_label(source), pool.classes)
    if pool.array is test.array:  # a hold-out of one array (digits): the whole array
        return ArrayImages(source, pool.array, pool.all_labels, pool.classes)
    return concat_arrays(pool, test, source)

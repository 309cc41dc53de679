"""Data sources by name: `mnist`, `fashion-mnist`, `kmnist`, `digits`, and `folder:PATH`.

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

from graft.data.base import ArrayImages, ImageSet, Splits
from graft.data.root import DATA_ROOT_ENV, data_root
from graft.errors import GraftError

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
SOURCE_NAMES: tuple[str, ...] = (*IDX_DATASETS, "digits", "folder:PATH")


def _find_local(root: Path, info: IdxDataset, filename: str) -> Path | None:
    """The first existing copy of `filename` (or its un-gzipped twin) in the places people keep it."""
    folders = [root / info.folder, root / info.torchvision_class.__name__ / "raw", root]
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
    expected = ", ".join(name for name, _ in info.torchvision_class.resources)
    where = f"put {expected} in {root / info.folder} or set ${DATA_ROOT_ENV} / --data-root"
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
    from graft.data.idx import read_idx

    def part(prefix: str) -> ArrayImages:
        images = read_idx(
            _fetch(root, info, f"{prefix}-images-idx3-ubyte.gz", md5s[f"{prefix}-images-idx3-ubyte.gz"], download)
        )
        labels = read_idx(
            _fetch(root, info, f"{prefix}-labels-idx1-ubyte.gz", md5s[f"{prefix}-labels-idx1-ubyte.gz"], download)
        )
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
    train, test = _stratified(pool.labels, TEST_HOLDOUT_FRACTION, TEST_HOLDOUT_SEED)
    return pool.subset(train, f"{pool.name}-train"), pool.subset(test, f"{pool.name}-test")


def _stratified(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
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
    held = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, counts, strict=True)]
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    return np.setdiff1d(np.arange(len(labels)), held_out), held_out


def load_folder_source(path: str, report: Callable[[str], None] | None = None) -> tuple[ImageSet, ImageSet]:
    from graft.data.folder import scan_folder

    scan = scan_folder(path)
    if scan.skipped and report is not None:
        first = "; ".join(f"{p.name}: {why}" for p, why in scan.skipped[:3])
        report(f"skipped {len(scan.skipped)} unreadable file(s) in {path} (e.g. {first})")
    if scan.test is not None:
        return scan.train, scan.test
    return _hold_out(scan.train)


def load_source(
    source: str,
    root: str | Path | None = None,
    *,
    download: bool = True,
    report: Callable[[str], None] | None = None,
) -> tuple[ImageSet, ImageSet]:
    """A source's (train pool, test set) by name; see SOURCE_NAMES."""
    if source.startswith("folder:"):
        return load_folder_source(source.removeprefix("folder:"), report)
    if source in IDX_DATASETS:
        return load_idx_source(source, data_root(root), download)
    if source == "digits":
        return load_digits_source()
    close = difflib.get_close_matches(source, [*IDX_DATASETS, "digits"], n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise GraftError(f"unknown data source {source!r}{hint}; known: {', '.join(SOURCE_NAMES)}")


def split_train_valid(pool: ImageSet, valid_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Deterministic, stratified train/valid split of `pool`: same seed, same split, on every machine."""
    if not 0.0 < valid_fraction < 1.0:
        raise GraftError(f"valid fraction must be between 0 and 1 (exclusive), got {valid_fraction}")
    train, valid = _stratified(pool.labels, valid_fraction, seed)
    return pool.subset(train, f"{pool.name}-train"), pool.subset(valid, f"{pool.name}-valid")


def load_splits(
    source: str,
    root: str | Path | None = None,
    *,
    valid_fraction: float = 0.2,
    seed: int = 0,
    download: bool = True,
    report: Callable[[str], None] | None = None,
) -> Splits:
    """Train/valid (seeded split of the source's training data) and the source's test split."""
    pool, test = load_source(source, root, download=download, report=report)
    train, valid = split_train_valid(pool, valid_fraction, seed)
    return Splits(train=train, valid=valid, test=test)

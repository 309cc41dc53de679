"""Image sets: labelled uint8 images at native size, plus cheap views for splits.

Two kinds exist: `ArrayImages` (a whole set in one uint8 array, e.g. MNIST: 47 MB for 60 000 images) and
`FileImages` (a folder of photos decoded on demand). Both hand out uint8 batches already resized to the
model's size; float conversion happens later, per batch (`graft.data.preprocess.to_model_input`).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import torch

from graft.data.preprocess import hwc_to_tensor, resize_uint8
from graft.spec import InputSpec


class ImageSet(ABC):
    """A labelled set of images; `index` selects a view into the underlying storage without copying it.

    Subclasses are dataclasses with `name`, `all_labels` and `index` fields; views share everything else.
    """

    name: str
    classes: list[str]
    channels: int  # native channels of the stored images: 1 (gray) or 3 (RGB)
    all_labels: np.ndarray
    index: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        """Class indices of this view, int64."""
        return self.all_labels[self.index].astype(np.int64)

    @abstractmethod
    def image(self, i: int) -> np.ndarray:
        """Image `i` of this view as an HxWxC uint8 array at native size."""

    def groups(self) -> np.ndarray | None:
        """The group of each image of this view (frames of one video share one: graft.data.groups), or None when
        every image stands alone; splits never cut a group."""
        return None

    def subset(self, positions: np.ndarray, name: str | None = None) -> ImageSet:
        """A view of the images at `positions` (positions within this view)."""
        return dataclasses.replace(self, name=name or self.name, index=self.index[positions])  # type: ignore[type-var]

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, positions: np.ndarray, spec: InputSpec) -> torch.Tensor:
        """uint8 (N, C, *spec.size) for the images at `positions`; resized one by one (sizes may differ)."""
        return torch.cat([resize_uint8(hwc_to_tensor(self.image(int(i))), spec) for i in positions])


@dataclass
class ArrayImages(ImageSet):
    """Images of one size held in a single uint8 array (N, H, W, C)."""

    name: str
    array: np.ndarray
    all_labels: np.ndarray
    classes: list[str]
    index: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.array.dtype != np.uint8 or self.array.ndim != 4:
            raise ValueError("ArrayImages needs a uint8 array shaped (N, H, W, C)")
        if self.index is None:
            self.index = np.arange(len(self.array))
        self.channels = int(self.array.shape[-1])

    def image(self, i: int) -> np.ndarray:
        return self.array[self.index[i]]

    def batch(self, positions: np.ndarray, spec: InputSpec) -> torch.Tensor:
        """One gather and one batched resize: the fast path for in-memory sets."""
        images = torch.from_numpy(self.array[self.index[positions]]).permute(0, 3, 1, 2)
        return resize_uint8(images, spec)


def concat_arrays(first: ArrayImages, second: ArrayImages, name: str) -> ArrayImages:
    """One set holding the images of both views (copied: their storages may differ)."""
    if first.classes != second.classes or first.array.shape[1:] != second.array.shape[1:]:
        raise ValueError("can only join sets with the same classes and image shape")
    array = np.concatenate([first.array[first.index], second.array[second.index]])
    return ArrayImages(name, array, np.concatenate([first.labels, second.labels]), first.classes)


@dataclass
class Splits:
    """The three splits every source provides: train and valid (seeded split) and the source's own test."""

    train: ImageSet
    valid: ImageSet
    test: ImageSet

    @property
    def classes(self) -> list[str]:
        return self.train.classes

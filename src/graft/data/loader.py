"""Batches of uint8 images at the model's size, in a seeded order.

In-memory sets are gathered in the main process (a gather plus one resize is faster than any worker hand-off);
folder sets decode files in DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from graft.data.base import ArrayImages, ImageSet
from graft.errors import GraftError
from graft.spec import InputSpec


class _Batches(Dataset):
    def __init__(self, images: ImageSet, chunks: list[np.ndarray], spec: InputSpec) -> None:
        self.images, self.chunks, self.spec = images, chunks, spec
        self.labels = torch.from_numpy(images.labels)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor] | GraftError:
        positions = self.chunks[k]
        try:
            return self.images.batch(positions, self.spec), self.labels[torch.from_numpy(positions)]
        except GraftError as error:  # handed back as a value: a worker's raise would arrive as a traceback dump
            return error


def _batch_starts(n: int, batch_size: int, drop_last: bool) -> range:
    return range(0, n - n % batch_size if drop_last and n >= batch_size else n, batch_size)


def count_batches(n: int, batch_size: int, *, drop_last: bool = False) -> int:
    """How many batches `batch_order` makes: the one place the training schedule and the loop agree on."""
    return len(_batch_starts(n, batch_size, drop_last))


def batch_order(n: int, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False) -> list[np.ndarray]:
    """Positions of each batch; shuffled with a seed so that a run can be replayed exactly."""
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    return [order[i : i + batch_size] for i in _batch_starts(n, batch_size, drop_last)]


def iter_batches(
    images: ImageSet,
    spec: InputSpec,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    workers: int = 2,
    start: int = 0,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 images (N, C, *spec.size), int64 labels (N,)).

    `start` skips the first batches (a run resumed mid-epoch); `shard=(rank, world)` keeps this process's slice
    of every batch, so data-parallel processes split each global batch between them.
    """
    chunks = batch_order(len(images), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)[start:]
    rank, world = shard
    if world > 1:
        chunks = [chunk[rank::world] for chunk in chunks]
    batches = _Batches(images, chunks, spec)
    if isinstance(images, ArrayImages) or workers == 0 or len(chunks) <= 1:
        items = (batches[k] for k in range(len(batches)))
    else:
        # Its own generator: seeding workers must not draw from torch's global one, which a resumed run restores.
        items = DataLoader(
            batches,
            batch_size=None,
            shuffle=False,
            num_workers=workers,
            persistent_workers=False,
            generator=torch.Generator().manual_seed(seed),
        )
    for item in items:
        if isinstance(item, GraftError):
            raise item
        yield item

"""Tiny folder data sets for rounds tests: scikit-learn digits as PNGs, one 'background' per round."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def digit_folder(root: Path, classes: list[str], *, invert: bool = False, per_class: int = 24, offset: int = 0) -> str:
    """`root/{train,test}/<class>/*.png` from digits: `per_class` train and 8 test images per class."""
    from graft.data import load_splits

    pool = load_splits("digits", valid_fraction=0.1).train
    for c in classes:
        rows = np.flatnonzero(pool.labels == pool.classes.index(c))[offset : offset + per_class + 8]
        for n, i in enumerate(rows):
            split = "train" if n < per_class else "test"
            image = pool.image(int(i))[:, :, 0]
            if invert:
                image = 255 - image
            folder = root / split / c
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{n}.png")
    return f"folder:{root}"

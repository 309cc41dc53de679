"""Data: sources by name, deterministic splits, uint8 image sets and the one preprocessing path.

`extract_frames` (frames from phone videos) and `make_clutter` (the clutter benchmark) are loaded on first use,
so importing graft.data for training does not load FFmpeg.
"""

from graft.data.base import ArrayImages, ImageSet, Splits
from graft.data.loader import iter_batches
from graft.data.preprocess import to_model_input
from graft.data.sources import SOURCE_NAMES, load_everything, load_source, load_splits
from graft.data.split import split_train_valid, stratified_split

__all__ = [
    "SOURCE_NAMES",
    "ArrayImages",
    "ImageSet",
    "Splits",
    "extract_frames",
    "iter_batches",
    "load_everything",
    "load_source",
    "load_splits",
    "make_clutter",
    "split_train_valid",
    "stratified_split",
    "to_model_input",
]


def __getattr__(name: str) -> object:
    if name == "extract_frames":
        from graft.data.video import extract_frames

        return extract_frames
    if name == "make_clutter":
        from graft.data.clutter import make_clutter

        return make_clutter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

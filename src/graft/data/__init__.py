"""Data: sources by name, deterministic splits, uint8 image sets and the one preprocessing path.

Names load on first use (graft._lazy): light modules such as `graft.data.groups` or `graft.data.image_limits`
(used by `graft --help`'s option checks) import no torch, and `extract_frames` (frames from phone videos) and
`make_clutter` (the clutter benchmark) load FFmpeg and friends only when asked for.
"""

from typing import TYPE_CHECKING

from graft import _lazy

if TYPE_CHECKING:
    from graft.data.base import ArrayImages, ImageSet, Splits
    from graft.data.clutter import make_clutter
    from graft.data.loader import iter_batches
    from graft.data.preprocess import to_model_input
    from graft.data.sources import SOURCE_NAMES, load_everything, load_source, load_splits
    from graft.data.split import split_train_valid, stratified_split
    from graft.data.video import extract_frames

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

__getattr__, __dir__ = _lazy.exports(
    __name__,
    {
        "ArrayImages": "graft.data.base",
        "ImageSet": "graft.data.base",
        "Splits": "graft.data.base",
        "iter_batches": "graft.data.loader",
        "to_model_input": "graft.data.preprocess",
        "SOURCE_NAMES": "graft.data.sources",
        "load_everything": "graft.data.sources",
        "load_source": "graft.data.sources",
        "load_splits": "graft.data.sources",
        "split_train_valid": "graft.data.split",
        "stratified_split": "graft.data.split",
        "extract_frames": "graft.data.video",
        "make_clutter": "graft.data.clutter",
    },
)

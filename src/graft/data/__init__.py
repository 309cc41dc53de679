"""Data: sources by name, deterministic splits, uint8 image sets and the one preprocessing path."""

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
    "iter_batches",
    "load_everything",
    "load_source",
    "load_splits",
    "split_train_valid",
    "stratified_split",
    "to_model_input",
]

"""Keras layer kinds, each in one class: the Keras class names it reads, Keras config → graft's JSON description,
and description → torch module (see `base.register`).

Importing this package registers every kind: layers with weights, then without, in source order, and the Keras 3
operations (`ops.*`, see operations.py). `SUPPORTED` and the "supported:" list of the unsupported-layer error
follow it, operations last.
"""

from __future__ import annotations

from graft.models.keras.layers import operations, weighted, weightless  # noqa: F401  (registers the kinds)
from graft.models.keras.layers.base import ACTIVATIONS, KERAS_CLASSES, LAYER_KINDS, LayerKind, activation

__all__ = ["ACTIVATIONS", "KERAS_CLASSES", "LAYER_KINDS", "LayerKind", "activation"]

"""Keras layer kinds, each in one class: the Keras class names it reads, Keras config → graft's JSON description,
and description → torch module (see `base.register`).

Importing this package registers every kind. Families register in this order (weighted, then weightless) and, in
each, in source order: `SUPPORTED` and the "supported:" list of the unsupported-layer error follow it.
"""

from __future__ import annotations

from graft.models.keras.layers import weighted, weightless  # noqa: F401  (registers the kinds, in this order)
from graft.models.keras.layers.base import ACTIVATIONS, KERAS_CLASSES, LAYER_KINDS, LayerKind, activation

__all__ = ["ACTIVATIONS", "KERAS_CLASSES", "LAYER_KINDS", "LayerKind", "activation"]

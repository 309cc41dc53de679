"""Importing Keras models (.h5 / .keras) into graft bundles without TensorFlow.

files → graph (+ graph_module) → applications (+ timm_models) → importer (`import_keras`). This package's
`__init__` imports nothing, so `graft.models.factory` can register the timm names without importing the importer.
"""

from __future__ import annotations


def __getattr__(name: str):
    if name == "import_keras":
        from graft.models.keras.importer import import_keras

        return import_keras
    raise AttributeError(name)

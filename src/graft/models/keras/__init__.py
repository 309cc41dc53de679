"""Keras models in graft without TensorFlow: files → graph (+ graph_module) → applications (+ timm_models).

Importing this package registers what the model builders need: the `keras_*` timm names (timm_models) and the
"keras-graph" backbone kind (backbone). `graft.models` imports it, so a bundle of either kind can be rebuilt;
the importer that writes bundles lives above the bundle layer (`graft.keras_import`).
"""

from __future__ import annotations

from graft.models.factory import register_backbone_kind
from graft.models.keras import timm_models as _timm_models  # noqa: F401  (registers keras_* timm names)
from graft.models.keras.backbone import build_graph_model

register_backbone_kind("keras-graph", build_graph_model)

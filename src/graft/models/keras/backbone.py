"""Imported Keras layer graphs as a backbone kind of `graft.models.factory.build_model`.

Registered by `graft.models.keras` on import, so the factory never imports this package: it only looks the
kind up in its registry.
"""

from __future__ import annotations

import torch

from graft.errors import GraftError, first_line
from graft.models.factory import GraftModel
from graft.models.keras.graph_module import KerasGraphModule
from graft.record import Architecture
from graft.spec import InputSpec


def build_graph_model(arch: Architecture, spec: InputSpec) -> GraftModel:
    """An imported Keras layer graph as the backbone; it ends in its own classifier, so there is no head."""
    if spec.mode != "replicate":
        raise GraftError(
            f"imported Keras layer graphs take their own input channels; input mode {spec.mode!r} "
            "is not available for them"
        )
    model = GraftModel(KerasGraphModule(arch.graph)).train()
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, spec.channels, *spec.size))
    except (RuntimeError, ValueError) as error:
        raise GraftError(
            f"the imported layer graph does not run at {spec.size[0]}×{spec.size[1]}×{spec.channels}: "
            f"{first_line(error, 160)}"
        ) from None
    if tuple(out.shape) != (1, arch.num_classes):
        raise GraftError(f"the imported layer graph outputs {tuple(out.shape[1:])}, not {arch.num_classes} classes")
    return model.train()

"""Fine-tuning an imported Keras layer graph: the same graph with its final Dense resized to the new classes.

`graft.training.start` hands bundles whose architecture is a layer graph to `create_graph_model`, with the record and
weights it has read.
Everything but the final Dense loads by name; the final Dense keeps its weights when the class count is unchanged
and starts fresh otherwise. The graph keeps its own input channels and normalisation (input mode `replicate`).
"""

from __future__ import annotations

import copy

import torch

from graft.errors import GraftError
from graft.models.factory import GraftModel, build_model
from graft.models.weights import TransferReport, transfer_weights
from graft.record import Architecture
from graft.spec import InputSpec


def retarget(graph: dict, num_classes: int) -> dict:
    """A copy of the graph whose output layer (a Dense) has `num_classes` units."""
    graph = copy.deepcopy(graph)
    last = next((layer for layer in graph["layers"] if layer["name"] == graph["output"]), None)
    if last is not None and last["type"] == "BinaryLogits":  # a sigmoid classifier gets an ordinary softmax head
        graph["layers"].remove(last)
        graph["output"] = last["inputs"][0]
        last = next((layer for layer in graph["layers"] if layer["name"] == graph["output"]), None)
    if last is None or last["type"] != "Dense":
        kind = last["type"] if last else "nothing"
        raise GraftError(f"the imported model ends in {kind}, not a Dense layer; graft can only resize a final Dense")
    last["config"]["units"] = num_classes
    return graph


def create_graph_model(
    recorded: Architecture,
    saved: InputSpec,
    state: dict[str, torch.Tensor],
    num_classes: int,
    *,
    input_mode: str,
    size: int | tuple[int, int],
    source_name: str,
) -> tuple[GraftModel, Architecture, InputSpec, TransferReport]:
    """The imported graph (`recorded`, with its input spec `saved` and weights `state`) retargeted to new classes."""
    if input_mode != "replicate":
        raise GraftError(
            f"{source_name} is an imported Keras layer graph: it keeps its own input channels, so train it with "
            "--input-mode replicate"
        )
    size2 = (size, size) if isinstance(size, int) else tuple(size)
    spec = InputSpec(
        size=size2,
        channels=saved.channels,
        mode="replicate",
        mean=saved.mean,
        std=saved.std,
        interpolation=saved.interpolation,
        antialias=saved.antialias,
        backbone_mean=saved.backbone_mean,
        backbone_std=saved.backbone_std,
    )
    arch = Architecture(recorded.timm_name, num_classes, "pool", {}, graph=retarget(recorded.graph, num_classes))
    try:
        model = build_model(arch, spec)
    except GraftError as error:
        hint = (
            ""
            if size2 == saved.size
            else f" (it was imported at {saved.size[0]}×{saved.size[1]}: try --size {saved.size[0]})"
        )
        raise GraftError(f"{error}{hint}") from None
    report = transfer_weights(model, state, source_name=source_name)
    return model, arch, spec, report

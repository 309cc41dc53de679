"""Fine-tuning an imported Keras layer graph: the same graph with its logits layer resized to the new classes.

`graft.training.start` hands bundles whose architecture is a layer graph to `create_graph_model`, with the record and
weights it has read.
Everything but the logits layer (the Dense or 1×1 conv that makes the class logits, wherever it sits before the
output) loads by name; it keeps its weights when the class count is unchanged and starts fresh otherwise. A
graph imported at a non-square size continues at that size. The graph keeps its own input channels and
normalisation (input mode `replicate`).
"""

from __future__ import annotations

import copy

import torch

from graft.errors import GraftError
from graft.models.factory import GraftModel, build_model
from graft.models.keras.graph_module import logits_layer
from graft.models.weights import TransferReport, transfer_weights
from graft.record import Architecture
from graft.spec import InputSpec


def retarget(graph: dict, num_classes: int) -> dict:
    """A copy of the graph whose logits layer (`logits_layer`: a Dense or 1×1 conv, wherever it sits before the
    output) makes `num_classes` logits; a Reshape between it and the output follows the new count."""
    graph = copy.deepcopy(graph)
    last = next((layer for layer in graph["layers"] if layer["name"] == graph["output"]), None)
    if last is not None and last["type"] == "BinaryLogits":  # a sigmoid classifier gets an ordinary softmax head
        graph["layers"].remove(last)
        graph["output"] = last["inputs"][0]
    logits = logits_layer(graph)
    if logits is None:
        raise GraftError(
            "the imported model has no layer that makes its class logits (a Dense or 1×1 Conv2D that the output "
            "reaches through activations, reshapes, pooling or dropout): graft cannot give it new classes"
        )
    key = "units" if logits["type"] == "Dense" else "filters"
    old = int(logits["config"][key])
    logits["config"][key] = num_classes
    by_name = {layer["name"]: layer for layer in graph["layers"]}
    layer = by_name[graph["output"]]
    while layer is not logits:
        if layer["type"] == "Reshape":
            shape = layer["config"]["target_shape"]
            if not shape or shape[-1] != old:
                raise GraftError(
                    f"the reshape {layer['name']!r} after the logits layer gives {shape}, not (…, {old} classes): "
                    "graft cannot give it new classes"
                )
            layer["config"]["target_shape"] = [*shape[:-1], num_classes]
        layer = by_name[layer["inputs"][0]]
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
    if size2 == (saved.size[0], saved.size[0]):  # the recorded size (training sizes are square): keep its width
        size2 = tuple(saved.size)
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

"""The PyTorch module rebuilt from a layer-graph description (`graph.describe`): one submodule per Keras layer.

Tensors of rank 4 flow as NCHW (Keras: NHWC); every other rank keeps Keras's layout. The submodules come from
the layer kinds in `layers` (which also hold how each translates Keras's axes and TensorFlow's "same" padding);
this module wires them up in the described order and frees each intermediate result after its last use.
"""

from __future__ import annotations

import torch
from torch import nn

from graft.errors import GraftError
from graft.models.keras.graph import GRAPH_FORMAT, GRAPH_VERSION
from graft.models.keras.layers import LAYER_KINDS
from graft.models.keras.layers.weightless import INFERENCE_IDENTITY

# Layers that pass class scores through without mixing classes: the logits layer may sit before them.
PASS_THROUGH = (
    "Activation",
    "Softmax",
    "Reshape",
    "Flatten",
    "Dropout",
    "SpatialDropout2D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "BinaryLogits",
    *INFERENCE_IDENTITY,
)


def logits_layer(graph: dict) -> dict | None:
    """The layer that makes the class logits: the Dense or 1×1 Conv2D the output reaches back to through
    PASS_THROUGH layers (MobileNet's conv_preds → Reshape → Activation); None when there is none."""
    by_name = {layer["name"]: layer for layer in graph["layers"]}
    layer = by_name.get(graph["output"])
    while layer is not None:
        if layer["type"] == "Dense":
            return layer
        cfg = layer["config"]
        if layer["type"] == "Conv2D" and cfg.get("kernel_size") == [1, 1] and cfg.get("groups", 1) == 1:
            return layer
        if layer["type"] not in PASS_THROUGH or len(layer["inputs"]) != 1:
            return None
        layer = by_name.get(layer["inputs"][0])
    return None


def build_layer(kind: str, cfg: dict) -> nn.Module:
    """The torch module for one described layer, by its JSON type (`layers` holds one builder per type)."""
    layer_kind = LAYER_KINDS.get(kind)
    if layer_kind is None:
        raise GraftError(f"unsupported layer type {kind!r} in the graph description")
    return layer_kind.build(cfg)


class KerasGraphModule(nn.Module):
    """Runs the described layers in order; the input is NCHW (flipped to BGR first when the model expects it)."""

    def __init__(self, graph: dict) -> None:
        super().__init__()
        if graph.get("format") != GRAPH_FORMAT or int(graph.get("version", 0)) > GRAPH_VERSION:
            raise GraftError(f"not a graft layer graph this version reads (format {graph.get('format')!r})")
        self.input_name = graph["input"]["name"]
        logits = logits_layer(graph)
        self.classifier_key = logits["key"] if logits is not None else None
        self.output_name = graph["output"]
        self.bgr = graph.get("input_order", "rgb") == "bgr"
        self.layers = nn.ModuleDict()
        self.plan: list[tuple[str, str, list[str]]] = []  # (layer name, module key, input names)
        try:
            for layer in graph["layers"]:
                self.layers[layer["key"]] = build_layer(layer["type"], layer["config"])
                self.plan.append((layer["name"], layer["key"], list(layer["inputs"])))
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise GraftError(f"the layer graph description is damaged ({type(error).__name__}: {error})") from None
        known = {self.input_name}
        for name, _, inputs in self.plan:
            missing = [i for i in inputs if i not in known]
            if missing:
                raise GraftError(f"the layer graph is out of order: {name} reads {', '.join(missing)} before it exists")
            known.add(name)
        if self.output_name not in known:
            raise GraftError(f"the layer graph has no layer {self.output_name!r} to output")
        # Free each intermediate result after its last reader (a DenseNet graph would otherwise keep every map).
        last_use = {name: step for step, (_, _, inputs) in enumerate(self.plan) for name in inputs}
        self.release: list[list[str]] = [[] for _ in self.plan]
        for name, step in last_use.items():
            if name != self.output_name:
                self.release[step].append(name)

    def get_classifier(self) -> nn.Module:
        """The layer that makes the logits (`logits_layer`; timm's name for it): what trains under
        `--strategy transfer`. A graph without one has no classifier to train alone: the whole graph is then the
        classifier, so transfer trains everything.
        """
        return self.layers[self.classifier_key] if self.classifier_key is not None else self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bgr:
            x = x.flip(1)
        values = {self.input_name: x}
        for (name, key, inputs), release in zip(self.plan, self.release, strict=True):
            values[name] = self.layers[key](*(values[i] for i in inputs))
            for done in release:
                del values[done]
        return values[self.output_name]

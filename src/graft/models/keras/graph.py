"""A Keras model config → graft's layer-graph description (plain JSON) and a PyTorch state dict for it.

The description is what `Architecture.graph` stores in `graft.json`: one entry per layer with its type, inputs and
the few settings that decide what it computes (plus channel counts, so the module can be rebuilt before its
weights are loaded). No code, nothing pickled: `graph_module.KerasGraphModule` rebuilds the module from it.

What each kind of layer records, and its weights in PyTorch layout, comes from its kind in `layers` (the registry
that also builds the modules); this module parses the model, checks it, and assembles the description.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from graft.errors import GraftError
from graft.models.keras.files import KerasFile, WeightList, short_name
from graft.models.keras.layers import ACTIVATIONS, KERAS_CLASSES, LAYER_KINDS
from graft.models.keras.layers.operations import KWARGS, OPERANDS, is_number

GRAPH_FORMAT = "graft.keras-graph"
GRAPH_VERSION = 1

_KINDS = [kind.type for kind in LAYER_KINDS.values() if kind.keras_names]
SUPPORTED = ("InputLayer", *sorted(_KINDS, key=lambda t: t.startswith("ops.")))  # InputLayer: the input; ops last
_ALIASES = {name: kind.type for name, kind in KERAS_CLASSES.items() if name != kind.type}  # old spellings → type
_NESTED = ("Functional", "Sequential", "Model")
# Layers Keras Applications define themselves, accepted only with the config they are built with.
_APPLICATION_LAYERS = {"LayerScale": {"init_values", "projection_dim"}}


def _is_keras_module(module: str) -> bool:
    return module in ("keras", "keras.layers", "keras.models") or module.startswith(
        ("keras.src.layers", "keras.src.models", "keras.src.engine", "keras.layers.", "keras.engine")
    )


def layer_kind(layer: dict) -> str:
    """The type a layer entry is read as; an entry that is not Keras's own layer keeps a name it cannot share.

    - `ops.<Class>`: a Keras 3 operation (`x + 3.0`, `ops.mean`), recognised by its module, or in Keras 3's legacy
      .h5 (which drops the module) by a config without the `trainable` and `dtype` every layer has;
    - `package>Class`: a registered custom layer, in .keras (its `registered_name`) as in .h5 (its class name);
    - `module.Class`: a class from another module (a custom layer that merely shares a Keras name);
    - else the Keras class name (old spellings mapped onto today's).
    """
    cls, module, config = layer["class_name"], layer.get("module"), layer.get("config")
    if isinstance(module, str) and module.startswith("keras.src.ops."):
        return f"ops.{cls}"
    if (
        module is None
        and isinstance(config, dict)
        and not {"trainable", "dtype", "layers"} & set(config)
        and cls != "InputLayer"
    ):
        return f"ops.{cls}"  # (a Keras 2 nested model's config has neither either, but it lists its layers)
    if cls in _APPLICATION_LAYERS and isinstance(config, dict):
        if _APPLICATION_LAYERS[cls] <= set(config) and (module is None or module.startswith("keras.src.applications")):
            return cls
        return f"{module or 'custom'}.{cls}"
    registered = layer.get("registered_name")
    if isinstance(registered, str) and ">" in registered:
        return registered
    if isinstance(module, str) and not _is_keras_module(module):
        return f"{module}.{cls}"
    return _ALIASES.get(cls, cls)


def _operands(args: list, kwargs: dict) -> tuple[list[str], dict]:
    """(tensor sources, the config entries of an operation): its operands in call order and its keyword args."""
    sources: list[str] = []
    operands: list[dict] = []
    for item in args:
        names = _history(item)
        if isinstance(item, dict) and names:
            operands.append({"input": len(sources)})
            sources += names
        elif isinstance(item, list | tuple) and item and all(isinstance(i, dict) and _history(i) for i in item):
            operands.append({"inputs": list(range(len(sources), len(sources) + len(item)))})
            sources += [_history(i)[0] for i in item]
        elif is_number(item):
            operands.append({"const": float(item)})
        else:
            operands.append({"bad": repr(item)[:60]})
    return sources, {OPERANDS: operands, KWARGS: dict(kwargs or {})}


@dataclass
class Node:
    name: str
    kind: str
    config: dict
    inputs: list[str]


def parse_nodes(model_config: dict, *, nested: bool = False) -> tuple[list[Node], str, tuple, str]:
    """(nodes in execution order, input layer name, input shape (H, W, C) with None for free dims, output name).

    A model used as a layer (`Sequential([base, …])`, `base(x)`) is inlined: its layers become `base/<layer>`.
    """
    kind = model_config.get("class_name")
    config = model_config["config"]
    layers = config["layers"]
    parse = _sequential if kind == "Sequential" else _functional
    nodes, input_name, shape, output = parse(layers, config, nested)
    nodes, output = _inline(nodes, output)
    return nodes, input_name, shape, output


def _inline(nodes: list[Node], output: str) -> tuple[list[Node], str]:
    flat: list[Node] = []
    alias: dict[str, str] = {}
    for node in nodes:
        inputs = [alias.get(i, i) for i in node.inputs]
        if node.kind not in _NESTED or not isinstance(node.config.get("layers"), list):
            flat.append(Node(node.name, node.kind, node.config, inputs))
            continue
        if len(inputs) != 1:
            raise GraftError(f"nested model {node.name!r} takes {len(inputs)} inputs; graft inlines one-input models")
        inner, inner_input, _, inner_output = parse_nodes({"class_name": node.kind, "config": node.config}, nested=True)
        prefix = f"{node.name}/"

        def rename(name: str, inner_input: str = inner_input, source: str = inputs[0], prefix: str = prefix) -> str:
            return source if name == inner_input else prefix + name

        flat += [Node(prefix + n.name, n.kind, n.config, [rename(i) for i in n.inputs]) for n in inner]
        alias[node.name] = rename(inner_output)
    return flat, alias.get(output, output)


def _shape_of(config: dict) -> tuple | None:
    shape = config.get("batch_shape") or config.get("batch_input_shape")
    return tuple(shape[1:]) if shape else None


def _sequential(layers: list[dict], config: dict, nested: bool) -> tuple[list[Node], str, tuple, str]:
    nodes: list[Node] = []
    shape = None
    previous = "input"
    if layers and layers[0]["class_name"] == "InputLayer":
        shape = _shape_of(layers[0]["config"])
        previous = layers[0]["config"].get("name") or previous
        layers = layers[1:]
    elif layers:
        shape = _shape_of(layers[0]["config"])
    if shape is None and isinstance(config.get("build_input_shape"), list):
        shape = tuple(config["build_input_shape"][1:])
    if shape is None and layers and isinstance(layers[0].get("build_config"), dict):
        shape = tuple(layers[0]["build_config"]["input_shape"][1:])
    if shape is None and not nested:
        raise GraftError("the Sequential model records no input shape; build it with keras.Input(...) first")
    input_name = previous
    for layer in layers:
        name = layer["config"]["name"]
        nodes.append(Node(name, layer_kind(layer), layer["config"], [previous]))
        previous = name
    return nodes, input_name, shape, previous


def _history(item: object) -> list[str]:
    """Layer names of the tensors in one inbound-node argument, in both Keras 2 and Keras 3 formats."""
    if isinstance(item, dict):
        if item.get("class_name") == "__keras_tensor__":
            return [item["config"]["keras_history"][0]]
        return []
    if isinstance(item, list | tuple):
        if len(item) >= 3 and isinstance(item[0], str) and isinstance(item[1], int):
            return [item[0]]
        return [name for sub in item for name in _history(sub)]
    return []


def _endpoints(value: object) -> list[str]:
    """`input_layers` / `output_layers`: [["name", 0, 0], …] or ["name", 0, 0]."""
    if isinstance(value, list) and value and isinstance(value[0], str):
        return [value[0]]
    return [entry[0] for entry in value or []]


def _functional(layers: list[dict], config: dict, nested: bool) -> tuple[list[Node], str, tuple, str]:
    inputs, outputs = _endpoints(config.get("input_layers")), _endpoints(config.get("output_layers"))
    if len(inputs) != 1 or len(outputs) != 1:
        raise GraftError(
            f"graft imports classifiers with one input and one output (this model has "
            f"{len(inputs)} inputs, {len(outputs)} outputs)"
        )
    nodes: list[Node] = []
    shape: tuple | None = None
    for layer in layers:
        name = layer.get("name") or layer["config"]["name"]
        inbound = layer.get("inbound_nodes") or []
        if len(inbound) > 1:
            raise GraftError(f"layer {name!r} is used more than once (shared layers are not supported)")
        if layer["class_name"] == "InputLayer":
            shape = _shape_of(layer["config"])
            continue
        node = inbound[0] if inbound else []
        args = node.get("args", []) if isinstance(node, dict) else node
        kind, layer_config = layer_kind(layer), layer["config"]
        if kind.startswith("ops."):
            sources, entries = _operands(args, node.get("kwargs", {}) if isinstance(node, dict) else {})
            layer_config = {**layer_config, **entries}
        else:
            sources = _history(args)
        nodes.append(Node(name, kind, layer_config, sources))
    if shape is None and not nested:
        raise GraftError("the model records no input shape")
    return _topological(nodes, inputs[0]), inputs[0], shape, outputs[0]


def _topological(nodes: list[Node], input_name: str) -> list[Node]:
    """Nodes in an order where every layer comes after its inputs (Keras configs usually are; not guaranteed)."""
    ready, ordered, pending = {input_name}, [], list(nodes)
    while pending:
        progress = [n for n in pending if all(i in ready for i in n.inputs)]
        if not progress:
            names = ", ".join(sorted({i for n in pending for i in n.inputs if i not in ready})[:5])
            raise GraftError(f"the model's layers read tensors no layer produces ({names})")
        ordered += progress
        ready |= {n.name for n in progress}
        pending = [n for n in pending if n.name not in ready]
    return ordered


def check_supported(nodes: list[Node]) -> None:
    """One error listing every unsupported layer (type and name), so a user sees the whole problem at once."""
    nested = [n.name for n in nodes if n.kind in _NESTED]
    if nested:
        raise GraftError(
            f"nested models without a layer list (subclassed: {', '.join(nested)}) cannot be imported; "
            "rebuild them as Sequential or functional models"
        )
    bad = [f"{n.kind} ({n.name})" for n in nodes if n.kind not in SUPPORTED]
    bad += [f"{n.kind} ({n.name}) with data_format channels_first" for n in nodes if _fmt(n) == "channels_first"]
    for n in nodes:
        act = n.config.get("activation")
        if act is not None and (not isinstance(act, str) or act not in ACTIVATIONS):
            bad.append(f"activation {act if isinstance(act, str) else act.get('class_name')!r} ({n.name})")
        kind = KERAS_CLASSES.get(n.kind)
        bad += [f"{n.kind} with {problem} ({n.name})" for problem in (kind.problems(n.config) if kind else [])]
    if bad:
        raise GraftError(f"unsupported Keras layers: {', '.join(bad)}; supported: {', '.join(SUPPORTED[1:])}")


def _fmt(node: Node) -> str:
    return node.config.get("data_format") or "channels_last"


def _named(kind: str, config: dict, arrays: WeightList, layer: str) -> dict[str, np.ndarray]:
    """Each array under its Keras name: from the file when it has names, else by Keras's creation order."""
    if arrays and all(name for name, _ in arrays):
        return {short_name(str(name)): value for name, value in arrays}
    order = LAYER_KINDS[kind].weight_names(config) if kind in LAYER_KINDS else []
    if len(arrays) > len(order):
        raise GraftError(f"layer {layer!r} ({kind}) has {len(arrays)} weight arrays, expected at most {len(order)}")
    return {name: value for name, (_, value) in zip(order, arrays, strict=False)}


def _key(name: str, used: set[str]) -> str:
    """A module name PyTorch accepts (no dots), unique within the graph."""
    key = re.sub(r"[^0-9A-Za-z_]", "_", name) or "layer"
    key = f"l_{key}" if key[0].isdigit() else key
    candidate, i = key, 1
    while candidate in used:
        candidate, i = f"{key}_{i}", i + 1
    used.add(candidate)
    return candidate


def _layer(node: Node, weights: dict[str, np.ndarray], major: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """(the layer's settings for the description, its parameters in PyTorch layout under module-local names)."""
    kind = LAYER_KINDS.get(node.kind)
    if kind is None:  # a stray InputLayer: described without settings, refused when the module is built
        return {}, {}
    missing = [w for w in kind.needs(weights) if w not in weights]
    if missing:
        raise GraftError(f"layer {node.name!r} ({node.kind}): the file has no {', '.join(missing)} for it")
    return kind.convert(node.config, weights, major, node.name)


def describe(source: KerasFile, *, input_order: str = "rgb") -> tuple[dict, dict[str, torch.Tensor], list[str]]:
    """(graph description, state dict for `KerasGraphModule`, notes on what was changed: a removed softmax)."""
    assert source.config is not None
    nodes, input_name, shape, output = parse_nodes(source.config)
    check_supported(nodes)
    if len(shape) != 3 or shape[2] is None:
        raise GraftError(f"graft imports image models with input (height, width, channels); this one takes {shape}")
    nodes, output, notes = _strip_softmax(nodes, output)
    used: set[str] = set()
    described, state = [], {}
    consumed = set()
    for node in nodes:
        arrays = source.weights.get(node.name, [])
        weights = _named(node.kind, node.config, arrays, node.name)
        consumed.add(node.name)
        settings, params = _layer(node, weights, source.keras_major)
        key = _key(node.name, used)
        described.append({"name": node.name, "key": key, "type": node.kind, "inputs": node.inputs, "config": settings})
        state.update({f"layers.{key}.{k}": v for k, v in params.items()})
    unused = [name for name, arrays in source.weights.items() if arrays and name not in consumed]
    if unused:
        raise GraftError(f"the file holds weights for layers the architecture does not have: {', '.join(unused[:8])}")
    graph = {
        "format": GRAPH_FORMAT,
        "version": GRAPH_VERSION,
        "name": source.config["config"].get("name", "keras_model"),
        "input": {"name": input_name, "shape": list(shape)},
        "input_order": input_order,
        "output": output,
        "layers": described,
    }
    return graph, state, notes


def _strip_softmax(nodes: list[Node], output: str) -> tuple[list[Node], str, list[str]]:
    """graft models return logits: a final softmax (layer, or a Dense/Conv activation) is removed, and said so.

    A one-unit sigmoid output (binary classifier) becomes two logits (0, z): softmax gives (1 − σ(z), σ(z)).
    """
    by_name = {n.name: n for n in nodes}
    last = by_name.get(output)
    if last is None:
        raise GraftError(f"the output layer {output!r} is not among the model's layers")
    act = last.config.get("activation") if last.kind == "Activation" else None
    # Class scores are (batch, classes): axis 1 is the last axis, as -1 is (a softmax over any other would not be
    # the final class softmax, and is kept).
    final_op_softmax = last.kind == "ops.Softmax" and last.config.get("axis", -1) in (-1, 1, [-1], [1])
    if (last.kind == "Softmax" or act == "softmax" or final_op_softmax) and len(last.inputs) == 1:
        kept = [n for n in nodes if n.name != output]
        return kept, last.inputs[0], [f"removed the final softmax layer {output!r}: graft bundles output logits"]
    if last.config.get("activation") == "softmax" and last.kind in ("Dense", "Conv2D"):
        last.config = {**last.config, "activation": "linear"}
        return nodes, output, [f"removed the softmax activation of {output!r}: graft bundles output logits"]
    dense = by_name.get(last.inputs[0]) if act == "sigmoid" and len(last.inputs) == 1 else last
    one_unit = dense is not None and dense.kind == "Dense" and int(dense.config.get("units", 0)) == 1
    if one_unit and (act == "sigmoid" or dense.config.get("activation") == "sigmoid"):
        kept = [n for n in nodes if n.name != output or n is dense]
        dense.config = {**dense.config, "activation": "linear"}
        binary = Node(f"{dense.name}_binary_logits", "BinaryLogits", {}, [dense.name])
        note = (
            f"the one-unit sigmoid output {output!r} became two logits (0, z): classes 0 and 1, "
            "with softmax probabilities (1 − σ(z), σ(z))"
        )
        return [*kept, binary], binary.name, [note]
    if last.config.get("activation") == "sigmoid" or act == "sigmoid":
        return nodes, output, [f"the output {output!r} ends in a sigmoid: graft reads outputs as logits for a softmax"]
    return nodes, output, []

"""A Keras model config → graft's layer-graph description (plain JSON) and a PyTorch state dict for it.

The description is what `Architecture.graph` stores in `graft.json`: one entry per layer with its type, inputs and
the few settings that decide what it computes (plus channel counts, so the module can be rebuilt before its
weights are loaded). No code, nothing pickled: `graph_module.KerasGraphModule` rebuilds the module from it.

Weights are converted to PyTorch layouts here: Conv2D (kh, kw, in, out) → (out, in, kh, kw); DepthwiseConv2D
(kh, kw, in, m) → (in·m, 1, kh, kw), output channel c·m + j as in Keras; Dense (in, out) → (out, in).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from graft.errors import GraftError
from graft.models.keras.files import KerasFile, WeightList, short_name

GRAPH_FORMAT = "graft.keras-graph"
GRAPH_VERSION = 1

ACTIVATIONS = (
    "linear",
    "relu",
    "relu6",
    "sigmoid",
    "tanh",
    "softmax",
    "log_softmax",
    "elu",
    "selu",
    "softplus",
    "softsign",
    "swish",
    "silu",
    "gelu",
    "exponential",
    "hard_sigmoid",
    "hard_silu",
    "hard_swish",
    "leaky_relu",
    "mish",
)
MERGES = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate")
SUPPORTED = (
    "InputLayer",
    "Conv2D",
    "DepthwiseConv2D",
    "SeparableConv2D",
    "Dense",
    "BatchNormalization",
    "MaxPooling2D",
    "AveragePooling2D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "Flatten",
    "Dropout",
    "SpatialDropout2D",
    "Activation",
    "ReLU",
    "LeakyReLU",
    "Softmax",
    "ZeroPadding2D",
    "Rescaling",
    "Reshape",
    *MERGES,
)
_ALIASES = {"Convolution2D": "Conv2D", "MaxPool2D": "MaxPooling2D", "AvgPool2D": "AveragePooling2D"}
_NESTED = ("Functional", "Sequential", "Model")


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
        nodes.append(Node(name, _ALIASES.get(layer["class_name"], layer["class_name"]), layer["config"], [previous]))
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
        sources = _history(args)
        kind = _ALIASES.get(layer["class_name"], layer["class_name"])
        nodes.append(Node(name, kind, layer["config"], sources))
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
        if n.kind in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D") and n.config.get("padding") == "causal":
            bad.append(f"{n.kind} with causal padding ({n.name})")
    if bad:
        shown = ", ".join(bad[:20]) + (f" and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise GraftError(f"unsupported Keras layers: {shown}; supported: {', '.join(SUPPORTED[1:])}")


def _fmt(node: Node) -> str:
    return node.config.get("data_format") or "channels_last"


def _pair(value: object) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value), int(value)]


def _named(kind: str, config: dict, arrays: WeightList, layer: str) -> dict[str, np.ndarray]:
    """Each array under its Keras name: from the file when it has names, else by Keras's creation order."""
    if arrays and all(name for name, _ in arrays):
        return {short_name(str(name)): value for name, value in arrays}
    if kind in ("Conv2D", "DepthwiseConv2D", "Dense"):
        order = ["kernel", "bias"]
    elif kind == "SeparableConv2D":
        order = ["depthwise_kernel", "pointwise_kernel", "bias"]
    elif kind == "BatchNormalization":
        order = [*(["gamma"] if config.get("scale", True) else []), *(["beta"] if config.get("center", True) else [])]
        order += ["moving_mean", "moving_variance"]
    else:
        order = []
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


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _conv_kernel(kernel: np.ndarray) -> torch.Tensor:
    return _t(kernel.transpose(3, 2, 0, 1))


def _depthwise_kernel(kernel: np.ndarray) -> torch.Tensor:
    kh, kw, cin, mult = kernel.shape
    return _t(kernel.reshape(kh, kw, cin * mult).transpose(2, 0, 1)[:, None])


def _layer(node: Node, weights: dict[str, np.ndarray], major: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """(the layer's settings for the description, its parameters in PyTorch layout under module-local names)."""
    c, kind = node.config, node.kind
    act = c.get("activation") or "linear"
    params: dict[str, torch.Tensor] = {}
    settings: dict = {}
    need = {
        "Conv2D": ["kernel"],
        "DepthwiseConv2D": ["kernel"] if "kernel" in weights else ["depthwise_kernel"],
        "SeparableConv2D": ["depthwise_kernel", "pointwise_kernel"],
        "Dense": ["kernel"],
        "BatchNormalization": ["moving_mean", "moving_variance"],
    }.get(kind, [])
    missing = [w for w in need if w not in weights]
    if missing:
        raise GraftError(f"layer {node.name!r} ({kind}): the file has no {', '.join(missing)} for it")
    conv = {
        "kernel_size": _pair(c.get("kernel_size")),
        "strides": _pair(c.get("strides") or 1),
        "padding": c.get("padding", "valid"),
        "dilation": _pair(c.get("dilation_rate") or 1),
        "activation": act,
    }
    if kind == "Conv2D":
        kernel = weights["kernel"]
        groups = int(c.get("groups") or 1)
        settings = {**conv, "in_channels": kernel.shape[2] * groups, "filters": kernel.shape[3], "groups": groups}
        params["weight"] = _conv_kernel(kernel)
    elif kind == "DepthwiseConv2D":
        kernel = weights.get("kernel", weights.get("depthwise_kernel"))
        settings = {**conv, "in_channels": kernel.shape[2], "filters": kernel.shape[2] * kernel.shape[3]}
        settings["groups"] = kernel.shape[2]
        params["weight"] = _depthwise_kernel(kernel)
    elif kind == "SeparableConv2D":
        dw, pw = weights["depthwise_kernel"], weights["pointwise_kernel"]
        settings = {**conv, "in_channels": dw.shape[2], "depth_multiplier": dw.shape[3], "filters": pw.shape[3]}
        params["depthwise.weight"] = _depthwise_kernel(dw)
        params["pointwise.weight"] = _conv_kernel(pw)
    elif kind == "Dense":
        kernel = weights["kernel"]
        settings = {"in_features": kernel.shape[0], "units": kernel.shape[1], "activation": act}
        params["weight"] = _t(kernel.T)
    elif kind == "BatchNormalization":
        axis = c.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        if not isinstance(axis, int):
            raise GraftError(f"layer {node.name!r}: BatchNormalization over several axes {axis} is not supported")
        mean = weights["moving_mean"]
        settings = {"axis": axis, "epsilon": float(c.get("epsilon", 1e-3)), "num_features": mean.shape[0]}
        settings["momentum"] = float(c.get("momentum", 0.99))
        params["weight"] = _t(weights.get("gamma", np.ones_like(mean)))
        params["bias"] = _t(weights.get("beta", np.zeros_like(mean)))
        params["running_mean"] = _t(mean)
        params["running_var"] = _t(weights["moving_variance"])
    elif kind in ("MaxPooling2D", "AveragePooling2D"):
        pool = _pair(c.get("pool_size") or 2)
        settings = {"pool_size": pool, "strides": _pair(c.get("strides")) or pool, "padding": c.get("padding", "valid")}
    elif kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        settings = {"keepdims": bool(c.get("keepdims", False))}
    elif kind in ("Dropout", "SpatialDropout2D"):
        settings = {"rate": float(c.get("rate", 0.0))}
    elif kind == "Activation":
        settings = {"activation": act}
    elif kind == "ReLU":
        settings = {
            "max_value": None if c.get("max_value") is None else float(c["max_value"]),
            "negative_slope": float(c.get("negative_slope") or 0.0),
            "threshold": float(c.get("threshold") or 0.0),
        }
    elif kind == "LeakyReLU":
        slope = c.get("negative_slope", c.get("alpha"))
        settings = {"negative_slope": float(0.3 if slope is None else slope)}
    elif kind == "Softmax":
        axis = c.get("axis", -1)
        settings = {"axis": axis[0] if isinstance(axis, list) else axis}
    elif kind == "ZeroPadding2D":
        pad = c.get("padding", 1)
        if isinstance(pad, int):
            pad = [[pad, pad], [pad, pad]]
        pad = [[p, p] if isinstance(p, int) else list(p) for p in pad]
        settings = {"padding": pad}
    elif kind == "Rescaling":
        settings = {"scale": c.get("scale", 1.0), "offset": c.get("offset", 0.0)}
        for key in ("scale", "offset"):
            if isinstance(settings[key], dict):
                raise GraftError(f"layer {node.name!r}: Rescaling with a tensor {key} is not supported")
    elif kind == "Reshape":
        settings = {"target_shape": [int(v) for v in c["target_shape"]]}
    elif kind == "Concatenate":
        settings = {"axis": int(c.get("axis", -1))}
    if "activation" in settings:
        settings["keras_major"] = major  # gelu and hard_sigmoid changed between Keras 2 and 3
    return settings, params


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
        if "bias" in weights and node.kind in ("Dense", "Conv2D", "DepthwiseConv2D", "SeparableConv2D"):
            where = "pointwise.bias" if node.kind == "SeparableConv2D" else "bias"
            state[f"layers.{key}.{where}"] = _t(weights["bias"])
            settings["use_bias"] = True
        elif node.kind in ("Dense", "Conv2D", "DepthwiseConv2D", "SeparableConv2D"):
            settings["use_bias"] = False
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
    if (last.kind == "Softmax" or act == "softmax") and len(last.inputs) == 1:
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

"""The Keras layer-kind registry: every kind converts and builds (no Keras needed), and `SUPPORTED` is the registry.

A kind registered with a converter but no builder, or a JSON type without a sample here, fails these tests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from graft.errors import GraftError
from graft.models.keras.graph import _ALIASES, SUPPORTED, Node, _layer, _named, check_supported
from graft.models.keras.graph_module import build_layer
from graft.models.keras.layers import KERAS_CLASSES, LAYER_KINDS
from graft.models.keras.layers.operations import BINARY, OPERANDS, REDUCTIONS, UNARY
from graft.models.keras.layers.weightless import INFERENCE_IDENTITY

RNG = np.random.default_rng(0)


def _w(*shape: int) -> np.ndarray:
    return RNG.normal(0, 0.5, shape).astype(np.float32)


_MAP = (1, 2, 5, 5)  # an NCHW feature map
# JSON type → (Keras config, weights by Keras name in Keras's creation order, input shapes)
SAMPLES: dict[str, tuple[dict, dict[str, np.ndarray], list[tuple[int, ...]]]] = {
    "Conv2D": ({"kernel_size": [3, 3], "padding": "same", "activation": "relu"}, {"kernel": _w(3, 3, 2, 4)}, [_MAP]),
    "DepthwiseConv2D": (
        {"kernel_size": 3, "strides": 2, "depth_multiplier": 2},
        {"kernel": _w(3, 3, 2, 2), "bias": _w(4)},
        [_MAP],
    ),
    "SeparableConv2D": (
        {"kernel_size": 3, "padding": "same", "activation": "gelu"},
        {"depthwise_kernel": _w(3, 3, 2, 1), "pointwise_kernel": _w(1, 1, 2, 3), "bias": _w(3)},
        [_MAP],
    ),
    "Dense": ({"units": 3, "activation": "softmax"}, {"kernel": _w(4, 3), "bias": _w(3)}, [(2, 4)]),
    "BatchNormalization": (
        {"axis": -1, "epsilon": 1e-3},
        {"gamma": _w(2), "beta": _w(2), "moving_mean": _w(2), "moving_variance": np.ones(2, np.float32)},
        [_MAP],
    ),
    "MaxPooling2D": ({"pool_size": [2, 2], "padding": "same"}, {}, [_MAP]),
    "AveragePooling2D": ({"pool_size": 3, "strides": 2}, {}, [_MAP]),
    "GlobalAveragePooling2D": ({}, {}, [_MAP]),
    "GlobalMaxPooling2D": ({"keepdims": True}, {}, [_MAP]),
    "Flatten": ({}, {}, [_MAP]),
    "Dropout": ({"rate": 0.5}, {}, [_MAP]),
    "SpatialDropout2D": ({"rate": 0.5}, {}, [_MAP]),
    "Activation": ({"activation": "hard_sigmoid"}, {}, [_MAP]),
    "ReLU": ({"max_value": 6.0, "negative_slope": 0.1, "threshold": 0.5}, {}, [_MAP]),
    "LeakyReLU": ({"alpha": 0.2}, {}, [_MAP]),
    "Softmax": ({"axis": [-1]}, {}, [_MAP]),
    "ZeroPadding2D": ({"padding": [[1, 2], 1]}, {}, [_MAP]),
    "Rescaling": ({"scale": 1 / 127.5, "offset": -1}, {}, [_MAP]),
    "Reshape": ({"target_shape": [25, 2]}, {}, [_MAP]),
    **{merge: ({}, {}, [_MAP, _MAP]) for merge in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")},
    "Concatenate": ({"axis": -1}, {}, [_MAP, _MAP]),
    "BinaryLogits": ({}, {}, [(2, 1)]),
    "Normalization": ({"axis": [3]}, {"mean": _w(2), "variance": np.ones(2, np.float32), "count": np.array(4)}, [_MAP]),
    "LayerNormalization": ({"axis": [-1], "epsilon": 1e-6}, {"gamma": _w(2), "beta": _w(2)}, [_MAP]),
    "PReLU": ({}, {"alpha": _w(5, 5, 2)}, [_MAP]),
    "LayerScale": ({"init_values": 1e-6, "projection_dim": 2}, {"gamma": _w(2)}, [_MAP]),
    **{noop: ({}, {}, [_MAP]) for noop in INFERENCE_IDENTITY},
    "Cropping2D": ({"cropping": [[1, 0], [2, 1]]}, {}, [_MAP]),
    "UpSampling2D": ({"size": [2, 3], "interpolation": "bilinear"}, {}, [_MAP]),
    "ELU": ({"alpha": 0.5}, {}, [_MAP]),
    **{f"ops.{op}": ({OPERANDS: [{"input": 0}, {"const": 2.0}]}, {}, [_MAP]) for op in BINARY},
    **{f"ops.{op}": ({OPERANDS: [{"input": 0}]}, {}, [_MAP]) for op in UNARY},
    **{f"ops.{op}": ({OPERANDS: [{"input": 0}], "axis": [1, 2]}, {}, [_MAP]) for op in REDUCTIONS},
    "ops.Clip": ({OPERANDS: [{"input": 0}], "x_min": -1.0, "x_max": 1.0}, {}, [_MAP]),
    "ops.Gelu": ({OPERANDS: [{"input": 0}], "approximate": False}, {}, [_MAP]),
    "ops.LeakyRelu": ({OPERANDS: [{"input": 0}]}, {}, [_MAP]),
    "ops.Elu": ({OPERANDS: [{"input": 0}]}, {}, [_MAP]),
    "ops.Softmax": ({OPERANDS: [{"input": 0}], "axis": -1}, {}, [_MAP]),
    "ops.Reshape": ({OPERANDS: [{"input": 0}], "newshape": [-1, 25, 2]}, {}, [_MAP]),
    "ops.Transpose": ({OPERANDS: [{"input": 0}], "axes": [0, 2, 1, 3]}, {}, [_MAP]),
    "ops.Squeeze": ({OPERANDS: [{"input": 0}], "axis": 0}, {}, [_MAP]),
    "ops.ExpandDims": ({OPERANDS: [{"input": 0}], "axis": 1}, {}, [(2, 4)]),
    "ops.Concatenate": ({OPERANDS: [{"inputs": [0, 1]}], "axis": -1}, {}, [_MAP, _MAP]),
}
# What graft supported before the registry: the registry may grow, never lose one of these.
SUPPORTED_BEFORE = (
    *("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense", "BatchNormalization", "MaxPooling2D"),
    *("AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten", "Dropout", "SpatialDropout2D"),
    *("Activation", "ReLU", "LeakyReLU", "Softmax", "ZeroPadding2D", "Rescaling", "Reshape"),
    *("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"),
)


def test_supported_is_the_registry():
    canonical = [kind.type for kind in LAYER_KINDS.values() if kind.keras_names]
    layers, operations = [t for t in canonical if not t.startswith("ops.")], [t for t in canonical if t[:4] == "ops."]
    assert ("InputLayer", *layers, *operations) == SUPPORTED  # InputLayer is the graph's input, not a layer kind
    assert set(SUPPORTED_BEFORE) <= set(SUPPORTED)
    assert {name for kind in LAYER_KINDS.values() for name in kind.keras_names} == set(KERAS_CLASSES)
    assert all(LAYER_KINDS[kind.type] is kind for kind in KERAS_CLASSES.values())
    assert _ALIASES == {"Convolution2D": "Conv2D", "MaxPool2D": "MaxPooling2D", "AvgPool2D": "AveragePooling2D"}


def test_every_registered_type_has_a_sample():
    assert set(SAMPLES) == set(LAYER_KINDS), "add a sample for each new layer kind (and remove old ones)"


@pytest.mark.parametrize("type_", sorted(LAYER_KINDS))
def test_every_kind_round_trips(type_):
    """Keras config → plain-JSON settings → torch module that takes exactly the converted parameters and runs."""
    config, weights, shapes = SAMPLES[type_]
    ordered = [("", array) for array in weights.values()]  # a file without weight names: Keras's creation order
    assert _named(type_, config, ordered, "layer").keys() == weights.keys()
    settings, params = _layer(Node("layer", type_, config, ["input"] * len(shapes)), weights, 3)
    settings = json.loads(json.dumps(settings))  # what a bundle stores and reads back
    module = build_layer(type_, settings).eval()
    expected = {k for k in module.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(params) == expected
    module.load_state_dict(params, strict=False)
    with torch.no_grad():
        out = module(*(torch.randn(shape) for shape in shapes))
    assert torch.isfinite(out).all() or type_ in ("ops.Log", "ops.Sqrt")  # of negative random inputs


def test_unsupported_layers_are_listed_with_everything_supported():
    nodes = [
        Node("norm", "Conv2DTranspose", {}, ["input"]),
        Node("conv", "Conv2D", {"padding": "causal", "data_format": "channels_first"}, ["norm"]),
    ]
    with pytest.raises(GraftError) as error:
        check_supported(nodes)
    assert str(error.value) == (
        "unsupported Keras layers: Conv2DTranspose (norm), Conv2D (conv) with data_format channels_first, "
        f"Conv2D with causal padding (conv); supported: {', '.join(SUPPORTED[1:])}"
    )


def test_a_kind_without_a_builder_is_refused_by_its_type():
    with pytest.raises(GraftError, match="unsupported layer type 'InputLayer'"):
        build_layer("InputLayer", {})

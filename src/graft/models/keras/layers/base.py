"""The layer-kind registry and what several kinds share (activations, TensorFlow "same" padding, axis mapping).

A kind is one class that knows, for the Keras layers it covers, everything graft does with them: the Keras class
names it reads, how a Keras config (and weights) becomes graft's JSON description, and how that description becomes
a torch module. `register` files it under each JSON type it writes and each Keras class name it reads, so the
converter and the builder cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from graft.errors import GraftError

# ACTIVATIONS (the names graft accepts) is the key set of `_ACTIVATION_FUNCTIONS`, defined after `channel_axis`.

Weights = dict[str, np.ndarray]  # one layer's arrays under their Keras names
Converted = tuple[dict, dict[str, torch.Tensor]]  # (settings for the description, parameters in PyTorch layout)


class LayerKind:
    """One kind of layer, instantiated once per JSON type it covers (`self.type`); the defaults suit a kind
    without weights or settings."""

    weight_order: tuple[str, ...] = ()  # Keras's creation order of the layer's arrays, for files without names

    def __init__(self, type_: str, keras_names: tuple[str, ...]) -> None:
        self.type = type_  # graft's JSON "type" (the Keras class name, where there is one)
        self.keras_names = keras_names  # the Keras class names read as this type: its own first, then old spellings

    def weight_names(self, config: dict) -> list[str]:
        """Names for a file's unnamed arrays, in order (BatchNormalization's depend on its config)."""
        return list(self.weight_order)

    def needs(self, weights: Weights) -> list[str]:
        """The arrays the conversion cannot do without (a missing one is refused by name, not a KeyError)."""
        return []

    def problems(self, config: dict) -> list[str]:
        """Settings of an otherwise supported layer that graft cannot reproduce (listed with the unsupported)."""
        return []

    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> Converted:
        """(settings for the description, parameters under module-local names); `layer` names it in errors."""
        return {}, {}

    def build(self, cfg: dict) -> nn.Module:
        """The torch module for a described layer: every kind must say (the unit tests check that it does)."""
        raise NotImplementedError(f"{type(self).__name__} cannot build {self.type}")


LAYER_KINDS: dict[str, LayerKind] = {}  # graft's JSON type → its kind, in registration order
KERAS_CLASSES: dict[str, LayerKind] = {}  # Keras class name (old spellings included) → its kind


def register(
    *types: str, aliases: dict[str, str] | None = None, keras: bool = True
) -> Callable[[type[LayerKind]], type[LayerKind]]:
    """Class decorator: one instance of the kind per JSON type; each type is also a Keras class name it reads,
    unless `keras=False` (types graft makes itself); `aliases` maps older Keras spellings onto a type."""
    aliases = aliases or {}

    def decorate(cls: type[LayerKind]) -> type[LayerKind]:
        for type_ in types:
            own = (type_, *(old for old, new in aliases.items() if new == type_)) if keras else ()
            clash = [name for name in (type_, *own) if name in LAYER_KINDS or name in KERAS_CLASSES]
            if clash:
                raise ValueError(f"layer kind {cls.__name__}: {', '.join(clash)} already registered")
            kind = cls(type_, own)
            LAYER_KINDS[type_] = kind
            KERAS_CLASSES.update(dict.fromkeys(own, kind))
        return cls

    return decorate


def pair(value: object) -> list[int]:
    """Keras's int-or-pair settings (kernel_size, strides, …) as a list of two ints; [] for None."""
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value), int(value)]


def tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def same_pad(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel, stride, dilation, value: float = 0.0) -> torch.Tensor:
    """TensorFlow's "same" padding: the extra pixel of an odd total goes after (what makes strided convs match)."""
    top, bottom = same_pad(x.shape[-2], kernel[0], stride[0], dilation[0])
    left, right = same_pad(x.shape[-1], kernel[1], stride[1], dilation[1])
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=value)
    return x


def channel_axis(axis: int, rank: int) -> int:
    """A Keras axis (channels-last layout) → the axis of graft's tensor (NCHW for rank 4)."""
    axis = axis % rank
    return {0: 0, 1: 2, 2: 3, 3: 1}[axis] if rank == 4 else axis


def _softmax(fn):
    return lambda x, major: fn(x, dim=channel_axis(-1, x.ndim))


# Keras activation name → f(x, keras major version): one table, so the accepted names and their maths cannot drift.
_ACTIVATION_FUNCTIONS = {
    "linear": lambda x, major: x,
    "relu": lambda x, major: F.relu(x),
    "relu6": lambda x, major: F.relu6(x),
    "sigmoid": lambda x, major: torch.sigmoid(x),
    "tanh": lambda x, major: torch.tanh(x),
    "softmax": _softmax(torch.softmax),
    "log_softmax": _softmax(torch.log_softmax),
    "elu": lambda x, major: F.elu(x),
    "selu": lambda x, major: F.selu(x),
    "softplus": lambda x, major: F.softplus(x),
    "softsign": lambda x, major: F.softsign(x),
    "swish": lambda x, major: F.silu(x),
    "silu": lambda x, major: F.silu(x),
    # the activation named "gelu" is the exact form in Keras 2 and 3 (only `ops.gelu` defaults to the tanh form)
    "gelu": lambda x, major: F.gelu(x),
    "exponential": lambda x, major: torch.exp(x),
    # Keras 3: relu6(x + 3) / 6; Keras 2: clip(0.2x + 0.5, 0, 1)
    "hard_sigmoid": lambda x, major: F.relu6(x + 3.0) / 6.0 if major >= 3 else torch.clamp(0.2 * x + 0.5, 0.0, 1.0),
    "hard_silu": lambda x, major: x * F.relu6(x + 3.0) / 6.0,
    "hard_swish": lambda x, major: x * F.relu6(x + 3.0) / 6.0,
    "leaky_relu": lambda x, major: F.leaky_relu(x, 0.2),
    "mish": lambda x, major: F.mish(x),
}
ACTIVATIONS: tuple[str, ...] = tuple(_ACTIVATION_FUNCTIONS)


def activation(name: str, x: torch.Tensor, major: int = 3) -> torch.Tensor:
    function = _ACTIVATION_FUNCTIONS.get(name)
    if function is None:
        raise GraftError(f"unknown activation {name!r}")
    return function(x, major)

"""The PyTorch module rebuilt from a layer-graph description (`graph.describe`): one submodule per Keras layer.

Tensors of rank 4 flow as NCHW (Keras: NHWC); every other rank keeps Keras's layout. Layers that depend on the
layout translate Keras axes (`Flatten` flattens in H, W, C order, as Keras does; `Concatenate(axis=-1)` joins
channels; `Reshape` reshapes the NHWC view). "same" padding is TensorFlow's: the extra pixel of an odd total goes
after, which is what makes strided convs match.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from graft.errors import GraftError
from graft.models.keras.graph import GRAPH_FORMAT, GRAPH_VERSION


def _same_pad(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel, stride, dilation, value: float = 0.0) -> torch.Tensor:
    top, bottom = _same_pad(x.shape[-2], kernel[0], stride[0], dilation[0])
    left, right = _same_pad(x.shape[-1], kernel[1], stride[1], dilation[1])
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=value)
    return x


def _channel_axis(axis: int, rank: int) -> int:
    """A Keras axis (channels-last layout) → the axis of graft's tensor (NCHW for rank 4)."""
    axis = axis % rank
    return {0: 0, 1: 2, 2: 3, 3: 1}[axis] if rank == 4 else axis


def activation(name: str, x: torch.Tensor, major: int = 3) -> torch.Tensor:
    if name == "linear":
        return x
    if name == "relu":
        return F.relu(x)
    if name == "relu6":
        return F.relu6(x)
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "tanh":
        return torch.tanh(x)
    if name in ("softmax", "log_softmax"):
        fn = torch.softmax if name == "softmax" else torch.log_softmax
        return fn(x, dim=_channel_axis(-1, x.ndim))
    if name == "elu":
        return F.elu(x)
    if name == "selu":
        return F.selu(x)
    if name == "softplus":
        return F.softplus(x)
    if name == "softsign":
        return F.softsign(x)
    if name in ("swish", "silu"):
        return F.silu(x)
    if name == "gelu":  # Keras 3 defaults to the tanh approximation, Keras 2 to the exact form
        return F.gelu(x, approximate="tanh" if major >= 3 else "none")
    if name == "exponential":
        return torch.exp(x)
    if name == "hard_sigmoid":  # Keras 3: relu6(x + 3) / 6; Keras 2: clip(0.2x + 0.5, 0, 1)
        return F.relu6(x + 3.0) / 6.0 if major >= 3 else torch.clamp(0.2 * x + 0.5, 0.0, 1.0)
    if name in ("hard_silu", "hard_swish"):
        return x * F.relu6(x + 3.0) / 6.0
    if name == "leaky_relu":
        return F.leaky_relu(x, 0.2)
    if name == "mish":
        return F.mish(x)
    raise GraftError(f"unknown activation {name!r}")


class KConv2d(nn.Conv2d):
    """Conv2D / DepthwiseConv2D: TensorFlow "same" or "valid" padding, then the layer's activation."""

    def __init__(self, cfg: dict) -> None:
        super().__init__(
            cfg["in_channels"],
            cfg["filters"],
            tuple(cfg["kernel_size"]),
            tuple(cfg["strides"]),
            0,
            tuple(cfg["dilation"]),
            cfg.get("groups", 1),
            cfg.get("use_bias", True),
        )
        self.same = cfg["padding"] == "same"
        self.act = cfg.get("activation", "linear")
        self.major = cfg.get("keras_major", 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            x = _pad_same(x, self.kernel_size, self.stride, self.dilation)
        return activation(self.act, super().forward(x), self.major)


class KSeparableConv2d(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        cin, mult = cfg["in_channels"], cfg["depth_multiplier"]
        depthwise = {**cfg, "filters": cin * mult, "groups": cin, "use_bias": False, "activation": "linear"}
        self.depthwise = KConv2d(depthwise)
        self.pointwise = nn.Conv2d(cin * mult, cfg["filters"], 1, bias=cfg.get("use_bias", True))
        self.act = cfg.get("activation", "linear")
        self.major = cfg.get("keras_major", 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return activation(self.act, self.pointwise(self.depthwise(x)), self.major)


class KDense(nn.Linear):
    """Dense on the last Keras axis: features of rank 2, channels of an NCHW map."""

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg["in_features"], cfg["units"], cfg.get("use_bias", True))
        self.act = cfg.get("activation", "linear")
        self.major = cfg.get("keras_major", 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            return activation(self.act, super().forward(x.movedim(1, -1)).movedim(-1, 1), self.major)
        return activation(self.act, super().forward(x), self.major)


class KBatchNorm(_BatchNorm):
    """BatchNormalization over the channel axis of any rank (Keras's epsilon; momentum converted)."""

    def __init__(self, cfg: dict) -> None:
        super().__init__(cfg["num_features"], eps=cfg["epsilon"], momentum=1.0 - cfg.get("momentum", 0.99))
        self.keras_axis = cfg.get("axis", -1)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.ndim < 2:
            raise ValueError(f"BatchNormalization needs a batch of at least 2-D tensors, got {x.ndim}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = _channel_axis(self.keras_axis, x.ndim)
        if axis != 1:
            return super().forward(x.movedim(axis, 1)).movedim(1, axis)
        return super().forward(x)


class KPool2d(nn.Module):
    def __init__(self, cfg: dict, kind: str) -> None:
        super().__init__()
        self.max = kind == "MaxPooling2D"
        self.pool_size, self.strides = tuple(cfg["pool_size"]), tuple(cfg["strides"])
        self.same = cfg["padding"] == "same"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.max:
            if self.same:
                x = _pad_same(x, self.pool_size, self.strides, (1, 1), value=-math.inf)
            return F.max_pool2d(x, self.pool_size, self.strides)
        if not self.same:
            return F.avg_pool2d(x, self.pool_size, self.strides)
        # TensorFlow averages over the real pixels only: sum over the window / count of real pixels in it.
        ones = torch.ones((1, 1, *x.shape[-2:]), dtype=x.dtype, device=x.device)
        total = F.avg_pool2d(_pad_same(x, self.pool_size, self.strides, (1, 1)), self.pool_size, self.strides)
        count = F.avg_pool2d(_pad_same(ones, self.pool_size, self.strides, (1, 1)), self.pool_size, self.strides)
        return total / count


class KGlobalPool(nn.Module):
    def __init__(self, cfg: dict, kind: str) -> None:
        super().__init__()
        self.max, self.keepdims = kind == "GlobalMaxPooling2D", cfg.get("keepdims", False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.max:
            return x.amax(dim=(2, 3), keepdim=self.keepdims)
        return x.mean(dim=(2, 3), keepdim=self.keepdims)


class KFlatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:  # Keras flattens NHWC: keep its order so the next Dense's weights stay right
            x = x.permute(0, 2, 3, 1)
        return x.flatten(1)


class KActivation(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.act, self.major = cfg["activation"], cfg.get("keras_major", 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return activation(self.act, x, self.major)


class KReLU(nn.Module):
    """Keras ReLU: x above `threshold` (capped at `max_value`), `negative_slope`·(x − threshold) below."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.max_value, self.slope, self.threshold = cfg.get("max_value"), cfg["negative_slope"], cfg["threshold"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.slope == 0 and self.threshold == 0:
            out = F.relu(x)
        else:
            out = torch.where(x >= self.threshold, x, self.slope * (x - self.threshold))
        return out if self.max_value is None else torch.clamp(out, max=self.max_value)


class KLeakyReLU(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.slope = cfg["negative_slope"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.slope)


class KSoftmax(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.axis = cfg.get("axis", -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=_channel_axis(self.axis, x.ndim))


class KZeroPadding2d(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        (self.top, self.bottom), (self.left, self.right) = cfg["padding"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (self.left, self.right, self.top, self.bottom))


class KRescaling(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.scale, self.offset = cfg["scale"], cfg["offset"]

    def _value(self, value: float | list, x: torch.Tensor) -> torch.Tensor | float:
        if isinstance(value, list):
            t = torch.tensor(value, dtype=x.dtype, device=x.device)
            return t.view(1, -1, 1, 1) if x.ndim == 4 else t
        return value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._value(self.scale, x) + self._value(self.offset, x)


class KReshape(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.target = list(cfg["target_shape"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.permute(0, 2, 3, 1)
        x = x.reshape(x.shape[0], *self.target)
        return x.permute(0, 3, 1, 2) if x.ndim == 4 else x


class KMerge(nn.Module):
    def __init__(self, cfg: dict, kind: str) -> None:
        super().__init__()
        self.kind, self.axis = kind, cfg.get("axis", -1)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.kind == "Concatenate":
            return torch.cat(xs, dim=_channel_axis(self.axis, xs[0].ndim))
        if self.kind == "Subtract":
            return xs[0] - xs[1]
        out = xs[0]
        for x in xs[1:]:
            if self.kind in ("Add", "Average"):
                out = out + x
            elif self.kind == "Multiply":
                out = out * x
            elif self.kind == "Maximum":
                out = torch.maximum(out, x)
            else:
                out = torch.minimum(out, x)
        return out / len(xs) if self.kind == "Average" else out


class KBinaryLogits(nn.Module):
    """A one-unit sigmoid classifier's z as two logits (0, z): softmax = (1 − σ(z), σ(z)), exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x], dim=1)


def build_layer(kind: str, cfg: dict) -> nn.Module:
    if kind in ("Conv2D", "DepthwiseConv2D"):
        return KConv2d(cfg)
    if kind == "SeparableConv2D":
        return KSeparableConv2d(cfg)
    if kind == "Dense":
        return KDense(cfg)
    if kind == "BatchNormalization":
        return KBatchNorm(cfg)
    if kind in ("MaxPooling2D", "AveragePooling2D"):
        return KPool2d(cfg, kind)
    if kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        return KGlobalPool(cfg, kind)
    if kind == "Flatten":
        return KFlatten()
    if kind == "Dropout":
        return nn.Dropout(cfg.get("rate", 0.0))
    if kind == "SpatialDropout2D":
        return nn.Dropout2d(cfg.get("rate", 0.0))
    if kind == "Activation":
        return KActivation(cfg)
    if kind == "ReLU":
        return KReLU(cfg)
    if kind == "LeakyReLU":
        return KLeakyReLU(cfg)
    if kind == "Softmax":
        return KSoftmax(cfg)
    if kind == "ZeroPadding2D":
        return KZeroPadding2d(cfg)
    if kind == "Rescaling":
        return KRescaling(cfg)
    if kind == "Reshape":
        return KReshape(cfg)
    if kind == "BinaryLogits":
        return KBinaryLogits()
    if kind in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"):
        return KMerge(cfg, kind)
    raise GraftError(f"unsupported layer type {kind!r} in the graph description")


class KerasGraphModule(nn.Module):
    """Runs the described layers in order; the input is NCHW (flipped to BGR first when the model expects it)."""

    def __init__(self, graph: dict) -> None:
        super().__init__()
        if graph.get("format") != GRAPH_FORMAT or int(graph.get("version", 0)) > GRAPH_VERSION:
            raise GraftError(f"not a graft layer graph this version reads (format {graph.get('format')!r})")
        self.input_name = graph["input"]["name"]
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
        """The output layer (timm's name for it): what trains under `--strategy transfer`.

        A graph without a layer of its own at the output (e.g. one ending in an activation) has no classifier to
        train alone; the whole graph is then the classifier, so transfer trains everything.
        """
        key = next((key for name, key, _ in self.plan if name == self.output_name), None)
        return self.layers[key] if key is not None else self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bgr:
            x = x.flip(1)
        values = {self.input_name: x}
        for (name, key, inputs), release in zip(self.plan, self.release, strict=True):
            values[name] = self.layers[key](*(values[i] for i in inputs))
            for done in release:
                del values[done]
        return values[self.output_name]

"""Layers without weights: pooling, reshaping, activations, padding, rescaling, merges, and graft's BinaryLogits.

Tensors of rank 4 flow as NCHW (Keras: NHWC); every other rank keeps Keras's layout. Layers that depend on the
layout translate Keras axes (`Flatten` flattens in H, W, C order, as Keras does; `Concatenate(axis=-1)` joins
channels; `Reshape` reshapes the NHWC view).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from graft.errors import GraftError
from graft.models.keras.layers.base import (
    Converted,
    LayerKind,
    Weights,
    activation,
    channel_axis,
    pad_same,
    pair,
    register,
)

MERGES = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate")


@register("MaxPooling2D", "AveragePooling2D", aliases={"MaxPool2D": "MaxPooling2D", "AvgPool2D": "AveragePooling2D"})
class Pooling2DKind(LayerKind):
    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> Converted:
        pool = pair(config.get("pool_size") or 2)
        strides = pair(config.get("strides")) or pool
        return {"pool_size": pool, "strides": strides, "padding": config.get("padding", "valid")}, {}

    def build(self, cfg: dict) -> nn.Module:
        return KPool2d(cfg, self.type)


@register("GlobalAveragePooling2D", "GlobalMaxPooling2D")
class GlobalPooling2DKind(LayerKind):
    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> Converted:
        return {"keepdims": bool(config.get("keepdims", False))}, {}

    def build(self, cfg: dict) -> nn.Module:
        return KGlobalPool(cfg, self.type)


@register("Flatten")
class FlattenKind(LayerKind):
    def build(self, cfg: dict) -> nn.Module:
        return KFlatten()


@register("Dropout", "SpatialDropout2D")
class DropoutKind(LayerKind):
    """Inactive in inference; kept (with its rate) so a fine-tuned graph drops out as the Keras model did."""

    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> Converted:
        return {"rate": float(config.get("rate", 0.0))}, {}

    def build(self, cfg: dict) -> nn.Module:
        dropout = nn.Dropout2d if self.type == "SpatialDropout2D" else nn.Dropout
        return dropout(cfg.get("rate", 0.0))


# Random augmentation and noise layers act only in training: at inference each returns its input.
INFERENCE_IDENTITY = (
    "Identity",
    "RandomFlip",
    "RandomRotation",
    "RandomZoom",
    "RandomTranslation",
    "RandomContrast",
    "RandomBrightness",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
)


@register(*INFERENCE_IDENTITY)
class InferenceIdentityKind(LayerKind):
    """Identity at inference (graft bundles predict; fine-tuning uses graft's own augmentation, not these)."""

    def build(self, cfg: dict) -> nn.Module:
        return nn.Identity()


@register("Cropping2D")
class Cropping2DKind(LayerKind):
    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> Converted:
        crop = config.get("cropping", ((0, 0), (0, 0)))
        if isinstance(crop, int):
            crop = [[crop, crop], [crop, crop]]
        return {"cropping": [[c, c] if isinstance(c, int) else [int(v) for v in c] for c in crop]}, {}

    def build(self, cfg: dict) -> nn.Module:
        return KCropping2d(cfg)


@register("UpSampling2D")
class UpSampling2DKind(LayerKind):
    def problems(self, config: dict) -> list[str]:
        method = config.get("interpolation", "nearest")
        return [] if method in ("nearest", "bilinear") else [f"interpolation {method!r}"]

    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> Converted:
        return {"size": pair(config.get("size") or 2), "interpolation": config.get("interpolation", "nearest")}, {}

    def build(self, cfg: dict) -> nn.Module:
        return KUpSampling2d(cfg)


@register("ELU")
class ELUKind(LayerKind):
    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> Converted:
        return {"alpha": float(config.get("alpha", 1.0))}, {}

    def build(self, cfg: dict) -> nn.Module:
        return KELU(cfg)


@register("Activation")
class ActivationKind(LayerKind):
    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> Converted:
        return {"activation": config.get("activation") or "linear", "keras_major": major}, {}

    def build(self, cfg: dict) -> nn.Module:
        return KActivation(cfg)


@register("ReLU")
class ReLUKind(LayerKind):
    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> Converted:
        settings = {
            "max_value": None if config.get("max_value") is None else float(config["max_value"]),
            "negative_slope": float(config.get("negative_slope") or 0.0),
            "threshold": float(config.get("threshold") or 0.0),
        }
        return settings, {}

    def build(self, cfg: dict) -> nn.Module:
        return KReLU(cfg)


@register("LeakyReLU")
class LeakyReLUKind(LayerKind):
    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> Converted:
        slope = config.get("negative_slope", config.get("alpha"))  # Keras 2 called it alpha
        return {"negative_slope": float(0.3 if slope is None else slope)}, {}

    def build(self, cfg: dict) -> nn.Module:
        return KLeakyReLU(cfg)


@register("Softmax")
class SoftmaxKind(LayerKind):
    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> Converted:
        axis = config.get("axis", -1)
        return {"axis": axis[0] if isinstance(axis, list) else axis}, {}

    def build(self, cfg: dict) -> nn.Module:
        return KSoftmax(cfg)


@register("ZeroPadding2D")
class ZeroPadding2DKind(LayerKind):
    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> Converted:
        pad = config.get("padding", 1)
        if isinstance(pad, int):
            pad = [[pad, pad], [pad, pad]]
        return {"padding": [[p, p] if isinstance(p, int) else list(p) for p in pad]}, {}

    def build(self, cfg: dict) -> nn.Module:
        return KZeroPadding2d(cfg)


@register("Rescaling")
class RescalingKind(LayerKind):
    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> Converted:
        settings = {"scale": config.get("scale", 1.0), "offset": config.get("offset", 0.0)}
        for key in ("scale", "offset"):
            if isinstance(settings[key], dict):
                raise GraftError(f"layer {layer!r}: Rescaling with a tensor {key} is not supported")
        return settings, {}

    def build(self, cfg: dict) -> nn.Module:
        return KRescaling(cfg)


@register("Reshape")
class ReshapeKind(LayerKind):
    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> Converted:
        return {"target_shape": [int(v) for v in config["target_shape"]]}, {}

    def build(self, cfg: dict) -> nn.Module:
        return KReshape(cfg)


@register(*MERGES)
class MergeKind(LayerKind):
    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> Converted:
        return ({"axis": int(config.get("axis", -1))} if self.type == "Concatenate" else {}), {}

    def build(self, cfg: dict) -> nn.Module:
        return KMerge(cfg, self.type)


@register("BinaryLogits", keras=False)
class BinaryLogitsKind(LayerKind):
    """Not a Keras layer: graft appends it to a one-unit sigmoid classifier (see `graph._strip_softmax`)."""

    def build(self, cfg: dict) -> nn.Module:
        return KBinaryLogits()


class KPool2d(nn.Module):
    def __init__(self, cfg: dict, kind: str) -> None:
        super().__init__()
        self.max = kind == "MaxPooling2D"
        self.pool_size, self.strides = tuple(cfg["pool_size"]), tuple(cfg["strides"])
        self.same = cfg["padding"] == "same"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.max:
            if self.same:
                x = pad_same(x, self.pool_size, self.strides, (1, 1), value=-math.inf)
            return F.max_pool2d(x, self.pool_size, self.strides)
        if not self.same:
            return F.avg_pool2d(x, self.pool_size, self.strides)
        # TensorFlow averages over the real pixels only: sum over the window / count of real pixels in it.
        ones = torch.ones((1, 1, *x.shape[-2:]), dtype=x.dtype, device=x.device)
        total = F.avg_pool2d(pad_same(x, self.pool_size, self.strides, (1, 1)), self.pool_size, self.strides)
        count = F.avg_pool2d(pad_same(ones, self.pool_size, self.strides, (1, 1)), self.pool_size, self.strides)
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
        return torch.softmax(x, dim=channel_axis(self.axis, x.ndim))


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
            return torch.cat(xs, dim=channel_axis(self.axis, xs[0].ndim))
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


class KCropping2d(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        (self.top, self.bottom), (self.left, self.right) = cfg["cropping"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        return x[..., self.top : height - self.bottom, self.left : width - self.right]


class KUpSampling2d(nn.Module):
    """Keras repeats pixels ("nearest") or resizes with half-pixel centres, no antialiasing ("bilinear")."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.size, self.mode = tuple(cfg["size"]), cfg["interpolation"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "nearest":
            return x.repeat_interleave(self.size[0], dim=-2).repeat_interleave(self.size[1], dim=-1)
        out = (x.shape[-2] * self.size[0], x.shape[-1] * self.size[1])
        return F.interpolate(x, size=out, mode="bilinear", align_corners=False, antialias=False)


class KELU(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.alpha = cfg["alpha"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(x, self.alpha)


class KBinaryLogits(nn.Module):
    """A one-unit sigmoid classifier's z as two logits (0, z): softmax = (1 − σ(z), σ(z)), exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x], dim=1)

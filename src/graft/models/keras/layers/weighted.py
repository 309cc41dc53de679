"""Layers with weights: convolutions, Dense and BatchNormalization, with their Keras → PyTorch weight layouts.

Conv2D (kh, kw, in, out) → (out, in, kh, kw); DepthwiseConv2D (kh, kw, in, m) → (in·m, 1, kh, kw), output channel
c·m + j as in Keras; Dense (in, out) → (out, in). Settings record channel counts, so a module can be rebuilt (and
its shapes checked) before its weights are loaded. `keras_major` goes with every activation: hard_sigmoid changed
between Keras 2 and 3.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

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
    tensor,
)


def _conv_kernel(kernel: np.ndarray) -> torch.Tensor:
    return tensor(kernel.transpose(3, 2, 0, 1))


def _depthwise_kernel(kernel: np.ndarray) -> torch.Tensor:
    kh, kw, cin, mult = kernel.shape
    return tensor(kernel.reshape(kh, kw, cin * mult).transpose(2, 0, 1)[:, None])


def _conv_settings(c: dict) -> dict:
    return {
        "kernel_size": pair(c.get("kernel_size")),
        "strides": pair(c.get("strides") or 1),
        "padding": c.get("padding", "valid"),
        "dilation": pair(c.get("dilation_rate") or 1),
        "activation": c.get("activation") or "linear",
    }


def _bias(settings: dict, params: dict[str, torch.Tensor], weights: Weights, where: str) -> None:
    """The bias, when the file has one, goes last (`use_bias` closes the settings: bundles keep that order)."""
    settings["use_bias"] = "bias" in weights
    if "bias" in weights:
        params[where] = tensor(weights["bias"])


class _Convolution(LayerKind):
    weight_order = ("kernel", "bias")

    def needs(self, weights: Weights) -> list[str]:
        return ["kernel"]

    def problems(self, config: dict) -> list[str]:
        return ["causal padding"] if config.get("padding") == "causal" else []

    def build(self, cfg: dict) -> nn.Module:
        return KConv2d(cfg)


@register("Conv2D", aliases={"Convolution2D": "Conv2D"})
class Conv2DKind(_Convolution):
    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> Converted:
        kernel = weights["kernel"]
        groups = int(config.get("groups") or 1)
        settings = {**_conv_settings(config), "in_channels": kernel.shape[2] * groups, "filters": kernel.shape[3]}
        settings |= {"groups": groups, "keras_major": major}
        params = {"weight": _conv_kernel(kernel)}
        _bias(settings, params, weights, "bias")
        return settings, params


@register("DepthwiseConv2D")
class DepthwiseConv2DKind(_Convolution):
    """Keras 3 names the kernel `kernel`, Keras 2 `depthwise_kernel`."""

    def needs(self, weights: Weights) -> list[str]:
        return ["kernel"] if "kernel" in weights else ["depthwise_kernel"]

    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> Converted:
        kernel = weights.get("kernel", weights.get("depthwise_kernel"))
        cin, mult = kernel.shape[2], kernel.shape[3]
        settings = {**_conv_settings(config), "in_channels": cin, "filters": cin * mult, "groups": cin}
        settings["keras_major"] = major
        params = {"weight": _depthwise_kernel(kernel)}
        _bias(settings, params, weights, "bias")
        return settings, params


@register("SeparableConv2D")
class SeparableConv2DKind(_Convolution):
    weight_order = ("depthwise_kernel", "pointwise_kernel", "bias")

    def needs(self, weights: Weights) -> list[str]:
        return ["depthwise_kernel", "pointwise_kernel"]

    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> Converted:
        dw, pw = weights["depthwise_kernel"], weights["pointwise_kernel"]
        settings = {**_conv_settings(config), "in_channels": dw.shape[2], "depth_multiplier": dw.shape[3]}
        settings |= {"filters": pw.shape[3], "keras_major": major}
        params = {"depthwise.weight": _depthwise_kernel(dw), "pointwise.weight": _conv_kernel(pw)}
        _bias(settings, params, weights, "pointwise.bias")
        return settings, params

    def build(self, cfg: dict) -> nn.Module:
        return KSeparableConv2d(cfg)


@register("Dense")
class DenseKind(LayerKind):
    weight_order = ("kernel", "bias")

    def needs(self, weights: Weights) -> list[str]:
        return ["kernel"]

    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> Converted:
        kernel = weights["kernel"]
        act = config.get("activation") or "linear"
        settings = {"in_features": kernel.shape[0], "units": kernel.shape[1], "activation": act, "keras_major": major}
        params = {"weight": tensor(kernel.T)}
        _bias(settings, params, weights, "bias")
        return settings, params

    def build(self, cfg: dict) -> nn.Module:
        return KDense(cfg)


@register("BatchNormalization")
class BatchNormalizationKind(LayerKind):
    def weight_names(self, config: dict) -> list[str]:
        """gamma and beta exist only with `scale` / `center` (both on by default)."""
        order = [*(["gamma"] if config.get("scale", True) else []), *(["beta"] if config.get("center", True) else [])]
        return [*order, "moving_mean", "moving_variance"]

    def needs(self, weights: Weights) -> list[str]:
        return ["moving_mean", "moving_variance"]

    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> Converted:
        axis = config.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        if not isinstance(axis, int):
            raise GraftError(f"layer {layer!r}: BatchNormalization over several axes {axis} is not supported")
        mean = weights["moving_mean"]
        settings = {"axis": axis, "epsilon": float(config.get("epsilon", 1e-3)), "num_features": mean.shape[0]}
        settings["momentum"] = float(config.get("momentum", 0.99))
        params = {
            "weight": tensor(weights.get("gamma", np.ones_like(mean))),
            "bias": tensor(weights.get("beta", np.zeros_like(mean))),
            "running_mean": tensor(mean),
            "running_var": tensor(weights["moving_variance"]),
        }
        return settings, params

    def build(self, cfg: dict) -> nn.Module:
        return KBatchNorm(cfg)


def _channel_only(config: dict, layer: str, what: str) -> int:
    """The single Keras axis a per-channel layer acts on, which must be the last (channels-last) one."""
    axis = config.get("axis", -1)
    axis = axis[0] if isinstance(axis, list | tuple) and len(axis) == 1 else axis
    if not isinstance(axis, int) or axis not in (-1, 3):
        raise GraftError(f"layer {layer!r}: {what} over axis {axis} is not supported (only the channel axis, -1)")
    return -1


@register("Normalization")
class NormalizationKind(LayerKind):
    """(x − mean) / max(√variance, 1e-7) per channel (Keras's formula); mean and variance from the weights, or from
    the config when the model was built with them (`Normalization(mean=…, variance=…)`, EfficientNetV2)."""

    weight_order = ("mean", "variance", "count")

    def problems(self, config: dict) -> list[str]:
        return ["invert=True"] if config.get("invert") else []

    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> Converted:
        _channel_only(config, layer, "Normalization")
        mean, variance = weights.get("mean"), weights.get("variance")
        if mean is None or variance is None:
            mean, variance = config.get("mean"), config.get("variance")
        if mean is None or variance is None:
            raise GraftError(f"layer {layer!r}: Normalization without a mean and variance (it was never adapted)")
        mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        variance = np.asarray(variance, dtype=np.float32).reshape(-1)
        if mean.shape != variance.shape:
            raise GraftError(f"layer {layer!r}: Normalization mean {mean.shape} and variance {variance.shape} differ")
        return {"channels": int(mean.shape[0])}, {"mean": tensor(mean), "variance": tensor(variance)}

    def build(self, cfg: dict) -> nn.Module:
        return KNormalization(cfg)


@register("LayerNormalization")
class LayerNormalizationKind(LayerKind):
    """Mean and variance over the given Keras axes, then gamma/beta (on the last axis): Keras's formula."""

    def weight_names(self, config: dict) -> list[str]:
        return [*(["gamma"] if config.get("scale", True) else []), *(["beta"] if config.get("center", True) else [])]

    def problems(self, config: dict) -> list[str]:
        return ["rms_scaling=True"] if config.get("rms_scaling") else []

    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> Converted:
        axis = config.get("axis", -1)
        axes = [int(a) for a in axis] if isinstance(axis, list | tuple) else [int(axis)]
        settings = {"axis": axes, "epsilon": float(config.get("epsilon", 1e-3))}
        params = {}
        for name in ("gamma", "beta"):
            if name in weights:
                if weights[name].ndim != 1 or axes not in ([-1], [3]):
                    raise GraftError(
                        f"layer {layer!r}: LayerNormalization with {name} over axes {axes} is not supported"
                    )
                params[name] = tensor(weights[name])
        settings |= {"channels": int(next(iter(params.values())).shape[0]) if params else 0}
        settings |= {"scale": "gamma" in params, "center": "beta" in params}
        return settings, params

    def build(self, cfg: dict) -> nn.Module:
        return KLayerNormalization(cfg)


@register("PReLU")
class PReLUKind(LayerKind):
    """max(x, 0) − alpha·max(−x, 0); alpha has the shape of one NHWC sample (1 on `shared_axes`)."""

    weight_order = ("alpha",)

    def needs(self, weights: Weights) -> list[str]:
        return ["alpha"]

    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> Converted:
        alpha = weights["alpha"]
        return {"alpha_shape": list(alpha.shape)}, {"alpha": tensor(alpha)}

    def build(self, cfg: dict) -> nn.Module:
        return KPReLU(cfg)


@register("LayerScale")
class LayerScaleKind(LayerKind):
    """ConvNeXt's LayerScale (keras.applications.convnext): x · gamma on the channel axis."""

    weight_order = ("gamma",)  # Keras 3 leaves it unnamed: legacy .h5 files call it "variable"

    def convert(self, config: dict, weights: Weights, major: int, layer: str) -> Converted:
        if len(weights) != 1:
            raise GraftError(f"layer {layer!r}: LayerScale has {len(weights)} weight arrays, expected its one scale")
        gamma = next(iter(weights.values())).reshape(-1)
        if gamma.shape[0] != int(config.get("projection_dim", gamma.shape[0])):
            raise GraftError(f"layer {layer!r}: LayerScale gamma has {gamma.shape[0]} values, not projection_dim")
        return {"channels": int(gamma.shape[0])}, {"gamma": tensor(gamma)}

    def build(self, cfg: dict) -> nn.Module:
        return KLayerScale(cfg)


def _last_axis(x: torch.Tensor) -> torch.Tensor:
    """NCHW → NHWC (Keras's layout, where the per-channel layers act on the last axis); other ranks as they are."""
    return x.permute(0, 2, 3, 1) if x.ndim == 4 else x


def _back(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2) if x.ndim == 4 else x


class KNormalization(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(cfg["channels"]))
        self.register_buffer("variance", torch.ones(cfg["channels"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        std = torch.clamp(torch.sqrt(self.variance), min=1e-7)
        return _back((_last_axis(x) - self.mean) / std)


class KLayerNormalization(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.axes, self.eps = tuple(cfg["axis"]), cfg["epsilon"]
        if cfg.get("scale"):
            self.gamma = nn.Parameter(torch.ones(cfg["channels"]))
        if cfg.get("center"):
            self.beta = nn.Parameter(torch.zeros(cfg["channels"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _last_axis(x)
        mean = y.mean(dim=self.axes, keepdim=True)
        variance = y.var(dim=self.axes, keepdim=True, unbiased=False)
        y = (y - mean) * torch.rsqrt(variance + self.eps)
        if hasattr(self, "gamma"):
            y = y * self.gamma
        if hasattr(self, "beta"):
            y = y + self.beta
        return _back(y)


class KPReLU(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(cfg["alpha_shape"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _last_axis(x)
        return _back(torch.relu(y) - self.alpha * torch.relu(-y))


class KLayerScale(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(cfg["channels"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _back(_last_axis(x) * self.gamma)


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
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
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
        axis = channel_axis(self.keras_axis, x.ndim)
        if axis != 1:
            return super().forward(x.movedim(axis, 1)).movedim(1, axis)
        return super().forward(x)

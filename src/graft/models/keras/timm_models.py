"""timm model names for the Keras Applications variants timm cannot express through its own names.

Registered with timm on import (graft.models.factory imports this module), so `graft.json` can record them as
ordinary `timm_name` + `timm_kwargs` and `timm.create_model` rebuilds them:

- `keras_mobilenetv1(channel_multiplier=α)`: timm's MobileNet v1 builder at any Keras alpha (timm registers
  only 1.0 and 1.25, and `mobilenetv1_100` fixes the multiplier, so it cannot be passed as a kwarg);
- `keras_mobilenetv2(channel_multiplier=α)`: the same for MobileNetV2 alphas timm has no name for (1.3);
- `keras_resnet50`: timm's ResNet-50 with the stride on the first 1×1 conv of each bottleneck, as in Keras's
  (and the original paper's) ResNet50; timm's `resnet50` strides the 3×3 conv (the "v1.5" layout).

The MobileNets default to Keras's TensorFlow "same" padding and BatchNorm epsilon 1e-3, so training one from
scratch (`--model keras_mobilenetv1`) gives the same network as Keras would.
"""

from __future__ import annotations

from timm.models import register_model
from timm.models.efficientnet import _gen_mobilenet_v1, _gen_mobilenet_v2
from timm.models.resnet import Bottleneck, _create_resnet

TF_MEAN, TF_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
# Keras "caffe" preprocessing subtracts these BGR means from 0-255 pixels; graft feeds RGB, so they are reordered.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
CAFFE_MEAN = tuple(m / 255.0 for m in reversed(CAFFE_MEAN_BGR))
CAFFE_STD = (1.0 / 255.0,) * 3


def _cfg(mean: tuple, std: tuple, first_conv: str, classifier: str) -> dict:
    return {
        "input_size": (3, 224, 224),
        "mean": mean,
        "std": std,
        "first_conv": first_conv,
        "classifier": classifier,
        "num_classes": 1000,
        "interpolation": "bilinear",
    }


default_cfgs = {
    "keras_mobilenetv1": _cfg(TF_MEAN, TF_STD, "conv_stem", "classifier"),
    "keras_mobilenetv2": _cfg(TF_MEAN, TF_STD, "conv_stem", "classifier"),
    "keras_resnet50": _cfg(CAFFE_MEAN, CAFFE_STD, "conv1", "fc"),
}
_KERAS_DEFAULTS = {"pad_type": "same", "bn_eps": 1e-3}


@register_model
def keras_mobilenetv1(pretrained: bool = False, channel_multiplier: float = 1.0, **kwargs):
    """MobileNet v1 at Keras alpha `channel_multiplier`, TF padding, BN epsilon 1e-3."""
    kwargs = {**_KERAS_DEFAULTS, **kwargs}
    return _gen_mobilenet_v1("keras_mobilenetv1", channel_multiplier, pretrained=pretrained, **kwargs)


@register_model
def keras_mobilenetv2(pretrained: bool = False, channel_multiplier: float = 1.0, **kwargs):
    """MobileNetV2 at Keras alpha `channel_multiplier`, TF padding, BN epsilon 1e-3."""
    kwargs = {**_KERAS_DEFAULTS, **kwargs}
    return _gen_mobilenet_v2("keras_mobilenetv2", channel_multiplier, pretrained=pretrained, **kwargs)


class StrideFirstBottleneck(Bottleneck):
    """timm's Bottleneck with the stride moved from the 3×3 conv to the first 1×1 conv (Keras ResNet50)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None, **kwargs) -> None:
        super().__init__(inplanes, planes, 1, downsample, **kwargs)
        self.conv1.stride = (stride, stride)


@register_model
def keras_resnet50(pretrained: bool = False, **kwargs):
    """ResNet-50 as Keras builds it: stride in the first 1×1 conv of each downsampling bottleneck."""
    args = {"block": StrideFirstBottleneck, "layers": (3, 4, 6, 3), **kwargs}
    return _create_resnet("keras_resnet50", pretrained, **args)

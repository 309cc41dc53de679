"""Small plain CNNs for small gray images (MNIST-like), registered with timm's model registry.

Why: on a laptop CPU, a ResNet-18 spends most of its time on capacity MNIST does not need. These nets
(conv3×3-BN-ReLU stages with 2×2 max-pooling between them, global pooling and a linear classifier) reach the
reference accuracy in a fraction of the arithmetic (bench/time_to_accuracy.py, recipes/mnist-cpu-5min.toml).
Registering them with timm (on `import graft.models`) makes them timm architectures like any other: a bundle
records them by their timm name, and `build_model`, fold, surgery, export and serve treat them as timm models.
They have no pretrained weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import ClassifierHead
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["SmallCNN"]


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Stages of `depths[i]` conv3×3-BN-ReLU layers of `widths[i]` channels, 2×2 max-pooling between stages.

    The timm model interface (forward_features, forward_head, get_classifier, reset_classifier, in_chans,
    num_classes, global_pool, drop_rate) is what graft's builders, fold, surgery and export rely on.
    """

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128),
        depths: Sequence[int] = (1, 1, 1),
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(widths) != len(depths) or not widths or min(depths) < 1 or min(widths) < 1:
            raise ValueError(f"SmallCNN needs one depth ≥ 1 per width ≥ 1, got widths {widths}, depths {depths}")
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        layers: list[nn.Module] = []
        channels = in_chans
        for stage, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            if stage > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(depth):
                layers.append(_conv_bn_relu(channels, width))
                channels = width
        self.features = nn.Sequential(*layers)
        self.num_features = self.head_hidden_size = channels
        self.head = ClassifierHead(channels, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)


def _cfg(**kwargs: object) -> dict:
    # MNIST's own mean/std (gray replicated); no weights to download.
    return {
        "num_classes": 10,
        "input_size": (1, 28, 28),
        "mean": (0.1307,) * 3,
        "std": (0.3081,) * 3,
        "first_conv": "features.0.0",
        "classifier": "head.fc",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"graft_cnn_s.untrained": _cfg(), "graft_cnn_m.untrained": _cfg()})


def _create(variant: str, pretrained: bool, widths: tuple[int, ...], depths: tuple[int, ...], **kwargs: object):
    if pretrained:
        raise ValueError(f"{variant} has no pretrained weights (train it from scratch)")
    return build_model_with_cfg(SmallCNN, variant, pretrained=False, widths=widths, depths=depths, **kwargs)


@register_model
def graft_cnn_s(pretrained: bool = False, **kwargs: object) -> SmallCNN:
    """~94 k parameters: 32-64-128 channels, one conv per stage."""
    return _create("graft_cnn_s", pretrained, (32, 64, 128), (1, 1, 1), **kwargs)


@register_model
def graft_cnn_m(pretrained: bool = False, **kwargs: object) -> SmallCNN:
    """~0.3 M parameters: 32-64-128 channels, two convs in the last two stages."""
    return _create("graft_cnn_m", pretrained, (32, 64, 128), (1, 2, 2), **kwargs)

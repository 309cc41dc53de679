"""Fitting gray images to networks built for RGB: the `replicate`, `stem` and `fold` input modes.

- `replicate`: the data side copies gray into R, G, B and normalises per channel; the network is untouched.
- `fold`: the first conv takes one channel. Its RGB kernels and the per-channel mean/std are folded into a gray
  kernel plus an *offset* kernel applied to the in-image indicator, so zero padding behaves exactly as in
  `replicate` (a plain folded bias would be wrong on every border pixel). Logits equal `replicate`'s at
  initialisation up to float rounding; the first conv costs a third.
- `stem`: a learned Conv3×3(1→3)+BN+ReLU in front of the backbone (the reference approach B). It is initialised
  so that, with BatchNorm in eval mode, its pre-ReLU output is exactly `replicate`'s backbone input
  (gray − mean_c) / std_c, and its output is that value clipped at 0: equal to `replicate` wherever a pixel is
  brighter than the channel mean, 0 elsewhere. That is the closest a ReLU output can get. In train mode the
  first forward pass normalises with batch statistics instead, so step 0 of training already differs.
"""

from __future__ import annotations

import torch
from timm.layers import Conv2dSame, pad_same
from torch import nn

from graft.errors import GraftError


def find_first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The conv that sees the image: timm's `first_conv` when it names a Conv2d, else the first 3-channel one."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("first_conv")
    modules = dict(model.named_modules())
    if isinstance(name, str) and isinstance(modules.get(name), nn.Conv2d):
        return name, modules[name]
    for candidate, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels in (1, 3):
            return candidate, module
    raise GraftError(f"{type(model).__name__} has no convolutional stem, so its input channels cannot change")


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


class FoldedConv2d(nn.Conv2d):
    """A 1-channel conv that equals an RGB conv on a gray image copied to RGB and normalised.

    y = conv(gray, weight) + conv(in_image, offset) + bias, where `in_image` is 1 inside the image and 0 in
    the padding: the offset carries −Σ_c W_c·mean_c/std_c only where the original conv saw real pixels.
    """

    def __init__(self, conv: nn.Conv2d, in_channels: int = 1) -> None:
        if conv.groups != 1:
            raise GraftError("cannot fold a grouped first conv")
        super().__init__(
            in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            0 if isinstance(conv, Conv2dSame) else conv.padding,
            conv.dilation,
            1,
            conv.bias is not None,
            conv.padding_mode,
        )
        self.same_padding = isinstance(conv, Conv2dSame)
        self.offset = nn.Parameter(torch.zeros_like(self.weight[:, :1]))

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_padding:
            return pad_same(x, list(self.kernel_size), list(self.stride), list(self.dilation))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self._conv_forward(self._pad(x), self.weight, self.bias)
        in_image = torch.ones((1, 1, *x.shape[-2:]), dtype=x.dtype, device=x.device)
        return main + self._conv_forward(self._pad(in_image), self.offset, None)


def fold_weights(
    weight: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(gray kernel, offset kernel) of an RGB kernel (out, 3, kh, kw) fed (gray − mean_c) / std_c."""
    m = torch.tensor(mean, dtype=weight.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=weight.dtype).view(1, -1, 1, 1)
    gray = (weight / s).sum(dim=1, keepdim=True)
    offset = -(weight * m / s).sum(dim=1, keepdim=True)
    return gray, offset


def apply_fold(
    model: nn.Module,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    *,
    in_channels: int = 1,
) -> str:
    """Swap the first conv for a `FoldedConv2d`; with mean/std, fold the current RGB weights into it.

    Without mean/std only the structure changes (used when rebuilding a saved model before loading weights;
    `in_channels` is then the bundle's channel count, which model surgery may have changed). Returns the name.
    """
    name, conv = find_first_conv(model)
    if conv.in_channels != 3:
        raise GraftError(f"fold needs a 3-channel first conv, {name} takes {conv.in_channels}")
    folded = FoldedConv2d(conv, in_channels)
    if mean is not None and std is not None:
        with torch.no_grad():
            gray, offset = fold_weights(conv.weight, mean, std)
            folded.weight.copy_(gray)
            folded.offset.copy_(offset)
            if conv.bias is not None:
                folded.bias.copy_(conv.bias)
    replace_module(model, name, folded)
    return name


def set_input_channels(model: nn.Module, channels: int) -> str:
    """Give the first conv `channels` inputs (structure only; fresh weights). Returns its name."""
    name, conv = find_first_conv(model)
    if conv.in_channels != channels:
        conv.in_channels = channels
        shape = (conv.out_channels, channels // conv.groups, *conv.kernel_size)
        conv.weight = nn.Parameter(torch.zeros(shape, dtype=conv.weight.dtype))
    return name


class GrayStem(nn.Sequential):
    """The reference approach B: Conv3×3(1→3) + BatchNorm + ReLU in front of an RGB backbone.

    `in_channels` is 1 when trained; model surgery can change it (e.g. to 3 to take colour images).
    """

    def __init__(self, out_channels: int = 3, in_channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=False)

    def init_like_replicate(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        """Eval-mode output = max((gray − mean_c) / std_c, 0): see the module docstring for what holds."""
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, 0, 1, 1] = 1.0 / torch.tensor(std)
            self.bn.running_mean.zero_()
            self.bn.running_var.fill_(1.0)
            self.bn.weight.fill_(float(torch.sqrt(torch.tensor(1.0 + self.bn.eps))))
            self.bn.bias.copy_(-torch.tensor(mean) / torch.tensor(std))


class FlattenHead(nn.Module):
    """The reference head: the last feature map flattened into one Dense layer (size-dependent)."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.flatten(features, 1)))

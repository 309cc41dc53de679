"""A size stem: a learnable linear resize in front of a network trained at another input size.

Every resize graft's preprocessing does (torchvision's bilinear, bicubic or nearest kernel, antialiased or not,
stretched or cropped) is linear and separable: out = R_h · x · R_wᵀ for each channel. The stem holds R_h and R_w
as parameters, shared by all channels, so a model trained at 64×64 can take 128×128 images and start out
computing exactly what it computed on them resized to 64 (surgery `--size-mode stem` initialises it that way from
`graft.data.preprocess.resize_matrices`). Fine-tuning then lets it learn a better reduction than the fixed kernel.

Why matrices and not a strided depthwise convolution: torchvision renormalises the kernel where it overhangs the
image border (e.g. 2× bilinear: weights (1, 3, 3, 1)/8 inside, (3, 3, 1)/7 on the first row), which no convolution
with zero or replicated padding reproduces, and non-integer factors have no stride at all. Shared by all channels,
because a later channel change (graft surgery --channels) must keep it exact whatever the channels become.
"""

from __future__ import annotations

import torch
from torch import nn


class SizeStem(nn.Module):
    """(N, C, source_h, source_w) → (N, C, target_h, target_w): H · x · Wᵀ for every channel.

    H = `height_kernel` ⊙ (1 + `height_gain`) (W likewise): the kernel is the resize it started as (a buffer,
    saved with the weights), the gains learn and start at exactly 0, so the stem is exact at initialisation
    whatever float rounding does. Only the kernel's taps learn, each relative to its size: the stem stays a
    local filter (each output pixel a mix of the pixels the resize mixed), and an optimizer step moves it gently.
    Measured with absolute taps instead: a dense matrix moved a MobileNetV3's logits 18× more than the
    original's own SGD step did (Adam would move every one of its entries by about the learning rate, smearing
    far pixels into every output); absolute taps on the kernel's support, 4× on one probe.
    Weight decay pulls the gains back to 0, i.e. towards the resize the stem started as.
    """

    def __init__(self, source: tuple[int, int], target: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("height_kernel", torch.zeros(target[0], source[0]))
        self.register_buffer("width_kernel", torch.zeros(target[1], source[1]))
        self.height_gain = nn.Parameter(torch.zeros(target[0], source[0]))
        self.width_gain = nn.Parameter(torch.zeros(target[1], source[1]))

    @property
    def source(self) -> tuple[int, int]:
        return int(self.height_kernel.shape[1]), int(self.width_kernel.shape[1])

    @property
    def target(self) -> tuple[int, int]:
        return int(self.height_kernel.shape[0]), int(self.width_kernel.shape[0])

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (H, W) the stem applies now."""
        return self.height_kernel * (1 + self.height_gain), self.width_kernel * (1 + self.width_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = self.matrices()
        return torch.matmul(torch.matmul(height, x), width.transpose(0, 1))

    def start_as(self, height: torch.Tensor, width: torch.Tensor) -> None:
        """Start as (target_h × source_h, target_w × source_w) matrices, e.g. a resize's (`resize_matrices`)."""
        with torch.no_grad():
            self.height_kernel.copy_(height)
            self.width_kernel.copy_(width)
            self.height_gain.zero_()
            self.width_gain.zero_()

    def extra_repr(self) -> str:
        return f"{self.source[0]}×{self.source[1]} → {self.target[0]}×{self.target[1]}"

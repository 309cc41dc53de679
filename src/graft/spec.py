"""The input spec: everything needed to turn an image into the tensor a model was trained on.

It lives in every bundle so that training, eval, predict and serve all preprocess the same way. It is the one owner
of the input mode. No torch here: `graft.record` validates bundles without importing it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

InputMode = Literal["replicate", "stem", "fold"]
ResizeRule = Literal["stretch", "crop"]
Interpolation = Literal["bilinear", "bicubic", "nearest"]
INPUT_MODES: tuple[str, ...] = ("replicate", "stem", "fold")
INTERPOLATIONS: tuple[str, ...] = ("bilinear", "bicubic", "nearest")
# timm.data.IMAGENET_DEFAULT_MEAN/STD, spelled out so this module stays free of torch (a test checks they agree).
IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """How raw uint8 images become model input.

    `channels` is what the model's first layer takes (3 for `replicate`, 1 for `stem` and `fold`); images with
    another channel count are converted by `graft.data.preprocess.convert_channels`. `mean`/`std` apply to pixels
    scaled to [0, 1]; for `fold` and `stem` they are 0/1 because the model itself carries the normalisation.
    """

    size: tuple[int, int]
    channels: int
    mode: InputMode = "replicate"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: Interpolation = "bilinear"
    antialias: bool = True
    resize: ResizeRule = "stretch"
    backbone_mean: tuple[float, ...] = IMAGENET_MEAN  # what the backbone was trained on
    backbone_std: tuple[float, ...] = IMAGENET_STD

    def validate(self) -> None:
        """ValueError unless every field holds a value graft can act on (specs are read from hand-editable JSON)."""
        allowed = {
            "mode": INPUT_MODES,
            "interpolation": INTERPOLATIONS,
            "resize": ("stretch", "crop"),
        }
        for key, values in allowed.items():
            if getattr(self, key) not in values:
                raise ValueError(f"input {key} {getattr(self, key)!r} is not one of {', '.join(values)}")
        if len(self.size) != 2 or min(self.size) < 1 or self.channels < 1:
            raise ValueError(f"input size {self.size} / channels {self.channels} make no image")
        if len(self.mean) != self.channels or len(self.std) != self.channels or 0 in self.std:
            raise ValueError("input mean/std need one non-zero value per channel")
        if len(self.backbone_mean) != len(self.backbone_std) or 0 in self.backbone_std:
            raise ValueError("input backbone_mean/backbone_std need one non-zero value per backbone channel")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> InputSpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("size", "mean", "std", "backbone_mean", "backbone_std"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

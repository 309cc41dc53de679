"""Changing a trained model's input size, and re-estimating BatchNorm statistics for the new images.

Two ways to change the size (`graft surgery --size-mode`):

- `stem` (exact): a size stem in front of the network (graft.models.size_stem) computes exactly the resize the
  bundle's own preprocessing would do from the new size to the old one, so the new model on a new-size image is
  the old model on that image resized to the old size (in float; the uint8 pipeline rounds, and bicubic clips
  overshoot between its passes: a served bilinear image differs by at most one pixel level, bicubic by about one
  on smooth images and up to ~20 on hard edges; certificates record the gap on their probe). It is read
  off torchvision's own kernel (`resize_matrices`) and checked on random images before use; works for any
  factor, up or down, stretch or crop. On a model that already has a size stem the two resizes are composed
  into one stem, exact the same way. Learnable: fine-tuning can then use the detail the larger image holds.
- `resample` (approximate): the same weights see the image at another scale.
  - Convolutional backbones with global pooling keep every weight: only the input spec changes.
  - `flatten` heads read a feature map whose size follows the input: their weight grid (classes × C × h × w) is
    resampled to the new h′ × w′ and scaled by (h·w)/(h′·w′), so that an upsampled image, whose feature map is
    roughly the upsampled old one, gives roughly the old logits.
  - ViT-style models get their absolute position embeddings resampled (timm's `resample_abs_pos_embed`).
  Other size-dependent tensors (e.g. relative position tables) are refused by name rather than guessed.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import nn

from graft.bundle import Bundle
from graft.data.base import ImageSet
from graft.data.preprocess import resize_float, resize_matrices, resize_uint8, to_model_input
from graft.errors import GraftError
from graft.models.factory import GraftModel, build_model
from graft.record import Architecture
from graft.spec import InputSpec
from graft.surgery.certificate import Views
from graft.surgery.details import RecalibrationDetails, ResizeDetails


def _feature_shape(model: GraftModel, spec: InputSpec) -> tuple[int, ...]:
    x = torch.zeros(1, spec.channels, *spec.size)
    with torch.no_grad():
        if model.stem is not None:
            x = model.stem.eval()(x)
        return tuple(model.backbone.eval().forward_features(x).shape[1:])


def resample_flatten_head(weight: torch.Tensor, old: tuple[int, ...], new: tuple[int, ...]) -> torch.Tensor:
    """A Dense weight over a flattened C×h×w map → the same over C×h′×w′, scaled to keep the sum over positions."""
    if len(old) != 3 or len(new) != 3 or old[0] != new[0]:
        raise GraftError(f"cannot resample a flatten head from features {old} to {new}")
    grid = weight.double().reshape(weight.shape[0], *old)
    resized = F.interpolate(grid, size=new[1:], mode="bilinear", align_corners=False, antialias=new[1] < old[1])
    scale = (old[1] * old[2]) / (new[1] * new[2])
    return (resized * scale).reshape(weight.shape[0], -1).to(weight.dtype)


def change_size(bundle: Bundle, size: tuple[int, int]) -> tuple[Bundle, Views, ResizeDetails]:
    """Resample: the same weights at another input size (approximate); see the module docstring."""
    spec, arch = bundle.spec, bundle.architecture
    if tuple(size) == tuple(spec.size):
        raise GraftError(f"this model already takes {size[0]}×{size[1]} images")
    if arch.size_stem is not None:
        raise GraftError(
            "this model has a size stem (its network takes "
            f"{arch.network_size[0]}×{arch.network_size[1]}); change its size with --size-mode stem"  # type: ignore[index]
        )
    model = _built_at(bundle, size)
    if model is None:
        smallest = next((s for s in (*range(MIN_SIDE, 65), *_LARGER) if _built_at(bundle, (s, s)) is not None), None)
        hint = f"; use --size {smallest} or more" if smallest else ""
        raise GraftError(f"input size {size[0]}×{size[1]} is below what {arch.timm_name} accepts{hint}")
    new_arch, new_spec = _resized(bundle, size)
    own, state = model.state_dict(), bundle.model.state_dict()
    adapted: list[str] = []
    for key, value in state.items():
        if own[key].shape == value.shape:
            continue
        if key.endswith("pos_embed"):
            state[key] = _resample_pos_embed(bundle.model.backbone, model.backbone, value)
        elif key == "head.fc.weight":
            old_map, new_map = _feature_shape(bundle.model, spec), _feature_shape(model, new_spec)
            state[key] = resample_flatten_head(value, old_map, new_map)
        else:
            raise GraftError(
                f"{key} depends on the input size ({tuple(value.shape)} → {tuple(own[key].shape)}) "
                "and graft has no rule to resample it"
            )
        adapted.append(key)
    model.load_state_dict(state, strict=True)
    model.eval()
    new = dataclasses.replace(bundle, model=model, architecture=new_arch, spec=new_spec, path=None)
    details: ResizeDetails = {
        "from": list(spec.size),
        "to": list(size),
        "resampled": adapted,
        "claim": "approximate (the same weights see the image at another scale)",
        "mode": "resample",
    }
    return new, Views(note="each model sees the probe images resized to its own input size"), details


MAX_STEM_WORK = 2048 * 1024 * 1024  # pixels resized to read a stem's matrices off: (h + w)·h·w, 1024² at most
STEM_CHECK_TOLERANCE = 1e-9  # float64, pixels in [0, 1]: the matrices must be the resize, not near it
SIZE_STEM_VIEWS = Views(
    note="the old model sees the new model's input resized to its own size in float (the bundle's resize rule)",
    through_new_input=True,
)


def add_size_stem(bundle: Bundle, size: tuple[int, int]) -> tuple[Bundle, Views, ResizeDetails]:
    """Stem: a new bundle taking `size` images whose size stem resizes them exactly as the bundle's preprocessing
    would (composed with an existing stem's resize); see the module docstring."""
    spec, arch = bundle.spec, bundle.architecture
    size = (int(size[0]), int(size[1]))
    if size == tuple(spec.size):
        raise GraftError(f"this model already takes {size[0]}×{size[1]} images")
    if min(size) < MIN_SIDE:
        raise GraftError(
            f"a size stem needs images of at least {MIN_SIDE} pixels a side, not {size[0]}×{size[1]}: "
            f"use --size {MIN_SIDE} or more"
        )
    if (size[0] + size[1]) * size[0] * size[1] > MAX_STEM_WORK:
        raise GraftError(
            f"a size stem from {size[0]}×{size[1]} is not supported (graft reads it off the resize one row and column "
            "at a time, which would take minutes above about 1024 pixels a side); use --size-mode resample"
        )
    rule = _rule(spec)
    height, width = resize_matrices(size, spec)
    _check_matrices(height, width, size, spec, rule)
    network = arch.network_size or tuple(spec.size)
    state = {k: v.detach().clone() for k, v in bundle.model.state_dict().items()}
    if arch.size_stem is not None:  # the old stem after the new resize: one stem, the product of both
        old_height, old_width = (m.detach().double() for m in bundle.model.size_stem.matrices())
        height, width = old_height @ height, old_width @ width
    new_arch = dataclasses.replace(arch, size_stem={"network_size": list(network)})
    new_spec = dataclasses.replace(spec, size=size)
    model = build_model(new_arch, new_spec)
    stem = model.size_stem
    state.update({f"size_stem.{k}": v for k, v in stem.state_dict().items()})  # replaced just below
    model.load_state_dict(state, strict=True)
    stem.start_as(height.float(), width.float())
    model.eval()
    new = dataclasses.replace(bundle, model=model, architecture=new_arch, spec=new_spec, path=None)
    details: ResizeDetails = {
        "from": list(spec.size),
        "to": list(size),
        "resampled": [],
        "claim": "exact (a size stem: the old model on the image resized by the bundle's own rule, in float)",
        "mode": "stem",
        "rule": rule,
        "network_size": list(network),
        "composed": arch.size_stem is not None,
    }
    return new, SIZE_STEM_VIEWS, details


def _rule(spec: InputSpec) -> str:
    antialiased = spec.antialias and spec.interpolation != "nearest"
    return f"{spec.interpolation}{', antialiased' if antialiased else ''}, {spec.resize}"


def _check_matrices(height: torch.Tensor, width: torch.Tensor, size: tuple[int, int], spec: InputSpec, rule: str):
    """Refuse unless the matrices reproduce the preprocessing's float resize on random images (never assumed)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand((2, 3, *size), generator=generator, dtype=torch.float64)
    gap = float((height @ images @ width.T - resize_float(images, spec)).abs().max())
    if not gap <= STEM_CHECK_TOLERANCE:
        raise GraftError(
            f"this graft's resize ({rule}) from {size[0]}×{size[1]} to {spec.size[0]}×{spec.size[1]} has no exact "
            f"matrix form here (off by {gap:.1e}); use --size-mode resample"
        )


def preprocessing_gap(probe: torch.Tensor, old: InputSpec, new: InputSpec) -> float:
    """Max |uint8 preprocessing − float resize| in pixel levels (0–255) over the probe seen at the new size: how
    far a served image (rounded to uint8 at the old size) is from the float image a size stem computes."""
    at_new = resize_uint8(probe, new)
    rounded = resize_uint8(at_new, old).double()
    exact = resize_float(at_new.double(), old)
    return float((rounded - exact).abs().max())


MIN_SIDE = 2
_LARGER = (96, 128, 160, 192, 224, 256, 320, 384, 512)


def _resized(bundle: Bundle, size: tuple[int, int]) -> tuple[Architecture, InputSpec]:
    kwargs = dict(bundle.architecture.timm_kwargs)
    if "img_size" in kwargs:
        kwargs["img_size"] = list(size)
    return dataclasses.replace(bundle.architecture, timm_kwargs=kwargs), dataclasses.replace(
        bundle.spec, size=tuple(size)
    )


def _built_at(bundle: Bundle, size: tuple[int, int]) -> GraftModel | None:
    """The model structure at `size`, or None when the model or graft's preprocessing cannot work at that size.

    Both count: resnet18 runs on 1×1 images, but PyTorch's antialiased resize to a single pixel fails (an
    internal assertion, not every time), so graft never makes images under 2 pixels a side.
    """
    if min(size) < MIN_SIDE:
        return None
    arch, spec = _resized(bundle, size)
    try:
        model = build_model(arch, spec)
        image = torch.full((2, spec.channels, *bundle.spec.size), 128, dtype=torch.uint8)
        with torch.no_grad():
            model.eval()(to_model_input(image, spec))
    except (GraftError, RuntimeError, ValueError, AssertionError):
        return None
    return model


def _resample_pos_embed(old: nn.Module, new: nn.Module, value: torch.Tensor) -> torch.Tensor:
    prefix = 0 if getattr(old, "no_embed_class", False) else int(getattr(old, "num_prefix_tokens", 1))
    return resample_abs_pos_embed(
        value,
        new_size=list(new.patch_embed.grid_size),
        old_size=list(old.patch_embed.grid_size),
        num_prefix_tokens=prefix,
    )


def recalibrate_batchnorm(
    bundle: Bundle, images: ImageSet, *, count: int = 2048, batch_size: int = 64, seed: int = 0
) -> tuple[Bundle, Views, RecalibrationDetails]:
    """Re-estimate every BatchNorm's running mean/variance on unlabelled images seen through the bundle's spec.

    After a change of input size or channels the statistics of intermediate features shift; averaging them anew
    over real images (labels unused) is a cheap fix that changes no learned weight.
    """
    model = copy.deepcopy(bundle.model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise GraftError("this model has no BatchNorm layers to recalibrate")
    positions = np.random.default_rng(seed).permutation(len(images))[:count]
    model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over all batches, not an exponential one
        m.train()
    with torch.no_grad():
        for start in range(0, len(positions), batch_size):
            chunk = positions[start : start + batch_size]
            if len(chunk) < 2:
                break
            model(to_model_input(images.batch(chunk, bundle.spec), bundle.spec))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()
    new = dataclasses.replace(bundle, model=model, path=None)
    details: RecalibrationDetails = {"images": len(positions), "source": images.name, "batchnorm_layers": len(norms)}
    return new, Views(note="both models see the same images"), details

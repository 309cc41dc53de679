"""Building graft models: a backbone, an optional gray stem, and the new head. Pure builders: no files read here.

`build_model(architecture, spec)` rebuilds a recorded structure with fresh weights, ready for a saved state dict;
backbone kinds (timm, and the imported Keras layer graphs that `graft.models.keras` registers) are looked up in a
small registry. `create_model` makes a model for training from a state dict the caller has read (hub, file,
bundle): where weights come from is decided above this layer (`graft.training.start.starting_point`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Literal

import timm
import torch
from torch import nn

from graft.errors import GraftError, first_line
from graft.models.catalog import matching, suggest
from graft.models.edits import apply_edits
from graft.models.input_modes import FlattenHead, GrayStem, apply_fold, find_first_conv, set_input_channels
from graft.models.size_stem import SizeStem
from graft.models.weights import TransferReport, transfer_weights
from graft.record import Architecture
from graft.spec import IMAGENET_MEAN, IMAGENET_STD, INPUT_MODES, InputMode, InputSpec

HeadKind = Literal["pool", "flatten"]
_PROBE_SIZES = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 512)
BackboneBuilder = Callable[[Architecture, InputSpec], "GraftModel"]
_BACKBONE_KINDS: dict[str, BackboneBuilder] = {}


def register_backbone_kind(kind: str, builder: BackboneBuilder) -> None:
    """Teach `build_model` a backbone kind (`Architecture.kind`); packages above the timm builder register theirs."""
    _BACKBONE_KINDS[kind] = builder


class GraftModel(nn.Module):
    """size stem (optional) → gray stem (optional) → timm backbone → head (timm's pooled classifier, or a flatten
    head). The size stem comes first: it resizes whatever channels the model takes (graft.models.size_stem)."""

    def __init__(
        self,
        backbone: nn.Module,
        stem: nn.Module | None = None,
        head: nn.Module | None = None,
        size_stem: SizeStem | None = None,
    ) -> None:
        super().__init__()
        self.size_stem = size_stem
        self.stem = stem
        self.backbone = backbone
        self.head = head

    def no_weight_decay(self) -> set[str]:
        """The backbone's own exemptions (ViT position embeddings, class tokens), for timm's optimizer factory.

        A size stem's gains do decay: towards 0, the resize the stem started as."""
        names = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return {f"backbone.{name}" for name in names}

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if self.size_stem is not None:
            x = self.size_stem(x)
        if self.stem is not None:
            x = self.stem(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._input(x)
        if self.head is None:
            return self.backbone(x)
        return self.head(self.backbone.forward_features(x))

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The features the classifier reads (one vector per image): for imprinting new classes."""
        x = self._input(x)
        features = self.backbone.forward_features(x)
        if self.head is None:
            return self.backbone.forward_head(features, pre_logits=True)
        return torch.flatten(features, 1)

    def classifier(self) -> nn.Module:
        """The layer that turns pre-logit features into class scores."""
        return self.head.fc if self.head is not None else self.backbone.get_classifier()


def check_model_name(name: str) -> None:
    if not timm.is_model(name):
        close = suggest(name)
        containing = len(matching(name))
        listing = (
            f"`graft models {name}` lists the {containing} names that contain it" if containing > len(close) else ""
        )
        if close:
            hint = f"; did you mean {', '.join(close)}?" + (f" ({listing})" if listing else "")
        else:
            hint = "; `graft models PATTERN` lists timm's names"
        raise GraftError(f"unknown model {name!r}{hint}")


def _create_backbone(name: str, num_classes: int, kwargs: dict) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=3, **kwargs)
    except TypeError as error:
        raise GraftError(f"{name} does not accept these options {sorted(kwargs)}: {error}") from None


def _timm_kwargs(name: str, size: tuple[int, int], extra: dict | None) -> dict:
    """Models with a fixed input size (ViTs) are told the size, so timm resamples position embeddings."""
    kwargs = dict(extra or {})
    cfg = timm.get_pretrained_cfg(name)
    if cfg is not None and cfg.fixed_input_size and "img_size" not in kwargs:
        kwargs["img_size"] = list(size)
    return kwargs


def _forward_features_shape(backbone: nn.Module, stem: nn.Module | None, spec: InputSpec, flatten: bool) -> torch.Size:
    x = torch.zeros(1, spec.channels, *spec.size)
    with torch.no_grad():
        if stem is not None:
            x = stem.eval()(x)
        out = backbone.eval().forward_features(x) if flatten else backbone.eval()(x)
    return out.shape


def _input_layer(backbone: nn.Module, mode: str, channels: int) -> nn.Module | None:
    """Shape the layer that sees the image for the input mode and channel count; returns the stem if any."""
    if mode == "fold":
        apply_fold(backbone, in_channels=channels)
    elif mode == "stem":
        return GrayStem(in_channels=channels)
    elif channels != 3:
        set_input_channels(backbone, channels)
    return None


def _minimum_size(attempt: Callable[[int], object]) -> int | None:
    """The smallest probe size at which `attempt(size)` runs, if any."""
    for size in _PROBE_SIZES:
        try:
            attempt(size)
            return size
        except (RuntimeError, ValueError, AssertionError):
            continue
    return None


def build_model(arch: Architecture, spec: InputSpec) -> GraftModel:
    """The model's structure with fresh weights; raises GraftError when the input size is too small.

    With a size stem, the network behind it is built for the stem's `network_size` (a flatten head's size
    follows it) and the stem maps the spec's size to it.
    """
    builder = _BACKBONE_KINDS.get(arch.kind)
    if builder is None:
        raise GraftError(f"this graft cannot build {arch.kind!r} backbones ({arch.timm_name})")
    network_size = arch.network_size
    if network_size is None:
        return builder(arch, spec)
    inner = builder(arch, dataclasses.replace(spec, size=network_size))
    stem = SizeStem(tuple(spec.size), network_size)
    return GraftModel(inner.backbone, inner.stem, inner.head, stem).train(inner.training)


def _build_timm_model(arch: Architecture, spec: InputSpec) -> GraftModel:
    check_model_name(arch.timm_name)
    if spec.mode not in INPUT_MODES:
        raise GraftError(f"unknown input mode {spec.mode!r}; choose one of {', '.join(INPUT_MODES)}")
    flatten = arch.head == "flatten"
    backbone = _create_backbone(arch.timm_name, 0 if flatten else arch.num_classes, arch.timm_kwargs)
    stem = _input_layer(backbone, spec.mode, spec.channels)
    if arch.edits:
        apply_edits(GraftModel(backbone, stem), arch.edits, (spec.channels, *spec.size))
    try:
        shape = _forward_features_shape(backbone, stem, spec, flatten)
    except (RuntimeError, ValueError, AssertionError) as error:
        smallest = _minimum_size(
            lambda s: _forward_features_shape(
                backbone, stem, InputSpec(size=(s, s), channels=spec.channels, mode=spec.mode), flatten
            ),
        )
        if smallest is not None and smallest <= min(spec.size):  # it runs on smaller images: size is not why
            raise GraftError(
                f"{arch.timm_name} cannot run on {spec.size[0]}×{spec.size[1]} inputs ({first_line(error, 120)})"
            ) from None
        hint = f"; use --size {smallest} or more" if smallest else ""
        raise GraftError(
            f"input size {spec.size[0]}×{spec.size[1]} is below what {arch.timm_name} accepts{hint}"
        ) from None
    head = FlattenHead(math.prod(shape[1:]), arch.num_classes) if flatten else None
    return GraftModel(backbone, stem, head).train()


register_backbone_kind("timm", _build_timm_model)


def create_model(
    name: str,
    num_classes: int,
    *,
    input_mode: InputMode = "replicate",
    head: HeadKind = "pool",
    size: int | tuple[int, int] = 224,
    source: dict[str, torch.Tensor] | None = None,
    source_name: str = "",
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    timm_kwargs: dict | None = None,
) -> tuple[GraftModel, Architecture, InputSpec, TransferReport | None]:
    """A model ready to fine-tune, the records to rebuild it, and what happened to the `source` weights.

    `source` is a state dict (ImageNet weights, a file, a bundle's weights) loaded by name and shape;
    `normalisation` is the per-channel mean/std those weights expect (default: timm's for `name`).
    """
    check_model_name(name)
    size2 = (size, size) if isinstance(size, int) else tuple(size)
    kwargs = _timm_kwargs(name, size2, timm_kwargs)
    arch = Architecture(name, num_classes, head, kwargs)
    mean, std = normalisation or default_normalisation(name)
    replicate = input_mode == "replicate"
    spec = InputSpec(
        size=size2,
        channels=3 if replicate else 1,
        mode=input_mode,
        mean=mean if replicate else (0.0,),
        std=std if replicate else (1.0,),
        backbone_mean=mean,
        backbone_std=std,
    )
    trained_mode = trained_input_mode(source) if source is not None else "replicate"
    if trained_mode != "replicate":
        # Weights of a gray-input model (fold or stem bundle): load them into the same structure as they are.
        if trained_mode != input_mode:
            raise GraftError(
                f"{source_name} holds a model trained with input mode {trained_mode!r}; train with "
                f"--input-mode {trained_mode} (changing the input mode of a trained model is a surgery)"
            )
        model = build_model(arch, spec)
        report = transfer_weights(model, source, source_name=source_name)
        return model, arch, spec, report
    model = build_model(arch, _rgb(spec))
    report = None
    if source is not None:
        conv_name, _ = find_first_conv(model.backbone)
        report = transfer_weights(model.backbone, source, source_name=source_name, first_conv=conv_name)
    if input_mode == "fold":
        conv_name = apply_fold(model.backbone, mean, std)
        if report is not None:
            report.adapted.append(
                {"name": f"{conv_name}.weight", "how": "RGB kernels and mean/std folded into a 1-channel kernel"}
            )
    elif input_mode == "stem":
        model.stem = GrayStem()
        model.stem.init_like_replicate(mean, std)
        if report is not None:
            report.initialised += [f"stem.{k}" for k in model.stem.state_dict() if "num_batches" not in k]
    return model, arch, spec, report


def default_normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean/std timm records for a model's pretrained weights (ImageNet's when it has none)."""
    cfg = timm.get_pretrained_cfg(name)
    if cfg is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(cfg.mean), tuple(cfg.std)


def trained_input_mode(state: dict[str, torch.Tensor]) -> InputMode:
    """Which input mode a state dict was trained with: fold bundles carry an offset kernel, stem bundles a stem."""
    if any(key.endswith(".offset") for key in state):
        return "fold"
    if any(key.startswith("stem.") for key in state):
        return "stem"
    return "replicate"


def _rgb(spec: InputSpec) -> InputSpec:
    return InputSpec(size=spec.size, channels=3)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

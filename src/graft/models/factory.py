"""Building graft models from timm: a backbone, an optional gray stem, and the new head.

`create_model` makes a model for training (pretrained weights, input mode applied to the weights);
`build_model` rebuilds the same structure with fresh weights, ready for a saved state dict.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from graft.errors import GraftError, first_line
from graft.models.edits import apply_edits
from graft.models.input_modes import FlattenHead, GrayStem, apply_fold, find_first_conv, set_input_channels
from graft.models.keras import timm_models as _keras_timm_models  # noqa: F401  (registers keras_* timm names)
from graft.models.weights import TransferReport, read_state_dict, transfer_weights
from graft.spec import INPUT_MODES, InputMode, InputSpec

HeadKind = Literal["pool", "flatten"]
_PROBE_SIZES = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 512)


@dataclass(frozen=True)
class Architecture:
    """What `graft.json` records to rebuild a model: the timm name and kwargs, head kind and input mode."""

    timm_name: str
    num_classes: int
    input_mode: InputMode = "replicate"
    head: HeadKind = "pool"
    timm_kwargs: dict = field(default_factory=dict)
    edits: list[dict] = field(default_factory=list)  # structural surgery, replayed in order (models/edits.py)
    # Imported Keras layer graphs (graft.models.keras): a JSON description of the layers, built instead of timm.
    graph: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Architecture:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class GraftModel(nn.Module):
    """stem (optional) → timm backbone → head (timm's pooled classifier, or a flatten head)."""

    def __init__(self, backbone: nn.Module, stem: nn.Module | None = None, head: nn.Module | None = None) -> None:
        super().__init__()
        self.stem = stem
        self.backbone = backbone
        self.head = head

    def no_weight_decay(self) -> set[str]:
        """The backbone's own exemptions (ViT position embeddings, class tokens), for timm's optimizer factory."""
        names = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return {f"backbone.{name}" for name in names}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stem is not None:
            x = self.stem(x)
        if self.head is None:
            return self.backbone(x)
        return self.head(self.backbone.forward_features(x))

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The features the classifier reads (one vector per image): for imprinting new classes."""
        if self.stem is not None:
            x = self.stem(x)
        features = self.backbone.forward_features(x)
        if self.head is None:
            return self.backbone.forward_head(features, pre_logits=True)
        return torch.flatten(features, 1)

    def classifier(self) -> nn.Module:
        """The layer that turns pre-logit features into class scores."""
        return self.head.fc if self.head is not None else self.backbone.get_classifier()


def check_model_name(name: str) -> None:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
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
    """The model's structure with fresh weights; raises GraftError when the input size is too small."""
    if arch.graph is not None:
        return _build_graph_model(arch, spec)
    check_model_name(arch.timm_name)
    if arch.input_mode not in INPUT_MODES:
        raise GraftError(f"unknown input mode {arch.input_mode!r}; choose one of {', '.join(INPUT_MODES)}")
    flatten = arch.head == "flatten"
    backbone = _create_backbone(arch.timm_name, 0 if flatten else arch.num_classes, arch.timm_kwargs)
    stem = _input_layer(backbone, arch.input_mode, spec.channels)
    if arch.edits:
        apply_edits(GraftModel(backbone, stem), arch.edits)
    try:
        shape = _forward_features_shape(backbone, stem, spec, flatten)
    except (RuntimeError, ValueError, AssertionError):
        smallest = _minimum_size(
            lambda s: _forward_features_shape(backbone, stem, InputSpec(size=(s, s), channels=spec.channels), flatten),
        )
        hint = f"; use --size {smallest} or more" if smallest else ""
        raise GraftError(
            f"input size {spec.size[0]}×{spec.size[1]} is below what {arch.timm_name} accepts{hint}"
        ) from None
    head = FlattenHead(int(torch.tensor(shape[1:]).prod()), arch.num_classes) if flatten else None
    return GraftModel(backbone, stem, head).train()


def _build_graph_model(arch: Architecture, spec: InputSpec) -> GraftModel:
    """An imported Keras layer graph as the backbone; it ends in its own classifier, so there is no head."""
    from graft.models.keras.graph_module import KerasGraphModule

    if arch.input_mode != "replicate":
        raise GraftError(
            f"imported Keras layer graphs take their own input channels; input mode {arch.input_mode!r} "
            "is not available for them"
        )
    model = GraftModel(KerasGraphModule(arch.graph)).train()
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, spec.channels, *spec.size))
    except (RuntimeError, ValueError) as error:
        raise GraftError(
            f"the imported layer graph does not run at {spec.size[0]}×{spec.size[1]}×{spec.channels}: "
            f"{first_line(error, 160)}"
        ) from None
    if tuple(out.shape) != (1, arch.num_classes):
        raise GraftError(f"the imported layer graph outputs {tuple(out.shape[1:])}, not {arch.num_classes} classes")
    return model.train()


def _hub_state_dict(name: str, kwargs: dict) -> dict[str, torch.Tensor]:
    try:
        model = timm.create_model(name, pretrained=True, **kwargs)
    except Exception as error:
        raise GraftError(
            f"could not fetch ImageNet weights for {name} from the hub ({first_line(error, 160)}); "
            "offline? pass --weights FILE"
        ) from None
    return model.state_dict()


def create_model(
    name: str,
    num_classes: int,
    *,
    input_mode: InputMode = "replicate",
    head: HeadKind = "pool",
    size: int | tuple[int, int] = 224,
    pretrained: str | None = None,
    weights: str | None = None,
    timm_kwargs: dict | None = None,
) -> tuple[GraftModel, Architecture, InputSpec, TransferReport | None]:
    """A model ready to fine-tune, the records to rebuild it, and what happened to the pretrained weights.

    `pretrained="imagenet"` fetches timm's hub weights; `weights=FILE` reads a local file instead.
    """
    recorded = bundle_architecture(weights)
    if recorded is not None and recorded.graph is not None and name == recorded.timm_name:
        # An imported Keras layer graph (graft.models.keras): rebuilt from its description, not from timm.
        from graft.models.keras.finetune import create_graph_model

        return create_graph_model(str(weights), recorded, num_classes, input_mode=input_mode, size=size)
    check_model_name(name)
    if pretrained not in (None, "imagenet"):
        raise GraftError(f"unknown pretrained weights {pretrained!r}: use 'imagenet' or --weights FILE")
    if pretrained and weights:
        raise GraftError("give either --pretrained or --weights, not both")
    size2 = (size, size) if isinstance(size, int) else tuple(size)
    kwargs = _timm_kwargs(name, size2, timm_kwargs)
    arch = Architecture(name, num_classes, input_mode, head, kwargs)
    mean, std = backbone_normalisation(name, weights)
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
    source = _hub_state_dict(name, kwargs) if pretrained else read_state_dict(weights) if weights else None
    label = f"timm hub ({name}, ImageNet)" if pretrained else str(weights)
    trained_mode = _input_mode_of(source) if source is not None else "replicate"
    if trained_mode != "replicate":
        # Weights of a gray-input model (fold or stem bundle): load them into the same structure as they are.
        if trained_mode != input_mode:
            raise GraftError(
                f"{weights} holds a model trained with input mode {trained_mode!r}; train with "
                f"--input-mode {trained_mode} (changing the input mode of a trained model is a surgery)"
            )
        model = build_model(arch, spec)
        report = transfer_weights(model, source, source_name=label)
        return model, arch, spec, report
    model = build_model(Architecture(name, num_classes, "replicate", head, kwargs), _rgb(spec))
    report = None
    if source is not None:
        conv_name, _ = find_first_conv(model.backbone)
        report = transfer_weights(model.backbone, source, source_name=label, first_conv=conv_name)
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


def read_bundle_meta(weights: str | Path | None) -> dict | None:
    """`graft.json` of a bundle given as --weights (None for weight files): the one reader of that record here."""
    path = Path(weights) / "graft.json" if weights else None
    if path is None or not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise GraftError(f"{path} is damaged ({first_line(error)})") from None
    if not isinstance(meta, dict):
        raise GraftError(f"{path} is damaged (not a JSON object)")
    return meta


def backbone_normalisation(name: str, weights: str | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean/std the backbone's weights expect: a bundle's own record, else timm's for the name."""
    meta = read_bundle_meta(weights)
    if meta is not None:
        try:
            recorded = InputSpec.from_dict(meta["input"])
            return recorded.backbone_mean, recorded.backbone_std
        except (KeyError, TypeError) as error:
            raise GraftError(f"{weights}/graft.json is damaged ({first_line(error)})") from None
    cfg = timm.get_pretrained_cfg(name)
    if cfg is None:
        return IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    return tuple(cfg.mean), tuple(cfg.std)


def bundle_architecture(weights: str | None) -> Architecture | None:
    """The architecture recorded in a bundle given as --weights; None for weight files."""
    meta = read_bundle_meta(weights)
    if meta is None:
        return None
    try:
        return Architecture.from_dict(meta["architecture"])
    except (KeyError, TypeError) as error:
        raise GraftError(f"{weights}/graft.json is damaged ({first_line(error)})") from None


def _input_mode_of(state: dict[str, torch.Tensor]) -> InputMode:
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

"""Where training starts: fresh, ImageNet hub weights, a weights file, or a bundle to continue or transfer from.

`weights_origin` decides it once, from the settings, and returns one typed value (`Origin`) that carries the
bundle record it read, so `graft train --weights BUNDLE` reads `graft.json` once. Everything else here takes
that value.

`--weights BUNDLE` without another `--model` continues that bundle: its architecture (surgery edits included)
and input spec are used as they are, and its classifier rows follow the data's class names (kept classes keep
their rows, new ones are imprinted from the training images). Naming another model moves the weights into it
by name and shape instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from graft.bundle import load
from graft.data.base import ImageSet
from graft.errors import GraftError
from graft.models.factory import GraftModel, create_model
from graft.models.hub import hub_state_dict
from graft.models.keras.finetune import create_graph_model
from graft.models.weights import TransferReport, read_state_dict
from graft.record import META_FILE, Architecture, BundleRecord, ParentRecord
from graft.record import read as read_record
from graft.spec import InputSpec
from graft.surgery.classes import change_classes
from graft.training.config import ARCHITECTURE_DEFAULTS, TrainConfig

OriginKind = Literal["fresh", "hub", "file", "continue", "transfer", "keras-graph"]


@dataclass(frozen=True)
class Origin:
    """Where a run's starting weights come from, decided once (`weights_origin`).

    fresh: random initialisation; hub: timm's ImageNet weights; file: a safetensors file or state dict;
    continue: a bundle trained on as it is; transfer: a bundle's weights moved by name into another model;
    keras-graph: an imported Keras layer graph, retargeted to the data's classes.
    """

    kind: OriginKind
    config: TrainConfig  # the settings with everything left open filled in (from the bundle, else defaults)
    path: Path | None = None
    record: BundleRecord | None = None  # the bundle's record, when the weights are a bundle

    def parent(self) -> ParentRecord | None:
        """What a continued bundle was: its path, metrics and surgery chain, kept in the new bundle's provenance."""
        if self.kind not in ("continue", "keras-graph") or self.record is None:
            return None
        provenance = self.record.provenance
        return ParentRecord(
            bundle=str(self.path),
            metrics=dict(self.record.metrics) or dict(provenance.metrics_before_surgery or {}),
            surgery=list(provenance.surgery),
            continued_from=provenance.continued_from,
        )


def _recorded_settings(record: BundleRecord) -> dict:
    arch, spec = record.architecture, record.input
    return {
        "model": arch.timm_name,
        "model_kwargs": dict(arch.timm_kwargs),
        "input_mode": spec.mode,
        "head": arch.head,
        "size": spec.size[0],
    }


def _contradictions(config: TrainConfig, record: BundleRecord) -> list[str]:
    return [
        f"--{key.replace('_', '-')} {getattr(config, key)} (the bundle has {value})"
        for key, value in _recorded_settings(record).items()
        if getattr(config, key) is not None and getattr(config, key) != value
    ]


def weights_origin(config: TrainConfig) -> Origin:
    """Decide where training starts and fill the settings left open: from a --weights bundle, else defaults.

    A bundle is continued unless the settings ask for another model, size, mode or head; then its weights move
    by name and shape into a fresh model built with them (the bundle's timm name and kwargs unless another
    --model is named). A bundle changed by surgery cannot take that path without losing its inserted blocks, so
    it is refused with a pointer to `graft surgery`.
    """
    if config.pretrained and config.weights:
        raise GraftError("give either --pretrained or --weights, not both")
    path = Path(config.weights) if config.weights else None
    record = read_record(path) if path is not None and (path / META_FILE).is_file() else None
    if record is not None and not _contradictions(config, record):
        recorded = _recorded_settings(record)
        update = {k: v for k, v in recorded.items() if getattr(config, k) is None}
        if config.resize is None:
            update["resize"] = record.input.resize
        kind: OriginKind = "keras-graph" if record.architecture.graph is not None else "continue"
        return Origin(kind, config.model_copy(update=update), path, record)
    if record is not None and _edited(record) and config.model in (None, record.architecture.timm_name):
        raise GraftError(
            f"{config.weights} was changed by surgery; {', '.join(_contradictions(config, record))} would drop its "
            "inserted blocks or size stem: change it with `graft surgery` and continue the result"
        )
    name, kwargs = _model_name(config, record)
    defaults = dict(ARCHITECTURE_DEFAULTS)
    if record is not None and name == record.architecture.timm_name:  # unasked settings stay the bundle's
        defaults.update({k: v for k, v in _recorded_settings(record).items() if k in ("input_mode", "head", "size")})
    update = {k: v for k, v in defaults.items() if getattr(config, k) is None}
    resolved = config.model_copy(update={**update, "model": name, "model_kwargs": kwargs})
    if record is not None and record.architecture.graph is not None and name == record.architecture.timm_name:
        return Origin("keras-graph", resolved, path, record)  # rebuilt from its description, not from timm
    if record is not None:
        return Origin("transfer", resolved, path, record)
    return Origin("hub" if config.pretrained else "file" if path is not None else "fresh", resolved, path)


def _edited(record: BundleRecord) -> bool:
    """Surgery gave the model structure a fresh timm model lacks: inserted or widened layers, a size stem."""
    return bool(record.architecture.edits) or record.architecture.size_stem is not None


def _model_name(config: TrainConfig, record: BundleRecord | None) -> tuple[str, dict]:
    """The timm name and kwargs to build: the given ones; else those of a --weights bundle (e.g. an imported Keras
    model's `keras_mobilenetv1` + `channel_multiplier`); else the default model. A bundle's kwargs also apply when
    the named model is the bundle's own."""
    recorded = record.architecture if record is not None else None
    name = config.model or (recorded.timm_name if recorded is not None else ARCHITECTURE_DEFAULTS["model"])
    kwargs = config.model_kwargs
    if kwargs is None:
        kwargs = dict(recorded.timm_kwargs) if recorded is not None and recorded.timm_name == name else {}
    return name, dict(kwargs)


def starting_model(
    origin: Origin, classes: list[str], train_set: ImageSet
) -> tuple[GraftModel, Architecture, InputSpec, TransferReport | None]:
    """(model, architecture, spec, weight report) to train, built from the origin `weights_origin` chose."""
    config = origin.config
    if origin.kind == "continue":
        return _continue(origin, classes, train_set)
    if origin.kind == "keras-graph":
        assert origin.record is not None and origin.path is not None
        return create_graph_model(
            origin.record.arch,
            origin.record.spec,
            read_state_dict(origin.path),
            len(classes),
            input_mode=config.input_mode,
            size=config.size,
            source_name=str(origin.path),
        )
    if config.pretrained not in (None, "imagenet"):
        raise GraftError(f"unknown pretrained weights {config.pretrained!r}: use 'imagenet' or --weights FILE")
    source, name, normalisation = None, "", None
    if origin.kind == "hub":
        source = hub_state_dict(config.model, config.model_kwargs or {}, offline=not config.download)
        name = f"timm hub ({config.model}, ImageNet)"
    elif origin.path is not None:
        source, name = read_state_dict(origin.path), str(origin.path)
        if origin.record is not None:  # a bundle's weights expect the normalisation it records
            normalisation = (origin.record.input.backbone_mean, origin.record.input.backbone_std)
    model, arch, spec, report = create_model(
        config.model,
        len(classes),
        input_mode=config.input_mode,
        head=config.head,
        size=config.size,
        source=source,
        source_name=name,
        normalisation=normalisation,
        timm_kwargs=config.model_kwargs,
    )
    return model, arch, dataclasses.replace(spec, resize=config.resize), report


def _continue(origin: Origin, classes: list[str], train_set: ImageSet):
    config = origin.config
    bundle = load(origin.path, record=origin.record)
    report = TransferReport(source=f"{config.weights} (continued: architecture, edits and input spec)")
    report.loaded = [k for k in bundle.model.state_dict() if not k.endswith("num_batches_tracked")]
    if list(classes) != bundle.classes:
        bundle, _, details = change_classes(bundle, list(classes), imprint=train_set)
        how = (
            f"classifier rows matched by class name: {len(details['kept'])} kept, {len(details['removed'])} removed, "
            f"{len(details['imprinted'])} imprinted from the training images, "
            f"{len(details['zero_initialised'])} zero-initialised"
        )
        report.adapted.append({"name": "classifier", "how": how})
    spec = dataclasses.replace(bundle.spec, resize=config.resize)
    return bundle.model.train(), bundle.architecture, spec, report

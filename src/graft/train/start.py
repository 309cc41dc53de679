"""Where training starts: a fresh or pretrained timm model, or a bundle to continue from.

`--weights BUNDLE` without another `--model` continues that bundle: its architecture (surgery edits included)
and input spec are used as they are, and its classifier rows follow the data's class names (kept classes keep
their rows, new ones are imprinted from the training images). Naming another model moves the weights into it
by name and shape instead.
"""

from __future__ import annotations

import dataclasses

from graft.bundle import load
from graft.data.base import ImageSet
from graft.errors import GraftError
from graft.models.factory import GraftModel, bundle_architecture, create_model, read_bundle_meta
from graft.models.weights import TransferReport
from graft.spec import InputSpec
from graft.surgery.classes import change_classes
from graft.train.config import ARCHITECTURE_DEFAULTS, TrainConfig


def _resolve_model(config: TrainConfig) -> tuple[str, dict]:
    """The timm name and kwargs to build: the given ones; else those of a --weights bundle (e.g. an imported Keras
    model's `keras_mobilenetv1` + `channel_multiplier`); else the default model. A bundle's kwargs also apply when
    the named model is the bundle's own."""
    recorded = bundle_architecture(config.weights)
    name = config.model or (recorded.timm_name if recorded is not None else ARCHITECTURE_DEFAULTS["model"])
    kwargs = config.model_kwargs
    if kwargs is None:
        kwargs = recorded.timm_kwargs if recorded is not None and recorded.timm_name == name else {}
    return name, dict(kwargs)


def _recorded_settings(meta: dict) -> dict:
    arch, spec = meta["architecture"], meta["input"]
    return {
        "model": arch["timm_name"],
        "model_kwargs": arch.get("timm_kwargs") or {},
        "input_mode": arch.get("input_mode", "replicate"),
        "head": arch.get("head", "pool"),
        "size": spec["size"][0],
    }


def _contradictions(config: TrainConfig, meta: dict) -> list[str]:
    recorded = _recorded_settings(meta)
    return [
        f"--{key.replace('_', '-')} {getattr(config, key)} (the bundle has {value})"
        for key, value in recorded.items()
        if getattr(config, key) is not None and getattr(config, key) != value
    ]


def continues_bundle(config: TrainConfig) -> bool:
    """A bundle as --weights is continued unless the settings ask for another model, size, mode or head."""
    meta = read_bundle_meta(config.weights)
    return meta is not None and not _contradictions(config, meta)


def parent_record(config: TrainConfig) -> dict | None:
    """What a continued bundle was: its path, metrics and surgery chain, kept in the new bundle's provenance."""
    if not continues_bundle(config):
        return None
    meta = read_bundle_meta(config.weights)
    provenance = meta.get("provenance") or {}
    return {
        "bundle": str(config.weights),
        "metrics": meta.get("metrics") or provenance.get("metrics_before_surgery") or {},
        "surgery": provenance.get("surgery", []),
        "continued_from": provenance.get("continued_from"),
    }


def resolve_settings(config: TrainConfig) -> TrainConfig:
    """Fill the settings left open: from the bundle being continued, else graft's defaults.

    When other settings are asked for, the weights move by name and shape into a fresh model built with them
    (the bundle's timm name and kwargs unless another --model is named). A bundle changed by surgery cannot take
    that path without losing its inserted blocks, so it is refused with a pointer to `graft surgery`.
    """
    meta = read_bundle_meta(config.weights)
    if meta is not None and continues_bundle(config):
        recorded = _recorded_settings(meta)
        update = {k: v for k, v in recorded.items() if getattr(config, k) is None}
        if config.resize is None:
            update["resize"] = meta["input"].get("resize", "stretch")
        return config.model_copy(update=update)
    if (
        meta is not None
        and meta["architecture"].get("edits")
        and config.model in (None, meta["architecture"]["timm_name"])
    ):
        raise GraftError(
            f"{config.weights} was changed by surgery; {', '.join(_contradictions(config, meta))} would drop its "
            "inserted blocks: change it with `graft surgery` and continue the result"
        )
    name, kwargs = _resolve_model(config)
    defaults = dict(ARCHITECTURE_DEFAULTS)
    if meta is not None and name == meta["architecture"]["timm_name"]:  # unasked settings stay the bundle's
        defaults.update({k: v for k, v in _recorded_settings(meta).items() if k in ("input_mode", "head", "size")})
    update = {k: v for k, v in defaults.items() if getattr(config, k) is None}
    return config.model_copy(update={**update, "model": name, "model_kwargs": kwargs})


def starting_model(
    config: TrainConfig, classes: list[str], train_set: ImageSet
) -> tuple[GraftModel, object, InputSpec, TransferReport | None]:
    """(model, architecture, spec, weight report) to train; `config` must have been through `resolve_settings`."""
    if continues_bundle(config):
        return _continue(config, classes, train_set)
    model, arch, spec, report = create_model(
        config.model,
        len(classes),
        input_mode=config.input_mode,
        head=config.head,
        size=config.size,
        pretrained=config.pretrained,
        weights=config.weights,
        timm_kwargs=config.model_kwargs,
    )
    return model, arch, dataclasses.replace(spec, resize=config.resize), report


def _continue(config: TrainConfig, classes: list[str], train_set: ImageSet):
    if config.pretrained:
        raise GraftError("give either --pretrained or --weights, not both")
    bundle = load(config.weights)
    if bundle.architecture.graph is not None:  # an imported Keras layer graph: its own classifier rule
        return create_model(
            bundle.architecture.timm_name,
            len(classes),
            input_mode=config.input_mode,
            size=config.size,
            weights=config.weights,
        )
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

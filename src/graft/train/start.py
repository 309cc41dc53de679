"""Where training starts: a fresh or pretrained timm model, or a bundle to continue from.

`--weights BUNDLE` without another `--model` continues that bundle: its architecture (surgery edits included)
and input spec are used as they are, and its classifier rows follow the data's class names (kept classes keep
their rows, new ones are imprinted from the training images). Naming another model moves the weights into it
by name and shape instead.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from graft.bundle import META_FILE, load
from graft.data.base import ImageSet
from graft.errors import GraftError
from graft.models.factory import GraftModel, create_model
from graft.models.weights import TransferReport
from graft.spec import InputSpec
from graft.surgery.classes import change_classes
from graft.train.config import ARCHITECTURE_DEFAULTS, TrainConfig


def _bundle_meta(weights: str | None) -> dict | None:
    if not weights or not (Path(weights) / META_FILE).is_file():
        return None
    try:
        return json.loads((Path(weights) / META_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise GraftError(f"{weights}/{META_FILE} is damaged: {error}") from None


def continues_bundle(config: TrainConfig) -> bool:
    meta = _bundle_meta(config.weights)
    return meta is not None and config.model in (None, meta.get("architecture", {}).get("timm_name"))


def parent_record(config: TrainConfig) -> dict | None:
    """What a continued bundle was: its path, metrics and surgery chain, kept in the new bundle's provenance."""
    if not continues_bundle(config):
        return None
    meta = _bundle_meta(config.weights)
    provenance = meta.get("provenance") or {}
    return {
        "bundle": str(config.weights),
        "metrics": meta.get("metrics") or provenance.get("metrics_before_surgery") or {},
        "surgery": provenance.get("surgery", []),
        "continued_from": provenance.get("continued_from"),
    }


def resolve_settings(config: TrainConfig) -> TrainConfig:
    """Fill the architecture settings left open: from the bundle being continued, else graft's defaults."""
    if not continues_bundle(config):
        return config.model_copy(update={k: v for k, v in ARCHITECTURE_DEFAULTS.items() if getattr(config, k) is None})
    meta = _bundle_meta(config.weights)
    arch, spec = meta["architecture"], meta["input"]
    recorded = {
        "model": arch["timm_name"],
        "input_mode": arch.get("input_mode", "replicate"),
        "head": arch.get("head", "pool"),
        "size": spec["size"][0] if spec["size"][0] == spec["size"][1] else None,
        "resize": spec.get("resize", "stretch"),
    }
    for key, value in recorded.items():
        given = getattr(config, key)
        if given is not None and given != value and key != "resize":
            flag = key.replace("_", "-")
            hint = " (change it first with `graft surgery`)" if key in ("size", "input_mode") else ""
            raise GraftError(
                f"--{flag} {given} differs from the bundle being continued ({value}){hint}; "
                f"or name another --model to transfer the weights by name"
            )
    update = {k: v for k, v in recorded.items() if getattr(config, k) is None and v is not None}
    if "size" not in update and config.size is None:
        update["size"] = spec["size"][0]
    return config.model_copy(update=update)


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
    )
    return model, arch, dataclasses.replace(spec, resize=config.resize), report


def _continue(config: TrainConfig, classes: list[str], train_set: ImageSet):
    if config.pretrained:
        raise GraftError("give either --pretrained or --weights, not both")
    bundle = load(config.weights)
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

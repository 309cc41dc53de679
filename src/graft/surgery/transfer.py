"""Moving a trained model's weights into another architecture, by name and shape, with a report.

The first conv is adapted when only its input channels differ (timm's rule); everything else that does not
match is skipped with its reason. The result is a starting point for fine-tuning, not the same function, and
its certificate says so.
"""

from __future__ import annotations

import dataclasses

import timm

from graft.bundle import Bundle
from graft.errors import GraftError
from graft.models.factory import build_model, check_model_name
from graft.models.input_modes import find_first_conv
from graft.models.weights import transfer_weights
from graft.surgery.certificate import Views
from graft.surgery.details import TransplantDetails


def change_architecture(
    bundle: Bundle, name: str, timm_kwargs: dict | None = None
) -> tuple[Bundle, Views, TransplantDetails]:
    check_model_name(name)
    arch = bundle.architecture
    kwargs = dict(timm_kwargs or {})
    cfg = timm.get_pretrained_cfg(name)
    if cfg is not None and cfg.fixed_input_size:
        kwargs.setdefault("img_size", list(bundle.spec.size))
    if name == arch.timm_name and kwargs == arch.timm_kwargs and not arch.edits:
        raise GraftError(f"the model already is {name}")
    new_arch = dataclasses.replace(arch, timm_name=name, timm_kwargs=kwargs, edits=[])
    model = build_model(new_arch, bundle.spec)
    conv_name, _ = find_first_conv(model.backbone)
    report = transfer_weights(
        model,
        bundle.model.state_dict(),
        source_name=f"{arch.timm_name} bundle",
        first_conv=f"backbone.{conv_name}",
    )
    model.eval()
    new = dataclasses.replace(bundle, model=model, architecture=new_arch, path=None)
    details: TransplantDetails = {
        "from": arch.timm_name,
        "to": name,
        "transfer": report.to_dict(),
        "summary": report.summary(),
    }
    if not report.loaded:
        raise GraftError(f"no tensor of the {arch.timm_name} model fits {name} by name and shape; nothing to transfer")
    return new, Views(), details

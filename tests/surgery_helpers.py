"""Random models for surgery's exactness tests: every tensor drawn from one seed, nothing from global state."""

from __future__ import annotations

import torch

from graft.bundle import Bundle
from graft.data.preprocess import to_model_input
from graft.models.factory import create_model
from graft.surgery.certificate import synthetic_probe


def random_model(name: str, num_classes: int, seed: int, **options) -> tuple:
    """(model in eval mode, architecture, spec) for timm's `name`, with random BatchNorm statistics and affine
    parameters too: a freshly initialised BatchNorm is the identity, which would hide a wrong channel mapping.

    Seeded here, not by whatever ran before, so a test sees the same model in any order or subset of the suite.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, arch, spec, _ = create_model(name, num_classes, **options)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            if key.endswith("running_var"):
                value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
            elif key.endswith(("running_mean", ".bias")):
                value.copy_(torch.randn(value.shape, generator=generator) * 0.2)
            elif key.endswith(".weight") and value.ndim == 1:
                value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
    return model.eval(), arch, spec


def measured_bundle(classes: list[str], size: int, seed: int = 0) -> Bundle:
    """A 1-channel (fold) resnet10t at size×size with random BatchNorm affines and statistics measured on images.

    Statistics measured on images (not timm's defaults) make every feature vary from image to image, so the
    logits clearly depend on the input and an equality of logits means something.
    """
    torch.manual_seed(seed)
    model, arch, spec, _ = create_model("resnet10t", len(classes), input_mode="fold", size=size)
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.copy_(torch.rand(norm.weight.shape, generator=generator) + 0.5)
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=generator) * 0.2)
            norm.reset_running_stats()
            norm.momentum = None  # a plain average over the batch below
        model.train()(to_model_input(synthetic_probe(64, (size, size), seed + 100), spec))
    for norm in norms:
        norm.momentum = 0.1
    return Bundle(model.eval(), arch, spec, list(classes), metrics={"accuracy": 0.5})

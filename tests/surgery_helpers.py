"""Random models for surgery's exactness tests: every tensor drawn from one seed, nothing from global state."""

from __future__ import annotations

import torch

from graft.models.factory import create_model


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

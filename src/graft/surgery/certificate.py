"""Certificates: how close a model after surgery stays to the model before, measured on a probe set.

Both models see the same probe images, each through its own input spec, after an operation-specific *view*
(e.g. for 1→3 channels the old model sees the colour probe's luminance). Logits are compared in float64 so that
float32 rounding in a deep network never hides or fakes an exact transformation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from graft.bundle import Bundle
from graft.data.preprocess import LUMA_WEIGHTS, normalise, to_unit_float
from graft.spec import InputSpec

EXACT_TOLERANCE = 1e-4
MIN_AGREEMENT = 0.9  # top-1 agreement below this makes an inexact result "breaking"

View = Callable[[torch.Tensor], torch.Tensor]


def identity(pixels: torch.Tensor) -> torch.Tensor:
    return pixels


def luminance(pixels: torch.Tensor) -> torch.Tensor:
    """A float image's ITU-R 601-2 luminance, unrounded (the exact image the claim is about)."""
    if pixels.shape[1] == 1:
        return pixels
    weights = torch.tensor(LUMA_WEIGHTS, dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels * weights).sum(dim=1, keepdim=True)


def colourise(pixels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Gray probes made colourful (a seeded affine map per image and channel); colour probes pass unchanged.

    Claims about colour inputs need colour probes, even when the only real data at hand is gray.
    """
    if pixels.shape[1] != 1:
        return pixels
    generator = torch.Generator().manual_seed(seed)
    n = pixels.shape[0]
    scale = torch.rand((n, 3, 1, 1), generator=generator, dtype=pixels.dtype) * 0.7 + 0.3
    shift = torch.rand((n, 3, 1, 1), generator=generator, dtype=pixels.dtype) * (1 - scale)
    return pixels * scale + shift


@dataclass(frozen=True)
class Views:
    """What each model is shown of a probe image (float pixels in [0, 1] at its own input size)."""

    old: View = identity
    new: View = identity
    note: str = "both models see the same images"


@dataclass
class Certificate:
    """One surgery step, measured: max |Δlogit| and top-1 agreement over the classes both models have."""

    operation: str
    verdict: str  # exact | approximate | breaking
    max_abs_logit_delta: float
    top1_agreement: float
    logit_scale: float  # max |old logit|, so the delta can be read in proportion
    probe: str
    probe_count: int
    compared_classes: int
    new_class_wins: float = 0.0  # share of probes whose new top-1 is a class the old model did not have
    views: str = ""
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        text = (
            f"{self.verdict:<11} {self.operation}: max |Δlogit| {self.max_abs_logit_delta:.2e} "
            f"(logits up to {self.logit_scale:.3g}), top-1 agreement {self.top1_agreement:.2%} "
            f"on {self.probe_count} {self.probe} probes"
        )
        if self.new_class_wins:
            text += f"; new classes take top-1 on {self.new_class_wins:.1%}"
        return text


def verdict(delta: float, agreement: float, *, tolerance: float = EXACT_TOLERANCE) -> str:
    if delta <= tolerance:
        return "exact"
    return "approximate" if agreement >= MIN_AGREEMENT else "breaking"


def model_inputs(probe: torch.Tensor, spec: InputSpec, view: View) -> torch.Tensor:
    """uint8 probe images → what the model with `spec` receives under `view`, in float64."""
    return normalise(view(to_unit_float(probe, spec).double()), spec)


def _logits(bundle: Bundle, inputs: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    model = copy.deepcopy(bundle.model).double().eval()
    with torch.no_grad():
        return torch.cat([model(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])


def certify(
    operation: str,
    old: Bundle,
    new: Bundle,
    probe: torch.Tensor,
    *,
    views: Views = Views(),
    probe_name: str = "synthetic",
    details: dict | None = None,
) -> Certificate:
    """Compare `old` and `new` on the probe images; classes are matched by name."""
    old_logits = _logits(old, model_inputs(probe, old.spec, views.old))
    new_logits = _logits(new, model_inputs(probe, new.spec, views.new))
    shared = [c for c in new.classes if c in old.classes]
    old_index = [old.classes.index(c) for c in shared]
    new_index = [new.classes.index(c) for c in shared]
    if shared:
        a, b = old_logits[:, old_index], new_logits[:, new_index]
        delta = float((a - b).abs().max())
        agreement = float((a.argmax(1) == b.argmax(1)).double().mean())
        scale = float(a.abs().max())
    else:
        delta, agreement, scale = float("inf"), 0.0, float(old_logits.abs().max())
    added = np.array([c not in old.classes for c in new.classes])
    wins = float(added[new_logits.argmax(1).numpy()].mean()) if added.any() else 0.0
    return Certificate(
        operation=operation,
        verdict=verdict(delta, agreement),
        max_abs_logit_delta=delta,
        top1_agreement=agreement,
        logit_scale=scale,
        probe=probe_name,
        probe_count=len(probe),
        compared_classes=len(shared),
        new_class_wins=wins,
        views=views.note,
        details=details or {},
    )


def synthetic_probe(count: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Seeded smooth colour images with texture (uint8), for when no real probe data is given.

    Low-resolution noise upsampled gives shapes and edges at several scales; pure per-pixel noise would be far
    from anything a classifier was trained on.
    """
    generator = torch.Generator().manual_seed(seed)
    images = []
    for coarse in (4, 8, 16):
        low = torch.rand((count, 3, coarse, coarse), generator=generator)
        images.append(torch.nn.functional.interpolate(low, size=size, mode="bicubic", align_corners=False))
    mix = sum(images) / len(images) + 0.05 * torch.randn((count, 3, *size), generator=generator)
    return (mix.clamp(0, 1) * 255).round().to(torch.uint8)

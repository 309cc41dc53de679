"""Changing how many channels a trained model takes, exactly where the maths allows.

Rules (W: the first conv's kernel, L: ITU-R 601-2 luminance weights, which sum to 1):

- 1 → 3, exact: W'_c = L_c·W. On any colour image the new model computes the old model on its luminance.
- 3 → 1, exact for gray: W' = Σ_c W_c. On a gray image the new model equals the old one on that image copied
  to R, G, B (for `replicate` bundles the per-channel normalisation is folded in as well, border-exact).
- 1 → k, exact for gray: W'_c = W / k, the old model on a gray image copied into k channels.
- 3 → k otherwise, approximate: timm's rule (channels repeated cyclically, rescaled by 3/k), certified on the
  probe's channels repeated cyclically.

Bundles that normalise per channel (`replicate`) become `fold` bundles for the exact rules: the model then takes
raw [0, 1] pixels and carries the normalisation in its first conv (with the offset kernel that keeps zero padding
exact), because a luminance of normalised channels is not the normalised luminance.
"""

from __future__ import annotations

import dataclasses

import torch
from timm.models._manipulate import adapt_input_conv

from graft.bundle import Bundle
from graft.data.preprocess import LUMA_WEIGHTS
from graft.errors import GraftError
from graft.models.factory import build_model
from graft.models.input_modes import find_first_conv, fold_weights
from graft.surgery.certificate import Views, colourise, luminance
from graft.surgery.details import ChannelsDetails


def _cyclic(channels: int):
    def view(pixels: torch.Tensor) -> torch.Tensor:
        rgb = colourise(pixels)
        return rgb.repeat(1, -(-channels // rgb.shape[1]), 1, 1)[:, :channels]

    return view


def _gray_to_colour_view() -> Views:
    return Views(
        old=lambda p: luminance(colourise(p)),
        new=colourise,
        note="new model on colour probes vs old model on their luminance",
    )


_GRAY_VIEWS = Views(old=luminance, new=luminance, note="both models on the probes' luminance")


def input_conv_key(bundle: Bundle) -> str:
    """State-dict name of the kernel that sees the image (the stem's conv for `stem` bundles)."""
    if bundle.spec.mode == "stem":
        return "stem.conv"
    name, _ = find_first_conv(bundle.model.backbone)
    return f"backbone.{name}"


def change_channels(bundle: Bundle, channels: int) -> tuple[Bundle, Views, ChannelsDetails]:
    """A new bundle whose model takes `channels` input channels; see the module docstring for the rules."""
    spec, mode = bundle.spec, bundle.spec.mode
    have = spec.channels
    if channels < 1:
        raise GraftError(f"a model needs at least one input channel, not {channels}")
    if channels == have and not (mode == "replicate" and have == 3):
        raise GraftError(f"this model already takes {have} channel{'s' if have > 1 else ''}")
    if have not in (1, 3):
        raise GraftError(f"no rule changes a {have}-channel model's input; graft's rules start from 1 or 3 channels")
    key = input_conv_key(bundle)
    state = {k: v.detach().clone() for k, v in bundle.model.state_dict().items()}
    weight = state[f"{key}.weight"].double()
    raw_input = mode in ("fold", "stem")  # the first conv sees [0, 1] pixels
    new_mode = mode
    if not raw_input and channels in (1, 3):
        # replicate: fold the per-channel normalisation into a gray kernel + offset, then spread by the rule.
        weight, offset = fold_weights(weight, spec.mean, spec.std)
        state[f"{key}.offset"] = offset.float()
        new_mode, raw_input, have = "fold", True, 1
    luma = torch.tensor(LUMA_WEIGHTS, dtype=torch.float64).view(1, 3, 1, 1)
    if raw_input and have == 1 and channels == 3:
        new_weight, views, rule, exact = weight * luma, _gray_to_colour_view(), "luminance (W_c = L_c·W)", True
    elif raw_input and have == 1:
        new_weight, views, rule, exact = weight.repeat(1, channels, 1, 1) / channels, _GRAY_VIEWS, "W / k", True
    elif raw_input and channels == 1:
        new_weight, views, rule, exact = weight.sum(1, keepdim=True), _GRAY_VIEWS, "sum over channels", True
    else:
        new_weight = adapt_input_conv(channels, weight.float()).double()
        views = Views(old=colourise, new=_cyclic(channels), note="channels repeated cyclically for the new model")
        rule, exact = "timm's adapt_input_conv (cyclic repeat, ×3/k)", False
    state[f"{key}.weight"] = new_weight.float()
    if raw_input:
        mean, std = (0.0,) * channels, (1.0,) * channels
    else:
        mean = tuple(spec.mean[i % len(spec.mean)] for i in range(channels))
        std = tuple(spec.std[i % len(spec.std)] for i in range(channels))
    new_spec = dataclasses.replace(spec, channels=channels, mode=new_mode, mean=mean, std=std)
    model = build_model(bundle.architecture, new_spec)
    model.load_state_dict(state, strict=True)
    model.eval()
    new = dataclasses.replace(bundle, model=model, spec=new_spec, path=None)
    details: ChannelsDetails = {
        "from": spec.channels,
        "to": channels,
        "rule": rule,
        "claim": "exact" if exact else "approximate",
    }
    if new_mode != mode:
        details["input_mode"] = f"{mode} → {new_mode}"
    return new, views, details

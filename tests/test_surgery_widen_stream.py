"""Co-widening a residual stream (issue 18): a conv whose channels reach a residual sum widens every layer that
writes into that stream and splits the weights of every layer that reads it; exact for random weights, random
widths and random streams, in eval and train mode. What cannot be widened is refused by name, with the reason.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from graft.bundle import Bundle, load
from graft.errors import GraftError
from graft.models.factory import create_model
from graft.models.widening import widen_plan
from graft.surgery import reshape
from graft.surgery.certificate import EXACT_TOLERANCE, certify
from graft.surgery.structure import widen_layer
from surgery_helpers import random_model

CLASSES = ["a", "b", "c", "d"]
SETTINGS = settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TINY_BOTTLENECK = {"channels": [8, 16, 16, 16], "stem_width": 8, "base_width": 16}

# family → (timm name, timm kwargs, convs that write into a residual stream)
FAMILIES = {
    "resnet-basic": ("resnet10t", {}, ["conv1.6", "layer1.0.conv2", "layer2.0.downsample.1", "layer4.0.conv2"]),
    "resnet-bottleneck": ("resnet14t", TINY_BOTTLENECK, ["layer1.0.conv3", "layer1.0.downsample.1", "layer3.0.conv3"]),
    "mobilenetv3": ("mobilenetv3_small_050", {}, ["blocks.2.1.conv_pwl", "blocks.2.0.conv_pwl", "blocks.1.0.conv_pwl"]),
    "efficientnet": ("tinynet_e", {}, ["blocks.3.1.conv_pwl", "blocks.4.0.conv_pwl", "blocks.5.1.conv_pwl"]),
}


@functools.cache
def _model(family: str, seed: int) -> tuple:
    name, kwargs, _ = FAMILIES[family]
    return random_model(name, len(CLASSES), seed, input_mode="fold", size=32, timm_kwargs=kwargs)


def bundle(family: str, seed: int = 0) -> Bundle:
    model, arch, spec = _model(family, seed)
    return Bundle(model, arch, spec, list(CLASSES))


def probe(seed: int, count: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 1, 32, 32), generator=generator, dtype=torch.uint8)


def _out(model: nn.Module, name: str) -> int:
    return model.get_submodule(f"backbone.{name}").out_channels


@pytest.mark.parametrize("family", list(FAMILIES))
@SETTINGS
@given(data=st.data(), seed=st.integers(0, 2**16), extra=st.integers(1, 24))
def test_widening_a_residual_stream_is_exact(family, data, seed, extra):
    old = bundle(family, seed % 2)
    images = probe(seed)
    inputs = images.double() / 255
    with torch.no_grad():  # the reference depends on its input, or parity would prove nothing
        reference = old.model.double()(inputs[:2] - 0.5)
        old.model.float()
    assert (reference[0] - reference[1]).abs().max() > 1e-6
    layer = data.draw(st.sampled_from(FAMILIES[family][2]))
    width = _out(old.model, layer) + extra
    new, views, details = widen_layer(old, layer, width, seed=seed)
    assert details["residual_sums"] >= 1 and details["residual_stream"], details
    for writer in (layer, *details["residual_stream"]):  # the whole stream got wider, writers and their norms
        assert _out(new.model, writer) == width, writer
    for reader in details["consumers"]:
        module = new.model.get_submodule(f"backbone.{reader}")
        assert getattr(module, "in_channels", getattr(module, "in_features", None)) == width, reader
    certificate = certify("wider", old, new, images, views=views)
    assert certificate.max_abs_logit_delta <= EXACT_TOLERANCE, certificate.line()
    assert certificate.train_forward_delta is not None and certificate.train_forward_delta <= EXACT_TOLERANCE
    assert certificate.verdict == "exact", certificate.line()


def test_the_stream_is_found_from_the_data_flow_not_from_names():
    """Every write into layer1's stream of a basic-block ResNet, and every read from it."""
    old = bundle("resnet-basic")
    plan = widen_plan(old.model, "layer1.0.conv2", (1, 32, 32))
    strip = [n.removeprefix("backbone.") for n in plan.writers]
    assert strip == ["conv1.6"]  # the stem (resnet10t has one block per stage)
    assert {n.removeprefix("backbone.") for n in plan.consumers} == {
        "layer1.0.conv1", "layer2.0.conv1", "layer2.0.downsample.1"
    }  # fmt: skip
    assert {"backbone.bn1", "backbone.layer1.0.bn2"} <= set(plan.channelwise) and plan.sums == 1
    # the same stream whichever writer is named
    other = widen_plan(old.model, "conv1.6", (1, 32, 32))
    assert set(other.rows) == set(plan.rows) and set(other.consumers) == set(plan.consumers)


def test_widened_stream_reloads_from_its_record(tmp_path):
    old = bundle("resnet-basic")
    result = reshape(old, tmp_path / "wide", widen={"layer2.0.conv2": 150}, probe_count=8)
    assert result.verdict == "exact"
    assert "(its residual stream: 2 writers, 2 readers)" in result.certificates[0].operation
    loaded = load(tmp_path / "wide")
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), result.bundle.model.eval()(x))
    assert loaded.model.get_submodule("backbone.layer2.0.downsample.2").num_features == 150
    assert loaded.model.get_submodule("backbone.layer3.0.conv1").in_channels == 150


def test_the_new_channels_train():
    """One optimizer step on the widened model gives the copied channels gradients (they are not dead)."""
    old = bundle("resnet-basic")
    new, _, _ = widen_layer(old, "layer1.0.conv2", 80, seed=3)
    model = new.model.train()
    loss = model(torch.rand(4, 1, 32, 32)).logsumexp(1).mean()
    loss.backward()
    conv = model.get_submodule("backbone.layer1.0.conv2")
    assert conv.weight.grad[64:].abs().sum() > 0  # rows 64.. are the new copies


@pytest.mark.parametrize(
    ("name", "kwargs", "layer", "message"),
    [
        ("test_convnext", {}, "stem.0", "reach LayerNorm2d (stem.1), which normalises over the channels"),
        ("densenet121", {}, "features.conv0", "reach a concatenation"),
        ("test_vit", {}, "patch_embed.proj", "cannot follow the data flow"),
        ("resnet10t", {}, "layer1.0.bn2", "not a plain convolution"),
    ],
)
def test_what_cannot_be_widened_is_refused_by_name(name, kwargs, layer, message):
    model, arch, spec, _ = create_model(name, 3, input_mode="fold", size=32, timm_kwargs=kwargs)
    with pytest.raises(GraftError, match="widen") as refused:
        widen_layer(Bundle(model.eval(), arch, spec, CLASSES[:3]), layer, 999)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


class _Unseen(nn.Module):
    """An architecture no table knows: a sum whose result is the model's output, and a channel mean."""

    def __init__(self, reduce_channels: bool) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 1)
        self.reduce_channels = reduce_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        y = y + self.b(y)
        return y.mean(1) if self.reduce_channels else y.flatten(1)


@pytest.mark.parametrize(("reduce_channels", "message"), [(True, "mixes them"), (False, "mixes them")])
def test_an_unseen_model_is_refused_not_mangled(reduce_channels, message):
    with pytest.raises(GraftError, match=message):
        widen_plan(_Unseen(reduce_channels), "a", (1, 8, 8))

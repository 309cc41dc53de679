"""Every "exact" claim of model surgery, checked with random weights and random inputs on several timm families.

Weights are randomised beyond timm's init (BatchNorm statistics and affine parameters too), so a transformation
that only works for default statistics fails here. Certificates compare logits in float64.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graft.bundle import Bundle
from graft.errors import GraftError
from graft.surgery.certificate import EXACT_TOLERANCE, certify
from graft.surgery.channels import change_channels
from graft.surgery.classes import change_classes
from graft.surgery.structure import insert_identity_block, widen_layer
from surgery_helpers import random_model

# family → (timm name, input size, a stage to insert after, a conv that can be widened or None)
FAMILIES = {
    "resnet": ("resnet10t", 32, "layer2", "layer1.0.conv1"),
    "densenet": ("densenet121", 32, "features.denseblock2", "features.denseblock1.denselayer1.conv1"),
    "mobilenetv3": ("mobilenetv3_small_050", 32, "blocks.2", "blocks.2.0.conv_pw"),
    "efficientnet": ("test_efficientnet", 32, "blocks.1", "blocks.3.0.conv_pw"),
    "convnext": ("test_convnext", 32, "stages.0", None),
    "vit": ("test_vit", 32, None, None),
}
CLASSES = [f"c{i}" for i in range(5)]
SETTINGS = settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def _state(name: str, size: int, mode: str, seed: int) -> tuple:
    return random_model(name, len(CLASSES), seed, input_mode=mode, size=size)


def random_bundle(family: str, mode: str = "replicate", seed: int = 0) -> Bundle:
    name, size, _, _ = FAMILIES[family]
    model, arch, spec = _state(name, size, mode, seed)
    return Bundle(model, arch, spec, list(CLASSES))


def random_probe(seed: int, size: int, channels: int = 3, count: int = 4) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, channels, size, size), generator=generator, dtype=torch.uint8)


def assert_exact(operation: str, old: Bundle, new: Bundle, probe: torch.Tensor, views) -> None:
    certificate = certify(operation, old, new, probe, views=views)
    assert certificate.max_abs_logit_delta <= EXACT_TOLERANCE, certificate.line()
    assert certificate.verdict == "exact"
    assert certificate.top1_agreement == 1.0


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("mode", ["replicate", "fold", "stem"])
@SETTINGS
@given(seed=st.integers(0, 2**16), gray_probe=st.booleans())
def test_one_to_three_channels_sees_colour_as_its_luminance(family, mode, seed, gray_probe):
    old = random_bundle(family, mode, seed % 3)
    new, views, details = change_channels(old, 3)
    assert details["claim"] == "exact"
    assert new.spec.channels == 3
    probe = random_probe(seed, old.spec.size[0], channels=1 if gray_probe else 3)
    assert_exact("1→3", old, new, probe, views)


@pytest.mark.parametrize("family", ["resnet", "mobilenetv3", "convnext", "vit"])
@pytest.mark.parametrize("mode", ["replicate", "fold"])
@SETTINGS
@given(seed=st.integers(0, 2**16))
def test_three_to_one_channel_is_exact_on_gray(family, mode, seed):
    old = random_bundle(family, mode, seed % 3)
    if mode == "fold":  # a fold model taking colour (after 1→3): back to one channel
        old, _, _ = change_channels(old, 3)
    new, views, details = change_channels(old, 1)
    assert details["claim"] == "exact" and new.spec.channels == 1
    assert_exact("3→1", old, new, random_probe(seed, old.spec.size[0]), views)


@pytest.mark.parametrize("family", ["resnet", "efficientnet"])
@pytest.mark.parametrize("channels", [2, 4])
@SETTINGS
@given(seed=st.integers(0, 2**16))
def test_one_to_k_channels_is_exact_on_gray_copies(family, channels, seed):
    old = random_bundle(family, "fold", seed % 3)
    new, views, details = change_channels(old, channels)
    assert details["claim"] == "exact" and new.spec.channels == channels
    assert_exact("1→k", old, new, random_probe(seed, old.spec.size[0]), views)


def test_three_to_four_channels_is_labelled_approximate():
    old = random_bundle("resnet", "replicate")
    new, views, details = change_channels(old, 4)
    assert details["claim"] == "approximate"
    assert new.spec.channels == 4 and len(new.spec.mean) == 4
    certificate = certify("3→4", old, new, random_probe(0, 32), views=views)
    assert certificate.verdict != "exact"


@pytest.mark.parametrize("family", list(FAMILIES))
@SETTINGS
@given(seed=st.integers(0, 2**16), data=st.data())
def test_kept_classes_keep_their_logits(family, seed, data):
    old = random_bundle(family, "fold", seed % 3)
    kept = data.draw(st.lists(st.sampled_from(CLASSES), min_size=1, max_size=5, unique=True))
    added = [f"new{i}" for i in range(data.draw(st.integers(0, 2)))]
    new_classes = kept + added
    if len(new_classes) < 2 or new_classes == CLASSES:
        new_classes = [*kept, "extra"]
    new, views, details = change_classes(old, new_classes)
    assert details["claim"] == "exact on the kept classes"
    assert new.classes == new_classes and new.architecture.num_classes == len(new_classes)
    assert_exact("classes", old, new, random_probe(seed, old.spec.size[0], channels=1), views)


@pytest.mark.parametrize("family", [f for f in FAMILIES if FAMILIES[f][2]])
@SETTINGS
@given(seed=st.integers(0, 2**16))
def test_residual_block_insertion_is_exact_anywhere(family, seed):
    old = random_bundle(family, "fold", seed % 3)
    probe = random_probe(seed, old.spec.size[0], channels=1)
    inputs = probe.float() / 255
    new, views, details = insert_identity_block(old, FAMILIES[family][2], inputs, kind="residual")
    assert details["claim"] == "exact"
    assert_exact("deeper", old, new, probe, views)


@SETTINGS
@given(seed=st.integers(0, 2**16))
def test_relu_block_after_a_relu_stage_is_exact(seed):
    old = random_bundle("resnet", "fold", seed % 3)
    probe = random_probe(seed, 32, channels=1)
    new, views, details = insert_identity_block(old, "layer2", probe.float() / 255, kind="relu")
    assert details["stage_output_min"] >= 0 and details["claim"] == "exact"
    assert_exact("deeper", old, new, probe, views)


def test_relu_block_after_a_stage_with_negative_outputs_is_not_claimed_exact():
    old = random_bundle("convnext", "fold")
    probe = random_probe(0, 32, channels=1)
    _, _, details = insert_identity_block(old, "stages.0", probe.float() / 255, kind="relu")
    assert details["stage_output_min"] < 0
    assert details["claim"].startswith("approximate")


@pytest.mark.parametrize("family", [f for f in FAMILIES if FAMILIES[f][3]])
@SETTINGS
@given(seed=st.integers(0, 2**16), extra=st.integers(1, 40))
def test_widening_is_exact(family, seed, extra):
    old = random_bundle(family, "fold", seed % 3)
    layer = FAMILIES[family][3]
    width = old.model.get_submodule(f"backbone.{layer}").out_channels + extra
    new, views, details = widen_layer(old, layer, width, seed=seed)
    assert new.model.get_submodule(f"backbone.{layer}").out_channels == width
    assert details["consumers"]
    assert_exact("wider", old, new, random_probe(seed, old.spec.size[0], channels=1), views)


@pytest.mark.parametrize(
    ("family", "layer"), [("convnext", "stem.0"), ("densenet", "features.conv0"), ("vit", "patch_embed.proj")]
)
def test_widening_is_refused_where_channels_meet_a_norm_a_concatenation_or_tokens(family, layer):
    old = random_bundle(family, "fold")
    with pytest.raises(GraftError, match="widen"):
        widen_layer(old, layer, 999)


def test_transformer_stage_cannot_take_a_conv_block():
    old = random_bundle("vit", "fold")
    with pytest.raises(GraftError, match="not a feature map"):
        insert_identity_block(old, "blocks.0", torch.rand(2, 1, 32, 32), kind="relu")


@pytest.mark.parametrize("family", ["resnet", "mobilenetv3", "vit"])
def test_edited_bundles_reload_with_the_same_logits(family, tmp_path):
    """Edits are replayed from graft.json alone: saving and loading gives back the same function."""
    from graft.bundle import load
    from graft.surgery import reshape

    old = random_bundle(family, "fold")
    _, _, stage, conv = FAMILIES[family]
    result = reshape(
        old,
        tmp_path / "new",
        channels=3,
        insert_after=stage,
        block="residual",
        widen={conv: 99} if conv else None,
        add_classes=["extra"],
    )
    loaded = load(tmp_path / "new")
    assert loaded.architecture.edits == result.bundle.architecture.edits
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), result.bundle.model.eval()(x))
    assert result.verdict == "exact"

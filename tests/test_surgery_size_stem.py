"""The exact size change (issue 18): a size stem makes the new model on a new-size image equal the old model on
that image resized to the old size by the bundle's own rule (torchvision's kernel, in float).

Parity is checked two ways: by the certificate, and directly against torchvision's `resize` called here (not
graft's wrapper), on random float images. Weights, BatchNorm statistics and affine terms are random, so every
layer matters; each test first checks that the old model's logits depend on its input.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from graft.bundle import Bundle
from graft.data.preprocess import normalise
from graft.errors import GraftError
from graft.surgery.certificate import EXACT_TOLERANCE, certify
from graft.surgery.resize import add_size_stem
from surgery_helpers import random_model

FAMILIES = {
    "resnet": "resnet10t",
    "densenet": "densenet121",
    "efficientnet": "test_efficientnet",
    "mobilenetv3": "mobilenetv3_small_050",
    "convnext": "test_convnext",
}
MODELS = {**FAMILIES, "vit": "test_vit"}  # a ViT keeps its position embeddings: its network stays at the old size
OLD_SIZE = 32
NEW_SIZES = {"2x": 64, "non-integer 1.5x": 48}
INTERPOLATIONS = {"2x": "bilinear", "non-integer 1.5x": "bicubic"}  # both kernels, at no extra cost
CLASSES = [f"c{i}" for i in range(5)]
SETTINGS = settings(max_examples=1, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def _model(name: str, head: str, mode: str, seed: int) -> tuple:
    return random_model(name, len(CLASSES), seed, input_mode=mode, head=head, size=OLD_SIZE)


def random_bundle(family: str, head: str = "pool", mode: str = "replicate", seed: int = 0, **spec) -> Bundle:
    model, arch, base = _model(MODELS[family], head, mode, seed)
    return Bundle(model, arch, dataclasses.replace(base, **spec), list(CLASSES))


def float_images(seed: int, size: int, channels: int = 3, count: int = 4) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand((count, channels, 6, 6), generator=generator, dtype=torch.float64)
    smooth = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (smooth + 0.1 * torch.rand((count, channels, size, size), generator=generator, dtype=torch.float64)) / 1.1


def logits(bundle: Bundle, pixels: torch.Tensor) -> torch.Tensor:
    import copy

    model = copy.deepcopy(bundle.model).double().eval()
    with torch.no_grad():
        return model(normalise(pixels, bundle.spec))


def torchvision_resize(pixels: torch.Tensor, bundle: Bundle) -> torch.Tensor:
    """The old bundle's resize, called on torchvision directly: an independent reference for graft's wrapper."""
    spec = bundle.spec
    mode = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}[spec.interpolation]
    return TF.resize(pixels, list(spec.size), interpolation=mode, antialias=spec.antialias)


def assert_depends_on_input(old: Bundle, pixels: torch.Tensor) -> None:
    reference = logits(old, pixels)
    assert float((reference - reference.mean(0)).abs().max()) > 1e-3, "the reference ignores its input"


# Every family × head × size, except densenet121 (by far the slowest model here, ~5 s a case): it gets two cases
# that still cover both heads and both sizes (and so both kernels); the cross product adds nothing it alone tests.
DENSENET_CASES = {("pool", "2x"), ("flatten", "non-integer 1.5x")}
STEM_CASES = [
    pytest.param(family, head, factor, id=f"{factor}-{head}-{family}")
    for factor in NEW_SIZES
    for head in ("pool", "flatten")
    for family in FAMILIES
    if family != "densenet" or (head, factor) in DENSENET_CASES
]


@pytest.mark.parametrize(("family", "head", "factor"), STEM_CASES)
@SETTINGS
@given(seed=st.integers(0, 2**16))
def test_a_size_stem_is_the_old_model_on_the_resized_image(family, head, factor, seed):
    old = random_bundle(family, head, seed=seed % 2, interpolation=INTERPOLATIONS[factor])
    size = NEW_SIZES[factor]
    new, views, details = add_size_stem(old, (size, size))
    assert new.spec.size == (size, size) and details["network_size"] == [OLD_SIZE, OLD_SIZE]
    pixels = float_images(seed, size)
    assert_depends_on_input(old, torchvision_resize(pixels, old))
    delta = (logits(new, pixels) - logits(old, torchvision_resize(pixels, old))).abs().max()
    assert float(delta) <= EXACT_TOLERANCE
    probe = (pixels * 255).round().to(torch.uint8)
    certificate = certify("size stem", old, new, probe, views=views)
    assert certificate.verdict == "exact", certificate.line()
    assert certificate.max_abs_logit_delta <= EXACT_TOLERANCE


@pytest.mark.parametrize(("family", "size"), [("resnet", 16), ("convnext", 24), ("vit", 24)])
def test_a_smaller_size_gets_an_upsampling_stem_that_is_exact(family, size):
    old = random_bundle(family)
    new, views, _ = add_size_stem(old, (size, size))
    pixels = float_images(size, size)
    assert_depends_on_input(old, torchvision_resize(pixels, old))
    delta = (logits(new, pixels) - logits(old, torchvision_resize(pixels, old))).abs().max()
    assert float(delta) <= EXACT_TOLERANCE
    assert certify("up", old, new, (pixels * 255).round().to(torch.uint8), views=views).verdict == "exact"


@pytest.mark.parametrize("rule", ["crop", "stretch"])
def test_crop_and_stretch_specs_are_exact_for_a_non_square_size(rule):
    old = random_bundle("resnet", resize=rule)
    new, views, _ = add_size_stem(old, (48, 64))
    pixels = float_images(3, 64)[..., :48, :]
    if rule == "crop":  # crop: scale so the image covers 32×32 (here to 32×43), then take the centre
        reference = TF.center_crop(TF.resize(pixels, [32, 43], antialias=True), [32, 32])
    else:
        reference = TF.resize(pixels, [32, 32], antialias=True)
    assert_depends_on_input(old, reference)
    assert float((logits(new, pixels) - logits(old, reference)).abs().max()) <= EXACT_TOLERANCE
    assert certify("crop", old, new, (pixels * 255).round().to(torch.uint8), views=views).verdict == "exact"


def test_gray_input_modes_run_the_size_stem_before_their_own_stem():
    for mode in ("fold", "stem"):
        old = random_bundle("resnet", mode=mode)
        new, views, _ = add_size_stem(old, (64, 64))
        order: list[str] = []
        for name in ("size_stem", "stem", "backbone"):
            module = getattr(new.model, name)
            if module is not None:
                module.register_forward_pre_hook(lambda _m, _i, name=name, order=order: order.append(name))
        pixels = float_images(5, 64, channels=1)
        logits(new, pixels)  # a deep copy keeps the hooks
        assert order == ["size_stem", *(["stem"] if mode == "stem" else []), "backbone"]
        assert_depends_on_input(old, torchvision_resize(pixels, old))
        assert certify("gray", old, new, (pixels * 255).round().to(torch.uint8), views=views).verdict == "exact"


def test_a_second_size_stem_composes_into_one_exact_stem():
    old = random_bundle("resnet")
    middle, _, _ = add_size_stem(old, (48, 48))
    new, views, details = add_size_stem(middle, (96, 96))
    assert details["composed"] and new.model.size_stem.height_kernel.shape == (32, 96)
    pixels = float_images(7, 96)
    via_middle = torchvision_resize(torchvision_resize(pixels, middle), old)
    assert_depends_on_input(old, via_middle)
    assert float((logits(new, pixels) - logits(middle, torchvision_resize(pixels, middle))).abs().max()) <= 1e-4
    assert certify("again", middle, new, (pixels * 255).round().to(torch.uint8), views=views).verdict == "exact"


@pytest.mark.parametrize("size", [(32, 32), (1, 40), (1100, 1100)])
def test_impossible_stems_are_refused_in_one_line(size):
    with pytest.raises(GraftError) as error:
        add_size_stem(random_bundle("resnet"), size)
    assert "\n" not in str(error.value)


def test_resampling_a_stemmed_model_points_to_the_stem():
    from graft.surgery.resize import change_size

    stemmed, _, _ = add_size_stem(random_bundle("resnet"), (64, 64))
    with pytest.raises(GraftError, match="--size-mode stem"):
        change_size(stemmed, (96, 96))

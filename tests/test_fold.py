"""`fold` gives replicate's logits at initialisation; `stem` starts as documented."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from graft.data.preprocess import to_model_input
from graft.models import create_model, read_state_dict
from graft.models.input_modes import FoldedConv2d, GrayStem, fold_weights

ARCHITECTURES = [
    "resnet18",
    "densenet121",
    "mobilenetv3_small_050",
    "efficientnet_b0",
    "tf_efficientnet_b0",  # "same" padding, computed at run time
    "convnext_atto",  # patchify stem, no padding
    "vit_tiny_patch16_224",  # patch embedding; timm is told the input size
]


def _randomise(model: nn.Module, seed: int) -> None:
    """Random BN statistics and affine terms, and a louder head, so that logits are O(1) and every layer matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.LayerNorm) and module.weight is not None:
                module.weight.mul_(1 + 0.2 * torch.randn(module.weight.shape, generator=generator))
                module.bias.add_(0.1 * torch.randn(module.bias.shape, generator=generator))
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.running_mean.add_(0.1 * torch.randn(module.running_mean.shape, generator=generator))
                module.running_var.mul_(1 + 0.2 * torch.rand(module.running_var.shape, generator=generator))
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        head.weight.normal_(0, 10.0 / head.in_features**0.5, generator=generator)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_fold_matches_replicate_at_initialisation(name: str) -> None:
    torch.manual_seed(0)
    replicate, _, spec_r, _ = create_model(name, 7, input_mode="replicate", size=32)
    _randomise(replicate, seed=1)
    # Fold the randomised replicate model's weights: same backbone, one channel in.
    torch.manual_seed(0)
    folded, _, spec_f, _ = create_model(name, 7, input_mode="fold", size=32)
    folded.load_state_dict(_folded_state(replicate, folded, spec_r))
    images = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        expected = replicate.eval()(to_model_input(images, spec_r))
        actual = folded.eval()(to_model_input(images, spec_f))
    assert spec_f.channels == 1 and spec_r.channels == 3
    assert expected.abs().max() > 0.1, "logits too small for the comparison to mean anything"
    assert torch.allclose(actual, expected, atol=1e-4, rtol=0), (actual - expected).abs().max()


def _folded_state(replicate: nn.Module, folded: nn.Module, spec) -> dict:
    state = dict(replicate.state_dict())
    for name, module in folded.named_modules():
        if isinstance(module, FoldedConv2d):
            gray, offset = fold_weights(state[f"{name}.weight"], spec.mean, spec.std)
            state[f"{name}.weight"], state[f"{name}.offset"] = gray, offset
    return state


@pytest.mark.parametrize("name", ["resnet18", "tf_efficientnet_b0", "vit_tiny_patch16_224"])
def test_create_model_folds_loaded_weights_exactly(name: str, tmp_path) -> None:
    """The folding `graft train --input-mode fold --weights FILE` does, with the mean/std it picks itself."""
    torch.manual_seed(0)
    replicate, *_ = create_model(name, 7, input_mode="replicate", size=32)
    _randomise(replicate, seed=2)
    save_file(replicate.backbone.state_dict(), str(tmp_path / "w.safetensors"))
    state = read_state_dict(tmp_path / "w.safetensors")
    loaded, _, spec_l, _ = create_model(name, 7, input_mode="replicate", size=32, source=state)
    folded, _, spec_f, report = create_model(name, 7, input_mode="fold", size=32, source=state)
    assert not report.initialised, "same class count: every tensor comes from the file"
    images = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        expected = loaded.eval()(to_model_input(images, spec_l))
        actual = folded.eval()(to_model_input(images, spec_f))
    assert expected.abs().max() > 0.1
    assert torch.allclose(actual, expected, atol=1e-4, rtol=0), (actual - expected).abs().max()


def test_fold_first_conv_takes_one_channel() -> None:
    model, _, spec, _ = create_model("resnet18", 10, input_mode="fold", size=32)
    assert isinstance(model.backbone.conv1, FoldedConv2d)
    assert model.backbone.conv1.weight.shape[1] == 1
    assert spec.mean == (0.0,) and spec.std == (1.0,)


@settings(max_examples=60, deadline=None)
@given(
    kernel=st.sampled_from([1, 2, 3, 4, 5, 7]),
    stride=st.integers(1, 3),
    padding=st.integers(0, 3),
    dilation=st.integers(1, 2),
    bias=st.booleans(),
    size=st.integers(7, 20),
    mean=st.tuples(*[st.floats(0.0, 1.0)] * 3),
    std=st.tuples(*[st.floats(0.1, 2.0)] * 3),
    seed=st.integers(0, 2**16),
)
def test_folded_conv_is_exact_for_any_geometry(kernel, stride, padding, dilation, bias, size, mean, std, seed):
    """Border pixels included: the offset kernel only counts taps that fall inside the image."""
    assume((kernel - 1) * dilation + 1 <= size + 2 * padding)
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, 5, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias)
    folded = FoldedConv2d(conv)
    with torch.no_grad():
        folded.weight.copy_(fold_weights(conv.weight, mean, std)[0])
        folded.offset.copy_(fold_weights(conv.weight, mean, std)[1])
        if bias:
            folded.bias.copy_(conv.bias)
        gray = torch.rand(2, 1, size, size)
        normalised = (gray.expand(-1, 3, -1, -1) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
            1, 3, 1, 1
        )
        assert torch.allclose(folded(gray), conv(normalised), atol=1e-4)


def test_stem_starts_as_replicate_clipped_at_zero() -> None:
    """Documented step-0 promise: eval-mode stem output = max((gray − mean_c)/std_c, 0), every pixel."""
    model, _, spec, _ = create_model("resnet18", 10, input_mode="stem", size=32)
    assert isinstance(model.stem, GrayStem)
    images = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    gray = images.float() / 255
    mean = torch.tensor(spec.backbone_mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.backbone_std).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model.stem.eval()(to_model_input(images, spec))
    expected = ((gray - mean) / std).clamp(min=0)
    assert torch.allclose(out, expected, atol=1e-5)
    # Where a pixel is brighter than every channel mean, the stem feeds the backbone exactly replicate's input.
    bright = (gray > max(spec.backbone_mean)).expand(-1, 3, -1, -1)
    replicate_input = (gray - mean) / std
    assert bright.any()
    assert torch.allclose(out[bright], replicate_input[bright], atol=1e-5)

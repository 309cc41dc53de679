"""Depth for ViTs (issue 18): a copy of a transformer block with attn.proj and mlp.fc2 at zero is an identity on
the residual stream, certified exact at any position, and the new block learns from the first step."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graft.bundle import Bundle, load
from graft.errors import GraftError
from graft.models.factory import create_model
from graft.surgery import deepen, reshape
from graft.surgery.certificate import EXACT_TOLERANCE, certify
from graft.surgery.structure import insert_identity_block

CLASSES = ["a", "b", "c", "d"]
SETTINGS = settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VITS = {"vit": "test_vit", "vit-layerscale": "test_vit2"}  # test_vit2's blocks have LayerScale (ls1, ls2)


@functools.cache
def _model(name: str, seed: int) -> tuple:
    model, arch, spec, _ = create_model(name, len(CLASSES), input_mode="fold", size=32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # norms, biases and LayerScale away from their init, so no identity holds by accident
        for value in model.state_dict().values():
            if value.is_floating_point() and value.ndim == 1:
                value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
    return model.eval(), arch, spec


def vit(family: str, seed: int = 0) -> Bundle:
    model, arch, spec = _model(VITS[family], seed)
    return Bundle(model, arch, spec, list(CLASSES))


def probe(seed: int, count: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 1, 32, 32), generator=generator, dtype=torch.uint8)


@pytest.mark.parametrize("family", list(VITS))
@SETTINGS
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_a_zero_projection_block_is_exact_anywhere(family, data, seed):
    old = vit(family, seed % 2)
    images = probe(seed)
    with torch.no_grad():  # the reference depends on its input, or parity would prove nothing
        logits = old.model(images[:2].float() / 255)
    assert (logits[0] - logits[1]).abs().max() > 1e-5
    depth = len(old.model.backbone.blocks)
    after = data.draw(st.sampled_from([*(f"blocks.{i}" for i in range(depth)), "blocks"]))
    new, views, details = insert_identity_block(old, after, images.float() / 255)
    assert details["block"] == "transformer" and details["claim"] == "exact"
    assert len(new.model.backbone.blocks) == depth + 1
    block = new.model.get_submodule(f"backbone.{details['module']}")
    assert not block.attn.proj.weight.any() and not block.mlp.fc2.weight.any()
    assert block.attn.qkv.weight.any()  # copied from its neighbour, not blank
    certificate = certify("deeper", old, new, images, views=views)
    assert certificate.max_abs_logit_delta <= EXACT_TOLERANCE, certificate.line()
    assert certificate.train_forward_delta is not None and certificate.train_forward_delta <= EXACT_TOLERANCE
    assert certificate.verdict == "exact", certificate.line()


@pytest.mark.parametrize("family", list(VITS))
def test_the_new_block_trains(family):
    old = vit(family)
    new, _, details = insert_identity_block(old, "blocks.0", probe(0).float() / 255)
    model = new.model.train()
    block = model.get_submodule(f"backbone.{details['module']}")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, target = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(model(x), target).backward()
    assert block.attn.proj.weight.grad.abs().sum() > 0 and block.mlp.fc2.weight.grad.abs().sum() > 0
    optimizer.step()
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(x), target).backward()
    for key, parameter in block.named_parameters():  # after one step every weight of the block learns
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, key


def test_a_deeper_vit_reloads_from_its_record(tmp_path):
    old = vit("vit-layerscale")
    result = reshape(old, tmp_path / "deep", insert_after=["blocks.0", "blocks"], probe_count=8)
    assert result.verdict == "exact"
    assert [e["block"] for e in result.bundle.architecture.edits] == ["transformer", "transformer"]
    loaded = load(tmp_path / "deep")
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), result.bundle.model.eval()(x))
        assert not torch.equal(loaded.model(x), loaded.model(x.flip(-1)))


def test_blocks_that_do_not_match_their_stage_are_refused():
    with pytest.raises(GraftError, match="not a feature map"):
        deepen(vit("vit"), "blocks.1", block="relu", probe=probe(0))
    with pytest.raises(GraftError, match="norm is not a transformer block"):
        deepen(vit("vit"), "norm", block="transformer", probe=probe(0))
    model, arch, spec, _ = create_model("resnet10t", 3, input_mode="fold", size=32)
    resnet = Bundle(model.eval(), arch, spec, CLASSES[:3])
    with pytest.raises(GraftError, match=r"not tokens .* a transformer block cannot follow it"):
        deepen(resnet, "layer2", block="transformer", probe=probe(0))
    assert deepen(resnet, "layer2", probe=probe(0)).details["block"] == "relu"  # the default on a conv stage


def test_a_block_that_zero_projections_do_not_silence_is_refused():
    """A post-norm block (norm after the branch: norm(0) is its bias) is no identity; refused, not inserted."""
    old = vit("vit")
    model = old.model

    class PostNorm(torch.nn.Module):
        def __init__(self, block: torch.nn.Module) -> None:
            super().__init__()
            self.attn, self.mlp, self.norm = block.attn, block.mlp, block.norm1

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.norm(self.attn(x)) + self.mlp(x)

    model = copy.deepcopy(model)
    model.backbone.blocks[1] = PostNorm(model.backbone.blocks[1])
    edited = Bundle(model, old.architecture, old.spec, old.classes)
    with pytest.raises(GraftError, match="no identity with zero output projections"):
        insert_identity_block(edited, "blocks.1", probe(0).float() / 255)

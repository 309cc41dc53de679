"""Batch augmentation (augment_engine = "batch"): torchvision's affine, drawn per image, in one grid_sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from graft.data.base import ArrayImages
from graft.errors import GraftError
from graft.spec import InputSpec
from graft.training.augment import affine_batch, make_augment, random_affine_batch
from graft.training.config import make_config, read_recipe
from graft.training.distributed import World
from graft.training.runtime import resolve_runtime
from graft.training.steps import StepContext, image_batches


def _noise(n: int = 4, channels: int = 1, height: int = 20, width: int = 28, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, height, width), dtype=torch.uint8, generator=generator)


def _stroke(n: int = 2) -> torch.Tensor:
    """A digit-like stroke on black, so nothing but the rotation differs between two implementations."""
    x = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    x[:, :, 6:22, 10:14] = 255
    x[:, :, 6:10, 8:20] = 200
    return x


def test_identity_parameters_give_the_input_back_exactly():
    x = _noise(channels=3)
    out = affine_batch(x, torch.zeros(4), torch.zeros(4, 2), torch.ones(4))
    assert out.dtype == torch.uint8 and torch.equal(out, x)


@pytest.mark.parametrize("angle", [30.0, -17.0, 90.0])
def test_a_known_rotation_matches_torchvisions_rotate(angle):
    x = _stroke()
    expected = TF.rotate(x, angle, interpolation=TF.InterpolationMode.BILINEAR)
    assert not torch.equal(expected, x)  # the reference depends on the angle
    # torchvision's `affine` turns clockwise and `rotate` counter-clockwise; graft follows `affine`.
    out = affine_batch(x, torch.full((2,), -angle), torch.zeros(2, 2), torch.ones(2))
    assert (out.int() - expected.int()).abs().max() <= 1


def test_rotation_zoom_and_shift_match_torchvisions_affine_image_by_image():
    x = _noise(n=3)
    angles, shifts, scales = torch.tensor([12.0, -7.5, 0.0]), torch.tensor([[2, -3], [0, 1], [-2, 0]]), [0.9, 1.1, 1.0]
    out = affine_batch(x, angles, shifts.double(), torch.tensor(scales, dtype=torch.float64))
    for k in range(3):
        expected = TF.affine(
            x[k], angle=float(angles[k]), translate=shifts[k].tolist(), scale=scales[k], shear=[0.0, 0.0],
            interpolation=TF.InterpolationMode.BILINEAR, fill=0,
        )  # fmt: skip
        assert not torch.equal(expected, x[k])
        assert (out[k].int() - expected.int()).abs().max() <= 1


def test_each_image_gets_its_own_draw_and_a_seed_repeats_it():
    x = _stroke(8)
    torch.manual_seed(3)
    first = random_affine_batch(x, 15, 0.1, 0.1)
    torch.manual_seed(3)
    again = random_affine_batch(x, 15, 0.1, 0.1)
    torch.manual_seed(4)
    other = random_affine_batch(x, 15, 0.1, 0.1)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert len({row.numpy().tobytes() for row in first}) == 8  # eight copies of one image, eight results


def test_shift_alone_moves_whole_pixels():
    x = _stroke(16)
    out = random_affine_batch(x, 0.0, 0.0, 0.1, generator=torch.Generator().manual_seed(0))
    for row in out:  # a whole-pixel shift of a black-bordered stroke keeps every pixel value exactly
        assert sorted(row.unique().tolist()) == [0, 200, 255] and (row == 255).sum() == (x[0] == 255).sum()


def test_labels_are_unchanged_and_images_augmented_in_the_training_batches():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 12, 12, 1), dtype=np.uint8)
    images = ArrayImages("toy", pixels, rng.integers(0, 3, 40), list("abc"))
    spec = InputSpec(size=(12, 12), channels=1, mode="fold", mean=(0.0,), std=(1.0,))

    def batches(engine: str, augment: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        config = make_config(augment=augment, augment_engine=engine, batch_size=16, rotate=20.0)
        ctx = StepContext(
            model=None, optimizer=None, schedule=None, runtime=resolve_runtime(config, World()),  # type: ignore[arg-type]
            config=config, world=World(), augment=make_augment(config),
        )  # fmt: skip
        torch.manual_seed(0)
        return list(image_batches(images, spec, ctx, epoch=1, start=0))

    plain, batched = batches("batch", "none"), batches("batch", "reference")
    assert [len(labels) for _, labels in batched] == [16, 16]
    for (x, labels), (x_aug, labels_aug) in zip(plain, batched, strict=True):
        assert torch.equal(labels, labels_aug) and x.shape == x_aug.shape and not torch.equal(x, x_aug)


def test_the_engine_option_validates(tmp_path):
    assert make_config(augment="reference", augment_engine="batch").augment_engine == "batch"
    assert make_config().augment_engine == "per-image"
    with pytest.raises(GraftError, match="augment_engine"):
        make_config(augment_engine="fast")
    recipe = tmp_path / "r.toml"
    recipe.write_text('augment = "reference"\naugment-engine = "batch"\n')
    assert read_recipe(recipe)["augment_engine"] == "batch"
    recipe.write_text('augment-engine = "gpu"\n')
    with pytest.raises(GraftError, match="augment_engine"):
        read_recipe(recipe)


def test_non_uint8_input_is_refused():
    with pytest.raises(TypeError, match="uint8"):
        affine_batch(torch.zeros(1, 1, 4, 4), torch.zeros(1), torch.zeros(1, 2), torch.ones(1))

"""graft data clutter: level definitions, contrast guarantee, reproducibility, layout, errors (scikit-learn digits)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import run_cli as run
from graft.data import load_source, make_clutter
from graft.data.clutter import (
    INGREDIENTS,
    MANIFEST,
    class_folders,
    digit_masks,
    level_params,
    level_positions,
    render,
)
from graft.data.preprocess import LUMA_WEIGHTS
from graft.errors import GraftError

SMALL = {"levels": 3, "size": 16, "max_train": 60, "max_test": 30, "preview": False}


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def six_levels(tmp_path_factory) -> Path:
    """The default benchmark (6 levels, disjoint images) from all of scikit-learn's digits at 16 px."""
    out = tmp_path_factory.mktemp("clutter") / "digits"
    make_clutter("digits", out, size=16)
    return out


def test_ingredients_switch_on_in_order_and_grow():
    plain = level_params(1, 6)
    assert plain.clutter == 0 and set(plain.strengths.values()) == {0.0}
    assert (plain.band_width, plain.min_contrast, plain.strokes, plain.fragments) == (0.0, 1.0, 0, 0)
    for k in range(2, 7):
        active = [name for name in INGREDIENTS if level_params(k, 6).strengths[name] > 0]
        assert active == list(INGREDIENTS[: k - 1])  # level 2 adds gradients, … level 6 colour
    last = level_params(6, 6)
    assert set(last.strengths.values()) == {1.0} and last.min_contrast == pytest.approx(0.3)
    assert (last.strokes, last.fragments, last.flip_probability) == (6, 2, 0.5)
    for levels in (2, 4, 9):
        steps = [level_params(k, levels) for k in range(1, levels + 1)]
        for before, after in itertools.pairwise(steps):
            assert after.band_width > before.band_width and after.min_contrast < before.min_contrast
            assert all(after.strengths[n] >= before.strengths[n] for n in INGREDIENTS)
    assert level_params(1, 1) == plain  # one level: just the plain one


def _luma(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float64) @ np.array(LUMA_WEIGHTS) / 255.0


def test_digit_stays_more_contrasted_than_any_background_pixel():
    train, _ = load_source("digits")
    alpha = digit_masks(train, np.arange(300), 24, invert=False)
    core, empty = alpha >= 0.99, alpha <= 0.0
    assert core.any(axis=(1, 2)).all() and empty.any(axis=(1, 2)).all()
    for k in range(1, 7):
        params = level_params(k, 6)
        images = render(alpha, params, np.random.default_rng(k))
        assert images.shape == (300, 24, 24, 3) and images.dtype == np.uint8
        luma = _luma(images)
        for i in range(len(images)):
            digit, background = luma[i][core[i]], luma[i][empty[i]]
            gap = max(digit.min() - background.max(), background.min() - digit.max())
            assert gap >= params.min_contrast - 0.02, (k, i, gap)
        gray = (images[..., 0] == images[..., 1]).all() and (images[..., 1] == images[..., 2]).all()
        assert gray == (k < 6)  # colour only at the last level
    plain = render(alpha, level_params(1, 6), np.random.default_rng(0))
    np.testing.assert_array_equal(plain[..., 0], np.rint(alpha.astype(np.float64) * 255).astype(np.uint8))


def test_backgrounds_get_busier_level_by_level():
    train, _ = load_source("digits")
    alpha = digit_masks(train, np.arange(200), 24, invert=False)
    empty = alpha <= 0.0
    spread = []
    for k in range(1, 7):
        luma = _luma(render(alpha, level_params(k, 6), np.random.default_rng(0)))
        spread.append(np.mean([luma[i][empty[i]].std() for i in range(len(luma))]))
    assert spread[0] == 0.0 and all(b > a for a, b in itertools.pairwise(spread[:5])), spread


def test_levels_are_folder_data_sets_with_disjoint_images(six_levels):
    manifest = json.loads((six_levels / MANIFEST).read_text())
    assert manifest["source"] == "digits" and manifest["levels"] == 6 and manifest["seed"] == 0
    assert manifest["ink"] == "bright" and manifest["reuse_images"] is False
    assert (six_levels / "preview.png").stat().st_size > 10_000
    seen = {"train": set(), "test": set()}
    total = {"train": 0, "test": 0}
    for k in range(1, 7):
        train, test = load_source(f"folder:{six_levels / f'level-{k}'}")
        per_level = manifest["per_level"][k - 1]
        assert train.classes == [str(d) for d in range(10)] and train.channels == 3  # RGB at every level
        assert (len(train), len(test)) == (per_level["train"], per_level["test"])
        assert train.image(0).shape == (16, 16, 3)
        for split, images in (("train", train), ("test", test)):
            names = {p.name for p in images.paths}
            assert not names & seen[split], f"level {k} {split} shares images with an earlier level"
            seen[split] |= names
            total[split] += len(images)
            assert np.bincount(images.labels, minlength=10).min() >= 3
    assert total == {"train": 1438, "test": 359}  # every digit used exactly once


def test_a_model_trained_on_level_1_fails_on_level_6(six_levels):
    from sklearn.linear_model import RidgeClassifier

    def data(level: int, split: int) -> tuple[np.ndarray, np.ndarray]:
        images = load_source(f"folder:{six_levels / f'level-{level}'}")[split]
        pixels = np.stack([images.image(i) for i in range(len(images))]).reshape(len(images), -1) / 255.0
        return pixels, images.labels

    model = RidgeClassifier().fit(*data(1, 0))
    plain, busy = model.score(*data(1, 1)), model.score(*data(6, 1))
    assert plain >= 0.75 and plain - busy >= 0.3, (plain, busy)


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    first = files(make_clutter("digits", tmp_path / "a", seed=3, **{**SMALL, "preview": True}).path)
    again = files(make_clutter("digits", tmp_path / "b", seed=3, **{**SMALL, "preview": True}).path)
    assert first.keys() == again.keys() and len(first) == 3 * 90 + 2
    assert all(first[name] == again[name] for name in first), "same seed must give identical files"
    other = files(make_clutter("digits", tmp_path / "c", seed=4, **SMALL).path)

    def busy(found: dict[str, bytes]) -> set[bytes]:
        return {data for name, data in found.items() if name.endswith(".png") and not name.startswith("level-1")}

    assert not busy(first) & busy(other)  # another seed: other backgrounds at every cluttered level
    level_1 = [{n for n in found if n.startswith("level-1/")} for found in (first, other)]
    assert level_1[0] != level_1[1]  # and another partition


def test_reuse_images_renders_every_digit_at_every_level(tmp_path):
    result = make_clutter("digits", tmp_path / "r", reuse_images=True, **{**SMALL, "max_test": 40})
    names = [sorted(p.name for p in (result.path / f"level-{k}" / "test").rglob("*.png")) for k in (1, 2, 3)]
    assert names[0] == names[1] == names[2] and len(names[0]) == 40
    assert result.counts == [{"train": 60, "test": 40}] * 3


def test_partition_is_stratified_and_complete():
    labels = np.repeat(np.arange(4), [10, 11, 12, 13])
    parts = level_positions(labels, 3, seed=0, split="train", reuse=False)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
    for part in parts:
        counts = np.bincount(labels[part], minlength=4)
        assert counts.min() >= 3 and counts.max() <= 5
    assert [p.tolist() for p in parts] == [p.tolist() for p in level_positions(labels, 3, 0, "train", False)]
    assert [p.tolist() for p in parts] != [p.tolist() for p in level_positions(labels, 3, 1, "train", False)]


def test_class_names_become_safe_distinct_folders():
    assert class_folders(["0", "T-shirt/top", ".x", "a\\b", "T-shirt-top"]) == [
        "0",
        "T-shirt-top",
        "_x",
        "a-b",
        "T-shirt-top_",
    ]


def test_bad_arguments_and_outputs_are_refused(tmp_path):
    cases = [
        ({"levels": 0}, "--levels"),
        ({"size": 4}, "--size"),
        ({"seed": -1}, "--seed"),
        ({"max_train": 0}, "--max-train"),
        ({"levels": 40}, "no test image of class"),  # digits has ~36 test images per class
    ]
    for options, expected in cases:
        with pytest.raises(GraftError, match=expected):
            make_clutter("digits", tmp_path / "x", **{**SMALL, **options})
    with pytest.raises(GraftError, match="unknown data source"):
        make_clutter("digitz", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    make_clutter("digits", tmp_path / "x", **SMALL)
    with pytest.raises(GraftError, match="already exists; use --force"):
        make_clutter("digits", tmp_path / "x", **SMALL)
    make_clutter("digits", tmp_path / "x", overwrite=True, **{**SMALL, "levels": 2})
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == [MANIFEST, "level-1", "level-2"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(GraftError, match="not a clutter benchmark"):
        make_clutter("digits", tmp_path / "mine", overwrite=True, **SMALL)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_cli_clutter(tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["data", "clutter", "digits", "-o", str(out), "--levels", "2", "--size", "16", "--max-train", "50"]
    code, stdout, err = run([*args, "--max-test", "20", "--no-preview"], capsys)
    assert code == 0, err
    assert f"level 2: 50 train, 20 test  →  folder:{out / 'level-2'}" in stdout
    assert (out / MANIFEST).is_file() and not (out / "preview.png").exists()
    for bad in (args, [*args[:4], "--levels", "0"], ["data", "clutter", "nope", "-o", str(tmp_path / "n")]):
        code, stdout, err = run(bad, capsys)
        assert code == 2 and stdout == "", bad
        assert err.startswith("graft: error:") and err.count("\n") == 1 and "Traceback" not in err, err


def test_mnist_levels(mnist_root, tmp_path):
    result = make_clutter("mnist", tmp_path / "m", data_root=mnist_root, size=28, max_train=100, max_test=50)
    assert result.counts == [{"train": 100, "test": 50}] * 6
    assert result.manifest["ink"] == "bright"
    train, test = load_source(f"folder:{tmp_path / 'm' / 'level-6'}")
    assert len(train) == 100 and len(test) == 50 and train.image(0).shape == (28, 28, 3)

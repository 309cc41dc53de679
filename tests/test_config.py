"""Recipes: TOML in, validated settings out; flags override; mistakes named precisely."""

from __future__ import annotations

import pytest

from graft.errors import GraftError
from graft.training.config import make_config, read_recipe


def test_recipe_then_flags(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('data = "mnist"\nmodel = "resnet18"\ninput-mode = "fold"\nepochs = 5\nlr = 0.01\n')
    config = make_config(recipe, epochs=2, lr=None)
    assert (config.data, config.model, config.input_mode, config.epochs, config.lr) == (
        "mnist",
        "resnet18",
        "fold",
        2,
        0.01,
    )


def test_train_table_and_relative_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    recipe = tmp_path / "sub" / "r.toml"
    recipe.write_text('[train]\ndata = "folder:photos"\noutput = "out/bundle"\n')
    settings = read_recipe(recipe)
    assert settings["data"] == f"folder:{(tmp_path / 'sub' / 'photos').resolve()}"
    assert settings["output"] == str((tmp_path / "sub" / "out" / "bundle").resolve())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epohcs = 3\n", "unknown key 'epohcs'"),
        ('epochs = "three"\n', "epochs: Input should be a valid integer"),
        ("size = 2\n", "size: Input should be greater than or equal to 8"),
        ('input_mode = "magic"\n', "input_mode: Input should be"),
        ("lr = [1, 2]\n", "lr: Input should be a valid number"),
        ("epochs = \n", "not valid TOML"),
        ('size = "16"\n', "size: Input should be a valid integer"),
        ("epochs = 1.0\n", "epochs: Input should be a valid integer"),
        ('[train]\nepochs = 1\n[eval]\nsplit = "test"\n', "put every setting in it"),
    ],
)
def test_bad_recipes_are_named(tmp_path, text, message):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text)
    with pytest.raises(GraftError, match=message) as caught:
        make_config(recipe)
    assert str(recipe) in str(caught.value) and "\n" not in str(caught.value)


def test_missing_recipe(tmp_path):
    with pytest.raises(GraftError, match="recipe not found"):
        make_config(tmp_path / "nope.toml")


def test_schedules_start_low_peak_and_end_near_zero():
    from graft.training.optim import lr_factor

    total, warmup = 100, 10
    for schedule in ("onecycle", "cosine"):
        factors = [lr_factor(step, total, warmup, schedule) for step in range(total)]
        assert factors[0] < 0.2 and max(factors) == pytest.approx(1.0, abs=0.02)
        assert factors[-1] < 0.01 and factors == sorted(factors[:warmup]) + factors[warmup:]
    assert lr_factor(0, 1, 0, "onecycle") == 1.0, "a single step runs at the peak"
    assert all(lr_factor(s, total, warmup, "constant") == 1.0 for s in range(warmup, total))


def test_recipe_offline_key_means_no_download(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("offline = true\n")
    assert make_config(recipe).download is False


def test_a_weights_flag_replaces_the_recipes_hub_weights(tmp_path):
    """The reference recipes name `pretrained = "imagenet"`; offline, `--weights FILE` is the way out (flags win)."""
    config = make_config("recipes/reference-densenet121-stem.toml", weights=str(tmp_path / "densenet121.safetensors"))
    assert (config.pretrained, config.weights) == (None, str(tmp_path / "densenet121.safetensors"))
    recipe = tmp_path / "r.toml"
    recipe.write_text('weights = "w.safetensors"\n')
    assert make_config(recipe, pretrained="imagenet").weights is None


def test_every_recipe_is_in_the_docs_recipe_table():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    table = (root / "docs" / "training.md").read_text().split("## Recipes", 1)[1].split("\n## ", 1)[0]
    recipes = sorted(path.name for path in (root / "recipes").glob("*.toml"))
    assert recipes and [name for name in recipes if f"| `{name}` |" not in table] == []
    for name in recipes:
        make_config(root / "recipes" / name)  # each one is a valid recipe

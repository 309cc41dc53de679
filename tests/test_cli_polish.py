"""What users expect of a command line: --version, whole summaries, plain usage lines, choices listed, every recipe
mistake at once with its likely meaning, several classes of video frames in one call, and timm names to pick from."""

from __future__ import annotations

import re

import click
import pytest
import typer

from cli_helpers import run_cli as run
from graft import __version__
from graft.cli import app, help_format


def _commands() -> list[list[str]]:
    """Every command path (`["rounds", "init"]`, …), groups included."""
    help_format.install()
    root = typer.main.get_command(app)
    paths: list[list[str]] = []

    def walk(command: click.Command, path: list[str]) -> None:
        paths.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(root, [])
    return paths


def test_version(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.strip() == f"graft {__version__}"


def test_help_is_whole_and_plain_at_80_columns(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    paths = _commands()
    assert ["models"] in paths and ["data", "frames"] in paths and ["rounds", "status"] in paths
    for path in paths:
        code, out, err = run([*path, "--help"], capsys)
        assert code == 0, (path, err)
        usage = out.splitlines()[0]
        assert "{" not in usage and "}" not in usage, usage
        assert not re.search(r"<list\[|<\w+ range>|list\[Path\]", out), (path, out)
        summaries = out.split("Commands:", 1)[1] if "Commands:" in out else ""
        cut = [line for line in summaries.splitlines() if line.rstrip().endswith("...")]
        assert cut == [], (path, cut)
    assert run(["eval", "--help"], capsys)[1].splitlines()[0] == "Usage: graft eval [OPTIONS] BUNDLE"
    assert "Usage: graft data frames [OPTIONS] VIDEOS..." in run(["data", "frames", "--help"], capsys)[1]


@pytest.mark.parametrize(
    ("command", "choices"),
    [
        (["eval"], "--split <test|valid|train|all>"),
        (["surgery"], "--block <relu|residual|transformer>"),
        (["surgery"], "--require <exact|approximate>"),
        (["export"], "--format <onnx|ort>"),
        (["serve"], "--engine <auto|int8|onnx|torch>"),
        (["data", "frames"], "--crop <none|center>"),
        (["import-keras"], "--preprocess <tf|torch|caffe|raw|unit>"),
        (["train"], "--input-mode <replicate|stem|fold>"),
    ],
)
def test_choices_are_listed_not_typed(command, choices, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    assert choices in run([*command, "--help"], capsys)[1]


def test_every_recipe_mistake_at_once_with_did_you_mean(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text('epohcs = 3\ninput-mod = "fold"\nsize = 2\nlr = "fast"\nwibble = 1\n')
    code, _, err = run(["train", str(recipe)], capsys)
    message = " ".join(err.split())
    assert code == 2 and len(err.strip().splitlines()) <= 4, err
    assert "unknown key 'epohcs' (did you mean epochs?)" in message
    assert "unknown key 'input_mod' (did you mean input_mode?)" in message
    assert "size: Input should be greater than or equal to 8" in message and "lr: Input should be" in message
    assert "unknown key 'wibble'" in message and "known keys:" in message  # no close match: the list


def test_frames_of_several_classes_in_one_call(tmp_path, capsys):
    from test_data_video import encode

    for name, clip in (("cup", "a"), ("cup", "b"), ("ball", "c")):
        (tmp_path / "videos" / name).mkdir(parents=True, exist_ok=True)
        encode(tmp_path / "videos" / name / f"{clip}.mp4", frames=4)
    out_dir = tmp_path / "photos"
    code, out, err = run(["data", "frames", str(tmp_path / "videos"), "-o", str(out_dir)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (out_dir / "cup").glob("*.png"))[:1] == ["a-f000000.png"]
    assert len(list((out_dir / "cup").glob("*.png"))) == 8 and len(list((out_dir / "ball").glob("*.png"))) == 4
    assert "12 frames written into 2 class folders: ball, cup" in out
    # A loose video without --label is refused, not named after whatever folder it is in.
    code, out, err = run(["data", "frames", str(tmp_path / "videos" / "cup" / "a.mp4"), "-o", str(out_dir)], capsys)
    assert code == 2 and "give --label" in err


def test_models_lists_timm_names_with_their_weights(capsys):
    code, out, err = run(["models", "mobilenetv3_small"], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert re.match(r"mobilenetv3_small_100\s+lamb_in1k", next(x for x in lines if x.startswith("mobilenetv3_small_1")))
    assert lines[-1].endswith("with pretrained weights")
    code, out, _ = run(["models", "resnet10t"], capsys)
    assert "resnet10t " in out
    code, out, _ = run(["models", "test_vi?", "--pretrained"], capsys)
    assert code == 0 and all("no pretrained weights" not in line for line in out.splitlines())


def test_a_wrong_model_name_suggests_the_family(tmp_path, capsys):
    code, _, err = run(["train", "--model", "mobilenet", "--run-dir", str(tmp_path / "r")], capsys)
    message = " ".join(err.split())
    assert code == 2 and "mobilenetv2_100" in message and "mobilenetv3_small_100" in message
    assert "graft models mobilenet" in message


def test_help_falls_back_to_typers_own_when_its_internals_are_gone(monkeypatch, capsys):
    """help_format wraps private Typer methods: a Typer without them leaves --help Typer's own, never a crash."""
    import types

    from typer import core

    never_wrapped = type("TyperArgument", (), {})  # a fresh class: no `_graft_plain` mark, no `_usage_display_name`
    for internals in (
        {"TyperArgument": never_wrapped},  # `_TyperParameter` renamed away
        {"TyperArgument": never_wrapped, "_TyperParameter": core._TyperParameter},  # the usage method gone
        {"TyperArgument": core.TyperArgument, "_TyperParameter": type("P", (), {})},  # display_type gone
    ):
        monkeypatch.setattr(help_format, "core", types.SimpleNamespace(**internals))
        assert help_format.install() is False, internals
        assert not hasattr(never_wrapped, "_usage_display_name") and not hasattr(never_wrapped, "_graft_plain")
    monkeypatch.setattr(help_format, "core", core)
    assert help_format.install() is True  # this Typer has them: wrapped (once, at import)
    code, out, _ = run(["predict", "--help"], capsys)
    assert code == 0 and "BUNDLE" in out and "<list[" not in out

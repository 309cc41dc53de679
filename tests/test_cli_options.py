"""The generated command-line options: every TrainConfig field that should be a flag is one, with its own default.

`graft train` and the rounds commands build their training options from the config's fields (graft.cli.options);
these tests fail when a field, its default or its help drifts from the flag, or when a flag of old disappears.
"""

from __future__ import annotations

import importlib
import re

import pytest
import typer

from cli_helpers import run_cli as run
from graft.cli import app
from graft.cli.options import TRAIN_FLAGS
from graft.training.config import ARCHITECTURE_DEFAULTS, FLAGS, NOT_FLAGS, TrainConfig

# Every option these commands had when they were declared by hand: flag names (with short and --no- forms) and
# type. Options may be added; none of these may go or change.
BEFORE_GENERATION = {
    "train": """
--data -d str
--data-root str
--model -m str
--pretrained str
--weights str
--input-mode str
--head str
--size -s int
--resize str
--epochs -e int
--batch-size -b int
--optimizer str
--lr float
--weight-decay float
--momentum float
--schedule str
--warmup-epochs float
--label-smoothing float
--strategy str
--head-epochs int
--backbone-lr-ratio float
--augment str
--rotate float
--zoom float
--shift float
--ema float
--patience int
--keep str
--precision str
--channels-last --no-channels-last bool
--compile bool
--feature-cache --no-feature-cache bool
--device str
--valid-fraction float
--group-by str
--seed int
--threads int
--workers int
--max-train int
--max-valid int
--max-test int
--recalibrate-bn --no-recalibrate-bn bool
--output -o str
--run-dir str
--force bool
--offline bool
--resume Path
""",
    "rounds init": """
--recipe Path
--model -m str
--input-mode str
--size -s int
--pretrained str
--weights str
--epochs -e int
--batch-size -b int
--lr float
--schedule str
--strategy str
--augment str
--precision str
--seed int
--max-train int
--data-root str
--group-by str
--max-forgetting float
--min-accuracy float
--max-accuracy-drop float
--force bool
""",
    "rounds add": """
--data -d str
--replay float
--naive bool
--recipe Path
--epochs -e int
--lr float
--schedule str
--strategy str
--augment str
""",
    "rounds redo": """
--union bool
--replay float
--naive bool
--recipe Path
--epochs -e int
--lr float
--schedule str
--strategy str
--augment str
""",
    "rounds train": """
--max-forgetting float
--threads int
--workers int
--device str
""",
}


def _command(path: str):
    command = typer.main.get_command(app)
    for name in path.split():
        command = command.commands[name]
    return command


def _options(path: str) -> dict:
    return {p.name: p for p in _command(path).params if p.param_type_name == "option"}


def _shown_default(help_text: str) -> str | None:
    found = re.search(r"\[default: (.*)\]$", help_text)
    return found.group(1) if found else None


@pytest.mark.parametrize("path", sorted(BEFORE_GENERATION))
def test_every_flag_of_old_is_still_there_with_its_type(path):
    now = {
        " ".join([*p.opts, *p.secondary_opts]) + " " + p.type_descriptor.annotation.__name__
        for p in _options(path).values()
    }
    before = set(BEFORE_GENERATION[path].strip().splitlines())
    assert before <= now, before - now


def test_every_field_is_a_train_flag_unless_it_says_why_not():
    options = _options("train")
    fields = set(TrainConfig.model_fields)
    assert set(FLAGS) <= fields, set(FLAGS) - fields
    # --offline sets `download`; `model_kwargs` comes from a recipe or the --weights bundle.
    assert {"download", "model_kwargs"} == NOT_FLAGS
    for name in TrainConfig.model_fields:
        assert (name in options) == (name not in NOT_FLAGS), name
        if name in options:
            assert options[name].opts[0] == "--" + name.replace("_", "-")
    assert set(options) == {*TRAIN_FLAGS, "offline", "resume"}


@pytest.mark.parametrize("name", TRAIN_FLAGS)
def test_train_help_shows_the_fields_own_default(name):
    option = _options("train")[name]
    field = TrainConfig.model_fields[name]
    assert option.help.startswith(field.description)
    shown = _shown_default(option.help)
    value = ARCHITECTURE_DEFAULTS.get(name, field.default)
    if isinstance(value, bool) and not option.secondary_opts:  # a flag that only turns on: nothing to show
        assert value is False and shown is None
    elif isinstance(value, bool):
        assert shown == ("on" if value else "off")
    elif value is None:  # "decided later": the help says by what, in words, or says nothing
        assert shown is None or shown == FLAGS[name].default, shown
    else:
        first = shown.split(",")[0]  # "resnet18, or the --weights bundle's model"
        assert type(value)(first) == value, (shown, value)
    assert option.default is None  # not given: the recipe's value or the field's default applies


def test_literal_choices_are_the_metavar_and_every_help_is_in_train_help(capsys):
    assert _options("train")["input_mode"].metavar == "<replicate|stem|fold>"
    assert _options("train")["strategy"].metavar == "<finetune|transfer|freeze-unfreeze>"
    code, out, _ = run(["train", "--help"], capsys)
    assert code == 0
    text = " ".join(out.split())
    for name in TRAIN_FLAGS:
        help_text = " ".join(_options("train")[name].help.split())
        assert help_text in text, name


def test_rounds_commands_take_their_subsets_with_their_defaults():
    for path in ("rounds add", "rounds redo"):
        for name in ("epochs", "lr", "schedule", "strategy", "augment"):
            assert _shown_default(_options(path)[name].help) == "the project's"
    init = _options("rounds init")
    assert _shown_default(init["epochs"].help) == "5" and _shown_default(init["lr"].help) == "0.004"
    assert init["pretrained"].help.startswith("Round 1 starts")
    assert set(_options("rounds train")) == {
        "max_forgetting", "min_accuracy", "max_accuracy_drop", "max_forgetting_per_round", "threads", "workers",
        "device",
    }  # fmt: skip


def test_train_flags_reach_training_as_settings(monkeypatch, capsys):
    train_package = importlib.import_module("graft.training")  # what `graft train` calls
    seen = {}
    monkeypatch.setattr(train_package, "train", lambda **kwargs: seen.update(kwargs))
    args = ["train", "-e", "3", "--input-mode", "fold", "--no-feature-cache", "--compile", "--lr", "0.01", "--offline"]
    code, _, err = run(args, capsys)
    assert code == 0, err
    given = {k: v for k, v in seen.items() if v is not None}
    assert given == {
        "epochs": 3, "input_mode": "fold", "feature_cache": False, "compile": True, "lr": 0.01, "download": False
    }  # fmt: skip
    assert set(seen) == {*TRAIN_FLAGS, "download", "recipe"}


def test_rounds_flags_reach_the_project(monkeypatch, capsys, tmp_path):
    import graft.rounds

    seen = {}
    monkeypatch.setattr(graft.rounds, "init", lambda directory, **kwargs: seen.update(kwargs))
    code, _, err = run(["rounds", "init", str(tmp_path / "p"), "-m", "resnet10t", "--size", "16", "-e", "2"], capsys)
    assert code == 0, err
    assert seen == {
        "max_forgetting": 0.05, "min_accuracy": None, "max_accuracy_drop": 0.0, "max_forgetting_per_round": None,
        "force": False, "model": "resnet10t", "size": 16, "epochs": 2,
    }  # fmt: skip

    def add(directory, name, data, **kwargs):
        seen.update(kwargs)
        return {"rounds": [{"name": name, "mode": "union", "data": data}]}

    monkeypatch.setattr(graft.rounds, "add", add)
    seen.clear()
    code, _, err = run(["rounds", "add", str(tmp_path / "p"), "r1", "-d", "digits", "--lr", "0.1"], capsys)
    assert code == 0, err
    assert seen == {"replay": None, "naive": False, "settings": {"lr": 0.1}}

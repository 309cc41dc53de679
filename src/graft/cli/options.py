"""Command-line options generated from `TrainConfig`'s fields, so a setting's flag, help and default live in one place.

`graft train` takes every field that is a flag; the rounds commands take the subsets they name. A field's flag is
--NAME (`input_mode` → --input-mode), typed as the field, helped by its description, and shows the field's default
(or ARCHITECTURE_DEFAULTS' where the field's None means "decided later"); `graft.training.config.FLAGS` adds short
names, --no- switches and defaults that are words rather than values. Literal fields list their choices as the
metavar, but the value is checked by the config, not by click, so a wrong choice is refused in the same words as
a recipe's.

Every generated option defaults to None, meaning "not given": the recipe's value or the field's default applies.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import typer

from graft.training.config import ARCHITECTURE_DEFAULTS, FLAGS, NOT_FLAGS, Flag, TrainConfig

Command = TypeVar("Command", bound=Callable[..., Any])

TRAIN_FLAGS: tuple[str, ...] = tuple(name for name in TrainConfig.model_fields if name not in NOT_FLAGS)
"""The fields `graft train` takes as flags, in the config's order."""

_SCALARS = (bool, int, float, str)


def config_options(
    *names: str,
    before: str | None = None,
    help_for: Mapping[str, str] | None = None,
    shown_default: str | None = None,
) -> Callable[[Command], Command]:
    """Give a command function one option per named `TrainConfig` field; it receives them in its `**settings`.

    This is the one function to read: Typer builds a command from its function's signature, so the generated
    parameters are put into `__signature__`, before the function's own parameter `before` (default: last).
    `help_for` replaces a field's description where a command means something narrower by it (rounds:
    "Round 1 starts from …"); `shown_default` replaces every option's shown default (rounds: "the project's").
    Use it under `@app.command(...)`, which must see the finished signature.
    """

    def add_options(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        own = list(signature.parameters.values())
        if not own or own[-1].kind is not inspect.Parameter.VAR_KEYWORD:
            raise TypeError(f"{command.__name__} must take the generated options as **settings")
        own = [param.replace(kind=inspect.Parameter.KEYWORD_ONLY) for param in own[:-1]]
        clash = set(names) & {param.name for param in own}
        if clash:
            raise TypeError(f"{command.__name__} declares {', '.join(sorted(clash))} itself")
        at = [param.name for param in own].index(before) if before else len(own)
        generated = [
            option_parameter(name, help_text=(help_for or {}).get(name), shown_default=shown_default) for name in names
        ]
        command.__signature__ = signature.replace(parameters=[*own[:at], *generated, *own[at:]])  # type: ignore[attr-defined]
        return command

    return add_options


def option_parameter(name: str, *, help_text: str | None = None, shown_default: str | None = None) -> inspect.Parameter:
    """The Typer parameter for field `name`: `Annotated[T | None, typer.Option(...)] = None`."""
    field = TrainConfig.model_fields[name]
    flag = FLAGS.get(name, Flag())
    kind, choices = field_type(name)
    long = "--" + name.replace("_", "-")
    declaration = f"{long}/--no-{long[2:]}" if kind is bool and flag.negatable else long
    text = help_text or field.description
    if not text:
        raise TypeError(f"TrainConfig.{name} has no description to serve as its help")
    default = shown_default if shown_default is not None else default_text(name)
    option = typer.Option(
        declaration,
        *([flag.short] if flag.short else []),
        help=f"{text} [default: {default}]" if default else text,
        metavar=f"<{'|'.join(choices)}>" if choices else None,
    )
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind | None, option]
    )


def field_type(name: str) -> tuple[type, tuple[str, ...] | None]:
    """The flag's type for field `name` (its annotation less None), and a Literal's choices."""
    annotation = TrainConfig.model_fields[name].annotation
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
    if get_origin(annotation) is Literal:
        choices = get_args(annotation)
        return type(choices[0]), tuple(map(str, choices))
    if annotation in _SCALARS:
        return annotation, None
    raise TypeError(f"TrainConfig.{name} ({annotation}) cannot be a flag; list it in NOT_FLAGS")


def default_text(name: str) -> str | None:
    """The default `--help` shows for field `name`, or None where it shows none (an on-flag, or nothing to say)."""
    flag = FLAGS.get(name, Flag())
    value = ARCHITECTURE_DEFAULTS.get(name, TrainConfig.model_fields[name].default)
    if flag.default is not None:
        return flag.default.format(default=format_value(value))
    if value is None or (isinstance(value, bool) and not flag.negatable):
        return None
    return format_value(value)


def format_value(value: object) -> str:
    """A default as the help writes it: on/off for switches, 0.004 rather than 4e-3, 0 rather than 0.0."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)

"""How `--help` writes parameters: plain words, no Python type names.

Typer (0.29) writes a required argument as `{bundle}` in the usage line and types as `<list[Path]>` or `<int range>`
in the parameter list. Users should read `BUNDLE`, `VIDEOS...`, `<path>` and `<int>` (a range is already shown as
`x>=1` beside the default). Typer has no hook for either, so its two formatting methods are wrapped here, once,
when `graft.cli` is imported; choices are given as each option's metavar where it is declared.

Both methods are Typer internals (private names). When a Typer release renames or drops one, nothing is wrapped
and `--help` stays Typer's own (less plain, still whole): help must never be what breaks the CLI.
"""

from __future__ import annotations

import re

import click
from typer import core

_LIST = re.compile(r"^<list\[(.+)\]>$")
_RANGE = re.compile(r"^<(int|float) range>$")


def _plain_type(label: str | None) -> str | None:
    if not label:
        return label
    listed = _LIST.match(label)
    if listed:
        inner = listed.group(1)
        return "<path>" if inner == "Path" else f"<{inner.lower()}>"
    ranged = _RANGE.match(label)
    return f"<{ranged.group(1)}>" if ranged else label


def _usage_name(self: core.TyperArgument) -> str:
    """BUNDLE, [RECIPE], VIDEOS...: the usual way to write arguments in a usage line."""
    name = self.display_name_raw.upper() if self.metavar is None else self.display_name_raw
    name = name if self.required else f"[{name}]"
    return name + ("..." if self.nargs != 1 and not name.endswith("...") else "")


def _internals_present() -> bool:
    """Whether this Typer still has the two methods wrapped here, with the attributes `_usage_name` reads."""
    parameter, argument = getattr(core, "_TyperParameter", None), getattr(core, "TyperArgument", None)
    return (
        callable(getattr(parameter, "display_type", None))
        and callable(getattr(argument, "_usage_display_name", None))
        and isinstance(argument, type)
        and isinstance(parameter, type)
        and issubclass(argument, parameter)
    )


def install() -> bool:
    """Wrap Typer's parameter formatting (idempotent); False, wrapping nothing, where Typer lacks the internals
    (then `--help` is Typer's default)."""
    if not _internals_present():
        return False
    if getattr(core.TyperArgument, "_graft_plain", False):
        return True
    original = core._TyperParameter.display_type

    def display_type(self: core._TyperParameter, ctx: click.Context) -> str:
        return _plain_type(original(self, ctx))

    original_usage = core.TyperArgument._usage_display_name

    def usage_display_name(self: core.TyperArgument) -> str:
        try:
            return _usage_name(self)
        except AttributeError:  # an attribute `_usage_name` reads is gone in this Typer: its own form
            return original_usage(self)

    core._TyperParameter.display_type = display_type  # type: ignore[method-assign]
    core.TyperArgument._usage_display_name = usage_display_name  # type: ignore[method-assign]
    core.TyperArgument._graft_plain = True  # type: ignore[attr-defined]
    return True

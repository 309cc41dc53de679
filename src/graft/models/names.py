"""Module names as users write them (timm's, e.g. `layer2`) and as they are inside a GraftModel."""

from __future__ import annotations

from torch import nn

from graft.errors import GraftError


def resolve_name(root: nn.Module, name: str) -> str:
    """A module name as the user wrote it (timm's names, e.g. `layer2`) → its name inside a GraftModel."""
    modules = dict(root.named_modules())
    for candidate in (name, f"backbone.{name}"):
        if candidate and candidate in modules:
            return candidate
    close = [n.removeprefix("backbone.") for n in modules if n.endswith(name.rsplit(".", 1)[-1])][:5]
    hint = f"; modules with a similar name: {', '.join(close)}" if close else "; list them with `graft info --layers`"
    raise GraftError(f"no layer named {name!r} in this model{hint}")

"""`graft models [PATTERN]`: the timm names `--model` accepts, and which have pretrained weights."""

from __future__ import annotations

from typing import Annotated

import typer

from graft.errors import GraftError


def models_command(
    pattern: Annotated[
        str | None, typer.Argument(help="A word the name contains (mobilenet), or a wildcard (resnet*d).")
    ] = None,
    pretrained: Annotated[
        bool, typer.Option("--pretrained", help="Only models with pretrained weights (for --pretrained imagenet).")
    ] = False,
) -> None:
    """List timm model names matching PATTERN, with the pretrained weights each has.

    The first tag listed is the one `--pretrained imagenet` loads; models without a tag train from scratch (or
    from --weights FILE).

    \b
    Examples:
      graft models mobilenet
      graft models 'resnet*d' --pretrained
    """
    from graft.models.catalog import default_tag, matching, pretrained_tags, suggest

    names = matching(pattern, pretrained_only=pretrained)
    if not names:
        close = suggest(pattern or "")
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise GraftError(f"no timm model matches {pattern!r}{' with pretrained weights' if pretrained else ''}{hint}")
    tags = pretrained_tags()
    width = max(len(name) for name in names)
    for name in names:
        own = list(tags.get(name, ()))
        first = default_tag(name)
        if first in own:
            own.remove(first)
            own.insert(0, first)
        print(f"{name:<{width}}  {', '.join(own) if own else '- (no pretrained weights)'}")
    with_weights = sum(name in tags for name in names)
    print(f"{len(names)} models, {with_weights} with pretrained weights")

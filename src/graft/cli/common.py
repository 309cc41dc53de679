"""Helpers more than one command group uses: which bundle a path means, and how a share is printed."""

from __future__ import annotations

import sys
from pathlib import Path


def _bundle_dir(path: Path) -> Path:
    """`path` itself, or the promoted bundle of the rounds project at `path` (said on stderr)."""
    from graft.rounds.project import current_bundle, is_project

    if not is_project(path):
        return path
    bundle, pointer = current_bundle(path)
    print(f"{path} is a rounds project: using round {pointer['index']} ({pointer['round']}), {bundle}", file=sys.stderr)
    return bundle


def _pct(value: float | None) -> str:
    """A share as a percentage, or a dash where there is none (a class without predictions has no precision)."""
    return "—" if value is None else f"{value:.2%}"

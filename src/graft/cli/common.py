"""Helpers more than one command group uses: which bundle a path means, and how a share is printed."""

from __future__ import annotations

import sys
from pathlib import Path


def _bundle_dir(path: Path) -> Path:
    """`path` itself, or the promoted bundle of the rounds project at `path` (said on stderr). The same resolution
    as `graft.load(path)`: both use `graft.rounds.project.resolve_bundle`."""
    from graft.rounds.project import resolve_bundle

    resolved = resolve_bundle(path)
    if resolved.note() is not None:
        print(resolved.note(), file=sys.stderr)
    return resolved.bundle


def _pct(value: float | None) -> str:
    """A share as a percentage, or a dash where there is none (a class without predictions has no precision)."""
    return "—" if value is None else f"{value:.2%}"

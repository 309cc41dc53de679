"""Progress for long work: a live bar on a terminal (loss, accuracy, images/s, ETA), plain lines in logs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from rich.progress import Progress

_console = Console(stderr=True, soft_wrap=True)
LOG_EVERY_S = 30.0  # progress line interval when stderr is not a terminal (CI, nohup, pipes)


def console() -> Console:
    """The shared stderr console: progress and reports never mix with `--json` output on stdout."""
    return _console


def batch_progress(out: Console | None = None, *, disable: bool = False) -> Progress:
    """A transient bar on a terminal; elsewhere (logs, CI) nothing, as callers print summary lines themselves."""
    # Imported here: the CLI imports this module for `console`, and `graft --help` should not load the bars.
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    out = out or _console
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=out,
        transient=True,
        disable=disable or not out.is_terminal,
    )
